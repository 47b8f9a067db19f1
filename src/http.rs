//! The optional built-in HTTP endpoint: `GET /health` (200 with the JSON health when healthy,
//! 503 when not, as load balancers expect) and `GET /metrics` (the Prometheus text format).
//!
//! Off unless the host asks for it ([`crate::Monitor::serve_http`]). Loopback unless told
//! otherwise; read-only (GET and HEAD; anything else is 405); one request per connection.
//! Requests are parsed with `httparse` (hyper's HTTP/1 parser); this module only moves bytes
//! and keeps the bounds: a request head of at most [`HttpOptions::max_request_bytes`], read
//! within [`HttpOptions::request_timeout`], at most [`HttpOptions::max_connections`]
//! connections served at once (more are answered 503 at once). Every thread it starts is
//! joined when the server stops, which the monitor does when it is freed.

use std::io::{ErrorKind, Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, Shutdown, SocketAddr, TcpListener, TcpStream};
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::device_health::DeviceHealth;
use crate::error::Error;
use crate::health::Health;

/// The address used when none is given: loopback, port 9464 (the port commonly used for
/// Prometheus exporters embedded in applications).
pub const DEFAULT_ADDRESS: &str = "127.0.0.1:9464";

/// What the endpoint serves from: the monitor's state, read at each request.
pub trait Snapshot: Send + Sync + 'static {
    /// The health snapshot.
    fn health(&self) -> Health;
    /// The memory health of the GPUs that hold registrations.
    fn devices(&self) -> Vec<DeviceHealth>;
    /// Registrations and bytes per device and verdict (for the metrics).
    fn figures(&self) -> Vec<crate::prometheus::RegistrationFigures>;
}

/// The endpoint's bounds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HttpOptions {
    /// Largest request head (request line and headers) accepted; larger gets 431.
    /// Default 8 KiB.
    pub max_request_bytes: usize,
    /// Time a client has to send its whole request head; slower gets 408. Also bounds
    /// writing the response. Default 5 s.
    pub request_timeout: Duration,
    /// Connections served at once; more are answered 503 and closed. Default 8.
    pub max_connections: usize,
}

impl Default for HttpOptions {
    fn default() -> Self {
        HttpOptions { max_request_bytes: 8192, request_timeout: Duration::from_secs(5), max_connections: 8 }
    }
}

/// Most headers a request may have (more is 431).
const MAX_HEADERS: usize = 64;
/// How often a connection waiting for bytes looks at the stop flag.
const POLL: Duration = Duration::from_millis(100);

/// Turns the host's address into a socket address: `None` or `""` is [`DEFAULT_ADDRESS`];
/// a bare port ("9464") is that port on 127.0.0.1; `localhost:PORT` is 127.0.0.1; otherwise
/// an IP literal with a port (`"0.0.0.0:9464"`, `"[::1]:9464"`). Host names are not resolved.
pub fn parse_address(address: Option<&str>) -> Result<SocketAddr, Error> {
    let address = address.map(str::trim).unwrap_or("");
    if address.is_empty() {
        return Ok(SocketAddr::from_str(DEFAULT_ADDRESS).expect("the default address parses"));
    }
    if let Ok(port) = address.parse::<u16>() {
        return Ok(SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port));
    }
    if let Some(port) = address.strip_prefix("localhost:") {
        if let Ok(port) = port.parse::<u16>() {
            return Ok(SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port));
        }
    }
    SocketAddr::from_str(address)
        .map_err(|_| Error::InvalidArgument("the HTTP address must be PORT, localhost:PORT, IPv4:PORT or [IPv6]:PORT"))
}

