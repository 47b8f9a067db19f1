//! The optional built-in HTTP endpoint: `GET /health` and `GET /readyz` (200 with the JSON
//! health when healthy, 503 when not, as load balancers and kubelet readiness probes expect),
//! `GET /livez` (200 while the monitor is alive and checking, 503 when it has stalled) and
//! `GET /metrics` (the Prometheus text format).
//!
//! Off unless the host asks for it ([`HttpServer::serve`] in Rust, `vram_monitor_serve_http`
//! in C). It serves from a [`MonitorView`], the monitor's read view: the monitor does not know
//! the endpoint, and whoever started it owns it (the Rust host its [`HttpServer`], a C host
//! its handle). Loopback unless told otherwise; read-only (GET and HEAD; anything else is
//! 405); one request per connection.
//!
//! One thread ("vram-monitor-http") serves every connection from a `poll(2)` loop over
//! non-blocking sockets (`event_loop.rs`), so no client can hold up another: an idle or slow
//! connection costs a slot and a buffer, never a thread, and a probe is read, answered and
//! written while the others wait for their bytes. The bounds are [`HttpOptions`]: a request
//! head of at most `max_request_bytes`, a first byte within `first_byte_timeout` and the whole
//! head within `request_timeout` (else 408), the response written within `request_timeout`,
//! and at most `max_connections` connections held. Beyond that the endpoint never refuses a
//! connection and never answers 503 for load (503 means "unhealthy" to a load balancer): it
//! closes the oldest connection that has sent nothing yet to make room (the order is in
//! [`HttpOptions::max_connections`]). Requests are parsed with `httparse` (`request.rs`); the
//! answers are built in `routes.rs`.
//!
//! Stopping ([`HttpServer`]'s drop, which the C handle does when it is freed) wakes the loop
//! through a socket pair made when the server started, so it needs no new file descriptor,
//! and joins the thread: when it returns the port is closed and nothing of the endpoint runs.

mod event_loop;
mod request;
mod routes;

use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use crate::core::device_health::DeviceHealth;
use crate::core::error::Error;
use crate::core::health::Health;
use crate::monitor::{Monitor, MonitorView};

/// The address used when none is given: loopback, port 9464 (the port commonly used for
/// Prometheus exporters embedded in applications).
pub const DEFAULT_ADDRESS: &str = "127.0.0.1:9464";

/// What the endpoint serves from: the monitor's state, read at each request. Every method is
/// called on the endpoint's one thread and must not block (a slow answer delays every client).
pub trait Snapshot: Send + Sync + 'static {
    /// The health snapshot.
    fn health(&self) -> Health;
    /// The memory health of the GPUs that hold registrations.
    fn devices(&self) -> Vec<DeviceHealth>;
    /// Registrations and bytes per device and verdict (for the metrics).
    fn figures(&self) -> Vec<crate::output::prometheus::RegistrationFigures>;
    /// Whether the monitor is alive and checking: false when it has stopped checking
    /// (stalled: a check in progress for too long, or no check completed for too long), which
    /// `GET /livez` answers with 503. True by default.
    fn live(&self) -> bool {
        true
    }
}

/// The endpoint's bounds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HttpOptions {
    /// Largest request head (request line and headers) accepted; larger gets 431.
    /// Default 8 KiB.
    pub max_request_bytes: usize,
    /// Time a client has to send its whole request head; slower gets 408. Also bounds
    /// writing the response to a client that reads slowly (then the connection is closed).
    /// Default 5 s.
    pub request_timeout: Duration,
    /// Time a client has, after it connected, to send the first byte of its request; a
    /// connection that stays silent longer gets 408 and is closed. Probes and scrapers send
    /// their request at once; this bounds how long idle connections hold a slot. Default 1 s.
    pub first_byte_timeout: Duration,
    /// Connections held at once. A connection beyond it is still accepted and served: the
    /// oldest connection that has sent nothing is closed to make room (then the oldest whose
    /// answer is written, then the oldest that has sent part of a request, then the oldest
    /// being answered), though none in its first 50 ms (meanwhile new connections wait in
    /// the kernel's queue). Never a 503. Default 128.
    pub max_connections: usize,
}

impl Default for HttpOptions {
    fn default() -> Self {
        HttpOptions {
            max_request_bytes: 8192,
            request_timeout: Duration::from_secs(5),
            first_byte_timeout: Duration::from_secs(1),
            max_connections: 128,
        }
    }
}

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

/// A running endpoint. Dropping it stops it and joins its thread (in a child forked since it
/// started, where that thread does not exist, dropping it only forgets it).
pub struct HttpServer {
    local_addr: SocketAddr,
    origin: crate::adapters::fork::Origin,
    stop: Arc<AtomicBool>,
    /// Our end of the socket pair the loop polls: a byte written here wakes it.
    waker: UnixStream,
    thread: Option<JoinHandle<()>>,
}

