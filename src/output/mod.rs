//! Outputs: what the monitor's state looks like outside. Reports ([`report`]: [`text`] and
//! [`json`]),
//! Prometheus metrics ([`prometheus`]) and the built-in HTTP endpoint ([`http`], the `http`
//! feature). They read the monitor through its read view ([`crate::MonitorView`]); the monitor
//! imports none of them.

#[cfg(feature = "http")]
pub mod http;
pub mod json;
pub mod prometheus;
pub mod report;
pub mod text;