/// A running endpoint. Dropping it stops it and joins its threads.
pub struct HttpServer {
    local_addr: SocketAddr,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl HttpServer {
    /// Binds `address` and starts serving `snapshot` on a thread named "vram-monitor-http".
    pub fn start(address: SocketAddr, options: HttpOptions, snapshot: Arc<dyn Snapshot>) -> Result<HttpServer, Error> {
        if options.max_request_bytes < 64 || options.max_connections == 0 || options.request_timeout.is_zero() {
            return Err(Error::InvalidArgument("HTTP options out of range"));
        }
        let listener = TcpListener::bind(address).map_err(|e| Error::HttpBind(format!("cannot listen on {address}: {e}")))?;
        let local_addr = listener.local_addr().map_err(|e| Error::HttpBind(e.to_string()))?;
        let stop = Arc::new(AtomicBool::new(false));
        let thread_stop = Arc::clone(&stop);
        let thread = std::thread::Builder::new()
            .name("vram-monitor-http".into())
            .spawn(move || accept_loop(listener, options, snapshot, thread_stop))
            .map_err(|e| Error::ThreadSpawn(e.to_string()))?;
        if local_addr.ip().is_loopback() {
            log::info!(target: "vram_monitor", "serving /health and /metrics on http://{local_addr}");
        } else {
            log::warn!(target: "vram_monitor", "serving /health and /metrics on http://{local_addr}, reachable beyond this machine");
        }
        Ok(HttpServer { local_addr, stop, thread: Some(thread) })
    }

    /// The address it listens on (with the port the system chose when asked for port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    fn stop_and_join(&mut self) {
        let Some(thread) = self.thread.take() else { return };
        self.stop.store(true, Ordering::Release);
        // Wake the accept: connect to ourselves (on loopback when listening on every address).
        let mut wake = self.local_addr;
        if wake.ip().is_unspecified() {
            wake.set_ip(if wake.is_ipv4() { IpAddr::V4(Ipv4Addr::LOCALHOST) } else { IpAddr::V6(Ipv6Addr::LOCALHOST) });
        }
        let mut woken = false;
        for _ in 0..50 {
            if TcpStream::connect_timeout(&wake, Duration::from_millis(200)).is_ok() {
                woken = true;
                break;
            }
            if thread.is_finished() {
                woken = true;
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        if woken {
            let _ = thread.join();
        } else {
            // Cannot happen short of the system refusing loopback connections; the thread
            // holds only its own state, so leaving it is safe, but say so.
            log::error!(target: "vram_monitor", "could not wake the HTTP thread on {wake}; it is left running");
        }
        log::info!(target: "vram_monitor", "stopped serving on http://{}", self.local_addr);
    }
}

impl Drop for HttpServer {
    fn drop(&mut self) {
        self.stop_and_join();
    }
}

fn accept_loop(listener: TcpListener, options: HttpOptions, snapshot: Arc<dyn Snapshot>, stop: Arc<AtomicBool>) {
    let mut workers: Vec<JoinHandle<()>> = Vec::new();
    loop {
        let accepted = listener.accept();
        if stop.load(Ordering::Acquire) {
            break;
        }
        let stream = match accepted {
            Ok((stream, _)) => stream,
            Err(e) => {
                // Out of file descriptors and the like: wait a little rather than spin.
                log::debug!(target: "vram_monitor", "HTTP accept failed: {e}");
                std::thread::sleep(Duration::from_millis(50));
                continue;
            }
        };
        workers.retain(|w| !w.is_finished());
        if workers.len() >= options.max_connections {
            let _ = stream.set_write_timeout(Some(Duration::from_millis(200)));
            respond(&stream, 503, "text/plain; charset=utf-8", b"too many connections\n", false, &[]);
            finish(stream);
            continue;
        }
        let snapshot = Arc::clone(&snapshot);
        let stop = Arc::clone(&stop);
        let spawned = std::thread::Builder::new()
            .name("vram-monitor-http".into())
            .spawn(move || {
                // A panic here (a bug) ends this connection only.
                let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| serve(stream, options, &*snapshot, &stop)));
            });
        match spawned {
            Ok(worker) => workers.push(worker),
            Err(e) => log::warn!(target: "vram_monitor", "could not start an HTTP connection thread: {e}"),
        }
    }
    for worker in workers {
        let _ = worker.join();
    }
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        505 => "HTTP Version Not Supported",
        _ => "Unknown",
    }
}

fn respond(mut stream: &TcpStream, status: u16, content_type: &str, body: &[u8], head_only: bool, extra: &[(&str, &str)]) {
    let mut head = format!(
        "HTTP/1.1 {status} {}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nCache-Control: no-store\r\nConnection: close\r\n",
        reason(status),
        body.len()
    );
    for (name, value) in extra {
        head.push_str(name);
        head.push_str(": ");
        head.push_str(value);
        head.push_str("\r\n");
    }
    head.push_str("\r\n");
    let _ = stream.write_all(head.as_bytes());
    if !head_only {
        let _ = stream.write_all(body);
    }
    let _ = stream.flush();
}

/// Ends a connection without resetting it: stop sending, then read (briefly, boundedly) what
/// the client still sends, so that the response is not lost to a reset.
fn finish(mut stream: TcpStream) {
    let _ = stream.shutdown(Shutdown::Write);
    let _ = stream.set_read_timeout(Some(Duration::from_millis(50)));
    let mut sink = [0u8; 4096];
    for _ in 0..16 {
        match stream.read(&mut sink) {
            Ok(n) if n > 0 => continue,
            _ => break,
        }
    }
}

fn error_page(stream: &TcpStream, status: u16, why: &str) {
    respond(stream, status, "text/plain; charset=utf-8", format!("{why}\n").as_bytes(), false, &[]);
}

