//! Renderings of the health snapshot, the GPUs' memory health and the registrations: text
//! for people, JSON for health endpoints and tools (its schema: docs/health-schema.md), and
//! the Prometheus text format (in [`crate::prometheus`]).

use std::fmt::Write;
use crate::core::device_health::{DeviceHealth, Signal};
use crate::core::health::Health;
use crate::core::registry::RegistrationInfo;
use crate::monitor::{Monitor, MonitorView};

/// A report's format. The numbers are part of the C ABI.
#[repr(i32)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ReportFormat {
    /// Lines for people.
    Text = 0,
    /// One JSON object: `{"health": {...}, "devices": [...], "registrations": [...]}`
    /// (docs/health-schema.md).
    Json = 1,
    /// The Prometheus text exposition format, version 0.0.4 (docs/health-schema.md lists the
    /// metrics).
    Prometheus = 2,
}

impl ReportFormat {
    /// The format for a C integer, if it names one.
    pub fn from_raw(raw: i32) -> Option<ReportFormat> {
        match raw {
            0 => Some(ReportFormat::Text),
            1 => Some(ReportFormat::Json),
            2 => Some(ReportFormat::Prometheus),
            _ => None,
        }
    }
}

/// Renders a report. `devices` is the memory health of the GPUs that hold registrations.
pub fn render(format: ReportFormat, health: &Health, registrations: &[RegistrationInfo], devices: &[DeviceHealth]) -> String {
    match format {
        ReportFormat::Text => text(health, registrations, devices),
        ReportFormat::Json => json(health, registrations, devices),
        ReportFormat::Prometheus => crate::output::prometheus::render(
            health,
            registrations.iter().map(|r| crate::output::prometheus::RegistrationFigures {
                device: r.device,
                verdict: r.verdict,
                registrations: 1,
                bytes: r.size,
            }),
            devices,
        ),
    }
}

/// The body `GET /health` serves: `{"health": {...}, "devices": [...]}`.
pub fn health_document(health: &Health, devices: &[DeviceHealth]) -> String {
    let mut out = String::with_capacity(512 + devices.len() * 512);
    out.push_str("{\"health\":");
    health_json(&mut out, health);
    out.push_str(",\"devices\":");
    devices_json(&mut out, devices);
    out.push('}');
    out
}

fn text(health: &Health, registrations: &[RegistrationInfo], devices: &[DeviceHealth]) -> String {
    text_at(health, registrations, devices, crate::core::clock::unix_ms())
}

fn text_at(health: &Health, registrations: &[RegistrationInfo], devices: &[DeviceHealth], now_ms: u64) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "vram-monitor {}: {} — {} registrations, {} bytes tracked, {} in violation now, {} violations in total",
        crate::VERSION,
        if health.healthy { "HEALTHY" } else { "UNHEALTHY" },
        health.registrations,
        health.tracked_bytes,
        health.current_violations,
        health.total_violations
    );
    let last = if health.last_check_unix_ms == 0 {
        "none yet".to_string()
    } else {
        format!(
            "last ended {} ({}) taking {} us{}",
            iso8601_utc(health.last_check_unix_ms),
            ago(health.last_check_unix_ms, now_ms),
            health.last_check_duration_us,
            if health.last_check_failed { " (FAILED)" } else { "" }
        )
    };
    let _ = writeln!(
        out,
        "checks: {} completed, {} failed, {last}; interval {} ms",
        health.checks_completed, health.checks_failed, health.interval_ms
    );
    let running = match health.check_in_progress_ms {
        Some(ms) => format!(
            "a check in progress since {} ({ms} ms)",
            iso8601_utc(health.last_check_started_unix_ms)
        ),
        None => "no check in progress".to_string(),
    };
    let _ = writeln!(
        out,
        "{}: {running}; stall deadline {} ms, grace {} ms",
        if health.stalled { "STALLED" } else { "not stalled" },
        health.stall_deadline_ms,
        health.stall_grace_ms
    );
    let _ = writeln!(
        out,
        "process VRAM: {} bytes (source: {})",
        health.process_vram.bytes,
        health.process_vram.source.name()
    );
    for d in devices {
        device_text(&mut out, d);
    }
    if health.sealed > 0 || health.integrity_failed {
        let _ = writeln!(
            out,
            "integrity: {} registrations sealed{}",
            health.sealed,
            if health.integrity_failed { "; VERIFICATION FAILED in a lent context (content unknown)" } else { "" }
        );
    }
    for r in registrations {
        let sealed = match &r.seal {
            Some(seal) if seal.modified_chunks > 0 => format!(
                " [sealed: {} of {} chunks modified, first at +{}]",
                seal.modified_chunks, seal.chunks, seal.first_modified_offset
            ),
            Some(seal) => format!(" [sealed, verified {}]", iso8601_utc(seal.last_verified_unix_ms)),
            None => String::new(),
        };
        let _ = writeln!(
            out,
            "  #{:<6} {:<12} GPU{} {:#x} +{} '{}'{sealed}",
            r.id,
            r.verdict.name(),
            r.device,
            r.ptr,
            r.size,
            r.label.escape_debug()
        );
    }
    out
}

