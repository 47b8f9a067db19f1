//! Renderings of the health snapshot, the GPUs' memory health and the registrations: text
//! for people, JSON for health endpoints and tools (its schema: docs/health-schema.md), and
//! the Prometheus text format (in [`crate::prometheus`]).

use std::fmt::Write;
use crate::device_health::{DeviceHealth, Signal};
use crate::health::Health;
use crate::registry::RegistrationInfo;

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
        ReportFormat::Prometheus => crate::prometheus::render(
            health,
            registrations.iter().map(|r| crate::prometheus::RegistrationFigures {
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
    let _ = writeln!(
        out,
        "checks: {} completed, {} failed, last {} ms after epoch taking {} us{}; interval {} ms",
        health.checks_completed,
        health.checks_failed,
        health.last_check_unix_ms,
        health.last_check_duration_us,
        if health.last_check_failed { " (FAILED)" } else { "" },
        health.interval_ms
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
    for r in registrations {
        let _ = writeln!(
            out,
            "  #{:<6} {:<12} GPU{} {:#x} +{} '{}'",
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
            ",\"ptr\":\"{:#x}\",\"size\":{},\"device\":{},\"verdict\":\"{}\"}}",
            r.ptr,
            r.size,
            r.device,
            r.verdict.name()
        );
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
\"interval_ms\":{},\"device_faults\":{}}}",
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
        health.device_faults
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_strings_escape_quotes_backslashes_and_control_characters() {
        let mut out = String::new();
        json_string(&mut out, "a\"b\\c\nd\u{1}e\u{7f}é");
        assert_eq!(out, "\"a\\\"b\\\\c\\nd\\u0001e\\u007fé\"");
    }
}
