//! The endpoint's one thread: a `poll(2)` loop over the listener, the wake-up socket and every
//! connection, each non-blocking with its own buffer and deadlines.
//!
//! A turn of the loop: close what is past its deadline, poll (for at most [`MAX_WAIT`], so
//! the stop flag is seen even if a wake-up were lost), serve every connection that is ready
//! (a bounded read or write each), then accept at most [`ACCEPTS_PER_TURN`] new connections.
//! Nothing in a turn waits for a client, so a probe's request is answered in the turn its
//! bytes arrive, however many other connections are open.
//!
//! Room is made, never refused: beyond `max_connections`, and when the process is out of file
//! descriptors, the oldest connection that has sent nothing is closed first (see
//! [`Connection::eviction_rank`]), but none still within its [`GRACE`] of reading its
//! request: then accepting waits for the grace to end, the new connections queued by the
//! kernel. When none of ours can be closed and the process is out of
//! descriptors, one descriptor held back at start (a duplicate of the listener) is given up
//! so that a waiting connection is still accepted and answered; then accepting pauses for
//! [`ACCEPT_BACKOFF`] instead of spinning on the failing accept.

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::request::{self, Head};
use super::routes;
use super::{HttpOptions, Snapshot};

/// Longest a poll waits: how late the loop can see the stop flag if its wake-up were lost.
pub(super) const MAX_WAIT: Duration = Duration::from_millis(250);
/// After a response is written and our side shut down: how long what the client still sends
/// is read and dropped, so that closing does not reset the connection (a reset can destroy
/// the response before the client read it).
const LINGER: Duration = Duration::from_secs(1);
/// Bytes dropped per connection while lingering, at most.
const LINGER_BYTES: usize = 64 * 1024;
/// Connections accepted per turn, so that a flood of connects cannot starve those being served.
const ACCEPTS_PER_TURN: usize = 32;
/// How long accepting pauses when the process is out of descriptors and nothing can be freed.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);
/// Bytes read from a connection per turn.
const CHUNK: usize = 4096;
/// Time a new connection has to send its request before it may be closed to make room: a
/// probe that connected just before a flood of idle connections is still read and answered.
/// Under such a flood, accepting waits (the connections queue in the kernel) rather than
/// close a connection younger than this.
const GRACE: Duration = Duration::from_millis(50);
/// Least time between two warnings that the process is out of file descriptors.
const WARN_EVERY: Duration = Duration::from_secs(10);

enum State {
    /// Reading the request head; `buf` holds at most `max_request_bytes + 1` bytes.
    Reading { buf: Vec<u8> },
    /// Writing the response.
    Writing { out: Vec<u8>, written: usize, deadline: Instant },
    /// Response written and our side shut down: dropping what the client still sends.
    Lingering { deadline: Instant, dropped: usize },
    /// To be closed.
    Done,
}

struct Connection {
    stream: TcpStream,
    accepted: Instant,
    /// Accept order: lower is older.
    seq: u64,
    state: State,
    /// Uses the descriptor the reserve gave up: the reserve is made again once this closes.
    from_reserve: bool,
}

impl Connection {
    /// The order in which connections are closed to make room (lower first; the oldest first
    /// within a rank): one already finished costs nothing; one that has sent nothing costs
    /// its client nothing to lose; one whose response is written has had its answer; one that
    /// sent part of a request may be a slow probe; one being answered is nearly done.
    fn eviction_rank(&self) -> u8 {
        match &self.state {
            State::Done => 0,
            State::Reading { buf } if buf.is_empty() => 1,
            State::Lingering { .. } => 2,
            State::Reading { .. } => 3,
            State::Writing { .. } => 4,
        }
    }

    /// Within its grace (see [`GRACE`]): still reading its request and accepted just now.
    fn protected(&self, now: Instant) -> bool {
        matches!(self.state, State::Reading { .. }) && now < self.accepted + GRACE
    }

    /// The next instant something must happen to it without any event from the client.
    fn deadline(&self, options: &HttpOptions) -> Option<Instant> {
        match &self.state {
            State::Reading { buf } if buf.is_empty() => Some(self.accepted + options.first_byte_timeout.min(options.request_timeout)),
            State::Reading { .. } => Some(self.accepted + options.request_timeout),
            State::Writing { deadline, .. } | State::Lingering { deadline, .. } => Some(*deadline),
            State::Done => None,
        }
    }

