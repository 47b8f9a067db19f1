//! The Prometheus text exposition format (version 0.0.4): the health snapshot, the
//! registrations by device and verdict, and the GPUs' memory health, for `/metrics` and for
//! `vram_monitor_report(..., VRAM_MONITOR_REPORT_FORMAT_PROMETHEUS, ...)`.
//!
//! Conventions followed: one `vram_monitor_` prefix; base units in the name (`_bytes`,
//! `_seconds`); counters end in `_total`; every family has `# HELP` and `# TYPE`; what varies
//! (device, verdict, source) is a label, never part of a name; a figure the GPU cannot give is
//! absent, not zero, and `vram_monitor_device_signal_status` says why. docs/health-schema.md
//! lists every family.
//!
//! Every per-GPU series carries, besides `device` (the CUDA ordinal, as registrations name
//! it), `gpu` (the NVML index) and `UUID` (NVML's "GPU-..." UUID), spelt as dcgm-exporter
//! spells them, so that `... * on(UUID) group_left ... DCGM_FI_DEV_FB_USED` joins without
//! relabelling. Both are empty (as good as absent to Prometheus) while NVML has not named the
//! GPU.

use std::collections::BTreeMap;
use std::fmt::Write;

use crate::core::device_health::{DeviceHealth, Signal, SignalStatus};
use crate::core::health::Health;
use crate::core::verdict::Verdict;

/// The content type of this format, for an HTTP response.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// What the renderer needs of the registrations: the registry's figures per device and
/// verdict (one concept, one type; [`crate::core::registry::RegistrationFigures`]).
pub use crate::core::registry::RegistrationFigures;

struct Out {
    text: String,
}

impl Out {
    fn family(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.text, "# HELP {name} {}", escape_help(help));
        let _ = writeln!(self.text, "# TYPE {name} {kind}");
    }

    fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: impl std::fmt::Display) {
        self.text.push_str(name);
        if !labels.is_empty() {
            self.text.push('{');
            for (i, (key, value)) in labels.iter().enumerate() {
                if i > 0 {
                    self.text.push(',');
                }
                let _ = write!(self.text, "{key}=\"{}\"", escape_label(value));
            }
            self.text.push('}');
        }
        let _ = writeln!(self.text, " {value}");
    }
}

fn escape_help(s: &str) -> String {
    s.replace('\\', "\\\\").replace('\n', "\\n")
}

