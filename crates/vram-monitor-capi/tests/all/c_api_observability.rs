//! Observability through the C API: the built-in HTTP endpoint started, stopped and freed
//! through `vram_monitor_serve_http` / `vram_monitor_stop_http` / `vram_monitor_free`, the
//! GPUs' memory health through `vram_monitor_device_health`, the Prometheus text and the JSON
//! through `vram_monitor_report`, and the header's report-format macros. (The same through the
//! Rust API: tests/all/observability.rs at the repository root, whose helpers this shares.)
//!
//! Each test that needs a driver runs against the fake libcuda in a child process
//! (tests/support at the repository root).

use std::ffi::{c_char, CStr, CString};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use crate::observe::{clean_reading, get, parse_exposition, parse_response, recorder, threads_named, unsupported_reading, value, Script};
use serde_json::Value;
use crate::support::{fake_driver_test, Fake, FakeDriverVariant, Kind};
use vram_monitor::device_health::{RemappedRows, Signal};
use vram_monitor::{Event, EventKind, Monitor, ReportFormat};
use vram_monitor_capi::*;

const MIB: usize = 1 << 20;

fn open_descriptors() -> usize {
    std::fs::read_dir("/proc/self/fd").map(|d| d.count()).unwrap_or(0)
}

fn set_descriptor_limit(soft: u64) -> u64 {
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    assert_eq!(unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) }, 0);
    let old = limit.rlim_cur;
    limit.rlim_cur = soft.min(limit.rlim_max);
    assert_eq!(unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &limit) }, 0);
    old
}

/// A TCP socket made now and connected later, when the process may have no descriptor left.
fn unconnected_socket() -> std::os::fd::OwnedFd {
    use std::os::fd::FromRawFd;
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
    assert!(fd >= 0);
    unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) }
}

fn connect_socket(fd: std::os::fd::OwnedFd, addr: SocketAddr) -> TcpStream {
    use std::os::fd::AsRawFd;
    let SocketAddr::V4(v4) = addr else { panic!("IPv4 only") };
    let sin = libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: v4.port().to_be(),
        sin_addr: libc::in_addr { s_addr: u32::from(*v4.ip()).to_be() },
        sin_zero: [0; 8],
    };
    let rc = unsafe {
        libc::connect(fd.as_raw_fd(), (&sin as *const libc::sockaddr_in).cast(), std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t)
    };
    assert_eq!(rc, 0, "connect: {}", std::io::Error::last_os_error());
    let stream = TcpStream::from(fd);
    stream.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    stream
}

#[test]
fn out_of_file_descriptors_the_endpoint_still_answers_and_free_joins_it_and_frees_the_port() {
    fake_driver_test(&test_name!(), FakeDriverVariant::Complete, &[], || {
        for round in 0..20 {
            let mut handle: *mut VramMonitor = std::ptr::null_mut();
            assert_eq!(unsafe { vram_monitor_new(60_000, &mut handle) }, VramMonitorResult::Ok);
            let mut port = 0u16;
            let address = CString::new("127.0.0.1:0").unwrap();
            assert_eq!(unsafe { vram_monitor_serve_http(handle, address.as_ptr(), &mut port) }, VramMonitorResult::Ok);
            let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
            let probe = unconnected_socket();
            // Served once, so the thread runs (and has its name) before counting it.
            assert_eq!(get(addr, "/livez").status, 200, "round {round}: before exhaustion");
            assert_eq!(threads_named("vram-monitor-ht"), 1);
            let old_limit = set_descriptor_limit(open_descriptors() as u64 + 48);
            // Connections that send nothing (some in the listen queue, the server having
            // no descriptor to accept them), then files until the process has none left.
            let mut idle = Vec::new();
            while idle.len() < 40 {
                match TcpStream::connect_timeout(&addr, Duration::from_secs(5)) {
                    Ok(s) => idle.push(s),
                    Err(_) => break,
                }
            }
            let mut files = Vec::new();
            let full = loop {
                match std::fs::File::open("/dev/null") {
                    Ok(f) => files.push(f),
                    Err(e) => break e,
                }
            };
            assert_eq!(full.raw_os_error(), Some(libc::EMFILE), "round {round}: the process ran out of descriptors");
            let exhausted_with = idle.len();
            // A probe still gets its answer: the endpoint closes its own idle connections, or
            // gives up its reserve descriptor, to accept it.
            let mut probe = connect_socket(probe, addr);
            probe.write_all(b"GET /livez HTTP/1.1\r\n\r\n").unwrap();
            let mut raw = Vec::new();
            probe.read_to_end(&mut raw).expect("read the probe's answer");
            assert!(!raw.is_empty(), "round {round}: the probe got no answer ({exhausted_with} idle, {} files)", files.len());
            let r = parse_response(&raw);
            assert_eq!(r.status, 200, "round {round}: {}", r.body);
            // Freed while the process is still out of descriptors: joins the HTTP thread.
            assert_eq!(unsafe { vram_monitor_free(handle) }, VramMonitorResult::Ok);
            // Counting threads needs a descriptor: counted once some are back, after free returned.
            drop(files);
            drop(idle);
            set_descriptor_limit(old_limit);
            assert_eq!(threads_named("vram-monitor-ht"), 0, "round {round}: free joined the HTTP thread");
            assert!(exhausted_with > 0, "round {round}: idle connections were open");
            // The port is free: it can be bound again.
            let again = std::net::TcpListener::bind(addr);
            assert!(again.is_ok(), "round {round}: the port is released: {again:?}");
        }
    });
}