    /// Enforces the deadlines: a head too slow to arrive gets 408; a response too slow to be
    /// read, or a linger that ran out, ends the connection.
    fn expire(&mut self, now: Instant, options: &HttpOptions) {
        let Some(deadline) = self.deadline(options) else { return };
        if now < deadline {
            return;
        }
        match &self.state {
            State::Reading { buf } if buf.is_empty() => {
                self.respond(routes::error_page(408, "no request arrived in time"), now, options)
            }
            State::Reading { .. } => self.respond(routes::error_page(408, "the request took too long to arrive"), now, options),
            State::Writing { .. } => {
                log::debug!(target: "vram_monitor", "HTTP: a client read its response too slowly; closed");
                self.state = State::Done;
            }
            State::Lingering { .. } | State::Done => self.state = State::Done,
        }
    }

    fn poll_events(&self) -> libc::c_short {
        match self.state {
            State::Reading { .. } | State::Lingering { .. } => libc::POLLIN,
            State::Writing { .. } => libc::POLLOUT,
            State::Done => 0,
        }
    }

    /// One bounded step of whatever the connection is doing; never blocks.
    fn serve(&mut self, now: Instant, options: &HttpOptions, snapshot: &dyn Snapshot) {
        match &mut self.state {
            State::Reading { buf } => {
                let mut chunk = [0u8; CHUNK];
                let room = (options.max_request_bytes + 1).saturating_sub(buf.len()).clamp(1, CHUNK);
                match (&self.stream).read(&mut chunk[..room]) {
                    // Gone before a whole request: nobody to answer.
                    Ok(0) => self.state = State::Done,
                    Ok(n) => {
                        buf.extend_from_slice(&chunk[..n]);
                        match request::parse(buf, options.max_request_bytes) {
                            Head::Partial => {}
                            Head::Complete { method, path } => {
                                // A panic in a route (a bug) costs this request a 500, not the endpoint.
                                let answer = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                                    routes::answer(&method, &path, snapshot)
                                }))
                                .unwrap_or_else(|_| routes::error_page(500, "internal error"));
                                self.respond(answer, now, options);
                            }
                            Head::Refused { status, why } => self.respond(routes::error_page(status, &why), now, options),
                        }
                    }
                    Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::Interrupted) => {}
                    Err(_) => self.state = State::Done,
                }
            }
            State::Writing { .. } => self.write_some(now),
            State::Lingering { dropped, .. } => {
                let mut sink = [0u8; CHUNK];
                match (&self.stream).read(&mut sink) {
                    Ok(0) => self.state = State::Done,
                    Ok(n) => {
                        *dropped += n;
                        if *dropped > LINGER_BYTES {
                            self.state = State::Done;
                        }
                    }
                    Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::Interrupted) => {}
                    Err(_) => self.state = State::Done,
                }
            }
            State::Done => {}
        }
    }

    fn respond(&mut self, out: Vec<u8>, now: Instant, options: &HttpOptions) {
        self.state = State::Writing { out, written: 0, deadline: now + options.request_timeout };
        // Most answers fit the socket's buffer: written now, without waiting for a turn.
        self.write_some(now);
    }

    fn write_some(&mut self, now: Instant) {
        let State::Writing { out, written, .. } = &mut self.state else { return };
        loop {
            // TcpStream's write sends with MSG_NOSIGNAL: a client gone is an error, not SIGPIPE.
            match (&self.stream).write(&out[*written..]) {
                Ok(0) => {
                    self.state = State::Done;
                    return;
                }
                Ok(n) => {
                    *written += n;
                    if *written == out.len() {
                        let _ = self.stream.shutdown(Shutdown::Write);
                        self.state = State::Lingering { deadline: now + LINGER, dropped: 0 };
                        return;
                    }
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) if e.kind() == ErrorKind::WouldBlock => return,
                Err(_) => {
                    self.state = State::Done;
                    return;
                }
            }
        }
    }

    /// Closes it now, first reading (boundedly) what it sent so that the close is an orderly
    /// one rather than a reset.
    fn close_cleanly(self) {
        let mut sink = [0u8; CHUNK];
        for _ in 0..16 {
            match (&self.stream).read(&mut sink) {
                Ok(n) if n > 0 => continue,
                _ => break,
            }
        }
    }
}

