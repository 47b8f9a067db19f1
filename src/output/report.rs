//! Reports of the health snapshot, the GPUs' memory health and the registrations, in the
//! format asked for: text for people ([`super::text`]), JSON for health endpoints and tools
//! ([`super::json`]; its schema: docs/health-schema.md), and the Prometheus text format
//! ([`super::prometheus`]); and `Monitor::report`, which reads them through the monitor's view.
use crate::core::device_health::DeviceHealth;
use crate::core::health::Health;
use crate::core::registry::RegistrationInfo;
use crate::monitor::{Monitor, MonitorView};

pub use super::json::{devices_json, health_json, json_string};
pub use super::text::iso8601_utc;
use super::json::json;
use super::text::text;
#[cfg(test)]
use super::text::{ago, civil_from_days, text_at};

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
            checks_completed: 3,
            last_check_unix_ms: 1_700_000_000_123,
            last_check_duration_us: 42,
            interval_ms: 60_000,
            last_check_started_unix_ms: 1_700_000_000_100,
            stall_deadline_ms: 30_000,
            stall_grace_ms: 30_000,
            ..Default::default()
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