fn metric_line<'a>(metrics: &'a str, prefix: &str) -> Option<&'a str> {
    metrics.lines().find(|l| l.starts_with(prefix))
}

#[test]
fn a_device_memory_fault_fires_an_event_and_makes_health_503() {
    fake_driver_test(&test_name!(), FakeDriverVariant::Complete, &[], || {
        let fake = Fake::get();
        // A C handle, driven from Rust here and through the C API at the end.
        let mut handle: *mut VramMonitor = std::ptr::null_mut();
        assert_eq!(unsafe { vram_monitor_new(60_000, &mut handle) }, VramMonitorResult::Ok);
        // SAFETY: freed only at the end of this test, after the last use of `m`.
        let m: &Monitor = unsafe { (*handle).as_monitor() }.expect("a live monitor");
        let script = Script::default();
        script.set(0, Ok(clean_reading()));
        script.set(1, Ok(unsupported_reading()));
        m.set_device_health_source(Box::new(script.clone()));
        let events = recorder(m);
        m.register(fake.alloc(Kind::Device, MIB, 0), MIB as u64, "gpu0.w").unwrap();
        m.register(fake.alloc(Kind::Device, 2 * MIB, 1), 2 * MIB as u64, "gpu1.w").unwrap();
        // The endpoint is the handle's: free stops it (checked at the end).
        let mut port = 0u16;
        let address = CString::new("127.0.0.1:0").unwrap();
        assert_eq!(unsafe { vram_monitor_serve_http(handle, address.as_ptr(), &mut port) }, VramMonitorResult::Ok);
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();

        assert!(m.check_now().unwrap().healthy);
        let devices = m.device_health();
        assert_eq!(devices.iter().map(|d| d.device).collect::<Vec<_>>(), vec![0, 1]);
        assert_eq!(devices[0].ecc_uncorrected_volatile, Signal::Value(0));
        assert_eq!(devices[1].ecc_uncorrected_volatile, Signal::Unsupported);
        let json: Value = serde_json::from_str(&get(addr, "/health").body).unwrap();
        assert_eq!(json["devices"][0]["ecc_uncorrected_volatile"], 0);
        assert_eq!(json["devices"][0]["retired_pages_pending"], "unsupported", "unsupported, not zero");
        assert_eq!(json["devices"][1]["ecc_uncorrected_volatile"], "unsupported");
        assert_eq!(json["devices"][1]["critical_xid_events"], "unsupported");
        let metrics = get(addr, "/metrics").body;
        assert_eq!(metric_line(&metrics, "vram_monitor_device_ecc_uncorrected_volatile_errors_total{device=\"0\",gpu=\"0\",UUID=\"GPU-00000000-1111-2222-3333-444444444444\"}"), Some("vram_monitor_device_ecc_uncorrected_volatile_errors_total{device=\"0\",gpu=\"0\",UUID=\"GPU-00000000-1111-2222-3333-444444444444\"} 0"));
        assert_eq!(metric_line(&metrics, "vram_monitor_device_ecc_uncorrected_volatile_errors_total{device=\"1\","), None, "no sample for an unsupported figure");
        assert!(metrics.contains("vram_monitor_device_signal_status{device=\"1\",gpu=\"\",UUID=\"\",signal=\"ecc_uncorrected_volatile\",status=\"unsupported\"} 1"), "{metrics}");
        assert!(metrics.contains("vram_monitor_device_signal_status{device=\"1\",gpu=\"\",UUID=\"\",signal=\"ecc_uncorrected_volatile\",status=\"supported\"} 0"));
        assert!(metrics.contains("name=\"Scripted \\\"GPU\\\"\""), "label values are escaped: {metrics}");
        assert!(events.lock().unwrap().iter().all(|e| e.kind != EventKind::DeviceFault));

        // A non-memory critical XID: an event, but the health stays.
        let mut r = clean_reading();
        r.new_critical_xids = Signal::Value(vec![13]);
        script.set(0, Ok(r));
        assert!(m.check_now().unwrap().healthy, "XID 13 is not a memory fault");
        let fault_events: Vec<Event> = events.lock().unwrap().drain(..).filter(|e| e.kind == EventKind::DeviceFault).collect();
        assert_eq!(fault_events.len(), 1, "{fault_events:?}");
        assert!(fault_events[0].message.contains("XID 13") && fault_events[0].device == 0, "{}", fault_events[0].message);
        assert_eq!(m.device_health()[0].critical_xid_events, Signal::Value(1));
        assert_eq!(m.device_health()[0].last_critical_xid, Some(13));

        // Uncorrectable ECC errors and a pending row remapping on GPU1.
        let mut r = clean_reading();
        r.ecc_uncorrected_volatile = Signal::Value(2);
        r.remapped_rows = Signal::Value(RemappedRows { correctable: 0, uncorrectable: 1, pending: true, failed: false });
        script.set(1, Ok(r));
        let summary = m.check_now().unwrap();
        assert!(!summary.healthy);
        let health = m.health();
        assert!(!health.healthy);
        assert_eq!(health.device_faults, 1);
        assert_eq!(health.current_violations, 0, "no registration moved");
        let got: Vec<Event> = events.lock().unwrap().drain(..).collect();
        let fault = got.iter().find(|e| e.kind == EventKind::DeviceFault).expect("a device-fault event");
        assert_eq!(fault.device, 1);
        assert_eq!(fault.registration_id, 0);
        assert!(!fault.healthy);
        assert!(fault.message.contains("2 uncorrectable ECC errors") && fault.message.contains("remapped rows pending"), "{}", fault.message);
        let changed = got.iter().find(|e| e.kind == EventKind::HealthChanged).expect("health changed");
        assert!(changed.message.contains("memory fault"), "{}", changed.message);

        let r = get(addr, "/health");
        assert_eq!(r.status, 503);
        let json: Value = serde_json::from_str(&r.body).unwrap();
        assert_eq!(json["health"]["device_faults"], 1);
        assert_eq!(json["devices"][1]["memory_fault"], true);
        assert_eq!(json["devices"][1]["remapped_rows_pending"], true);
        assert_eq!(json["devices"][1]["fault_reasons"].as_array().unwrap().len(), 2);
        let metrics = get(addr, "/metrics").body;
        assert!(metrics.contains("\nvram_monitor_healthy 0\n"));
        assert!(metrics.contains("\nvram_monitor_faulty_devices 1\n"));
        assert!(metrics.contains("vram_monitor_device_memory_fault{device=\"1\",gpu=\"0\",UUID=\"GPU-00000000-1111-2222-3333-444444444444\"} 1"));
        assert!(metrics.contains("vram_monitor_device_remapped_rows{device=\"1\",gpu=\"0\",UUID=\"GPU-00000000-1111-2222-3333-444444444444\",cause=\"uncorrectable\"} 1"));

        // The same fault again is not a new event.
        m.check_now().unwrap();
        assert!(events.lock().unwrap().iter().all(|e| e.kind != EventKind::DeviceFault));

        // Through the C API.
        let mut count = 0usize;
        assert_eq!(unsafe { vram_monitor_device_health(handle, std::ptr::null_mut(), 0, &mut count) }, VramMonitorResult::BufferTooSmall);
        assert_eq!(count, 2);
        let mut out: Vec<VramMonitorDeviceHealth> = Vec::with_capacity(2);
        assert_eq!(unsafe { vram_monitor_device_health(handle, out.as_mut_ptr(), 2, &mut count) }, VramMonitorResult::Ok);
        unsafe { out.set_len(count) };
        assert_eq!(out[1].device, 1);
        assert!(out[1].memory_fault && out[1].nvml_available);
        assert_eq!(out[1].ecc_uncorrected_volatile_status, vram_monitor::SignalStatus::Supported);
        assert_eq!(out[1].ecc_uncorrected_volatile, 2);
        assert!(out[1].remapped_rows_pending);
        assert_eq!(out[0].retired_pages_pending_status, vram_monitor::SignalStatus::Unsupported);
        assert_eq!(out[0].last_critical_xid, 13);
        let uuid = unsafe { CStr::from_ptr(out[0].uuid.as_ptr()) }.to_str().unwrap();
        assert_eq!(uuid, "GPU-00000000-1111-2222-3333-444444444444");
        let mut h = std::mem::MaybeUninit::<VramMonitorHealth>::uninit();
        assert_eq!(unsafe { vram_monitor_health(handle, h.as_mut_ptr()) }, VramMonitorResult::Ok);
        let h = unsafe { h.assume_init() };
        assert!(!h.healthy);
        assert_eq!(h.device_faults, 1);
        assert_eq!(unsafe { vram_monitor_free(handle) }, VramMonitorResult::Ok);
        assert!(TcpStream::connect_timeout(&addr, Duration::from_secs(2)).is_err(), "freed: the endpoint is gone");
    });
}

