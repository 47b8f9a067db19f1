//! The verdict table: one row a kind of memory, judged by registering it (and, for the
//! changes, checking after the change), printed as Markdown.

use vram_monitor::{Error, Monitor, RegistrationId, Verdict};

/// One kind of memory and what the monitor said about it.
pub struct Row {
    memory: String,
    expected: String,
    registration: String,
    after_check: String,
    /// Some(true) as expected, Some(false) misjudged, None not available here.
    pub ok: Option<bool>,
    note: String,
}

impl Row {
    /// A kind of memory this machine could not make: `why`.
    pub fn unavailable(memory: &str, expected: &str, why: String) -> Row {
        Row {
            memory: memory.into(),
            expected: expected.into(),
            registration: "—".into(),
            after_check: "—".into(),
            ok: None,
            note: why,
        }
    }
}

pub fn print_table(rows: &[Row]) {
    println!("| memory | expected | at registration | after check_now | result |");
    println!("|---|---|---|---|---|");
    for r in rows {
        let result = match r.ok {
            Some(true) => "as expected".to_string(),
            Some(false) => "**MISJUDGED**".to_string(),
            None => "not available here".to_string(),
        };
        let result = if r.note.is_empty() { result } else { format!("{result}: {}", r.note) };
        println!("| {} | {} | {} | {} | {} |", r.memory, r.expected, r.registration, r.after_check, result);
    }
}

fn registration_word(result: &Result<RegistrationId, Error>) -> String {
    match result {
        Ok(_) => "registered (RESIDENT)".into(),
        Err(Error::Refused(v)) => format!("refused {}", v.name()),
        Err(other) => format!("error: {other}"),
    }
}

fn verdict_of(monitor: &Monitor, id: RegistrationId) -> Option<Verdict> {
    monitor.registrations().into_iter().find(|r| r.id == id).map(|r| r.verdict())
}

/// Registers `[ptr, ptr + size)` and compares with `expected` (RESIDENT: registered, and a
/// check keeps it resident; anything else: refused with that verdict). Unregisters after.
pub fn judge(monitor: &Monitor, memory: &str, ptr: u64, size: usize, expected: Verdict) -> Row {
    let result = monitor.register(ptr, size as u64, memory);
    let mut row = Row {
        memory: memory.into(),
        expected: if expected == Verdict::Resident { "RESIDENT".into() } else { format!("refused {}", expected.name()) },
        registration: registration_word(&result),
        after_check: "—".into(),
        ok: Some(false),
        note: String::new(),
    };
    match result {
        Ok(id) => {
            let after = monitor.check_now().ok().and_then(|_| verdict_of(monitor, id));
            row.after_check = after.map_or("unknown".into(), |v| v.name().to_string());
            row.ok = Some(expected == Verdict::Resident && after == Some(Verdict::Resident));
            let _ = monitor.unregister(id);
        }
        Err(Error::Refused(v)) => row.ok = Some(v == expected),
        Err(_) => {}
    }
    row
}

/// The rows for VMM device memory at `base`: one mapping of `chunk` bytes, and a range over it
/// and the adjacent one (as PyTorch's expandable segments register).
pub fn judge_vmm_device(monitor: &Monitor, base: u64, chunk: usize) -> [Row; 2] {
    [
        judge(monitor, "VMM device mapping (cuMemCreate DEVICE + cuMemMap)", base, chunk, Verdict::Resident),
        judge(monitor, "range over two VMM device mappings (expandable segments)", base, 2 * chunk, Verdict::Resident),
    ]
}

/// Registers resident memory, runs `change` (which frees or reallocates it underneath and says
/// which verdicts are right now), checks, and compares.
pub fn judge_change(
    monitor: &Monitor,
    memory: &str,
    ptr: u64,
    size: usize,
    change: impl FnOnce() -> Result<(Vec<Verdict>, String), String>,
) -> Row {
    let result = monitor.register(ptr, size as u64, memory);
    let mut row = Row {
        memory: memory.into(),
        expected: "registered, then a violation".into(),
        registration: registration_word(&result),
        after_check: "—".into(),
        ok: Some(false),
        note: String::new(),
    };
    let Ok(id) = result else {
        return row;
    };
    match change() {
        Ok((expected, note)) => {
            row.expected = format!(
                "RESIDENT, then {}",
                expected.iter().map(|v| v.name()).collect::<Vec<_>>().join(" or ")
            );
            row.note = note;
            let after = monitor.check_now().ok().and_then(|_| verdict_of(monitor, id));
            row.after_check = after.map_or("unknown".into(), |v| v.name().to_string());
            row.ok = Some(after.is_some_and(|v| expected.contains(&v)));
        }
        Err(why) => {
            row.ok = None;
            row.note = why;
        }
    }
    let _ = monitor.unregister(id);
    row
}
