//! Measures how fast the built-in endpoint answers `/health` while idle connections crowd it:
//! holds `--idle N` connections that send nothing (default 100), re-opening each one the
//! server closes (with `--churn`, also closing and re-opening them all continuously), while
//! one prober sends a request every `--every-ms` (default 5) for `--seconds` (default 10). Prints the probe latency (from
//! connect to the whole answer read) at p50, p99 and max, how many probes got 200, another
//! status, or no answer, and how many idle connections were opened.
//!
//! Serves a fixed healthy snapshot: no driver is needed, and every answer must be 200.
//! Uses only the endpoint's public API, so a copy builds against older versions of it too,
//! once the `Health` fields they lack are dropped (docs/reliability.md compares with one). Not a test: timings depend on the machine.
//!
//! ```text
//! cargo run --release --example crowded_endpoint -- --idle 100 [--churn] [--seconds 10]
//! ```

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use vram_monitor::http::{HttpOptions, HttpServer, Snapshot};
use vram_monitor::{DeviceHealth, Health};

struct Healthy;

impl Snapshot for Healthy {
    fn health(&self) -> Health {
        Health {
            healthy: true,
            registrations: 1,
            tracked_bytes: 1 << 30,
            checks_completed: 1,
            last_check_unix_ms: 1_700_000_000_000,
            last_check_duration_us: 100,
            interval_ms: 1000,
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
}

fn arg(args: &[String], name: &str, default: usize) -> usize {
    args.iter().position(|a| a == name).and_then(|i| args.get(i + 1)).and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// Holds `count` idle connections until `stop`, re-opening each one the server closes; with
/// `churn`, also closes and re-opens them all continuously. Counts the openings.
fn crowd(addr: SocketAddr, count: usize, churn: bool, stop: Arc<AtomicBool>, opened: Arc<AtomicU64>) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let mut held: Vec<Option<TcpStream>> = (0..count).map(|_| None).collect();
        while !stop.load(Ordering::Relaxed) {
            for slot in held.iter_mut() {
                let closed = match slot {
                    Some(s) => {
                        let mut b = [0u8; 512];
                        !matches!(s.read(&mut b), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock)
                    }
                    None => true,
                };
                if closed || churn {
                    *slot = None;
                    if let Ok(s) = TcpStream::connect_timeout(&addr, Duration::from_secs(5)) {
                        let _ = s.set_nonblocking(true);
                        *slot = Some(s);
                        opened.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
            // Paced a little, so that closed connections' TIME_WAIT cannot use up the ports.
            std::thread::sleep(Duration::from_millis(5));
        }
    })
}

/// One probe: the status, or None when no answer came.
fn probe(addr: SocketAddr) -> Option<u16> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(10)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    s.write_all(b"GET /health HTTP/1.1\r\nHost: localhost\r\n\r\n").ok()?;
    let mut raw = Vec::new();
    let _ = s.read_to_end(&mut raw);
    let text = String::from_utf8_lossy(&raw);
    let status = text.split(' ').nth(1)?.parse().ok()?;
    (status != 200 || text.contains("\"healthy\":true")).then_some(status)
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let idle = arg(&args, "--idle", 100);
    let seconds = arg(&args, "--seconds", 10);
    let every = Duration::from_millis(arg(&args, "--every-ms", 5) as u64);
    let churn = args.iter().any(|a| a == "--churn");
    let server = HttpServer::start("127.0.0.1:0".parse().unwrap(), HttpOptions::default(), Arc::new(Healthy)).expect("serve");
    let addr = server.local_addr();
    let stop = Arc::new(AtomicBool::new(false));
    let opened = Arc::new(AtomicU64::new(0));
    let crowd = crowd(addr, idle, churn, stop.clone(), opened.clone());
    std::thread::sleep(Duration::from_millis(500));
    let (mut ok, mut other, mut none) = (0, 0, 0);
    let mut latencies = Vec::new();
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(seconds as u64) {
        let t = Instant::now();
        match probe(addr) {
            Some(200) => ok += 1,
            Some(_) => other += 1,
            None => none += 1,
        }
        latencies.push(t.elapsed());
        std::thread::sleep(every.saturating_sub(t.elapsed()));
    }
    let probes = latencies.len();
    let elapsed = started.elapsed();
    stop.store(true, Ordering::Relaxed);
    crowd.join().unwrap();
    latencies.sort();
    let at = |q: f64| latencies[((latencies.len() - 1) as f64 * q).round() as usize];
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    println!(
        "idle {idle} ({}): {probes} probes in {:.1} s: 200 {ok}, other status {other}, no answer {none}; \
         latency p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms; {} idle connections opened ({:.0}/s)",
        if churn { "closed and re-opened continuously" } else { "held, re-opened when closed" },
        elapsed.as_secs_f64(),
        ms(at(0.5)),
        ms(at(0.99)),
        ms(*latencies.last().unwrap()),
        opened.load(Ordering::Relaxed),
        opened.load(Ordering::Relaxed) as f64 / elapsed.as_secs_f64()
    );
    drop(server);
}