#[test]
fn without_nvml_device_health_is_unavailable_not_zero() {
    fake_driver_test(&test_name!(), FakeDriverVariant::Complete, &[], || {
        if unsafe { libloading::Library::new("libnvidia-ml.so.1") }.is_ok() {
            eprintln!("skipped: NVML is installed here; this test is about a machine without it");
            return;
        }
        let fake = Fake::get();
        let mut handle: *mut VramMonitor = std::ptr::null_mut();
        assert_eq!(unsafe { vram_monitor_new(60_000, &mut handle) }, VramMonitorResult::Ok);
        let mut count = 99usize;
        assert_eq!(unsafe { vram_monitor_device_health(handle, std::ptr::null_mut(), 0, &mut count) }, VramMonitorResult::Ok);
        assert_eq!(count, 0, "nothing before the first check");
        let label = CString::new("w").unwrap();
        let mut id = 0;
        let ptr = fake.alloc(Kind::Device, MIB, 0);
        assert_eq!(unsafe { vram_monitor_register(handle, ptr as *const _, MIB, label.as_ptr(), &mut id) }, VramMonitorResult::Ok);
        assert_eq!(unsafe { vram_monitor_check_now(handle, std::ptr::null_mut()) }, VramMonitorResult::Ok);
        let mut out = [std::mem::MaybeUninit::<VramMonitorDeviceHealth>::uninit(); 4];
        assert_eq!(unsafe { vram_monitor_device_health(handle, out.as_mut_ptr().cast(), 4, &mut count) }, VramMonitorResult::Ok);
        assert_eq!(count, 1);
        let d = unsafe { out[0].assume_init() };
        assert_eq!(d.device, 0);
        assert!(!d.nvml_available);
        assert!(!d.memory_fault, "not knowing is not a fault");
        for status in [d.ecc_uncorrected_volatile_status, d.retired_pages_pending_status, d.remapped_rows_status, d.critical_xid_status] {
            assert_eq!(status, vram_monitor::SignalStatus::Unavailable);
        }
        assert_eq!(unsafe { CStr::from_ptr(vram_monitor_signal_status_str(d.critical_xid_status as i32)) }.to_str().unwrap(), "unavailable");

        let json: Value = serde_json::from_str(&report(handle, 1)).unwrap();
        let dev = &json["devices"][0];
        assert_eq!(dev["nvml"], "unavailable");
        assert!(dev["detail"].as_str().unwrap().contains("NVML"), "{dev}");
        for field in ["ecc_uncorrected_volatile", "retired_pages_pending", "remapped_rows_pending", "remapped_rows_failed", "critical_xid_events"] {
            assert_eq!(dev[field], "unavailable", "{field}");
        }
        assert_eq!(json["health"]["healthy"], true);
        let metrics = report(handle, 2);
        assert!(metrics.contains("vram_monitor_device_info{device=\"0\",gpu=\"\",UUID=\"\",uuid=\"\",name=\"\",nvml=\"unavailable\"} 1"), "{metrics}");
        assert!(metrics.contains("vram_monitor_device_signal_status{device=\"0\",gpu=\"\",UUID=\"\",signal=\"ecc_uncorrected_volatile\",status=\"unavailable\"} 1"));
        assert!(!metrics.contains("vram_monitor_device_ecc_uncorrected_volatile_errors_total{"), "no zero for what was not read");
        let text = report(handle, 0);
        assert!(text.contains("GPU0: memory health unavailable: NVML is not available"), "{text}");
        assert_eq!(unsafe { vram_monitor_free(handle) }, VramMonitorResult::Ok);
    });
}