fn escape_label(s: &str) -> String {
    s.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

fn seconds_from_us(us: u64) -> String {
    format!("{}.{:06}", us / 1_000_000, us % 1_000_000)
}

fn seconds_from_ms(ms: u64) -> String {
    format!("{}.{:03}", ms / 1000, ms % 1000)
}

fn bool01(b: bool) -> u8 {
    u8::from(b)
}

/// Renders the metrics.
pub fn render(
    health: &Health,
    registrations: impl IntoIterator<Item = RegistrationFigures>,
    devices: &[DeviceHealth],
) -> String {
    let mut per_device: BTreeMap<i32, (u64, u64)> = BTreeMap::new();
    // Each violation verdict is a value of the `verdict` label (a failed query is not a
    // verdict a registration keeps: see `vram_monitor_last_check_failed`).
    let violations: Vec<Verdict> = Verdict::all().into_iter().filter(|v| v.is_violation()).collect();
    let mut by_verdict = vec![0u64; violations.len()];
    for r in registrations {
        let entry = per_device.entry(r.device).or_default();
        entry.0 += r.registrations;
        entry.1 += r.bytes;
        if let Some(i) = violations.iter().position(|v| *v == r.verdict) {
            by_verdict[i] += r.registrations;
        }
    }

    let mut out = Out { text: String::with_capacity(4096 + devices.len() * 2048) };
    out.family("vram_monitor_info", "gauge", "Always 1; the library version is a label.");
    out.sample("vram_monitor_info", &[("version", crate::VERSION)], 1);
    out.family(
        "vram_monitor_healthy",
        "gauge",
        "1 when no registration is in violation (MODIFIED included), the last check did not fail, no GPU that holds registrations reports a memory fault, the monitor is not stalled and no lent context failed verification; else 0.",
    );
    out.sample("vram_monitor_healthy", &[], bool01(health.healthy));
    out.family(
        "vram_monitor_stalled",
        "gauge",
        "1 when the monitor stopped checking: the check in progress made no progress for longer than the stall deadline, or no check completed for longer than the interval plus the grace; else 0.",
    );
    out.sample("vram_monitor_stalled", &[], bool01(health.stalled));
    out.family("vram_monitor_registrations", "gauge", "Registered device buffers.");
    out.sample("vram_monitor_registrations", &[], health.registrations);
    out.family("vram_monitor_tracked_bytes", "gauge", "Sum of the registered buffers' sizes in bytes.");
    out.sample("vram_monitor_tracked_bytes", &[], health.tracked_bytes);
    let names = |device: i32| -> (String, String) {
        let d = devices.iter().find(|d| d.device == device);
        (
            d.and_then(|d| d.nvml_index).map(|i| i.to_string()).unwrap_or_default(),
            d.and_then(|d| d.uuid.clone()).unwrap_or_default(),
        )
    };
    out.family("vram_monitor_device_registrations", "gauge", "Registered device buffers per GPU they were registered on.");
    for (device, (count, _)) in &per_device {
        let (gpu, uuid) = names(*device);
        out.sample("vram_monitor_device_registrations", &[("device", &device.to_string()), ("gpu", &gpu), ("UUID", &uuid)], count);
    }
    out.family("vram_monitor_device_tracked_bytes", "gauge", "Sum of the registered buffers' sizes in bytes per GPU.");
    for (device, (_, bytes)) in &per_device {
        let (gpu, uuid) = names(*device);
        out.sample("vram_monitor_device_tracked_bytes", &[("device", &device.to_string()), ("gpu", &gpu), ("UUID", &uuid)], bytes);
    }
    out.family(
        "vram_monitor_current_violations",
        "gauge",
        "Registrations whose last verdict is a violation, by verdict (MANAGED, HOST, NOT_MAPPED, REPLACED, OUT_OF_RANGE, WRONG_DEVICE, MODIFIED).",
    );
    for (verdict, count) in violations.iter().zip(by_verdict) {
        out.sample("vram_monitor_current_violations", &[("verdict", verdict.name())], count);
    }
    out.family("vram_monitor_sealed_registrations", "gauge", "Sealed registrations: their content is verified against a fingerprint.");
    out.sample("vram_monitor_sealed_registrations", &[], health.sealed);
    out.family("vram_monitor_sealed_bytes", "gauge", "Bytes of the sealed registrations.");
    out.sample("vram_monitor_sealed_bytes", &[], health.sealed_bytes);
    out.family("vram_monitor_integrity_verified_bytes_total", "counter", "Bytes integrity verification has read on the GPU.");
    out.sample("vram_monitor_integrity_verified_bytes_total", &[], health.integrity_verified_bytes);
    out.family("vram_monitor_integrity_passes_total", "counter", "Full verification passes over a GPU's sealed bytes.");
    out.sample("vram_monitor_integrity_passes_total", &[], health.integrity_passes);
    out.family(
        "vram_monitor_integrity_last_pass_timestamp_seconds",
        "gauge",
        "When the last full verification pass ended, in seconds since the Unix epoch (absent before the first).",
    );
    if health.integrity_last_pass_unix_ms > 0 {
        out.sample("vram_monitor_integrity_last_pass_timestamp_seconds", &[], seconds_from_ms(health.integrity_last_pass_unix_ms));
    }
    out.family(
        "vram_monitor_integrity_failed",
        "gauge",
        "1 when verification failed in a GPU's lent context (a sticky error or a destroyed context): content unknown; else 0.",
    );
    out.sample("vram_monitor_integrity_failed", &[], bool01(health.integrity_failed));
    out.family("vram_monitor_violations_total", "counter", "Violation events since the monitor started.");
    out.sample("vram_monitor_violations_total", &[], health.total_violations);
    out.family("vram_monitor_checks_total", "counter", "Full checks completed since the monitor started.");
    out.sample("vram_monitor_checks_total", &[], health.checks_completed);
    out.family("vram_monitor_checks_failed_total", "counter", "Full checks in which at least one driver query failed.");
    out.sample("vram_monitor_checks_failed_total", &[], health.checks_failed);
    out.family("vram_monitor_last_check_failed", "gauge", "1 when a driver query failed in the last full check; else 0.");
    out.sample("vram_monitor_last_check_failed", &[], bool01(health.last_check_failed));
    out.family("vram_monitor_last_check_duration_seconds", "gauge", "How long the last full check took, in seconds.");
    out.sample("vram_monitor_last_check_duration_seconds", &[], seconds_from_us(health.last_check_duration_us));
    out.family(
        "vram_monitor_last_check_timestamp_seconds",
        "gauge",
        "When the last full check ended, in seconds since the Unix epoch (absent before the first check).",
    );
    if health.last_check_unix_ms > 0 {
        out.sample("vram_monitor_last_check_timestamp_seconds", &[], seconds_from_ms(health.last_check_unix_ms));
    }
    out.family(
        "vram_monitor_last_check_start_timestamp_seconds",
        "gauge",
        "When the last full check started, in seconds since the Unix epoch (absent before the first check).",
    );
    if health.last_check_started_unix_ms > 0 {
        out.sample("vram_monitor_last_check_start_timestamp_seconds", &[], seconds_from_ms(health.last_check_started_unix_ms));
    }
    out.family("vram_monitor_check_in_progress_seconds", "gauge", "How long the full check in progress has run, in seconds; 0 when none is in progress.");
    out.sample("vram_monitor_check_in_progress_seconds", &[], seconds_from_ms(health.check_in_progress_ms.unwrap_or(0)));
    out.family("vram_monitor_check_interval_seconds", "gauge", "The interval between full checks, in seconds.");
    out.sample("vram_monitor_check_interval_seconds", &[], seconds_from_ms(health.interval_ms));
    out.family("vram_monitor_stall_deadline_seconds", "gauge", "A check making no progress for longer than this is a stall.");
    out.sample("vram_monitor_stall_deadline_seconds", &[], seconds_from_ms(health.stall_deadline_ms));
    out.family("vram_monitor_stall_grace_seconds", "gauge", "No check completed for longer than the interval plus this is a stall.");
    out.sample("vram_monitor_stall_grace_seconds", &[], seconds_from_ms(health.stall_grace_ms));
    out.family(
        "vram_monitor_process_vram_bytes",
        "gauge",
        "This process's VRAM use in bytes, read after the last full check (absent when unknown); vram_monitor_process_vram_source_info says where it came from.",
    );
    if health.process_vram.source != crate::VramSource::Unknown {
        out.sample("vram_monitor_process_vram_bytes", &[], health.process_vram.bytes);
    }
    out.family(
        "vram_monitor_process_vram_source_info",
        "gauge",
        "Always 1; the source label says where vram_monitor_process_vram_bytes came from: nvml_process (NVML's figure for this process), device_used (all processes on the GPUs that hold registrations) or unknown.",
    );
    out.sample("vram_monitor_process_vram_source_info", &[("source", health.process_vram.source.name())], 1);

    out.family("vram_monitor_faulty_devices", "gauge", "GPUs holding registrations that report a memory fault.");
    out.sample("vram_monitor_faulty_devices", &[], health.device_faults);
    device_metrics(&mut out, devices);
    out.text
}

/// The labels naming one GPU in every per-GPU series: CUDA ordinal, NVML index, UUID.
struct GpuLabels {
    device: String,
    gpu: String,
    uuid: String,
}

impl GpuLabels {
    fn of(d: &DeviceHealth) -> GpuLabels {
        GpuLabels {
            device: d.device.to_string(),
            gpu: d.nvml_index.map(|i| i.to_string()).unwrap_or_default(),
            uuid: d.uuid.clone().unwrap_or_default(),
        }
    }

    /// These labels followed by `more`.
    fn with<'a>(&'a self, more: &[(&'a str, &'a str)]) -> Vec<(&'a str, &'a str)> {
        let mut labels = vec![("device", self.device.as_str()), ("gpu", self.gpu.as_str()), ("UUID", self.uuid.as_str())];
        labels.extend_from_slice(more);
        labels
    }
}

