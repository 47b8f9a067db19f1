//! What a run found: each scenario's row and what the report keeps beside the table (raw
//! pointer attributes, the no-context check, process VRAM, the cost of a check).

use std::ffi::c_int;
use std::fmt::Write as _;

use vram_monitor::{PointerInfo, Verdict};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Status {
    Pass,
    Fail,
    Skip,
}

impl Status {
    pub fn word(self) -> &'static str {
        match self {
            Status::Pass => "PASS",
            Status::Fail => "FAIL",
            Status::Skip => "SKIP",
        }
    }
}

/// One scenario's outcome: a line of output and a row of the report's table.
pub struct Row {
    pub name: &'static str,
    pub allocation: String,
    pub expected: String,
    pub registration: String,
    pub check_now: String,
    pub periodic: String,
    pub callback: String,
    pub status: Status,
    pub saw: String,
    pub notes: Vec<String>,
    /// The verdicts this scenario saw the library report from real memory, when it passed
    /// (for the "verdicts produced" line).
    pub shows: Vec<Verdict>,
}

impl Row {
    pub fn new(name: &'static str, allocation: &str, expected: &str) -> Row {
        Row {
            name,
            allocation: allocation.into(),
            expected: expected.into(),
            registration: "—".into(),
            check_now: "—".into(),
            periodic: "—".into(),
            callback: "—".into(),
            status: Status::Fail,
            saw: "nothing (the scenario did not finish)".into(),
            notes: Vec::new(),
            shows: Vec::new(),
        }
    }

    pub fn fail(&mut self, why: impl Into<String>) {
        self.status = Status::Fail;
        self.saw = why.into();
    }

    pub fn line(&self) -> String {
        let mut line = format!(
            "{} {}: expected {}, saw {}",
            self.status.word(),
            self.name,
            self.expected,
            self.saw
        );
        for note in &self.notes {
            let _ = write!(line, "\n     note: {note}");
        }
        line
    }
}

/// What the driver reported for one address, through the library and directly.
pub struct Probe {
    pub what: String,
    pub address: u64,
    pub library: Result<PointerInfo, String>,
    /// Result of `cuPointerGetAttributes` with the library's 8 attributes, asked directly.
    pub direct_all: c_int,
    /// `cuPointerGetAttribute(MAPPING_SIZE)` alone: result and value.
    pub mapping_size: (c_int, u64),
    /// `cuPointerGetAttribute(MAPPING_BASE_ADDR)` alone: result and value.
    pub mapping_base: (c_int, u64),
}

#[derive(Default)]
pub struct NoContext {
    /// NVML's figure for this process before and after the monitor ran (bytes; None: not
    /// listed).
    pub before: Option<Option<u64>>,
    pub after: Option<Option<u64>>,
    pub health_source: Option<String>,
    /// The child's report line.
    pub child: Option<String>,
}

#[derive(Default)]
pub struct ProcessVramResult {
    pub monitor_bytes: u64,
    pub monitor_source: String,
    pub nvml_bytes: Option<Option<u64>>,
}

pub struct Timing {
    pub registrations: usize,
    pub register_us_each: f64,
    pub check_min_us: u64,
    pub check_median_us: u64,
    pub wall_min_us: u64,
    pub empty_min_us: u64,
    pub nvml_min_us: u64,
    pub resident: u64,
    pub passes: usize,
}