fn report(handle: *const VramMonitor, format: i32) -> String {
    let mut needed = 0usize;
    assert_eq!(unsafe { vram_monitor_report(handle, format, std::ptr::null_mut(), 0, &mut needed) }, VramMonitorResult::BufferTooSmall);
    let mut buf = vec![0 as c_char; needed + 4096];
    let mut len = 0usize;
    assert_eq!(unsafe { vram_monitor_report(handle, format, buf.as_mut_ptr(), buf.len(), &mut len) }, VramMonitorResult::Ok);
    unsafe { CStr::from_ptr(buf.as_ptr()) }.to_str().unwrap().to_owned()
}

// ------------------------------------------------------------------------------------------
// The Prometheus text through the C API

#[test]
fn prometheus_metrics_through_the_c_api_count_registrations_by_device_and_verdict() {
    fake_driver_test(&test_name!(), FakeDriverVariant::Complete, &[], || {
        let fake = Fake::get();
        let mut handle: *mut VramMonitor = std::ptr::null_mut();
        assert_eq!(unsafe { vram_monitor_new(60_000, &mut handle) }, VramMonitorResult::Ok);
        let before = parse_exposition(&report(handle, 2));
        assert_eq!(value(&before, "vram_monitor_registrations", &[]), Some(0.0));
        assert!(!before.contains_key("vram_monitor_last_check_timestamp_seconds") || before["vram_monitor_last_check_timestamp_seconds"].2.is_empty());

        let label = CString::new("layer").unwrap();
        let mut ptrs = Vec::new();
        for (device, size) in [(0, MIB), (0, 2 * MIB), (1, 4 * MIB)] {
            let ptr = fake.alloc(Kind::Device, size, device);
            let mut id = 0;
            assert_eq!(unsafe { vram_monitor_register(handle, ptr as *const _, size, label.as_ptr(), &mut id) }, VramMonitorResult::Ok);
            ptrs.push(ptr);
        }
        fake.free(ptrs[1]);
        fake.set_kind(ptrs[2], Kind::Managed);
        assert_eq!(unsafe { vram_monitor_check_now(handle, std::ptr::null_mut()) }, VramMonitorResult::Ok);
        let text = report(handle, 2);
        let m = parse_exposition(&text);
        for (name, (kind, help, _)) in &m {
            assert!(name.starts_with("vram_monitor_"), "{name}");
            assert!(!help.is_empty(), "{name} has HELP");
            assert!(kind == "gauge" || kind == "counter", "{name}: {kind}");
            assert_eq!(kind == "counter", name.ends_with("_total"), "{name}: counters and only counters end in _total");
        }
        assert_eq!(value(&m, "vram_monitor_healthy", &[]), Some(0.0));
        assert_eq!(value(&m, "vram_monitor_registrations", &[]), Some(3.0));
        assert_eq!(value(&m, "vram_monitor_tracked_bytes", &[]), Some((7 * MIB) as f64));
        assert_eq!(value(&m, "vram_monitor_device_registrations", &[("device", "0")]), Some(2.0));
        assert_eq!(value(&m, "vram_monitor_device_tracked_bytes", &[("device", "1")]), Some((4 * MIB) as f64));
        assert_eq!(value(&m, "vram_monitor_current_violations", &[("verdict", "NOT_MAPPED")]), Some(1.0));
        assert_eq!(value(&m, "vram_monitor_current_violations", &[("verdict", "MANAGED")]), Some(1.0));
        assert_eq!(value(&m, "vram_monitor_current_violations", &[("verdict", "HOST")]), Some(0.0));
        assert_eq!(m["vram_monitor_current_violations"].2.len(), 7, "one series per violation verdict");
        assert_eq!(value(&m, "vram_monitor_violations_total", &[]), Some(2.0));
        assert_eq!(value(&m, "vram_monitor_checks_total", &[]), Some(1.0));
        assert_eq!(value(&m, "vram_monitor_check_interval_seconds", &[]), Some(60.0));
        let ts = value(&m, "vram_monitor_last_check_timestamp_seconds", &[]).unwrap();
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs_f64();
        assert!((now - ts).abs() < 3600.0, "a Unix time in seconds: {ts}");
        assert_eq!(value(&m, "vram_monitor_info", &[("version", vram_monitor::VERSION)]), Some(1.0));
        assert_eq!(m["vram_monitor_device_info"].2.len(), 2, "one per GPU holding registrations");
        // The health JSON says the same.
        let json: Value = serde_json::from_str(&report(handle, 1)).unwrap();
        assert_eq!(json["health"]["current_violations"], 2);
        assert_eq!(unsafe { vram_monitor_free(handle) }, VramMonitorResult::Ok);
    });
}