struct Server {
    listener: TcpListener,
    options: HttpOptions,
    snapshot: Arc<dyn Snapshot>,
    connections: Vec<Connection>,
    next_seq: u64,
    /// A descriptor held back for the moment the process has none left (see the module doc).
    reserve: Option<TcpListener>,
    accept_paused_until: Option<Instant>,
    last_fd_warning: Option<Instant>,
}

/// Serves until `stop` is set. Returns having closed every socket it held.
pub(super) fn run(listener: TcpListener, wakee: UnixStream, options: HttpOptions, snapshot: Arc<dyn Snapshot>, stop: &AtomicBool) {
    let reserve = listener.try_clone().ok();
    let mut server = Server {
        listener,
        options,
        snapshot,
        connections: Vec::new(),
        next_seq: 0,
        reserve,
        accept_paused_until: None,
        last_fd_warning: None,
    };
    let mut fds: Vec<libc::pollfd> = Vec::new();
    while !stop.load(Ordering::Acquire) {
        let now = Instant::now();
        server.expire_and_reap(now);
        let accepting = server.accept_paused_until.is_none_or(|until| now >= until);
        if accepting {
            server.accept_paused_until = None;
        }
        fds.clear();
        fds.push(libc::pollfd { fd: wakee.as_raw_fd(), events: libc::POLLIN, revents: 0 });
        // A negative descriptor is skipped by poll: how accepting pauses.
        let listen_fd = if accepting { server.listener.as_raw_fd() } else { -1 };
        fds.push(libc::pollfd { fd: listen_fd, events: libc::POLLIN, revents: 0 });
        for c in &server.connections {
            fds.push(libc::pollfd { fd: c.stream.as_raw_fd(), events: c.poll_events(), revents: 0 });
        }
        let timeout = server.next_wake(now).saturating_duration_since(now).min(MAX_WAIT);
        let timeout_ms = timeout.as_micros().div_ceil(1000) as libc::c_int;
        // SAFETY: `fds` is a valid array of `fds.len()` pollfd structures for the whole call.
        let ready = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, timeout_ms) };
        if ready < 0 {
            let e = std::io::Error::last_os_error();
            // More descriptors polled than RLIMIT_NOFILE now allows (the limit was lowered
            // under us): nobody can be served until fewer are polled, so close one, even
            // within its grace.
            let shed = e.raw_os_error() == Some(libc::EINVAL) && server.evict(4, Instant::now() + GRACE);
            if !shed && e.kind() != ErrorKind::Interrupted {
                // ENOMEM and the like: wait a little rather than spin, then try again.
                log::debug!(target: "vram_monitor", "HTTP poll failed: {e}");
                std::thread::sleep(ACCEPT_BACKOFF);
            }
            continue;
        }
        if fds[0].revents != 0 {
            let mut sink = [0u8; 64];
            while matches!((&wakee).read(&mut sink), Ok(n) if n > 0) {}
        }
        let now = Instant::now();
        for (c, fd) in server.connections.iter_mut().zip(&fds[2..]) {
            if fd.revents != 0 {
                c.serve(now, &server.options, &*server.snapshot);
            }
        }
        if fds[1].revents != 0 {
            server.accept_some(now);
        }
    }
}

impl Server {
    fn expire_and_reap(&mut self, now: Instant) {
        for c in &mut self.connections {
            c.expire(now, &self.options);
        }
        self.connections.retain(|c| !matches!(c.state, State::Done));
        if self.reserve.is_none() && !self.connections.iter().any(|c| c.from_reserve) {
            // Fails while the process is still out of descriptors; tried again next turn.
            self.reserve = self.listener.try_clone().ok();
        }
    }

    fn next_wake(&self, now: Instant) -> Instant {
        let mut wake = now + MAX_WAIT;
        for deadline in self.connections.iter().filter_map(|c| c.deadline(&self.options)) {
            wake = wake.min(deadline);
        }
        if let Some(until) = self.accept_paused_until {
            wake = wake.min(until);
        }
        wake
    }

