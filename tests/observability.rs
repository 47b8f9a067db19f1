//! Observability: the Prometheus text, the built-in HTTP endpoint, the GPUs' memory health,
//! and the JSON and metrics schema in docs/health-schema.md.
//!
//! The HTTP tests speak raw HTTP/1.1 over a `TcpStream` so that malformed, oversized and slow
//! requests can be sent; they serve a fixed snapshot and need no driver. The rest run against
//! the fake libcuda in child processes (tests/support). scripts/observability-test.sh adds
//! curl, `promtool check metrics` and a real Prometheus scrape.

mod support;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::ffi::{c_char, CStr, CString};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::Value;
use support::{fake_driver_test, Fake, FakeDriverVariant, Kind};
use vram_monitor::device_health::{DeviceHealthSource, DeviceReading, RemappedRows, Signal};
use vram_monitor::ffi::*;
use vram_monitor::http::{HttpOptions, HttpServer, Snapshot};
use vram_monitor::{
    DeviceHealth, Driver, Event, EventKind, Health, Monitor, MonitorOptions, ProcessVram, ReportFormat,
};

const MIB: usize = 1 << 20;

// ------------------------------------------------------------------------------------------
// A raw HTTP client

struct Response {
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
}

impl Response {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }
}

fn connect(addr: SocketAddr) -> TcpStream {
    let stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).expect("connect");
    stream.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    stream
}

/// Reads a whole response (the server closes the connection after each one).
fn read_response(mut stream: TcpStream) -> Response {
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).expect("read the response");
    parse_response(&raw)
}

fn parse_response(raw: &[u8]) -> Response {
    let text = String::from_utf8_lossy(raw).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or_else(|| panic!("no end of head in {text:?}"));
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap();
    let status = status_line.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or_else(|| panic!("bad status line {status_line:?}"));
    let headers = lines
        .map(|l| {
            let (n, v) = l.split_once(':').unwrap_or_else(|| panic!("bad header {l:?}"));
            (n.trim().to_string(), v.trim().to_string())
        })
        .collect();
    Response { status, headers, body: body.to_string() }
}

fn request(addr: SocketAddr, raw: &[u8]) -> Response {
    let mut stream = connect(addr);
    stream.write_all(raw).unwrap();
    read_response(stream)
}

