//! VMM (`cuMemCreate` + `cuMemMap`, as PyTorch's expandable segments and vLLM use): a device
//! mapping unmapped, remapped, or replaced by host memory; host-located memory; reserved space
//! with nothing mapped; three mappings with the middle one unmapped; a range over a hole.

use vram_monitor::{CudaDriver, Verdict};

use crate::engine::{create_host, Gpu};
use crate::results::{Row, Status};
use crate::watch::{expect_refusal, watch_change, Change};

pub fn s_vmm_unmapped(g: &Gpu, row: &mut Row) -> Result<(), String> {
    let mut vmm = g.reserve(1)?;
    vmm.map_device(0)?;
    let ptr = vmm.addr(0);
    g.probe("VMM cuMemCreate(DEVICE) + cuMemMap", ptr);
    watch_change(row, ptr, g.chunk as u64, Verdict::NotMapped, || match vmm.unmap(0) {
        Ok(()) => Change::Done,
        Err(e) => Change::Failed(e.to_string()),
    });
    g.probe("VMM DEVICE mapping, after cuMemUnmap (reservation kept)", ptr);
    Ok(())
}

pub fn s_vmm_remapped(g: &Gpu, row: &mut Row) -> Result<(), String> {
    let mut vmm = g.reserve(1)?;
    vmm.map_device(0)?;
    let ptr = vmm.addr(0);
    watch_change(row, ptr, g.chunk as u64, Verdict::Replaced, || {
        match vmm.unmap(0).and_then(|()| vmm.map_device(0)) {
            Ok(()) => Change::Done,
            Err(e) => Change::Failed(e.to_string()),
        }
    });
    g.probe("VMM DEVICE mapping replaced by a new DEVICE mapping", ptr);
    Ok(())
}

pub fn s_vmm_to_host(g: &Gpu, row: &mut Row) -> Result<(), String> {
    let mut vmm = g.reserve(1)?;
    vmm.map_device(0)?;
    let ptr = vmm.addr(0);
    let chunk = g.chunk as u64;
    watch_change(row, ptr, chunk, Verdict::Host, || {
        if let Err(why) = &g.host_vmm {
            return Change::Unsupported(why.clone());
        }
        // Create the host memory first: if that is unsupported, nothing has changed yet.
        let (handle, location) = match create_host(&vmm) {
            Ok(h) => h,
            Err(why) => return Change::Unsupported(why),
        };
        if let Err(e) = vmm.unmap(0) {
            let _ = g.cuda.mem_release(handle);
            return Change::Failed(e.to_string());
        }
        match vmm.map(0, handle) {
            Ok(()) => Change::Expect(Verdict::Host, format!("host memory created with location {location}")),
            Err(e) => Change::Failed(format!("mapping the {location} memory: {e}")),
        }
    });
    if row.status != Status::Skip {
        g.probe("VMM DEVICE mapping replaced by a HOST-located mapping", ptr);
    }
    Ok(())
}

pub fn s_vmm_host(g: &Gpu, row: &mut Row) -> Result<(), String> {
    if let Err(why) = &g.host_vmm {
        row.status = Status::Skip;
        row.saw = format!("unsupported here: {why}");
        return Ok(());
    }
    let mut vmm = g.reserve(1)?;
    let (handle, location) = match create_host(&vmm) {
        Ok(h) => h,
        Err(why) => {
            row.status = Status::Skip;
            row.saw = format!("unsupported here: {why}");
            return Ok(());
        }
    };
    vmm.map(0, handle)?;
    row.notes.push(format!("host memory created with location {location}"));
    g.probe(format!("VMM cuMemCreate({location}) + cuMemMap"), vmm.addr(0));
    expect_refusal(row, vmm.addr(0), g.chunk as u64, Verdict::Host);
    Ok(())
}

pub fn s_vmm_reserved(g: &Gpu, row: &mut Row) -> Result<(), String> {
    let vmm = g.reserve(1)?;
    g.probe("VMM cuMemAddressReserve, nothing mapped", vmm.addr(0));
    expect_refusal(row, vmm.addr(0), g.chunk as u64, Verdict::NotMapped);
    Ok(())
}

pub fn s_vmm_three(g: &Gpu, row: &mut Row) -> Result<(), String> {
    let mut vmm = g.reserve(3)?;
    for slot in 0..3 {
        vmm.map_device(slot)?;
    }
    let (base, size) = (vmm.addr(0), 3 * g.chunk as u64);
    g.probe("VMM 3 DEVICE mappings: first", base);
    g.probe("VMM 3 DEVICE mappings: middle", vmm.addr(1));
    match CudaDriver::get()
        .map_err(|e| e.to_string())
        .and_then(|d| vram_monitor::inspect::inspect(d, base, size).map_err(|e| e.to_string()))
    {
        Ok(inspection) => row.notes.push(format!(
            "inspect before registering: {} with {} pieces (3 expected)",
            inspection.verdict,
            inspection.pieces().len()
        )),
        Err(e) => row.notes.push(format!("inspect failed: {e}")),
    }
    watch_change(row, base, size, Verdict::NotMapped, || match vmm.unmap(1) {
        Ok(()) => Change::Done,
        Err(e) => Change::Failed(e.to_string()),
    });
    g.probe("VMM 3 DEVICE mappings: middle, after cuMemUnmap", vmm.addr(1));
    Ok(())
}

pub fn s_vmm_hole(g: &Gpu, row: &mut Row) -> Result<(), String> {
    let mut vmm = g.reserve(3)?;
    vmm.map_device(0)?;
    vmm.map_device(2)?;
    expect_refusal(row, vmm.addr(0), 3 * g.chunk as u64, Verdict::OutOfRange);
    Ok(())
}
