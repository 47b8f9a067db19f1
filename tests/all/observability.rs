//! Observability: the Prometheus text, the built-in HTTP endpoint, the GPUs' memory health,
//! and the JSON and metrics schema in docs/health-schema.md, through the Rust API. (The same
//! through the C API: crates/vram-monitor-capi/tests/all/c_api_observability.rs.)
//!
//! The HTTP tests speak raw HTTP/1.1 over a `TcpStream` so that malformed, oversized and slow
//! requests can be sent; they serve a fixed snapshot and need no driver. The rest run against
//! the fake libcuda in child processes (tests/support). scripts/observability-test.sh adds
//! curl, `promtool check metrics` and a real Prometheus scrape.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::observe::{clean_reading, connect, get, parse_exposition, parse_response, read_response, recorder, request, threads_named, unsupported_reading, Script};
use serde_json::Value;
use crate::support::{fake_driver_test, Fake, FakeDriverVariant, Kind};
use vram_monitor::device_health::{RemappedRows, Signal};
use vram_monitor::http::{HttpOptions, HttpServer, Snapshot};
use vram_monitor::{DeviceHealth, Event, EventKind, Health, Monitor, MonitorOptions, ReportFormat};

const MIB: usize = 1 << 20;

// ------------------------------------------------------------------------------------------
// A fixed snapshot for the HTTP tests

struct Fixed {
    healthy: AtomicBool,
    live: AtomicBool,
}

impl Snapshot for Fixed {
    fn health(&self) -> Health {
        let healthy = self.healthy.load(Ordering::SeqCst);
        Health {
            healthy,
            registrations: 2,
            tracked_bytes: 3 * MIB as u64,
            current_violations: u64::from(!healthy),
            total_violations: u64::from(!healthy),
            checks_completed: 7,
            last_check_unix_ms: 1_700_000_000_000,
            last_check_duration_us: 1234,
            interval_ms: 60_000,
            last_check_started_unix_ms: 1_699_999_999_999,
            stall_deadline_ms: 30_000,
            stall_grace_ms: 30_000,
            ..Default::default()
        }
    }
    fn devices(&self) -> Vec<DeviceHealth> {
        Vec::new()
    }
    fn figures(&self) -> Vec<vram_monitor::prometheus::RegistrationFigures> {
        Vec::new()
    }
    fn live(&self) -> bool {
        self.live.load(Ordering::SeqCst)
    }
}

fn fixed_server(options: HttpOptions) -> (HttpServer, Arc<Fixed>) {
    let snapshot = Arc::new(Fixed { healthy: AtomicBool::new(true), live: AtomicBool::new(true) });
    let server = HttpServer::start("127.0.0.1:0".parse().unwrap(), options, snapshot.clone()).expect("the server starts");
    (server, snapshot)
}

#[test]
fn http_serves_health_200_or_503_and_metrics_as_prometheus_text() {
    let (server, snapshot) = fixed_server(HttpOptions::default());
    let addr = server.local_addr();
    assert!(addr.ip().is_loopback());

    let r = get(addr, "/health");
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.header("Content-Type"), Some("application/json"));
    assert_eq!(r.header("Content-Length").and_then(|l| l.parse::<usize>().ok()), Some(r.body.len()));
    let json: Value = serde_json::from_str(&r.body).expect("/health is JSON");
    assert_eq!(json["health"]["healthy"], Value::Bool(true));
    assert_eq!(json["health"]["checks_completed"], 7);
    assert!(json["devices"].is_array());
    assert!(json.get("registrations").is_none(), "/health leaves the registrations out");

    snapshot.healthy.store(false, Ordering::SeqCst);
    let r = get(addr, "/health?verbose=1");
    assert_eq!(r.status, 503, "unhealthy is 503 (a query string is ignored)");
    let json: Value = serde_json::from_str(&r.body).unwrap();
    assert_eq!(json["health"]["healthy"], Value::Bool(false));

    let r = get(addr, "/metrics");
    assert_eq!(r.status, 200);
    assert_eq!(r.header("Content-Type"), Some("text/plain; version=0.0.4; charset=utf-8"));
    assert!(r.body.contains("\nvram_monitor_healthy 0\n"), "{}", r.body);
    assert!(r.body.contains("\nvram_monitor_checks_total 7\n"), "{}", r.body);
    assert!(r.body.contains("\nvram_monitor_last_check_duration_seconds 0.001234\n"), "{}", r.body);
    assert!(!r.body.contains("\nvram_monitor_process_vram_bytes "), "an unknown figure has no sample");
    assert!(r.body.contains("vram_monitor_process_vram_source_info{source=\"unknown\"} 1"));

    let r = get(addr, "/");
    assert_eq!(r.status, 200);
    assert!(r.body.contains("/metrics"));
}

