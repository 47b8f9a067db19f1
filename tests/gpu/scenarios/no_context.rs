//! No context created by the library: in this process (the engine's context current, NVML's
//! figure for the process before and after a monitor ran), and in a child that never makes one
//! (`VRAM_MONITOR_GPU_CHILD=no-context`: the library alone, then every primary context asked).

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use vram_monitor::{Monitor, MonitorOptions};

use crate::engine::{code_of, init_nvml, load_cuda, nvml_bytes_for, Gpu};
use crate::results::{Row, Status};
use crate::watch::{describe, monitor};
use crate::{CHILD_ENV, KIB, MIB, NEVER, PERIODIC, RESULTS_ENV};

pub fn s_no_context_created(g: &Gpu, row: &mut Row) -> Result<(), String> {
    let mut engine = g.alloc(64 * MIB)?;
    let _ = g.cuda.synchronize();
    let before = g.nvml_process_bytes()?;
    let (m, _events) = monitor(NEVER)?;
    let result = m.register(engine.ptr(), (64 * MIB) as u64, "engine weights");
    row.registration = describe(&result);
    let summary = m.check_now().map_err(|e| format!("check_now: {e}"))?;
    row.check_now = if summary.violations == 0 && summary.check_failures == 0 {
        "RESIDENT".into()
    } else {
        format!("{summary:?}")
    };
    let health = m.health();
    std::thread::sleep(Duration::from_millis(100));
    let after = g.nvml_process_bytes()?;
    {
        let mut nc = g.no_context.borrow_mut();
        nc.before = Some(before);
        nc.after = Some(after);
        nc.health_source = Some(format!(
            "{} bytes ({})",
            health.process_vram.bytes,
            health.process_vram.source.name()
        ));
    }
    drop(m);
    engine.free()?;
    let show = |v: Option<u64>| {
        v.map_or_else(
            || "not listed".to_string(),
            |b| format!("{} MiB ({b} bytes)", b / MIB as u64),
        )
    };
    row.saw = format!("NVML before {}, after {}", show(before), show(after));
    row.status = if before.is_some() && before == after && result.is_ok() {
        Status::Pass
    } else {
        Status::Fail
    };
    if before.is_none() {
        row.notes
            .push("NVML does not list this process although it holds a context: the check proves nothing".into());
    }
    Ok(())
}

pub fn s_no_context_child(g: &Gpu, row: &mut Row) -> Result<(), String> {
    let exe = std::env::current_exe().map_err(|e| format!("current_exe: {e}"))?;
    let mut child = Command::new(exe)
        .env(CHILD_ENV, "no-context")
        .env_remove(RESULTS_ENV)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .map_err(|e| format!("spawning the child: {e}"))?;
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(20)),
            Ok(None) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err("the child ran for more than 60 s; killed".into());
            }
            Err(e) => return Err(format!("waiting for the child: {e}")),
        }
    };
    let mut out = String::new();
    if let Some(mut stdout) = child.stdout.take() {
        use std::io::Read;
        let _ = stdout.read_to_string(&mut out);
    }
    let line = out
        .lines()
        .find(|l| l.starts_with("CHILD-RESULT "))
        .map(|l| l.trim_start_matches("CHILD-RESULT ").to_string());
    g.no_context.borrow_mut().child = line.clone();
    let Some(line) = line else {
        return Err(format!("the child ({status}) printed no result: {out:?}"));
    };
    let field = |key: &str| {
        line.split_whitespace().find_map(|kv| {
            kv.strip_prefix(key)
                .and_then(|r| r.strip_prefix('='))
                .map(str::to_string)
        })
    };
    row.registration = field("register").unwrap_or_default();
    row.check_now = field("check_now").unwrap_or_default();
    row.saw = line.clone();
    let pass = status.success()
        && field("primary_active").as_deref() == Some("0")
        && field("current_context").as_deref() == Some("null")
        && field("nvml_listed").as_deref() == Some("no");
    row.status = if pass { Status::Pass } else { Status::Fail };
    Ok(())
}

/// A value without spaces, for the child's `key=value` line.
pub fn token(s: &str) -> String {
    s.replace(": ", ":").replace(' ', "_")
}

/// The child of `no-context-child`: the library alone, in a process that never made a
/// context. Prints one `CHILD-RESULT key=value ...` line.
pub fn child() -> i32 {
    let cuda = match load_cuda() {
        Ok(c) => c,
        Err(e) => {
            println!("CHILD-RESULT error={}", token(&e));
            return 1;
        }
    };
    let m = match Monitor::new(MonitorOptions { interval: PERIODIC, ..Default::default() }) {
        Ok(m) => m,
        Err(e) => {
            println!("CHILD-RESULT error=Monitor::new:{}", token(&e.to_string()));
            return 1;
        }
    };
    // Host heap memory the driver has never seen: refused, but the driver was asked.
    let host = vec![0u8; 64 * KIB];
    let result = m.register(host.as_ptr() as u64, host.len() as u64, "host heap");
    let check = match m.check_now() {
        Ok(s) => format!("ok({}_checked)", s.checked),
        Err(e) => format!("error:{}", token(&e.to_string())),
    };
    std::thread::sleep(Duration::from_millis(300)); // several periodic sweeps
    let health = m.health();
    drop(m);
    // Every device's primary context: on a machine with several GPUs the library must not
    // have made one on any. `active` counts the active ones; `state` is the first error.
    let counted = cuda.device_count();
    let (count, mut state) = (*counted.as_ref().unwrap_or(&0), code_of(&counted));
    let mut active = 0;
    for ordinal in 0..count {
        let answer = cuda.device(ordinal).and_then(|dev| cuda.primary_context_state(dev));
        if state == 0 {
            state = code_of(&answer);
        }
        active += i32::from(matches!(answer, Ok((_, true))));
    }
    let current = cuda.current();
    let current_code = code_of(&current);
    let listed = match init_nvml().and_then(|nvml| nvml_bytes_for(&nvml, std::process::id())) {
        Ok(Some(b)) => format!("yes nvml_bytes={b}"),
        Ok(None) => "no".to_string(),
        Err(e) => format!("unknown nvml_error={}", token(&e)),
    };
    println!(
        "CHILD-RESULT register={} check_now={} checks_completed={} process_vram_source={} primary_state_call={} primary_active={} devices={count} current_context={} nvml_listed={}",
        token(&describe(&result)),
        check,
        health.checks_completed,
        health.process_vram.source.name(),
        state,
        active,
        match current { Err(_) => format!("error{current_code}"), Ok(c) if c.is_null() => "null".into(), Ok(_) => "SET".into() },
        listed
    );
    0
}
