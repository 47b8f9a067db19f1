//! The parent side of CHECK_FAILED: runs one attempt's child and reads what it reported into
//! an [`Attempt`].

use std::ffi::c_int;
use std::fmt::Write as _;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::{Attempt, Outcome, ATTEMPT_LIMIT};
use crate::{CHILD_ENV, RESULTS_ENV};

/// A child process's run: its exit status (None: killed after the limit) and output.
pub struct ChildRun {
    pub status: Option<std::process::ExitStatus>,
    pub stdout: String,
    pub stderr: String,
}

impl ChildRun {
    /// The `CHILD-FIELD key value` lines, if the child got as far as `CHILD-RESULT done`.
    pub fn fields(&self) -> Option<Vec<(String, String)>> {
        if !self.stdout.lines().any(|l| l == "CHILD-RESULT done") {
            return None;
        }
        Some(
            self.stdout
                .lines()
                .filter_map(|l| l.strip_prefix("CHILD-FIELD "))
                .map(|l| match l.split_once(' ') {
                    Some((k, v)) => (k.to_string(), v.to_string()),
                    None => (l.to_string(), String::new()),
                })
                .collect(),
        )
    }

    /// Exit status, the last step the child reported, and the end of its stderr.
    pub fn describe(&self) -> String {
        let status = match &self.status {
            Some(s) => format!("child {s}"),
            None => format!("child killed after {} s", ATTEMPT_LIMIT.as_secs()),
        };
        let step = self
            .stdout
            .lines()
            .filter_map(|l| l.strip_prefix("CHILD-STEP "))
            .next_back()
            .unwrap_or("none");
        let err: Vec<&str> = self.stderr.lines().rev().take(3).collect();
        let mut text = format!("{status}; last step: {step}");
        if !err.is_empty() {
            let err: Vec<&str> = err.into_iter().rev().collect();
            let _ = write!(text, "; stderr: {}", err.join(" / "));
        }
        text
    }
}

/// Runs this program as the child `which`, for at most `limit`.
pub fn run_child(which: &str, limit: Duration) -> Result<ChildRun, String> {
    use std::io::Read;
    let exe = std::env::current_exe().map_err(|e| format!("current_exe: {e}"))?;
    let mut child = Command::new(exe)
        .env(CHILD_ENV, which)
        .env_remove(RESULTS_ENV)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("spawning the child: {e}"))?;
    let read = |pipe: Option<Box<dyn Read + Send>>| {
        std::thread::spawn(move || {
            let mut text = String::new();
            if let Some(mut pipe) = pipe {
                let mut bytes = Vec::new();
                let _ = pipe.read_to_end(&mut bytes);
                text = String::from_utf8_lossy(&bytes).into_owned();
            }
            text
        })
    };
    let stdout = read(child.stdout.take().map(|p| Box::new(p) as Box<dyn Read + Send>));
    let stderr = read(child.stderr.take().map(|p| Box::new(p) as Box<dyn Read + Send>));
    let deadline = Instant::now() + limit;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break Some(status),
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(20)),
            Ok(None) => {
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
            Err(e) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!("waiting for the child: {e}"));
            }
        }
    };
    Ok(ChildRun {
        status,
        stdout: stdout.join().unwrap_or_default(),
        stderr: stderr.join().unwrap_or_default(),
    })
}

/// Reads one attempt's child output into an [`Attempt`].
pub fn judge_attempt(name: &'static str, what: &'static str, run: &ChildRun) -> Attempt {
    let mut attempt = Attempt::new(name, what);
    let Some(fields) = run.fields() else {
        attempt.detail = format!("no result: {}", run.describe());
        return attempt;
    };
    let get = |key: &str| {
        fields
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    };
    if let Some(error) = get("error") {
        attempt.detail = format!("{error} ({})", run.describe());
        return attempt;
    }
    attempt.trigger = get("trigger").unwrap_or("—").to_string();
    if let Some(before) = get("before").filter(|b| *b != "ok") {
        attempt.detail = format!("before the change: {before}");
        return attempt;
    }
    let code = |key: &str| get(key).and_then(|v| v.parse::<c_int>().ok());
    let (Some(here), Some(thread)) = (code("query_here"), code("query_thread")) else {
        attempt.detail = format!("the child reported no query result ({})", run.describe());
        return attempt;
    };
    attempt.query = format!(
        "{} on the thread that broke it; {} on a thread without a context",
        get("query_here_name").unwrap_or("?"),
        get("query_thread_name").unwrap_or("?")
    );
    attempt.library = get("library").unwrap_or("—").to_string();
    attempt.check_now = format!(
        "{}; events {}; {}; registration's verdict {}",
        get("check_now").unwrap_or("?"),
        get("a_events").unwrap_or("?"),
        get("a_health").unwrap_or("?"),
        get("a_verdict").unwrap_or("?")
    );
    attempt.periodic = format!(
        "events {} ({}); {}; registration's verdict {}",
        get("b_events").unwrap_or("?"),
        get("b_waited").unwrap_or("?"),
        get("b_health").unwrap_or("?"),
        get("b_verdict").unwrap_or("?")
    );
    if let Some(message) = get("a_message").filter(|m| *m != "—") {
        attempt.detail = format!("callback message: {message}");
    }
    let failed_health = "healthy false, last_check_failed true";
    // Once the library's exit hook has run (the process is exiting), no callback may run:
    // there CHECK_FAILED must reach the summary and the snapshots, and no event the host.
    let exiting = get("exiting") == Some("yes");
    let reported_to = |events: Option<&str>| {
        if exiting {
            events == Some("none")
        } else {
            events.is_some_and(|e| e.split(',').any(|x| x == "check_failed:CHECK_FAILED"))
        }
    };
    let check_now_reported =
        code("check_failures").unwrap_or(0) >= 1 && reported_to(get("a_events")) && get("a_health") == Some(failed_health);
    let periodic_reported = reported_to(get("b_events")) && get("b_health") == Some(failed_health);
    if exiting {
        let _ = write!(
            attempt.detail,
            "{}during exit, after the library's exit hook: reported by the summary and both snapshots, no callback (the exit contract)",
            if attempt.detail.is_empty() { "" } else { "; " }
        );
    }
    // The monitor thread has no context current: the query that matters is the one from a
    // thread without one.
    let driver_failed = thread != 0;
    attempt.outcome = if check_now_reported && periodic_reported {
        Outcome::Produced
    } else if driver_failed {
        Outcome::Missed
    } else if get("triggered") == Some("yes") {
        if here != 0 {
            let _ = write!(
                attempt.detail,
                "{}the query fails only with the broken context current; the monitor's thread has none",
                if attempt.detail.is_empty() { "" } else { "; " }
            );
        }
        Outcome::Answered
    } else {
        Outcome::NotTriggered
    };
    attempt
}
