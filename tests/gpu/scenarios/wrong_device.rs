//! WRONG_DEVICE, which needs a second GPU: a VMM address first backed by GPU 0's memory, then
//! by GPU 1's; and one range over mappings on both. With one GPU they are skipped, never passed.

use std::ffi::c_int;

use cuda_engine::{Location, PrimaryContext, Reservation};
use vram_monitor::Verdict;

use crate::engine::{create_on, Gpu};
use crate::results::{Row, Status};
use crate::watch::{expect_refusal, watch_change, Change};
use crate::KIB;

/// The second GPU, or `None` after marking the row skipped when this machine has one.
pub fn second_device(g: &Gpu, row: &mut Row) -> Result<Option<c_int>, String> {
    if g.device_count < 2 {
        let why = format!("needs 2 GPUs; this machine has {}", g.device_count);
        row.status = Status::Skip;
        row.saw = format!("nothing ({why})");
        for cell in [&mut row.registration, &mut row.check_now, &mut row.periodic, &mut row.callback] {
            *cell = format!("skipped ({why})");
        }
        return Ok(None);
    }
    let dev = g.cuda.device(1).map_err(|e| format!("cuDeviceGet(1) failed with {}", e.answer()))?;
    // The mapping chunk was sized for GPU 0; GPU 1's memory must fit it exactly.
    let granularity = g.cuda.granularity(Location::Device(dev))?;
    if g.chunk % granularity != 0 {
        return Err(format!(
            "GPU 1's VMM granularity ({} KiB) does not divide the chunk ({} KiB)",
            granularity / KIB,
            g.chunk / KIB
        ));
    }
    let can = g.cuda.can_access_peer(g.dev, dev);
    row.notes.push(format!(
        "GPU 0 {} / GPU 1 {}; cuDeviceCanAccessPeer(0, 1): {}",
        g.device_names.first().map_or("?", String::as_str),
        g.device_names.get(1).map_or("?", String::as_str),
        match can {
            Err(e) => e.answer(),
            Ok(true) => "yes".into(),
            Ok(false) => "no".into(),
        }
    ));
    Ok(Some(dev))
}

/// Gives GPU 0 (the engine's) and `other` access to the mapping at `slot`; where the driver
/// refuses GPU 0 access to another GPU's memory (no peer access), `other` alone.
pub fn grant_access(g: &Gpu, vmm: &Reservation<'_>, slot: usize, other: c_int) -> Result<String, String> {
    match vmm.set_access(slot, &[g.dev, other]) {
        Ok(()) => Ok("cuMemSetAccess for GPUs 0 and 1".into()),
        Err(both) => match vmm.set_access(slot, &[other]) {
            Ok(()) => Ok(format!("cuMemSetAccess for GPU 1 only (for GPUs 0 and 1: {both})")),
            Err(one) => Err(format!("cuMemSetAccess for GPUs 0 and 1: {both}; for GPU 1 alone: {one}")),
        },
    }
}

pub fn s_wrong_device_remapped(g: &Gpu, row: &mut Row) -> Result<(), String> {
    let Some(other) = second_device(g, row)? else {
        return Ok(());
    };
    // Declared before the reservation, so dropped after it.
    let mut retained: Option<PrimaryContext<'_>> = None;
    let mut vmm = g.reserve(1)?;
    vmm.map_device(0)?;
    let ptr = vmm.addr(0);
    watch_change(row, ptr, g.chunk as u64, Verdict::WrongDevice, || {
        // GPU 1's memory first: if it cannot be made, nothing has changed yet.
        let (handle, context, how) = match create_on(&vmm, other) {
            Ok(v) => v,
            Err(e) => return Change::Failed(e),
        };
        retained = context;
        if let Err(e) = vmm.unmap(0) {
            let _ = g.cuda.mem_release(handle);
            return Change::Failed(e.to_string());
        }
        if let Err(e) = vmm.map_only(0, handle) {
            return Change::Failed(format!("mapping GPU 1's memory: {e}"));
        }
        match grant_access(g, &vmm, 0, other) {
            Ok(access) => Change::Expect(Verdict::WrongDevice, format!("GPU 1's memory: {how}; {access}")),
            Err(e) => Change::Failed(e),
        }
    });
    if row.status != Status::Skip {
        g.probe("VMM mapping on GPU 0 replaced by memory created on GPU 1", ptr);
    }
    drop(vmm);
    drop(retained);
    Ok(())
}

pub fn s_wrong_device_span(g: &Gpu, row: &mut Row) -> Result<(), String> {
    let Some(other) = second_device(g, row)? else {
        return Ok(());
    };
    let mut vmm = g.reserve(2)?;
    vmm.map_device(0)?;
    let (handle, retained, how) = create_on(&vmm, other)?;
    vmm.map_only(1, handle)?;
    let access = grant_access(g, &vmm, 1, other)?;
    row.notes.push(format!("second mapping: {how}; {access}"));
    g.probe("VMM 2 mappings: first, on GPU 0", vmm.addr(0));
    g.probe("VMM 2 mappings: second, memory created on GPU 1", vmm.addr(1));
    expect_refusal(row, vmm.addr(0), 2 * g.chunk as u64, Verdict::WrongDevice);
    drop(vmm);
    drop(retained);
    Ok(())
}
