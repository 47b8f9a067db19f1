//! Reading a request head out of a connection's buffer: `httparse` does the parsing; this
//! decides what a parse result means for us and which path a request target names.

/// Most headers a request may have (more is 431).
const MAX_HEADERS: usize = 64;

/// What the bytes received so far amount to.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Head {
    /// Not a whole head yet: read more (within the bounds).
    Partial,
    /// A whole head: the method and the path it routes to (query and fragment removed).
    Complete { method: String, path: String },
    /// A head that will not be served: answer this status with this reason and close.
    Refused { status: u16, why: String },
}

/// Parses `buf`; `max_bytes` is the largest head accepted (the caller reads at most one byte
/// more, so a longer partial head is known to be too large).
pub(super) fn parse(buf: &[u8], max_bytes: usize) -> Head {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut request = httparse::Request::new(&mut headers);
    match request.parse(buf) {
        Ok(httparse::Status::Complete(_)) => Head::Complete {
            method: request.method.unwrap_or("").to_string(),
            path: route_path(request.path.unwrap_or("")).to_string(),
        },
        Ok(httparse::Status::Partial) if buf.len() > max_bytes => {
            Head::Refused { status: 431, why: "the request head is too large".into() }
        }
        Ok(httparse::Status::Partial) => Head::Partial,
        Err(httparse::Error::TooManyHeaders) => Head::Refused { status: 431, why: "too many request headers".into() },
        Err(httparse::Error::Version) => Head::Refused { status: 505, why: "only HTTP/1.0 and HTTP/1.1 are served".into() },
        Err(e) => {
            log::debug!(target: "vram_monitor", "malformed HTTP request: {e}");
            Head::Refused { status: 400, why: format!("malformed request: {e}") }
        }
    }
}

/// The path a request target routes by. Origin form (`/health?x`) is its path; absolute form
/// (`http://host:port/health`, which a server must accept, RFC 9112 section 3.2.2, and which
/// proxies send) is the path after the authority, `/` when there is none. Query and fragment
/// never take part in routing.
pub(super) fn route_path(target: &str) -> &str {
    let path = match scheme_end(target) {
        Some(rest) => match rest.find(['/', '?', '#']) {
            Some(i) if rest.as_bytes()[i] == b'/' => &rest[i..],
            _ => "/",
        },
        None => target,
    };
    path.split(['?', '#']).next().unwrap_or("")
}

/// For an absolute-form target, what follows `scheme://`.
fn scheme_end(target: &str) -> Option<&str> {
    let (scheme, rest) = target.split_once("://")?;
    let is_scheme = scheme.as_bytes().first().is_some_and(u8::is_ascii_alphabetic)
        && scheme.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'-' | b'.'));
    is_scheme.then_some(rest)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_route_by_their_path() {
        for (target, path) in [
            ("/health", "/health"),
            ("/health?verbose=1", "/health"),
            ("/health#x", "/health"),
            ("http://127.0.0.1:9464/health", "/health"),
            ("HTTP://example.com/metrics?x=1", "/metrics"),
            ("https://[::1]:9464/readyz", "/readyz"),
            ("http://127.0.0.1:9464", "/"),
            ("http://127.0.0.1:9464?x", "/"),
            ("*", "*"),
            ("/a://b", "/a://b"),
        ] {
            assert_eq!(route_path(target), path, "{target}");
        }
    }

    #[test]
    fn heads_are_partial_complete_or_refused() {
        assert_eq!(parse(b"GET /hea", 100), Head::Partial);
        assert_eq!(
            parse(b"GET http://x/livez?a HTTP/1.1\r\n\r\n", 100),
            Head::Complete { method: "GET".into(), path: "/livez".into() }
        );
        assert!(matches!(parse(b"GARBAGE\r\n\r\n", 100), Head::Refused { status: 400, .. }));
        assert!(matches!(parse(b"GET /aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa", 20), Head::Refused { status: 431, .. }));
        assert!(matches!(parse(b"PRI * HTTP/2.0\r\n\r\n", 100), Head::Refused { status: 505, .. }));
    }
}
