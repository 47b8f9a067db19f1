//! The JSON report and its parts (its schema: docs/health-schema.md): the health, the GPUs'
//! memory health and the registrations, written by hand into one string.

use std::fmt::Write;

use crate::core::device_health::{DeviceHealth, Signal};
use crate::core::health::Health;
use crate::core::registry::RegistrationInfo;

pub(super) fn json(health: &Health, registrations: &[RegistrationInfo], devices: &[DeviceHealth]) -> String {
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