fn get(addr: SocketAddr, path: &str) -> Response {
    request(addr, format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nAccept: */*\r\n\r\n").as_bytes())
}

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
            checks_failed: 0,
            last_check_failed: false,
            last_check_unix_ms: 1_700_000_000_000,
            last_check_duration_us: 1234,
            process_vram: ProcessVram::UNKNOWN,
            interval_ms: 60_000,
            device_faults: 0,
            stalled: false,
            last_check_started_unix_ms: 1_699_999_999_999,
            check_in_progress_ms: None,
            stall_deadline_ms: 30_000,
            stall_grace_ms: 30_000,
            sealed: 0,
            sealed_bytes: 0,
            integrity_verified_bytes: 0,
            integrity_passes: 0,
            integrity_last_pass_unix_ms: 0,
            integrity_failed: false,
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

// ------------------------------------------------------------------------------------------
// Threads of this process by name (Linux keeps 15 bytes of a thread's name).

/// Live threads of this process whose name starts with `prefix`. A joined thread can stay
/// listed in /proc for a moment as a zombie or dead task (the kernel wakes the joiner before it
/// reaps the task), so tasks in state Z or X are not counted: they run nothing any more.
fn threads_named(prefix: &str) -> usize {
    std::fs::read_dir("/proc/self/task")
        .map(|dir| {
            dir.filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("stat")).ok())
                .filter(|stat| {
                    // "tid (comm) S ...": the name may hold spaces or parentheses, so split at
                    // the last ')'.
                    let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else { return false };
                    let state = stat[close + 1..].trim_start().chars().next();
                    stat[open + 1..close].starts_with(prefix) && !matches!(state, Some('Z' | 'X' | 'x'))
                })
                .count()
        })
        .unwrap_or(0)
}

#[test]
fn the_endpoint_stops_and_its_threads_are_joined_when_the_monitor_is_dropped() {
    fake_driver_test(&test_name!(), FakeDriverVariant::Complete, &[], || {
        let fake = Fake::get();
        let m = Monitor::new(MonitorOptions::default()).unwrap();
        let ptr = fake.alloc(Kind::Device, MIB, 0);
        m.register(ptr, MIB as u64, "w").unwrap();
        assert_eq!(threads_named("vram-monitor-ht"), 0);
        let addr = m.serve_http(Some("127.0.0.1:0")).unwrap();
        assert_eq!(m.http_address(), Some(addr));
        assert_eq!(m.serve_http(Some("127.0.0.1:0")), Err(vram_monitor::Error::AlreadyServing));
        // A slow client is connected while the monitor is freed.
        let mut slow = connect(addr);
        slow.write_all(b"GET /he").unwrap();
        assert_eq!(get(addr, "/health").status, 200);
        assert!(threads_named("vram-monitor-ht") >= 1);
        drop(m);
        assert_eq!(threads_named("vram-monitor-ht"), 0, "every HTTP thread is joined by the drop");
        let refused = TcpStream::connect_timeout(&addr, Duration::from_secs(2));
        assert!(refused.is_err(), "the port is closed after the drop");
        let mut rest = Vec::new();
        let _ = slow.read_to_end(&mut rest);
    });
}

// ------------------------------------------------------------------------------------------
// Device health from a scripted source

#[derive(Clone, Default)]
struct Script(Arc<Mutex<HashMap<i32, Result<DeviceReading, String>>>>);

impl Script {
    fn set(&self, device: i32, reading: Result<DeviceReading, String>) {
        self.0.lock().unwrap().insert(device, reading);
    }
}

impl DeviceHealthSource for Script {
    fn read(&mut self, _driver: &dyn Driver, device: i32) -> Result<DeviceReading, String> {
        let mut script = self.0.lock().unwrap();
        let entry = script.entry(device).or_insert_with(|| Err("not scripted".into()));
        let reading = entry.clone();
        // XID events are delivered once.
        if let Ok(r) = entry {
            if let Signal::Value(x) = &mut r.new_critical_xids {
                x.clear();
            }
        }
        reading
    }
}

fn clean_reading() -> DeviceReading {
    DeviceReading {
        index: Some(0),
        uuid: Some("GPU-00000000-1111-2222-3333-444444444444".into()),
        name: Some("Scripted \"GPU\"".into()),
        ecc_uncorrected_volatile: Signal::Value(0),
        retired_pages_pending: Signal::Unsupported,
        remapped_rows: Signal::Value(RemappedRows { correctable: 1, uncorrectable: 0, pending: false, failed: false }),
        new_critical_xids: Signal::Value(vec![]),
    }
}

fn unsupported_reading() -> DeviceReading {
    DeviceReading {
        index: None,
        uuid: None,
        name: None,
        ecc_uncorrected_volatile: Signal::Unsupported,
        retired_pages_pending: Signal::Unsupported,
        remapped_rows: Signal::Unsupported,
        new_critical_xids: Signal::Unsupported,
    }
}

fn recorder(m: &Monitor) -> Arc<Mutex<Vec<Event>>> {
    let events = Arc::new(Mutex::new(Vec::new()));
    let sink = events.clone();
    m.set_callback(Some(Arc::new(move |e: &Event| sink.lock().unwrap().push(e.clone()))));
    events
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
        let addr = m.serve_http(Some("127.0.0.1:0")).unwrap();

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

/// Parses exposition text: family -> (type, help, samples as (labels, value)). Fails on any
/// line that is not a comment, blank, or `name{labels} value`.
type Families = BTreeMap<String, (String, String, Vec<(BTreeMap<String, String>, f64)>)>;

fn parse_exposition(text: &str) -> Families {
    let mut families = Families::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let (name, help) = rest.split_once(' ').unwrap();
            families.entry(name.into()).or_default().1 = help.into();
        } else if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').unwrap();
            families.entry(name.into()).or_default().0 = kind.into();
        } else if line.is_empty() || line.starts_with('#') {
            continue;
        } else {
            let (series, value) = line.rsplit_once(' ').unwrap_or_else(|| panic!("no value: {line}"));
            let value: f64 = value.parse().unwrap_or_else(|_| panic!("bad value: {line}"));
            let (name, labels) = match series.split_once('{') {
                Some((name, labels)) => {
                    let labels = labels.strip_suffix('}').unwrap_or_else(|| panic!("unclosed labels: {line}"));
                    let mut map = BTreeMap::new();
                    let mut rest = labels;
                    while !rest.is_empty() {
                        let (key, after) = rest.split_once("=\"").unwrap_or_else(|| panic!("bad label: {line}"));
                        let mut value = String::new();
                        let mut chars = after.char_indices();
                        let mut end = None;
                        while let Some((i, c)) = chars.next() {
                            match c {
                                '\\' => {
                                    let (_, e) = chars.next().unwrap();
                                    value.push(if e == 'n' { '\n' } else { e });
                                }
                                '"' => {
                                    end = Some(i);
                                    break;
                                }
                                c => value.push(c),
                            }
                        }
                        let end = end.unwrap_or_else(|| panic!("unterminated label value: {line}"));
                        map.insert(key.to_string(), value);
                        rest = after[end + 1..].strip_prefix(',').unwrap_or(&after[end + 1..]);
                    }
                    (name, map)
                }
                None => (series, BTreeMap::new()),
            };
            let family = families.get_mut(name).unwrap_or_else(|| panic!("sample before its # TYPE: {line}"));
            family.2.push((labels, value));
        }
    }
    families
}

fn value(families: &Families, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    families.get(name)?.2.iter().find(|(l, _)| labels.iter().all(|(k, v)| l.get(*k).map(String::as_str) == Some(*v))).map(|(_, v)| *v)
}

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
        let addr = m.serve_http(Some("127.0.0.1:0")).unwrap();
        m.check_now().unwrap();
        check_document(&objects, &serde_json::from_str(&m.report(ReportFormat::Json)).unwrap(), false, &mut seen);
        check_document(&objects, &serde_json::from_str(&get(addr, "/health").body).unwrap(), true, &mut seen);
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
        let addr = m.serve_http(Some("127.0.0.1:0")).unwrap();
        check_document(&objects, &serde_json::from_str(&m.report(ReportFormat::Json)).unwrap(), false, &mut seen);
        check_document(&objects, &serde_json::from_str(&get(addr, "/health").body).unwrap(), true, &mut seen);
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

#[test]
fn the_report_format_macros_in_the_header_match_the_formats() {
    let header = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/include/vram_monitor.h")).unwrap();
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
