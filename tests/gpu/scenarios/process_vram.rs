//! The process's VRAM in the health snapshot: from NVML's per-process figure, with the engine's
//! context holding memory.

use vram_monitor::VramSource;

use crate::engine::Gpu;
use crate::results::{ProcessVramResult, Row, Status};
use crate::watch::{describe, monitor};
use crate::{MIB, NEVER};

pub fn s_process_vram(g: &Gpu, row: &mut Row) -> Result<(), String> {
    let mem = g.alloc(32 * MIB)?;
    let (m, _events) = monitor(NEVER)?;
    let result = m.register(mem.ptr(), (32 * MIB) as u64, "process vram");
    row.registration = describe(&result);
    m.check_now().map_err(|e| format!("check_now: {e}"))?;
    let vram = m.health().process_vram;
    let nvml = g.nvml_process_bytes();
    row.check_now = format!("{} bytes ({})", vram.bytes, vram.source.name());
    row.saw = format!(
        "source {}, {} MiB; NVML read by the test: {}",
        vram.source.name(),
        vram.bytes / MIB as u64,
        match &nvml {
            Ok(Some(b)) => format!("{} MiB", b / MIB as u64),
            Ok(None) => "not listed".into(),
            Err(e) => e.clone(),
        }
    );
    *g.process_vram.borrow_mut() = Some(ProcessVramResult {
        monitor_bytes: vram.bytes,
        monitor_source: vram.source.name().into(),
        nvml_bytes: nvml.ok(),
    });
    row.status = if vram.source == VramSource::NvmlProcess && vram.bytes > 0 {
        Status::Pass
    } else {
        Status::Fail
    };
    Ok(())
}
