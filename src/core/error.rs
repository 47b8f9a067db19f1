//! The errors of the Rust API. The C API maps each to one result code.

use crate::core::driver::DriverError;
use crate::core::registry::RegistrationId;
use crate::core::verdict::Verdict;

/// Why a monitor call did not do what was asked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Error {
    /// An argument is out of its documented range (the text says which).
    InvalidArgument(&'static str),
    /// A label is not acceptable (the text says why).
    InvalidLabel(&'static str),
    /// No registration with this id exists in this monitor (never did, or already removed).
    UnknownRegistration(RegistrationId),
    /// Registration refused: the memory is not resident now. The verdict says why.
    Refused(Verdict),
    /// The CUDA driver is missing, incomplete, or a query failed.
    Driver(DriverError),
    /// The call would wait for the monitor thread, but it runs on that thread (inside a
    /// callback): it would deadlock, so it is refused.
    CalledFromCallback,
    /// The monitor thread could not be started.
    ThreadSpawn(String),
    /// The monitor thread has stopped.
    Stopped,
    /// Called in a child process forked after the monitor was created: the monitor thread
    /// does not exist there (see [`crate::Monitor::in_forked_child`]).
    Forked,
    /// The built-in HTTP endpoint could not listen on the address (in use, not permitted,
    /// not an address of this machine). The text says why.
    HttpBind(String),
    /// The built-in HTTP endpoint of a C handle is already serving (`vram_monitor_serve_http`);
    /// stop it first.
    AlreadyServing,
    /// The same range appears twice in one `register_many` call (this is the later entry).
    DuplicateRange,
    /// Not registered: another entry of an all-or-nothing `register_many` call failed.
    EntriesFailed,
    /// Sealing or verifying needs integrity enabled for this device first
    /// ([`crate::Monitor::enable_integrity`]).
    IntegrityNotEnabled(i32),
    /// `enable_integrity` was called on a thread where no CUDA context is current: the
    /// library creates none, it borrows the engine's.
    NoCurrentContext,
    /// `enable_integrity` for one device on a thread whose current context is another
    /// device's (that device is given).
    ContextWrongDevice(i32),
    /// Integrity is already enabled for this device.
    IntegrityAlreadyEnabled(i32),
    /// The registration is sealed already (reseal to take a new fingerprint).
    AlreadySealed,
    /// The registration is not sealed.
    NotSealed,
    /// Only resident memory can be sealed: this registration's verdict is given.
    NotResident(Verdict),
    /// The driver refused the fingerprint kernel (a driver older than the PTX, or no JIT).
    KernelUnavailable(DriverError),
    /// A launch or copy failed in the lent context (a sticky error such as an illegal
    /// address, or the context was destroyed): content unknown, the monitor is unhealthy.
    IntegrityFailed(DriverError),
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Error::InvalidArgument(why) => write!(f, "invalid argument: {why}"),
            Error::InvalidLabel(why) => write!(f, "invalid label: {why}"),
            Error::UnknownRegistration(id) => write!(f, "no registration with id {id}"),
            Error::Refused(verdict) => {
                write!(f, "registration refused: memory is {} ({})", verdict.name(), verdict.explanation())
            }
            Error::Driver(error) => write!(f, "CUDA driver: {error}"),
            Error::CalledFromCallback => f.write_str("called from inside a monitor callback, where it would deadlock"),
            Error::ThreadSpawn(why) => write!(f, "could not start the monitor thread: {why}"),
            Error::Stopped => f.write_str("the monitor thread has stopped"),
            Error::Forked => f.write_str("called in a forked child process, where the monitor's thread does not exist"),
            Error::HttpBind(why) => write!(f, "HTTP endpoint: {why}"),
            Error::AlreadyServing => f.write_str("the HTTP endpoint is already serving"),
            Error::DuplicateRange => f.write_str("the same range appears earlier in this register_many call"),
            Error::EntriesFailed => f.write_str("not registered: another entry of this all-or-nothing call failed"),
            Error::IntegrityNotEnabled(device) => write!(f, "integrity is not enabled for device {device}"),
            Error::NoCurrentContext => f.write_str("no CUDA context is current on this thread (make the engine's context current first)"),
            Error::ContextWrongDevice(device) => write!(f, "the current CUDA context belongs to device {device}"),
            Error::IntegrityAlreadyEnabled(device) => write!(f, "integrity is already enabled for device {device}"),
            Error::AlreadySealed => f.write_str("the registration is already sealed (reseal takes a new fingerprint)"),
            Error::NotSealed => f.write_str("the registration is not sealed"),
            Error::NotResident(verdict) => write!(f, "only resident memory can be sealed: this registration is {}", verdict.name()),
            Error::KernelUnavailable(error) => write!(f, "the driver refused the fingerprint kernel: {error}"),
            Error::IntegrityFailed(error) => write!(f, "verification failed in the lent context: {error}"),
        }
    }
}

impl std::error::Error for Error {}

impl From<DriverError> for Error {
    fn from(error: DriverError) -> Error {
        Error::Driver(error)
    }
}