/// `ms` since the Unix epoch as ISO 8601 in UTC, to the millisecond:
/// "2026-12-02T08:01:56.123Z".
pub fn iso8601_utc(ms: u64) -> String {
    let secs = ms / 1000;
    let (year, month, day) = civil_from_days((secs / 86_400) as i64);
    let of_day = secs % 86_400;
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        of_day / 3600,
        of_day % 3600 / 60,
        of_day % 60,
        ms % 1000
    )
}

/// The proleptic Gregorian date of a day count since 1970-01-01 (Howard Hinnant's
/// `civil_from_days`, valid for every day a u64 of milliseconds can name).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097); // day of the era, [0, 146096]
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365; // [0, 399]
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100); // [0, 365]
    let mp = (5 * doy + 2) / 153; // March-based month, [0, 11]
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// "12 s ago" (whole seconds, rounded down); "in 3 s" for a time ahead of `now_ms` (the
/// wall clock stepped back).
fn ago(then_ms: u64, now_ms: u64) -> String {
    if then_ms > now_ms {
        format!("in {} s", (then_ms - now_ms) / 1000)
    } else {
        format!("{} s ago", (now_ms - then_ms) / 1000)
    }
}

fn signal_text<T>(signal: &Signal<T>, value: impl FnOnce(&T) -> String) -> String {
    match signal {
        Signal::Value(v) => value(v),
        other => other.status().name().to_string(),
    }
}

fn device_text(out: &mut String, d: &DeviceHealth) {
    if !d.available {
        let _ = writeln!(out, "{}: memory health unavailable: {}", d.display_name(), d.detail);
        return;
    }
    let _ = writeln!(
        out,
        "{}: memory {}; uncorrectable ECC errors (volatile): {}; retired pages pending: {}; remapped rows: {}; critical XIDs: {}{}",
        d.display_name(),
        if d.memory_fault { "FAULT" } else { "ok" },
        signal_text(&d.ecc_uncorrected_volatile, |v| v.to_string()),
        signal_text(&d.retired_pages_pending, |v| if *v { "yes".into() } else { "no".into() }),
        signal_text(&d.remapped_rows, |r| format!(
            "{} correctable, {} uncorrectable, pending {}, failed {}",
            r.correctable,
            r.uncorrectable,
            if r.pending { "yes" } else { "no" },
            if r.failed { "yes" } else { "no" }
        )),
        signal_text(&d.critical_xid_events, |v| v.to_string()),
        d.last_critical_xid.map(|x| format!(" (last XID {x})")).unwrap_or_default()
    );
    for reason in &d.fault_reasons {
        let _ = writeln!(out, "  fault: {reason}");
    }
}

fn json(health: &Health, registrations: &[RegistrationInfo], devices: &[DeviceHealth]) -> String {
    let mut out = String::with_capacity(512 + devices.len() * 512 + registrations.len() * 128);
    out.push_str("{\"health\":");
    health_json(&mut out, health);
    out.push_str(",\"devices\":");
    devices_json(&mut out, devices);
    out.push_str(",\"registrations\":[");
    for (i, r) in registrations.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        let _ = write!(out, "{{\"id\":{},\"label\":", r.id);
        json_string(&mut out, &r.label);
        // Addresses as hex strings: JSON numbers above 2^53 lose precision in many parsers.
        let _ = write!(
            out,
            ",\"ptr\":\"{:#x}\",\"size\":{},\"device\":{},\"verdict\":\"{}\",\"sealed\":{}",
            r.ptr,
            r.size,
            r.device,
            r.verdict.name(),
            r.seal.is_some()
        );
        if let Some(seal) = &r.seal {
            let _ = write!(
                out,
                ",\"chunks\":{},\"last_verified_unix_ms\":{},\"modified_chunks\":{},\"first_modified_offset\":{},\"integrity_failing\":{}",
                seal.chunks, seal.last_verified_unix_ms, seal.modified_chunks, seal.first_modified_offset, seal.failing
            );
        }
        out.push('}');
    }
    out.push_str("]}");
    out
}