fn device_metrics(out: &mut Out, devices: &[DeviceHealth]) {
    let ids: Vec<GpuLabels> = devices.iter().map(GpuLabels::of).collect();
    out.family(
        "vram_monitor_device_info",
        "gauge",
        "Always 1, for each GPU that holds registrations; labels: CUDA ordinal, NVML index and UUID (as dcgm-exporter's gpu and UUID), NVML UUID and name (empty when unknown), nvml (available or unavailable).",
    );
    for (d, id) in devices.iter().zip(&ids) {
        out.sample(
            "vram_monitor_device_info",
            &id.with(&[
                ("uuid", d.uuid.as_deref().unwrap_or("")),
                ("name", d.name.as_deref().unwrap_or("")),
                ("nvml", if d.available { "available" } else { "unavailable" }),
            ]),
            1,
        );
    }
    out.family("vram_monitor_device_memory_fault", "gauge", "1 when the GPU reports a memory fault (see the JSON health's fault_reasons); else 0.");
    for (d, id) in devices.iter().zip(&ids) {
        out.sample("vram_monitor_device_memory_fault", &id.with(&[]), bool01(d.memory_fault));
    }
    out.family(
        "vram_monitor_device_signal_status",
        "gauge",
        "1 for the status of each device-health signal (supported, unsupported, unavailable), 0 for the other two; a signal's own metric is present only when supported.",
    );
    for (d, id) in devices.iter().zip(&ids) {
        let signals: [(&str, SignalStatus); 4] = [
            ("ecc_uncorrected_volatile", d.ecc_uncorrected_volatile.status()),
            ("retired_pages_pending", d.retired_pages_pending.status()),
            ("remapped_rows", d.remapped_rows.status()),
            ("critical_xid", d.critical_xid_events.status()),
        ];
        for (signal, status) in signals {
            for s in [SignalStatus::Supported, SignalStatus::Unsupported, SignalStatus::Unavailable] {
                out.sample(
                    "vram_monitor_device_signal_status",
                    &id.with(&[("signal", signal), ("status", s.name())]),
                    bool01(s == status),
                );
            }
        }
    }
    out.family(
        "vram_monitor_device_ecc_uncorrected_volatile_errors_total",
        "counter",
        "Uncorrectable ECC errors since the driver was loaded (NVML volatile counter).",
    );
    for (d, id) in devices.iter().zip(&ids) {
        if let Signal::Value(count) = d.ecc_uncorrected_volatile {
            out.sample("vram_monitor_device_ecc_uncorrected_volatile_errors_total", &id.with(&[]), count);
        }
    }
    out.family("vram_monitor_device_retired_pages_pending", "gauge", "1 when pages are pending retirement (a GPU reset retires them); else 0.");
    for (d, id) in devices.iter().zip(&ids) {
        if let Signal::Value(pending) = d.retired_pages_pending {
            out.sample("vram_monitor_device_retired_pages_pending", &id.with(&[]), bool01(pending));
        }
    }
    out.family("vram_monitor_device_remapped_rows_pending", "gauge", "1 when a row remapping is pending (a GPU reset applies it); else 0.");
    for (d, id) in devices.iter().zip(&ids) {
        if let Signal::Value(rows) = d.remapped_rows {
            out.sample("vram_monitor_device_remapped_rows_pending", &id.with(&[]), bool01(rows.pending));
        }
    }
    out.family("vram_monitor_device_remapped_rows_failed", "gauge", "1 when a row remapping failed (no spare rows left); else 0.");
    for (d, id) in devices.iter().zip(&ids) {
        if let Signal::Value(rows) = d.remapped_rows {
            out.sample("vram_monitor_device_remapped_rows_failed", &id.with(&[]), bool01(rows.failed));
        }
    }
    out.family("vram_monitor_device_remapped_rows", "gauge", "Rows remapped, by the kind of error that caused it (correctable, uncorrectable).");
    for (d, id) in devices.iter().zip(&ids) {
        if let Signal::Value(rows) = d.remapped_rows {
            out.sample("vram_monitor_device_remapped_rows", &id.with(&[("cause", "correctable")]), rows.correctable);
            out.sample("vram_monitor_device_remapped_rows", &id.with(&[("cause", "uncorrectable")]), rows.uncorrectable);
        }
    }
    out.family(
        "vram_monitor_device_critical_xid_events_total",
        "counter",
        "Critical XID events NVML reported since the monitor started watching the GPU.",
    );
    for (d, id) in devices.iter().zip(&ids) {
        if let Signal::Value(count) = d.critical_xid_events {
            out.sample("vram_monitor_device_critical_xid_events_total", &id.with(&[]), count);
        }
    }
    out.family("vram_monitor_device_last_critical_xid", "gauge", "The code of the last critical XID event seen (absent when none).");
    for (d, id) in devices.iter().zip(&ids) {
        if let Some(xid) = d.last_critical_xid {
            out.sample("vram_monitor_device_last_critical_xid", &id.with(&[]), xid);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_values_and_help_are_escaped() {
        assert_eq!(escape_label("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
        assert_eq!(escape_help("a\\b\nc\"d"), "a\\\\b\\nc\"d");
    }

    #[test]
    fn durations_are_seconds_with_fixed_decimals() {
        assert_eq!(seconds_from_us(1_234_567), "1.234567");
        assert_eq!(seconds_from_us(42), "0.000042");
        assert_eq!(seconds_from_ms(60_000), "60.000");
        assert_eq!(seconds_from_ms(1_700_000_000_123), "1700000000.123");
    }
}