impl HttpServer {
    /// Serves `monitor` ([`Monitor::view`]) on `address` (`None` or `""`: 127.0.0.1:9464; see
    /// [`parse_address`]) until the returned server is dropped. [`Error::Forked`] in a child
    /// forked after the monitor was created.
    pub fn serve(monitor: &Monitor, address: Option<&str>, options: HttpOptions) -> Result<HttpServer, Error> {
        if monitor.in_forked_child() {
            return Err(Error::Forked);
        }
        HttpServer::start(parse_address(address)?, options, Arc::new(monitor.view()))
    }

    /// Binds `address` and starts serving `snapshot` on a thread named "vram-monitor-http".
    pub fn start(address: SocketAddr, options: HttpOptions, snapshot: Arc<dyn Snapshot>) -> Result<HttpServer, Error> {
        if options.max_request_bytes < 64
            || options.max_connections == 0
            || options.request_timeout.is_zero()
            || options.first_byte_timeout.is_zero()
        {
            return Err(Error::InvalidArgument("HTTP options out of range"));
        }
        let listener = TcpListener::bind(address).map_err(|e| Error::HttpBind(format!("cannot listen on {address}: {e}")))?;
        let local_addr = listener.local_addr().map_err(|e| Error::HttpBind(e.to_string()))?;
        listener.set_nonblocking(true).map_err(|e| Error::HttpBind(e.to_string()))?;
        // Made now, while descriptors are at hand: stopping must work when none are left.
        let (waker, wakee) = UnixStream::pair().map_err(|e| Error::HttpBind(format!("cannot make the wake-up pair: {e}")))?;
        waker.set_nonblocking(true).map_err(|e| Error::HttpBind(e.to_string()))?;
        wakee.set_nonblocking(true).map_err(|e| Error::HttpBind(e.to_string()))?;
        let stop = Arc::new(AtomicBool::new(false));
        let thread_stop = Arc::clone(&stop);
        let thread = std::thread::Builder::new()
            .name("vram-monitor-http".into())
            .spawn(move || {
                // A panic here (a bug) stops the endpoint, never the host; the sockets close.
                let served = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    event_loop::run(listener, wakee, options, snapshot, &thread_stop)
                }));
                if served.is_err() {
                    log::error!(target: "vram_monitor", "the HTTP endpoint stopped after an internal error");
                }
            })
            .map_err(|e| Error::ThreadSpawn(e.to_string()))?;
        if local_addr.ip().is_loopback() {
            log::info!(target: "vram_monitor", "serving /health, /livez, /readyz and /metrics on http://{local_addr}");
        } else {
            log::warn!(target: "vram_monitor", "serving /health, /livez, /readyz and /metrics on http://{local_addr}, reachable beyond this machine");
        }
        Ok(HttpServer { local_addr, origin: crate::adapters::fork::Origin::here(), stop, waker, thread: Some(thread) })
    }

    /// The address it listens on (with the port the system chose when asked for port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    fn stop_and_join(&mut self) {
        let Some(thread) = self.thread.take() else { return };
        if self.origin.is_forked_child() {
            // The thread is the parent's: nothing to wake or join here.
            std::mem::forget(thread);
            return;
        }
        self.stop.store(true, Ordering::Release);
        // A full pair means a wake-up is already pending; the loop also looks at the flag at
        // least every event_loop::MAX_WAIT, so the join below cannot wait for ever. send with
        // MSG_NOSIGNAL: if the loop had ended (a bug), the closed peer must not raise SIGPIPE
        // in the host, whose default action ends the process.
        let byte = 1u8;
        // SAFETY: a valid descriptor we own and a one-byte buffer that outlives the call.
        let _ = unsafe {
            libc::send(self.waker.as_raw_fd(), (&byte as *const u8).cast(), 1, libc::MSG_NOSIGNAL | libc::MSG_DONTWAIT)
        };
        let _ = thread.join();
        log::info!(target: "vram_monitor", "stopped serving on http://{}", self.local_addr);
    }
}

impl Drop for HttpServer {
    fn drop(&mut self) {
        self.stop_and_join();
    }
}

/// A monitor's state, as the endpoint serves it.
impl Snapshot for MonitorView {
    fn health(&self) -> Health {
        MonitorView::health(self)
    }
    fn devices(&self) -> Vec<DeviceHealth> {
        self.device_health()
    }
    fn figures(&self) -> Vec<crate::output::prometheus::RegistrationFigures> {
        self.tally().into_iter().map(Into::into).collect()
    }
    fn live(&self) -> bool {
        !MonitorView::health(self).stalled
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