fn serve(mut stream: TcpStream, options: HttpOptions, snapshot: &dyn Snapshot, stop: &AtomicBool) {
    let started = Instant::now();
    let deadline = started + options.request_timeout;
    let _ = stream.set_nodelay(true);
    let _ = stream.set_write_timeout(Some(options.request_timeout));
    let mut buf: Vec<u8> = Vec::with_capacity(1024);
    let mut chunk = [0u8; 2048];
    loop {
        if stop.load(Ordering::Acquire) {
            return;
        }
        let now = Instant::now();
        if now >= deadline {
            error_page(&stream, 408, "the request took too long to arrive");
            return finish(stream);
        }
        let _ = stream.set_read_timeout(Some((deadline - now).min(POLL)));
        let room = (options.max_request_bytes + 1).saturating_sub(buf.len()).min(chunk.len());
        match stream.read(&mut chunk[..room]) {
            Ok(0) => return,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut | ErrorKind::Interrupted) => continue,
            Err(_) => return,
        }
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut request = httparse::Request::new(&mut headers);
        match request.parse(&buf) {
            Ok(httparse::Status::Complete(_)) => {
                let method = request.method.unwrap_or("");
                let path = request.path.unwrap_or("");
                handle(&stream, method, path, snapshot);
                return finish(stream);
            }
            Ok(httparse::Status::Partial) if buf.len() > options.max_request_bytes => {
                error_page(&stream, 431, "the request head is too large");
                return finish(stream);
            }
            Ok(httparse::Status::Partial) => continue,
            Err(httparse::Error::TooManyHeaders) => {
                error_page(&stream, 431, "too many request headers");
                return finish(stream);
            }
            Err(httparse::Error::Version) => {
                error_page(&stream, 505, "only HTTP/1.0 and HTTP/1.1 are served");
                return finish(stream);
            }
            Err(e) => {
                log::debug!(target: "vram_monitor", "malformed HTTP request: {e}");
                error_page(&stream, 400, &format!("malformed request: {e}"));
                return finish(stream);
            }
        }
    }
}

fn handle(stream: &TcpStream, method: &str, target: &str, snapshot: &dyn Snapshot) {
    let path = target.split(['?', '#']).next().unwrap_or("");
    let known = matches!(path, "/" | "/health" | "/metrics");
    if !known {
        return error_page(stream, 404, "not found: this endpoint serves /health and /metrics");
    }
    let head_only = match method {
        "GET" => false,
        "HEAD" => true,
        _ => {
            return respond(
                stream,
                405,
                "text/plain; charset=utf-8",
                b"method not allowed: this endpoint is read-only (GET, HEAD)\n",
                false,
                &[("Allow", "GET, HEAD")],
            )
        }
    };
    match path {
        "/health" => {
            let health = snapshot.health();
            let body = crate::report::health_document(&health, &snapshot.devices());
            let status = if health.healthy { 200 } else { 503 };
            respond(stream, status, "application/json", body.as_bytes(), head_only, &[]);
        }
        "/metrics" => {
            let health = snapshot.health();
            let devices = snapshot.devices();
            let body = crate::prometheus::render(&health, snapshot.figures(), &devices);
            respond(stream, 200, crate::prometheus::CONTENT_TYPE, body.as_bytes(), head_only, &[]);
        }
        _ => {
            let body = format!(
                "vram-monitor {}\n/health   JSON health: 200 when healthy, 503 when not\n/metrics  Prometheus metrics\n",
                crate::VERSION
            );
            respond(stream, 200, "text/plain; charset=utf-8", body.as_bytes(), head_only, &[]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_default_to_loopback() {
        assert_eq!(parse_address(None).unwrap(), "127.0.0.1:9464".parse().unwrap());
        assert_eq!(parse_address(Some("")).unwrap(), "127.0.0.1:9464".parse().unwrap());
        assert_eq!(parse_address(Some("9100")).unwrap(), "127.0.0.1:9100".parse().unwrap());
        assert_eq!(parse_address(Some("localhost:0")).unwrap(), "127.0.0.1:0".parse().unwrap());
        assert_eq!(parse_address(Some("0.0.0.0:9464")).unwrap(), "0.0.0.0:9464".parse().unwrap());
        assert_eq!(parse_address(Some("[::1]:1")).unwrap(), "[::1]:1".parse().unwrap());
        for bad in ["example.com:80", "127.0.0.1", "127.0.0.1:99999", "localhost", ":::"] {
            assert!(matches!(parse_address(Some(bad)), Err(Error::InvalidArgument(_))), "{bad}");
        }
    }
}