#[test]
fn http_head_answers_headers_without_a_body_and_http_1_0_is_served() {
    let (server, _) = fixed_server(HttpOptions::default());
    let r = request(server.local_addr(), b"HEAD /metrics HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!(r.status, 200);
    assert!(r.body.is_empty(), "HEAD has no body: {:?}", r.body);
    assert!(r.header("Content-Length").unwrap().parse::<usize>().unwrap() > 100, "but says how long the body would be");
    let r = request(server.local_addr(), b"GET /health HTTP/1.0\r\n\r\n");
    assert_eq!(r.status, 200);
    assert_eq!(r.header("Connection"), Some("close"));
}

#[test]
fn http_is_read_only_405_for_other_methods_and_404_for_other_paths() {
    let (server, _) = fixed_server(HttpOptions::default());
    let addr = server.local_addr();
    for method in ["POST", "PUT", "DELETE", "PATCH", "OPTIONS", "TRACE", "CONNECT"] {
        let r = request(addr, format!("{method} /health HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n").as_bytes());
        assert_eq!(r.status, 405, "{method}");
        assert_eq!(r.header("Allow"), Some("GET, HEAD"), "{method}");
    }
    for path in ["/nope", "/health/", "/metricsx", "/../health", "*"] {
        let r = get(addr, path);
        assert_eq!(r.status, 404, "{path}");
    }
}

#[test]
fn http_answers_malformed_requests_with_400_and_other_versions_with_505() {
    let (server, _) = fixed_server(HttpOptions::default());
    let addr = server.local_addr();
    let malformed: [&[u8]; 6] = [
        b"GARBAGE\r\n\r\n",
        b"GET /health HTTP/1.1\r\nBad Header Name: x\r\n\r\n",
        b"GET /health HTTP/1.1\r\nHost: a\x01b\r\n\r\n",
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03 a TLS client hello\r\n\r\n",
        b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
        b"GET  HTTP/1.1\r\n\r\n",
    ];
    for raw in malformed {
        let r = request(addr, raw);
        assert!(r.status == 400 || r.status == 505, "{:?} -> {}", String::from_utf8_lossy(raw), r.status);
    }
    let r = request(addr, b"GET /health HTTP/1.1\r\nBad Header Name: x\r\n\r\n");
    assert_eq!(r.status, 400);
    for version in ["HTTP/3.0", "HTTP/1.2", "HTTP/2.0"] {
        let r = request(addr, format!("GET /health {version}\r\n\r\n").as_bytes());
        assert_eq!(r.status, 505, "{version}");
    }
    assert_eq!(request(addr, b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n").status, 505, "HTTP/2's preface");
    // The server is still fine afterwards.
    assert_eq!(get(addr, "/health").status, 200);
}

#[test]
fn http_bounds_the_request_head_with_431() {
    let (server, _) = fixed_server(HttpOptions { max_request_bytes: 4096, ..HttpOptions::default() });
    let addr = server.local_addr();
    let big = format!("GET /health HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n", "a".repeat(10_000));
    assert_eq!(request(addr, big.as_bytes()).status, 431);
    // A head that never ends is cut off at the bound, not read forever.
    let mut stream = connect(addr);
    stream.write_all(b"GET /health HTTP/1.1\r\n").unwrap();
    let mut sent = 0usize;
    let mut refused = false;
    for _ in 0..1000 {
        if stream.write_all(b"X-Filler: 0123456789012345678901234567890123456789\r\n").is_err() {
            refused = true;
            break;
        }
        sent += 52;
        if sent > 64 * 1024 {
            break;
        }
    }
    let mut raw = Vec::new();
    let _ = stream.read_to_end(&mut raw);
    if !raw.is_empty() {
        assert_eq!(parse_response(&raw).status, 431);
    } else {
        assert!(refused, "the server must answer 431 or close the connection");
    }
    let many: String = (0..100).map(|i| format!("X-{i}: y\r\n")).collect();
    let r = request(addr, format!("GET /health HTTP/1.1\r\n{many}\r\n").as_bytes());
    assert_eq!(r.status, 431, "too many headers");
    assert_eq!(get(addr, "/health").status, 200);
}

#[test]
fn http_a_slow_request_gets_408_and_does_not_hold_up_others() {
    let (server, _) = fixed_server(HttpOptions { request_timeout: Duration::from_millis(800), ..HttpOptions::default() });
    let addr = server.local_addr();
    let mut slow = connect(addr);
    slow.write_all(b"GET /hea").unwrap();
    // Meanwhile another client is served.
    for _ in 0..3 {
        assert_eq!(get(addr, "/health").status, 200);
    }
    // Dribbling bytes does not extend the deadline.
    for _ in 0..2 {
        std::thread::sleep(Duration::from_millis(150));
        let _ = slow.write_all(b"l");
    }
    let r = read_response(slow);
    assert_eq!(r.status, 408);
    // A client that connects and sends nothing at all is timed out too.
    let silent = connect(addr);
    assert_eq!(read_response(silent).status, 408);
}

#[test]
fn http_beyond_the_limit_the_oldest_idle_connection_is_closed_and_the_new_one_served() {
    let (server, _) = fixed_server(HttpOptions { max_connections: 2, ..HttpOptions::default() });
    let addr = server.local_addr();
    for round in 0..20 {
        // Two idle connections fill both slots; the second also sent part of a request.
        let mut oldest = connect(addr);
        let mut partial = connect(addr);
        partial.write_all(b"GET /hea").unwrap();
        // Both accepted (the server answers a probe between them and the third).
        assert_eq!(get(addr, "/health").status, 200, "round {round}");
        // Every request is served: room is made by closing the idle one, never a 503.
        let r = get(addr, "/health");
        assert_eq!(r.status, 200, "round {round}: {}", r.body);
        let mut rest = Vec::new();
        oldest.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        let _ = oldest.read_to_end(&mut rest);
        assert!(rest.is_empty(), "the idle connection is closed without an answer: {:?}", String::from_utf8_lossy(&rest));
        // The one that had sent part of a request is still open and can finish it.
        partial.write_all(b"lth HTTP/1.1\r\n\r\n").unwrap();
        assert_eq!(read_response(partial).status, 200, "round {round}");
    }
}

/// Holds `count` connections that send nothing, re-opening each as soon as the server closes
/// it (and, with `churn`, re-opening them all in a loop anyway), until `stop`.
fn idle_crowd(addr: SocketAddr, count: usize, churn: bool, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<u64> {
    std::thread::spawn(move || {
        let mut opened = 0u64;
        let mut crowd: Vec<Option<TcpStream>> = (0..count).map(|_| None).collect();
        while !stop.load(Ordering::SeqCst) {
            for slot in crowd.iter_mut() {
                let closed = match slot {
                    Some(s) => {
                        let mut b = [0u8; 256];
                        s.set_nonblocking(true).unwrap();
                        !matches!(s.read(&mut b), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock)
                    }
                    None => true,
                };
                if closed || churn {
                    *slot = None;
                    if let Ok(s) = TcpStream::connect_timeout(&addr, Duration::from_secs(5)) {
                        // Closed with a reset, leaving no TIME_WAIT to use up the local ports.
                        let linger = libc::linger { l_onoff: 1, l_linger: 0 };
                        unsafe {
                            use std::os::fd::AsRawFd;
                            libc::setsockopt(s.as_raw_fd(), libc::SOL_SOCKET, libc::SO_LINGER, (&linger as *const libc::linger).cast(), std::mem::size_of::<libc::linger>() as libc::socklen_t);
                        }
                        *slot = Some(s);
                        opened += 1;
                    }
                }
            }
            std::thread::sleep(Duration::from_millis(if churn { 1 } else { 5 }));
        }
        opened
    })
}

#[test]
fn http_probes_are_answered_while_idle_connections_crowd_the_endpoint() {
    let (server, snapshot) = fixed_server(HttpOptions::default());
    let addr = server.local_addr();
    // 8 held (the old worker count), then 100 re-opened in a loop. Beyond the limit (128 by
    // default) room is made by closing the oldest idle ones: tested above with a limit of 2,
    // measured by examples/crowded_endpoint.rs.
    for (count, churn) in [(8, false), (100, true)] {
        let stop = Arc::new(AtomicBool::new(false));
        let crowd = idle_crowd(addr, count, churn, stop.clone());
        std::thread::sleep(Duration::from_millis(200));
        for round in 0..20 {
            let healthy = round % 4 != 3;
            snapshot.healthy.store(healthy, Ordering::SeqCst);
            for path in ["/health", "/readyz"] {
                let r = get(addr, path);
                assert_eq!(r.status, if healthy { 200 } else { 503 }, "{count} idle, round {round}, {path}: {}", r.body);
                let json: Value = serde_json::from_str(&r.body).unwrap();
                assert_eq!(json["health"]["healthy"], healthy);
            }
            assert_eq!(get(addr, "/livez").status, 200);
        }
        stop.store(true, Ordering::SeqCst);
        let opened = crowd.join().unwrap();
        assert!(opened >= count as u64, "the crowd was there: {opened} connections opened");
    }
    snapshot.healthy.store(true, Ordering::SeqCst);
    assert_eq!(get(addr, "/health").status, 200);
}

#[test]
fn http_absolute_form_targets_and_query_strings_route_by_the_path() {
    let (server, _) = fixed_server(HttpOptions::default());
    let addr = server.local_addr();
    for target in [
        format!("http://{addr}/health"),
        "http://127.0.0.1/health".to_string(),
        "HTTP://localhost:9464/health?x=1".to_string(),
        "/health?verbose=1&y".to_string(),
    ] {
        let r = request(addr, format!("GET {target} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes());
        assert_eq!(r.status, 200, "{target}: {}", r.body);
        assert!(r.body.contains("\"healthy\":true"), "{target}: {}", r.body);
    }
    let r = request(addr, format!("GET http://{addr}/metrics HTTP/1.1\r\n\r\n").as_bytes());
    assert!(r.body.contains("vram_monitor_healthy 1"), "{}", r.body);
    let r = request(addr, format!("GET http://{addr}/nope HTTP/1.1\r\n\r\n").as_bytes());
    assert_eq!(r.status, 404);
    let r = request(addr, format!("GET http://{addr} HTTP/1.1\r\n\r\n").as_bytes());
    assert_eq!(r.status, 200, "an absolute target without a path is /");
}

#[test]
fn http_livez_and_readyz_carry_their_meaning_in_the_status() {
    let (server, snapshot) = fixed_server(HttpOptions::default());
    let addr = server.local_addr();
    assert_eq!(get(addr, "/livez").status, 200);
    assert_eq!(get(addr, "/readyz").status, 200);
    snapshot.healthy.store(false, Ordering::SeqCst);
    assert_eq!(get(addr, "/readyz").status, 503, "readyz = health");
    assert_eq!(get(addr, "/livez").status, 200, "unhealthy but checking is alive");
    snapshot.live.store(false, Ordering::SeqCst);
    let r = get(addr, "/livez");
    assert_eq!(r.status, 503);
    assert!(r.body.contains("stalled"), "{}", r.body);
    let r = request(addr, b"HEAD /livez HTTP/1.1\r\n\r\n");
    assert_eq!(r.status, 503);
    assert!(r.body.is_empty());
    assert_eq!(request(addr, b"POST /readyz HTTP/1.1\r\nContent-Length: 0\r\n\r\n").status, 405);
    // The default of the trait: a snapshot that does not know about stalls is live.
    struct Plain;
    impl Snapshot for Plain {
        fn health(&self) -> Health {
            Fixed { healthy: AtomicBool::new(true), live: AtomicBool::new(false) }.health()
        }
        fn devices(&self) -> Vec<DeviceHealth> {
            Vec::new()
        }
        fn figures(&self) -> Vec<vram_monitor::prometheus::RegistrationFigures> {
            Vec::new()
        }
    }
    let plain = HttpServer::start("127.0.0.1:0".parse().unwrap(), HttpOptions::default(), Arc::new(Plain)).unwrap();
    assert_eq!(get(plain.local_addr(), "/livez").status, 200);
}

#[test]
fn http_listening_twice_on_one_port_is_a_bind_error() {
    let (server, _) = fixed_server(HttpOptions::default());
    let snapshot = Arc::new(Fixed { healthy: AtomicBool::new(true), live: AtomicBool::new(true) });
    match HttpServer::start(server.local_addr(), HttpOptions::default(), snapshot) {
        Err(vram_monitor::Error::HttpBind(why)) => assert!(why.contains(&server.local_addr().to_string()), "{why}"),
        Err(other) => panic!("expected HttpBind, got {other:?}"),
        Ok(_) => panic!("a second server on the same port"),
    }
}

#[test]
fn dropping_the_endpoint_in_a_forked_child_returns_and_the_parents_keeps_serving() {
    // The endpoint's thread is the parent's: a child that drops the server (as it would when
    // it unwinds or exits through destructors) must not wait for a thread it does not have,
    // nor stop the parent's (the server forgets its thread there; glibc would also let a join
    // return at once, other C libraries need not).
    let (server, _) = fixed_server(HttpOptions::default());
    let addr = server.local_addr();
    assert_eq!(get(addr, "/livez").status, 200);
    // SAFETY: the child only drops the server and leaves with _exit.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0, "fork: {}", std::io::Error::last_os_error());
    if pid == 0 {
        unsafe { libc::alarm(10) };
        drop(server);
        unsafe { libc::_exit(0) };
    }
    let mut status = 0;
    assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
    assert!(libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0, "the child hung or failed: status {status:#x}");
    assert_eq!(get(addr, "/livez").status, 200, "the parent's endpoint still serves");
}

#[test]
fn the_endpoint_stops_and_its_threads_are_joined_when_the_server_is_dropped() {
    fake_driver_test(&test_name!(), FakeDriverVariant::Complete, &[], || {
        let fake = Fake::get();
        let m = Monitor::new(MonitorOptions::default()).unwrap();
        let ptr = fake.alloc(Kind::Device, MIB, 0);
        m.register(ptr, MIB as u64, "w").unwrap();
        assert_eq!(threads_named("vram-monitor-ht"), 0);
        let server = HttpServer::serve(&m, Some("127.0.0.1:0"), HttpOptions::default()).unwrap();
        let addr = server.local_addr();
        assert_eq!(addr.ip(), std::net::Ipv4Addr::LOCALHOST);
        // A slow client is connected while the server is dropped.
        let mut slow = connect(addr);
        slow.write_all(b"GET /he").unwrap();
        let json: Value = serde_json::from_str(&get(addr, "/health").body).unwrap();
        assert_eq!(json["health"]["registrations"], 1, "it serves the monitor's state");
        assert!(threads_named("vram-monitor-ht") >= 1);
        // The monitor does not own the endpoint: dropped first, the endpoint still answers,
        // with the state the monitor ended in.
        drop(m);
        assert_eq!(get(addr, "/health").status, 200);
        drop(server);
        assert_eq!(threads_named("vram-monitor-ht"), 0, "every HTTP thread is joined by the drop");
        let refused = TcpStream::connect_timeout(&addr, Duration::from_secs(2));
        assert!(refused.is_err(), "the port is closed after the drop");
        let mut rest = Vec::new();
        let _ = slow.read_to_end(&mut rest);
    });
}

#[test]
fn a_failed_reading_keeps_known_faults_and_fires_nothing_new() {
    fake_driver_test(&test_name!(), FakeDriverVariant::Complete, &[], || {
        let fake = Fake::get();
        let m = Monitor::new(MonitorOptions::default()).unwrap();
        let script = Script::default();
        let mut faulty = clean_reading();
        faulty.ecc_uncorrected_volatile = Signal::Value(3);
        script.set(0, Ok(faulty.clone()));
        m.set_device_health_source(Box::new(script.clone()));
        let events = recorder(&m);
        m.register(fake.alloc(Kind::Device, MIB, 0), MIB as u64, "gpu0.w").unwrap();

        let kinds = |events: &Arc<Mutex<Vec<Event>>>, kind: EventKind| events.lock().unwrap().iter().filter(|e| e.kind == kind).count();
        assert!(!m.check_now().unwrap().healthy, "3 uncorrectable ECC errors are a fault");
        assert_eq!(kinds(&events, EventKind::DeviceFault), 1);
        assert_eq!(kinds(&events, EventKind::HealthChanged), 1);
        let known = m.device_health()[0].fault_reasons.clone();
        assert!(known.iter().any(|r| r.contains("3 uncorrectable ECC errors")), "{known:?}");

        // NVML fails on every other reading: the fault stays, nothing is reported again.
        for cycle in 0..4 {
            script.set(0, Err("scripted: NVML answered GPU_IS_LOST".into()));
            assert!(!m.check_now().unwrap().healthy, "cycle {cycle}: a failed reading does not clear a known fault");
            let d = m.device_health().remove(0);
            assert!(!d.available, "cycle {cycle}");
            assert!(d.detail.contains("GPU_IS_LOST"), "cycle {cycle}: {}", d.detail);
            assert_eq!(d.ecc_uncorrected_volatile, Signal::Unavailable, "cycle {cycle}: not read this time");
            assert_eq!(d.remapped_rows, Signal::Unavailable, "cycle {cycle}");
            assert!(d.memory_fault, "cycle {cycle}");
            assert_eq!(d.fault_reasons, known, "cycle {cycle}: the last known faults, with their values");
            assert_eq!(d.uuid.as_deref(), faulty.uuid.as_deref(), "cycle {cycle}: still named");
            assert_eq!(m.health().device_faults, 1, "cycle {cycle}");

            script.set(0, Ok(faulty.clone()));
            assert!(!m.check_now().unwrap().healthy, "cycle {cycle}");
            let d = m.device_health().remove(0);
            assert!(d.available && d.memory_fault, "cycle {cycle}");
            assert_eq!(d.ecc_uncorrected_volatile, Signal::Value(3), "cycle {cycle}");
            assert_eq!(kinds(&events, EventKind::DeviceFault), 1, "cycle {cycle}: the same fault is not new: {:?}", events.lock().unwrap());
            assert_eq!(kinds(&events, EventKind::HealthChanged), 1, "cycle {cycle}: the health never flipped");
        }

        // One signal NVML answers with an error (the reading itself succeeds) keeps its fault too.
        let mut partial = clean_reading();
        partial.ecc_uncorrected_volatile = Signal::Unavailable;
        script.set(0, Ok(partial));
        assert!(!m.check_now().unwrap().healthy);
        let d = m.device_health().remove(0);
        assert!(d.available);
        assert_eq!(d.ecc_uncorrected_volatile, Signal::Unavailable);
        assert_eq!(d.fault_reasons, known);
        assert_eq!(kinds(&events, EventKind::DeviceFault), 1);

        // A fault that appears while NVML cannot be read is new at the next good reading.
        let mut worse = faulty.clone();
        worse.remapped_rows = Signal::Value(RemappedRows { correctable: 0, uncorrectable: 1, pending: true, failed: false });
        script.set(0, Err("scripted: unreadable".into()));
        m.check_now().unwrap();
        script.set(0, Ok(worse));
        assert!(!m.check_now().unwrap().healthy);
        let faults: Vec<Event> = events.lock().unwrap().iter().filter(|e| e.kind == EventKind::DeviceFault).cloned().collect();
        assert_eq!(faults.len(), 2, "{faults:?}");
        assert!(faults[1].message.contains("remapped rows pending") && !faults[1].message.contains("ECC"), "only the new fault: {}", faults[1].message);

        // A successful reading replaces what was known: the GPU was reset, the faults are gone.
        script.set(0, Err("scripted: unreadable".into()));
        assert!(!m.check_now().unwrap().healthy);
        script.set(0, Ok(clean_reading()));
        assert!(m.check_now().unwrap().healthy, "a good reading without faults clears them");
        assert!(m.device_health()[0].fault_reasons.is_empty());
        assert_eq!(kinds(&events, EventKind::HealthChanged), 2);
        script.set(0, Err("scripted: unreadable".into()));
        assert!(m.check_now().unwrap().healthy, "nothing known, nothing kept: not knowing is not a fault");
        assert!(!m.device_health()[0].memory_fault);
    });
}

// ------------------------------------------------------------------------------------------
// docs/health-schema.md against the output

fn schema_doc() -> String {
    std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/health-schema.md")).expect("docs/health-schema.md")
}

/// The `| field | type | meaning |` tables, by the object name in their `### Object `x`` heading.
fn documented_objects() -> BTreeMap<String, BTreeMap<String, Vec<String>>> {
    let mut objects = BTreeMap::new();
    let mut current: Option<String> = None;
    for line in schema_doc().lines() {
        if let Some(rest) = line.strip_prefix("### Object `") {
            current = Some(rest.trim_end_matches('`').to_string());
            objects.insert(current.clone().unwrap(), BTreeMap::new());
            continue;
        }
        if line.starts_with('#') {
            current = None;
        }
        let Some(object) = &current else { continue };
        let cells: Vec<&str> = line.split('|').map(str::trim).collect();
        if cells.len() < 4 || !cells[1].starts_with('`') {
            continue;
        }
        let field = cells[1].trim_matches('`').to_string();
        let types = cells[2].split(" or ").map(|t| t.trim().to_string()).collect();
        objects.get_mut(object).unwrap().insert(field, types);
    }
    objects
}

fn matches_type(value: &Value, ty: &str) -> bool {
    match ty {
        "integer" => value.as_u64().is_some() || value.as_i64().is_some(),
        "boolean" => value.is_boolean(),
        "string" => value.is_string(),
        "null" => value.is_null(),
        "object" => value.is_object(),
        "array of object" => value.as_array().is_some_and(|a| a.iter().all(Value::is_object)),
        "array of string" => value.as_array().is_some_and(|a| a.iter().all(Value::is_string)),
        literal if literal.starts_with('"') => value.as_str() == Some(literal.trim_matches('"')),
        other => panic!("docs/health-schema.md uses a type the test does not know: {other}"),
    }
}

fn check_object(objects: &BTreeMap<String, BTreeMap<String, Vec<String>>>, name: &str, value: &Value, optional: &[&str], seen: &mut BTreeSet<(String, String, String)>) {
    let fields = objects.get(name).unwrap_or_else(|| panic!("no table for object `{name}`"));
    let map = value.as_object().unwrap_or_else(|| panic!("`{name}` is not an object: {value}"));
    for key in map.keys() {
        assert!(fields.contains_key(key), "field `{key}` of `{name}` is not documented in docs/health-schema.md");
    }
    for (field, types) in fields {
        let Some(v) = map.get(field) else {
            assert!(optional.contains(&field.as_str()), "documented field `{field}` of `{name}` is missing: {value}");
            continue;
        };
        let ty = types.iter().find(|t| matches_type(v, t));
        let ty = ty.unwrap_or_else(|| panic!("`{name}.{field}` = {v} is none of the documented types {types:?}"));
        seen.insert((name.to_string(), field.clone(), ty.clone()));
    }
}

fn check_document(objects: &BTreeMap<String, BTreeMap<String, Vec<String>>>, document: &Value, is_health_endpoint: bool, seen: &mut BTreeSet<(String, String, String)>) {
    check_object(objects, "document", document, if is_health_endpoint { &["registrations"] } else { &[] }, seen);
    if is_health_endpoint {
        assert!(document.get("registrations").is_none(), "/health has no registrations");
    }
    check_object(objects, "health", &document["health"], &[], seen);
    for d in document["devices"].as_array().unwrap() {
        check_object(objects, "device", d, &[], seen);
    }
    if let Some(registrations) = document.get("registrations") {
        for r in registrations.as_array().unwrap() {
            // Present only for sealed registrations (content integrity).
            let seal_fields = ["chunks", "last_verified_unix_ms", "modified_chunks", "first_modified_offset", "integrity_failing"];
            check_object(objects, "registration", r, &seal_fields, seen);
        }
    }
}

#[test]
fn the_json_health_matches_docs_health_schema() {
    fake_driver_test(&test_name!(), FakeDriverVariant::Complete, &[], || {
        let objects = documented_objects();
        for object in ["document", "health", "device", "registration"] {
            assert!(objects.get(object).is_some_and(|o| !o.is_empty()), "docs/health-schema.md has no table for `{object}`");
        }
        let fake = Fake::get();
        let mut seen = BTreeSet::new();

        // NVML as it is on this machine (absent on CI: every figure "unavailable").
        let m = Monitor::new(MonitorOptions::default()).unwrap();
        m.register(fake.alloc(Kind::Device, MIB, 0), MIB as u64, "nvml as it is").unwrap();
        let server = HttpServer::serve(&m, Some("127.0.0.1:0"), HttpOptions::default()).unwrap();
        m.check_now().unwrap();
        check_document(&objects, &serde_json::from_str(&m.report(ReportFormat::Json)).unwrap(), false, &mut seen);
        check_document(&objects, &serde_json::from_str(&get(server.local_addr(), "/health").body).unwrap(), true, &mut seen);
        drop(server);
        drop(m);

        // Every kind of figure: values, faults, unsupported, unreadable; a violation.
        let m = Monitor::new(MonitorOptions::default()).unwrap();
        let script = Script::default();
        let mut faulty = clean_reading();
        faulty.ecc_uncorrected_volatile = Signal::Value(1);
        faulty.retired_pages_pending = Signal::Value(true);
        faulty.new_critical_xids = Signal::Value(vec![48]);
        script.set(0, Ok(faulty));
        script.set(1, Ok(unsupported_reading()));
        m.set_device_health_source(Box::new(script.clone()));
        m.register(fake.alloc(Kind::Device, MIB, 0), MIB as u64, "gpu0").unwrap();
        let gone = fake.alloc(Kind::Device, MIB, 1);
        m.register(gone, MIB as u64, "gpu1").unwrap();
        fake.free(gone);
        m.check_now().unwrap();
        let server = HttpServer::serve(&m, Some("127.0.0.1:0"), HttpOptions::default()).unwrap();
        check_document(&objects, &serde_json::from_str(&m.report(ReportFormat::Json)).unwrap(), false, &mut seen);
        check_document(&objects, &serde_json::from_str(&get(server.local_addr(), "/health").body).unwrap(), true, &mut seen);
        script.set(1, Err("scripted: unreadable".into()));
        m.check_now().unwrap();
        check_document(&objects, &serde_json::from_str(&m.report(ReportFormat::Json)).unwrap(), false, &mut seen);

        // Each type a device figure may take was produced at least once, so the check above
        // covered every documented alternative of those fields.
        for (field, types) in &objects["device"] {
            for ty in types {
                if ty == "\"available\"" || ty == "string" && field == "detail" {
                    continue;
                }
                assert!(
                    seen.contains(&("device".to_string(), field.clone(), ty.clone())),
                    "the test never produced `device.{field}` as {ty}; seen: {:?}",
                    seen.iter().filter(|s| &s.1 == field).collect::<Vec<_>>()
                );
            }
        }
    });
}

#[test]
fn the_metrics_match_docs_health_schema() {
    fake_driver_test(&test_name!(), FakeDriverVariant::Complete, &[], || {
        // The metrics table: | `name` | type | labels | meaning |
        let doc = schema_doc();
        let section = doc.split("## Prometheus metrics").nth(1).expect("a Prometheus metrics section");
        let section = section.split("\n## ").next().unwrap();
        let mut documented: BTreeMap<String, (String, BTreeSet<String>)> = BTreeMap::new();
        for line in section.lines() {
            let cells: Vec<&str> = line.split('|').map(str::trim).collect();
            if cells.len() < 5 || !cells[1].starts_with("`vram_monitor_") {
                continue;
            }
            let labels = cells[3].split(',').map(str::trim).filter(|l| !l.is_empty()).map(String::from).collect();
            documented.insert(cells[1].trim_matches('`').to_string(), (cells[2].to_string(), labels));
        }
        assert!(documented.len() > 20, "{documented:?}");

        let fake = Fake::get();
        let m = Monitor::new(MonitorOptions::default()).unwrap();
        let script = Script::default();
        let mut r = clean_reading();
        r.new_critical_xids = Signal::Value(vec![13]);
        script.set(0, Ok(r));
        m.set_device_health_source(Box::new(script));
        m.register(fake.alloc(Kind::Device, MIB, 0), MIB as u64, "w").unwrap();
        m.check_now().unwrap();
        let families = parse_exposition(&m.report(ReportFormat::Prometheus));
        let produced: BTreeSet<&String> = families.keys().collect();
        let listed: BTreeSet<&String> = documented.keys().collect();
        assert_eq!(produced, listed, "metric families produced vs documented");
        for (name, (kind, _, samples)) in &families {
            let (doc_kind, doc_labels) = &documented[name];
            assert_eq!(kind, doc_kind, "{name}");
            for (labels, _) in samples {
                let keys: BTreeSet<String> = labels.keys().cloned().collect();
                assert_eq!(&keys, doc_labels, "labels of {name}");
            }
        }
    });
}
