//! CHECK_FAILED from the real driver: break the driver under a registered buffer, in a child
//! process of its own per attempt ([`child`]), and judge what the child saw ([`parent`]).

pub mod child;
pub mod parent;

use std::fmt::Write as _;
use std::time::Duration;

use vram_monitor::Verdict;

use self::parent::{judge_attempt, run_child};
use crate::engine::Gpu;
use crate::results::{Row, Status};

/// The ways tried to make the real driver fail `cuPointerGetAttributes` on a registered
/// buffer, in order: (name, what is done after the buffer is registered). Each runs in a child
/// process of its own (this program again, with `VRAM_MONITOR_GPU_CHILD=check-failed:<name>`),
/// so the engine process is unaffected.
pub const ATTEMPTS: &[(&str, &str)] = &[
    (
        "sticky-illegal-address",
        "a kernel stores to address 0 (PTX, cuModuleLoadData + cuLaunchKernel), then cuCtxSynchronize: a sticky error in the context that owns the buffer",
    ),
    (
        "sticky-trap",
        "a kernel executes `trap`, then cuCtxSynchronize: a sticky launch failure in the context that owns the buffer",
    ),
    (
        "primary-context-reset",
        "cuDevicePrimaryCtxReset_v2 on the engine's primary context, which owns the buffer",
    ),
    (
        "context-destroyed",
        "the buffer allocated in a context of its own (cuCtxCreate), then cuCtxDestroy_v2 of that context",
    ),
    (
        "driver-shutting-down",
        "the process exits; the checks run in an atexit handler registered before the driver was loaded, so after the driver's own exit-time handlers",
    ),
];

/// How long one attempt's child may run (all of them together stay within the 90 s limit).
pub const ATTEMPT_LIMIT: Duration = Duration::from_secs(15);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The driver failed the query and both `check_now` and the periodic thread reported
    /// CHECK_FAILED.
    Produced,
    /// The driver failed the query, but the monitor did not report CHECK_FAILED: a library bug.
    Missed,
    /// The driver answered the query: this way does not make it fail.
    Answered,
    /// What was to break the driver did not happen (the kernel ran cleanly, a symbol is
    /// missing, ...).
    NotTriggered,
    /// The attempt itself could not run (the child failed, crashed or hung).
    Broken,
}

impl Outcome {
    pub fn words(self) -> &'static str {
        match self {
            Outcome::Produced => "CHECK_FAILED produced",
            Outcome::Missed => "the driver failed the query but the monitor did NOT report CHECK_FAILED",
            Outcome::Answered => "the driver answered the query (no failure)",
            Outcome::NotTriggered => "not triggered",
            Outcome::Broken => "could not run",
        }
    }
}

/// What one attempt did and saw.
pub struct Attempt {
    pub name: &'static str,
    pub what: &'static str,
    pub outcome: Outcome,
    /// The driver's answers to the calls that were to break it.
    pub trigger: String,
    /// `cuPointerGetAttributes` (the library's 8 attributes) on the buffer afterwards.
    pub query: String,
    /// `CudaDriver::pointer_info` on the buffer afterwards.
    pub library: String,
    pub check_now: String,
    pub periodic: String,
    /// Why it could not run, or anything else worth saying.
    pub detail: String,
}

impl Attempt {
    pub fn new(name: &'static str, what: &'static str) -> Attempt {
        Attempt {
            name,
            what,
            outcome: Outcome::Broken,
            trigger: "—".into(),
            query: "—".into(),
            library: "—".into(),
            check_now: "—".into(),
            periodic: "—".into(),
            detail: String::new(),
        }
    }

    pub fn note(&self) -> String {
        let mut note = format!(
            "attempt {}: {}; trigger: {}; cuPointerGetAttributes: {}; check_now: {}; periodic: {}",
            self.name,
            self.outcome.words(),
            self.trigger,
            self.query,
            self.check_now,
            self.periodic
        );
        if !self.detail.is_empty() {
            let _ = write!(note, "; {}", self.detail);
        }
        note
    }
}

pub fn s_check_failed(g: &Gpu, row: &mut Row) -> Result<(), String> {
    let mut attempts = Vec::new();
    for &(name, what) in ATTEMPTS {
        let attempt = match run_child(&format!("check-failed:{name}"), ATTEMPT_LIMIT) {
            Ok(run) => judge_attempt(name, what, &run),
            Err(e) => {
                let mut a = Attempt::new(name, what);
                a.detail = e;
                a
            }
        };
        row.notes.push(attempt.note());
        attempts.push(attempt);
    }
    let with = |o: Outcome| attempts.iter().filter(|a| a.outcome == o).map(|a| a.name).collect::<Vec<_>>();
    let (produced, missed, broken) = (with(Outcome::Produced), with(Outcome::Missed), with(Outcome::Broken));
    row.registration = if attempts.iter().any(|a| a.outcome != Outcome::Broken) {
        "ok (in each child)".into()
    } else {
        "—".into()
    };
    if !missed.is_empty() {
        row.status = Status::Fail;
        row.saw = format!(
            "the driver failed the query after {} but the monitor did not report CHECK_FAILED (library bug; see the attempts)",
            missed.join(", ")
        );
        row.check_now = "no CHECK_FAILED".into();
        row.periodic = "no CHECK_FAILED".into();
    } else if !produced.is_empty() {
        row.status = Status::Pass;
        row.shows = vec![Verdict::CheckFailed];
        row.saw = format!(
            "CHECK_FAILED from check_now and the periodic thread after {}",
            produced.join(", ")
        );
        row.check_now = format!("CHECK_FAILED ({})", produced.join(", "));
        row.periodic = row.check_now.clone();
        row.callback = "check_now: check_failed; periodic: check_failed".into();
    } else if !broken.is_empty() {
        row.status = Status::Fail;
        row.saw = format!(
            "no attempt produced CHECK_FAILED, and {} could not run (see the attempts)",
            broken.join(", ")
        );
    } else {
        row.status = Status::Skip;
        let answers: Vec<String> = attempts
            .iter()
            .map(|a| format!("{}: {}", a.name, a.outcome.words()))
            .collect();
        row.saw = format!(
            "not producible on this driver: it answered cuPointerGetAttributes after every attempt ({})",
            answers.join("; ")
        );
        row.check_now = "not producible on this driver".into();
        row.periodic = row.check_now.clone();
    }
    *g.check_failed.borrow_mut() = attempts;
    Ok(())
}