#[test]
fn the_c_api_starts_and_stops_the_endpoint_and_checks_its_arguments() {
    fake_driver_test(&test_name!(), FakeDriverVariant::Complete, &[], || {
        let mut handle: *mut VramMonitor = std::ptr::null_mut();
        assert_eq!(unsafe { vram_monitor_new(60_000, &mut handle) }, VramMonitorResult::Ok);
        let addr = CString::new("127.0.0.1:0").unwrap();
        let mut port = 0u16;
        assert_eq!(unsafe { vram_monitor_serve_http(std::ptr::null_mut(), addr.as_ptr(), &mut port) }, VramMonitorResult::NullArgument);
        for bad in ["not an address", "example.com:80", "127.0.0.1:70000"] {
            let bad = CString::new(bad).unwrap();
            assert_eq!(unsafe { vram_monitor_serve_http(handle, bad.as_ptr(), &mut port) }, VramMonitorResult::InvalidArgument);
        }
        assert_eq!(port, 0, "out_port untouched on failure");
        assert_eq!(unsafe { vram_monitor_serve_http(handle, addr.as_ptr(), &mut port) }, VramMonitorResult::Ok);
        assert_ne!(port, 0);
        let bound: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        assert_eq!(get(bound, "/health").status, 200);
        assert_eq!(unsafe { vram_monitor_serve_http(handle, addr.as_ptr(), std::ptr::null_mut()) }, VramMonitorResult::HttpAlreadyServing);
        // A second monitor cannot take the same port.
        let mut other: *mut VramMonitor = std::ptr::null_mut();
        assert_eq!(unsafe { vram_monitor_new(60_000, &mut other) }, VramMonitorResult::Ok);
        let taken = CString::new(format!("127.0.0.1:{port}")).unwrap();
        assert_eq!(unsafe { vram_monitor_serve_http(other, taken.as_ptr(), std::ptr::null_mut()) }, VramMonitorResult::HttpBindFailed);
        assert_eq!(unsafe { CStr::from_ptr(vram_monitor_result_str(600)) }.to_str().unwrap(), "the HTTP endpoint could not listen on the address");
        assert_eq!(unsafe { vram_monitor_stop_http(handle) }, VramMonitorResult::Ok);
        assert!(TcpStream::connect_timeout(&bound, Duration::from_secs(2)).is_err(), "stopped");
        assert_eq!(unsafe { vram_monitor_stop_http(handle) }, VramMonitorResult::Ok, "stopping twice is fine");
        // Now the other monitor can have the port.
        assert_eq!(unsafe { vram_monitor_serve_http(other, taken.as_ptr(), std::ptr::null_mut()) }, VramMonitorResult::Ok);
        assert_eq!(get(bound, "/metrics").status, 200);
        assert_eq!(unsafe { vram_monitor_free(other) }, VramMonitorResult::Ok);
        assert_eq!(unsafe { vram_monitor_free(handle) }, VramMonitorResult::Ok);
    });
}

#[test]
fn the_report_format_macros_in_the_header_match_the_formats() {
    let header = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../include/vram_monitor.h")).unwrap();
    let mut defined = 0usize;
    for (name, format) in [("TEXT", ReportFormat::Text), ("JSON", ReportFormat::Json), ("PROMETHEUS", ReportFormat::Prometheus)] {
        let line = format!("#define VRAM_MONITOR_REPORT_FORMAT_{name} {}\n", format as i32);
        assert!(header.contains(&line), "the header lacks {line:?}");
        assert_eq!(ReportFormat::from_raw(format as i32), Some(format));
        defined += 1;
    }
    assert_eq!(header.matches("#define VRAM_MONITOR_REPORT_FORMAT_").count(), defined, "a macro without a format");
    assert_eq!(ReportFormat::from_raw(defined as i32), None, "a format without a macro");
}