/// Writes the health snapshot as one JSON object.
pub fn health_json(out: &mut String, health: &Health) {
    let _ = write!(
        out,
        "{{\"version\":\"{}\",\"healthy\":{},\"registrations\":{},\"tracked_bytes\":{},\"current_violations\":{},\
\"total_violations\":{},\"checks_completed\":{},\"checks_failed\":{},\"last_check_failed\":{},\
\"last_check_unix_ms\":{},\"last_check_duration_us\":{},\"process_vram_bytes\":{},\"process_vram_source\":\"{}\",\
\"interval_ms\":{},\"device_faults\":{},\"stalled\":{},\"last_check_started_unix_ms\":{},\"check_in_progress_ms\":{},\
\"stall_deadline_ms\":{},\"stall_grace_ms\":{},\"sealed\":{},\"sealed_bytes\":{},\"integrity_verified_bytes\":{},\"integrity_passes\":{},\"integrity_last_pass_unix_ms\":{},\"integrity_failed\":{}}}",
        crate::VERSION,
        health.healthy,
        health.registrations,
        health.tracked_bytes,
        health.current_violations,
        health.total_violations,
        health.checks_completed,
        health.checks_failed,
        health.last_check_failed,
        health.last_check_unix_ms,
        health.last_check_duration_us,
        health.process_vram.bytes,
        health.process_vram.source.name(),
        health.interval_ms,
        health.device_faults,
        health.stalled,
        health.last_check_started_unix_ms,
        health.check_in_progress_ms.map_or_else(|| "null".to_string(), |ms| ms.to_string()),
        health.stall_deadline_ms,
        health.stall_grace_ms,
        health.sealed,
        health.sealed_bytes,
        health.integrity_verified_bytes,
        health.integrity_passes,
        health.integrity_last_pass_unix_ms,
        health.integrity_failed
    );
}

/// A signal as JSON: its value, or the string "unsupported" or "unavailable".
fn signal_json<T>(out: &mut String, signal: &Signal<T>, value: impl FnOnce(&mut String, &T)) {
    match signal {
        Signal::Value(v) => value(out, v),
        other => {
            let _ = write!(out, "\"{}\"", other.status().name());
        }
    }
}

/// Writes the devices' memory health as one JSON array (docs/health-schema.md).
pub fn devices_json(out: &mut String, devices: &[DeviceHealth]) {
    out.push('[');
    for (i, d) in devices.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        let _ = write!(out, "{{\"device\":{},\"nvml\":\"{}\",\"detail\":", d.device, if d.available { "available" } else { "unavailable" });
        json_string(out, &d.detail);
        out.push_str(",\"nvml_index\":");
        match d.nvml_index {
            Some(index) => {
                let _ = write!(out, "{index}");
            }
            None => out.push_str("null"),
        }
        out.push_str(",\"uuid\":");
        optional_json_string(out, d.uuid.as_deref());
        out.push_str(",\"name\":");
        optional_json_string(out, d.name.as_deref());
        let _ = write!(out, ",\"memory_fault\":{},\"fault_reasons\":[", d.memory_fault);
        for (j, reason) in d.fault_reasons.iter().enumerate() {
            if j > 0 {
                out.push(',');
            }
            json_string(out, reason);
        }
        out.push_str("],\"ecc_uncorrected_volatile\":");
        signal_json(out, &d.ecc_uncorrected_volatile, |out, v| {
            let _ = write!(out, "{v}");
        });
        out.push_str(",\"retired_pages_pending\":");
        signal_json(out, &d.retired_pages_pending, |out, v| {
            let _ = write!(out, "{v}");
        });
        out.push_str(",\"remapped_rows_pending\":");
        signal_json(out, &d.remapped_rows, |out, r| {
            let _ = write!(out, "{}", r.pending);
        });
        out.push_str(",\"remapped_rows_failed\":");
        signal_json(out, &d.remapped_rows, |out, r| {
            let _ = write!(out, "{}", r.failed);
        });
        out.push_str(",\"remapped_rows_correctable\":");
        signal_json(out, &d.remapped_rows, |out, r| {
            let _ = write!(out, "{}", r.correctable);
        });
        out.push_str(",\"remapped_rows_uncorrectable\":");
        signal_json(out, &d.remapped_rows, |out, r| {
            let _ = write!(out, "{}", r.uncorrectable);
        });
        out.push_str(",\"critical_xid_events\":");
        signal_json(out, &d.critical_xid_events, |out, v| {
            let _ = write!(out, "{v}");
        });
        out.push_str(",\"last_critical_xid\":");
        match d.last_critical_xid {
            Some(x) => {
                let _ = write!(out, "{x}");
            }
            None => out.push_str("null"),
        }
        let _ = write!(out, ",\"read_unix_ms\":{}}}", d.read_unix_ms);
    }
    out.push(']');
}

