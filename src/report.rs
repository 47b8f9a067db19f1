//! Renderings of the health snapshot and the registrations: text for people, JSON for
//! health endpoints and tools.

use std::fmt::Write;
use crate::health::Health;
use crate::registry::RegistrationInfo;

/// A report's format. The numbers are part of the C ABI.
#[repr(i32)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ReportFormat {
    /// Lines for people.
    Text = 0,
    /// One JSON object: `{"health": {...}, "registrations": [...]}`.
    Json = 1,
}

impl ReportFormat {
    /// The format for a C integer, if it names one.
    pub fn from_raw(raw: i32) -> Option<ReportFormat> {
        match raw {
            0 => Some(ReportFormat::Text),
            1 => Some(ReportFormat::Json),
            _ => None,
        }
    }
}

/// Renders a report.
pub fn render(format: ReportFormat, health: &Health, registrations: &[RegistrationInfo]) -> String {
    match format {
        ReportFormat::Text => text(health, registrations),
        ReportFormat::Json => json(health, registrations),
    }
}

fn text(health: &Health, registrations: &[RegistrationInfo]) -> String {
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

fn json(health: &Health, registrations: &[RegistrationInfo]) -> String {
    let mut out = String::with_capacity(512 + registrations.len() * 128);
    out.push_str("{\"health\":");
    health_json(&mut out, health);
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
\"interval_ms\":{}}}",
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
        health.interval_ms
    );
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
