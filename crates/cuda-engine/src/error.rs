//! What goes wrong: no driver library, a function the driver lacks, or a call that failed.

use std::ffi::c_int;
use std::fmt;

/// The result of a driver call made through this crate.
pub type Result<T> = std::result::Result<T, Error>;

/// Why a driver call did not succeed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Error {
    /// No driver library could be loaded; says why.
    NoLibrary(String),
    /// The driver library has no function of this name (a stub, an old driver, the fake).
    MissingSymbol(&'static str),
    /// The call returned a `CUresult` other than `CUDA_SUCCESS`.
    Call {
        /// The function called, as the message names it (`cuMemAlloc_v2`,
        /// `cuMemCreate(location HOST)`).
        call: String,
        /// The `CUresult`.
        code: c_int,
        /// The driver's name for it, `CUDA_ERROR_OUT_OF_MEMORY (2)`, or `CUresult 2` where the
        /// driver has none ([`crate::Cuda::error_name`]).
        name: String,
    },
    /// The call succeeded but answered something unusable (a granularity of 0).
    Unexpected(String),
}

impl Error {
    /// The `CUresult` of a failed call; `None` when no call was made.
    pub fn code(&self) -> Option<c_int> {
        match self {
            Error::Call { code, .. } => Some(*code),
            _ => None,
        }
    }

    /// What the driver answered: its name for the `CUresult` of a failed call, else the
    /// whole message (no call was made).
    pub fn answer(&self) -> String {
        match self {
            Error::Call { name, .. } => name.clone(),
            other => other.to_string(),
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::NoLibrary(why) => f.write_str(why),
            Error::MissingSymbol(name) => write!(f, "the driver has no {name}"),
            Error::Call { call, name, .. } => write!(f, "{call} failed with {name}"),
            Error::Unexpected(what) => f.write_str(what),
        }
    }
}

impl std::error::Error for Error {}

/// The message, for programs whose errors are strings (`?` on a driver call in a function
/// returning `Result<_, String>`).
impl From<Error> for String {
    fn from(error: Error) -> String {
        error.to_string()
    }
}
