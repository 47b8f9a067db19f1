//! The core: what the monitor knows, with no I/O of its own and no thread. Verdicts and the
//! inspection that reaches them, the registry, events, the health values, errors, the driver
//! *port* ([`driver::Driver`]), device-health values and their fold, process-VRAM values, and
//! the integrity core (fingerprint, seals, lanes, the GPU port).
//!
//! Dependencies point inward: nothing here imports [`crate::adapters`], [`crate::monitor`] or
//! [`crate::output`] (scripts/check-architecture.sh fails the build when something does).

pub mod batch;
pub mod clock;
pub mod device_health;
pub mod driver;
pub mod error;
pub mod events;
pub mod health;
pub mod inspect;
pub mod integrity;
pub mod process_vram;
pub mod registry;
pub mod sync;
pub mod verdict;
