//! What each request is answered: the status, headers and body, as the bytes to write.
//! Pure: reads the snapshot, touches no socket.

use super::Snapshot;

/// The paths served, with the line `GET /` shows for each.
const PATHS: [(&str, &str); 4] = [
    ("/health", "JSON health: 200 when healthy, 503 when not"),
    ("/readyz", "the same as /health (for readiness probes)"),
    ("/livez", "200 while the monitor is checking, 503 when it has stalled (for liveness probes)"),
    ("/metrics", "Prometheus metrics"),
];

/// The whole response to `method` on `path`.
pub(super) fn answer(method: &str, path: &str, snapshot: &dyn Snapshot) -> Vec<u8> {
    if path != "/" && !PATHS.iter().any(|(p, _)| *p == path) {
        return error_page(404, "not found: this endpoint serves /health, /readyz, /livez and /metrics");
    }
    let head_only = match method {
        "GET" => false,
        "HEAD" => true,
        _ => {
            return response(
                405,
                "text/plain; charset=utf-8",
                b"method not allowed: this endpoint is read-only (GET, HEAD)\n",
                false,
                &[("Allow", "GET, HEAD")],
            )
        }
    };
    match path {
        "/health" | "/readyz" => {
            let health = snapshot.health();
            let body = crate::output::report::health_document(&health, &snapshot.devices());
            let status = if health.healthy { 200 } else { 503 };
            response(status, "application/json", body.as_bytes(), head_only, &[])
        }
        "/livez" => {
            let (status, body): (u16, &[u8]) = if snapshot.live() {
                (200, b"live: the monitor is checking\n")
            } else {
                (503, b"stalled: the monitor has stopped checking\n")
            };
            response(status, "text/plain; charset=utf-8", body, head_only, &[])
        }
        "/metrics" => {
            let health = snapshot.health();
            let devices = snapshot.devices();
            let body = crate::output::prometheus::render(&health, snapshot.figures(), &devices);
            response(200, crate::output::prometheus::CONTENT_TYPE, body.as_bytes(), head_only, &[])
        }
        _ => {
            let mut body = format!("vram-monitor {}\n", crate::VERSION);
            for (path, what) in PATHS {
                body.push_str(&format!("{path:<9} {what}\n"));
            }
            response(200, "text/plain; charset=utf-8", body.as_bytes(), head_only, &[])
        }
    }
}

/// A plain-text error answer.
pub(super) fn error_page(status: u16, why: &str) -> Vec<u8> {
    response(status, "text/plain; charset=utf-8", format!("{why}\n").as_bytes(), false, &[])
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

fn response(status: u16, content_type: &str, body: &[u8], head_only: bool, extra: &[(&str, &str)]) -> Vec<u8> {
    let mut head = format!(
        "HTTP/1.1 {status} {}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nCache-Control: no-store\r\nConnection: close\r\n",
        reason(status),
        body.len()
    );
    for (name, value) in extra {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str("\r\n");
    let mut bytes = head.into_bytes();
    if !head_only {
        bytes.extend_from_slice(body);
    }
    bytes
}