fn optional_json_string(out: &mut String, s: Option<&str>) {
    match s {
        Some(s) => json_string(out, s),
        None => out.push_str("null"),
    }
}

/// Writes `s` as a JSON string literal (RFC 8259 escaping).
pub fn json_string(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 || c == '\u{7f}' => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

/// A monitor's state as text, JSON or Prometheus metrics, read through its view: the health,
/// the GPUs' memory health and every registration with its last verdict (Prometheus: counts
/// only, no copy of every registration).
pub fn render_view(view: &MonitorView, format: ReportFormat) -> String {
    if format == ReportFormat::Prometheus {
        let figures = view.tally();
        return crate::output::prometheus::render(&view.health(), figures, &view.device_health());
    }
    render(format, &view.health(), &view.registrations(), &view.device_health())
}

// An inherent impl here, in the output room, keeps the dependency pointing from the output to
// the monitor: the monitor does not know reports exist.
impl Monitor {
    /// The health, the GPUs' memory health and every registration with its last verdict, as
    /// text, JSON or Prometheus metrics ([`render_view`] over [`Monitor::view`]).
    pub fn report(&self, format: ReportFormat) -> String {
        render_view(&self.view(), format)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_are_iso_8601_utc() {
        assert_eq!(iso8601_utc(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(iso8601_utc(951_782_400_000), "2000-02-29T00:00:00.000Z");
        assert_eq!(iso8601_utc(1_700_000_000_123), "2023-11-14T22:13:20.123Z");
        assert_eq!(iso8601_utc(1_709_251_199_999), "2024-02-29T23:59:59.999Z");
        assert_eq!(iso8601_utc(4_102_444_800_000), "2100-01-01T00:00:00.000Z");
        // Every day of four centuries round-trips through the civil date (leap years by the
        // Gregorian rule, 2000 leap, 2100 not).
        let mut expected = (1970i64, 1u32, 1u32);
        for days in 0..146_097i64 {
            assert_eq!(civil_from_days(days), expected, "day {days}");
            let (y, m, d) = expected;
            let leap = (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
            let month_days = [31, if leap { 29 } else { 28 }, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31][m as usize - 1];
            expected = if d < month_days { (y, m, d + 1) } else if m < 12 { (y, m + 1, 1) } else { (y + 1, 1, 1) };
        }
    }

    #[test]
    fn the_text_report_gives_times_in_utc_and_how_long_ago() {
        let health = Health {
            healthy: true,
            registrations: 0,
            tracked_bytes: 0,
            current_violations: 0,
            total_violations: 0,
            checks_completed: 3,
            checks_failed: 0,
            last_check_failed: false,
            last_check_unix_ms: 1_700_000_000_123,
            last_check_duration_us: 42,
            process_vram: crate::ProcessVram::UNKNOWN,
            interval_ms: 60_000,
            device_faults: 0,
            stalled: false,
            last_check_started_unix_ms: 1_700_000_000_100,
            check_in_progress_ms: None,
            stall_deadline_ms: 30_000,
            stall_grace_ms: 30_000,
            sealed: 0,
            sealed_bytes: 0,
            integrity_verified_bytes: 0,
            integrity_passes: 0,
            integrity_last_pass_unix_ms: 0,
            integrity_failed: false,
        };
        let text = text_at(&health, &[], &[], 1_700_000_012_999);
        assert!(text.contains("last ended 2023-11-14T22:13:20.123Z (12 s ago) taking 42 us"), "{text}");
        assert!(!text.contains("after epoch"), "{text}");
        let none = text_at(&Health { last_check_unix_ms: 0, ..health }, &[], &[], 5);
        assert!(none.contains("checks: 3 completed, 0 failed, none yet;"), "{none}");
        let stalled = text_at(&Health { stalled: true, healthy: false, check_in_progress_ms: Some(31_000), ..health }, &[], &[], 5);
        assert!(stalled.contains("STALLED: a check in progress since 2023-11-14T22:13:20.100Z (31000 ms)"), "{stalled}");
        assert!(ago(10_000, 7_000).starts_with("in 3 s"));
    }

    #[test]
    fn json_strings_escape_quotes_backslashes_and_control_characters() {
        let mut out = String::new();
        json_string(&mut out, "a\"b\\c\nd\u{1}e\u{7f}é");
        assert_eq!(out, "\"a\\\"b\\\\c\\nd\\u0001e\\u007fé\"");
    }
}
