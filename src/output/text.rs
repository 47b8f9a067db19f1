//! The text report, for people: the health, the GPUs' memory health, then each registration.

use std::fmt::Write;

use crate::core::device_health::{DeviceHealth, Signal};
use crate::core::health::Health;
use crate::core::registry::RegistrationInfo;

pub(super) fn text(health: &Health, registrations: &[RegistrationInfo], devices: &[DeviceHealth]) -> String {
    text_at(health, registrations, devices, crate::core::clock::unix_ms())
}

pub(super) fn text_at(health: &Health, registrations: &[RegistrationInfo], devices: &[DeviceHealth], now_ms: u64) -> String {
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
pub(super) fn civil_from_days(days: i64) -> (i64, u32, u32) {
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
pub(super) fn ago(then_ms: u64, now_ms: u64) -> String {
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