    fn accept_some(&mut self, now: Instant) {
        for turn in 0..ACCEPTS_PER_TURN {
            if self.connections.len() >= self.options.max_connections {
                // Poll said one waits at the first accept; after that, ask before making room.
                if turn > 0 && !readable(&self.listener) {
                    return;
                }
                if !self.evict(4, now) {
                    self.pause(now);
                    return;
                }
            }
            match self.listener.accept() {
                Ok((stream, _)) => self.admit(stream, false, now),
                Err(e) if e.kind() == ErrorKind::WouldBlock => return,
                Err(e) if matches!(e.kind(), ErrorKind::Interrupted | ErrorKind::ConnectionAborted) => {}
                Err(e) if out_of_descriptors(&e) => {
                    // The kernel looks for a free descriptor before it looks for a waiting
                    // connection: this says nothing about whether one waits. Ask, so that no
                    // connection is closed to make room for none.
                    if !readable(&self.listener) {
                        return;
                    }
                    if self.last_fd_warning.is_none_or(|t| now.duration_since(t) >= WARN_EVERY) {
                        self.last_fd_warning = Some(now);
                        log::warn!(target: "vram_monitor", "HTTP: the process is out of file descriptors ({e}); closing idle connections to accept new ones");
                    }
                    // Our own idle connections first: closing one frees the descriptor that
                    // the waiting connection needs. Not one being answered.
                    if self.evict(3, now) {
                        continue;
                    }
                    if let Some(reserve) = self.reserve.take() {
                        drop(reserve);
                        if let Ok((stream, _)) = self.listener.accept() {
                            self.admit(stream, true, now);
                            continue;
                        }
                    }
                    // Nothing to close yet: the waiting connections stay in the listen queue.
                    self.pause(now);
                    return;
                }
                Err(e) => {
                    log::debug!(target: "vram_monitor", "HTTP accept failed: {e}");
                    self.accept_paused_until = Some(now + ACCEPT_BACKOFF);
                    return;
                }
            }
        }
    }

    /// Stops accepting until a connection may be closed to make room (its grace ends), or
    /// [`ACCEPT_BACKOFF`] at most.
    fn pause(&mut self, now: Instant) {
        let grace_ends = self.connections.iter().filter(|c| c.protected(now)).map(|c| c.accepted + GRACE).min();
        let until = grace_ends.unwrap_or(now + ACCEPT_BACKOFF).min(now + ACCEPT_BACKOFF);
        self.accept_paused_until = Some(until.max(now + Duration::from_millis(1)));
    }

    fn admit(&mut self, stream: TcpStream, from_reserve: bool, now: Instant) {
        if stream.set_nonblocking(true).is_err() {
            // Cannot be served without blocking the loop; dropping it closes it.
            return;
        }
        let _ = stream.set_nodelay(true);
        let seq = self.next_seq;
        self.next_seq += 1;
        let mut c = Connection { stream, accepted: now, seq, state: State::Reading { buf: Vec::new() }, from_reserve };
        // A probe's request is usually there already: read it now rather than a turn later.
        c.serve(now, &self.options, &*self.snapshot);
        self.connections.push(c);
    }

    /// Closes the connection of lowest eviction rank (at most `max_rank`), the oldest first,
    /// that is not within its grace. False when there is none.
    fn evict(&mut self, max_rank: u8, now: Instant) -> bool {
        let victim = self
            .connections
            .iter()
            .enumerate()
            .filter(|(_, c)| c.eviction_rank() <= max_rank && !c.protected(now))
            .min_by_key(|(_, c)| (c.eviction_rank(), c.seq))
            .map(|(i, _)| i);
        let Some(victim) = victim else { return false };
        log::debug!(target: "vram_monitor", "HTTP: closed an idle connection to make room");
        self.connections.remove(victim).close_cleanly();
        true
    }
}

/// Whether a connection waits to be accepted (a poll that does not wait).
fn readable(listener: &TcpListener) -> bool {
    let mut fd = libc::pollfd { fd: listener.as_raw_fd(), events: libc::POLLIN, revents: 0 };
    // SAFETY: one valid pollfd for the duration of the call.
    unsafe { libc::poll(&mut fd, 1, 0) == 1 && fd.revents & libc::POLLIN != 0 }
}

fn out_of_descriptors(e: &std::io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM))
}
