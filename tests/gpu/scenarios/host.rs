//! Memory that is not VRAM, refused at registration: managed (unified) memory, pinned host
//! memory, registered heap memory, and mapped host memory by its host and its device pointer.

use cuda_engine::{HostBuffer, CU_MEMHOSTALLOC_DEVICEMAP, CU_MEM_ATTACH_GLOBAL};
use vram_monitor::Verdict;

use crate::engine::Gpu;
use crate::results::Row;
use crate::watch::expect_refusal;
use crate::MIB;

pub fn s_managed(g: &Gpu, row: &mut Row) -> Result<(), String> {
    let managed = g.cuda.alloc_managed(2 * MIB, CU_MEM_ATTACH_GLOBAL)?;
    let ptr = managed.ptr();
    g.probe("cuMemAllocManaged", ptr);
    expect_refusal(row, ptr, (2 * MIB) as u64, Verdict::Managed);
    Ok(())
}

pub fn s_pinned_host(g: &Gpu, row: &mut Row) -> Result<(), String> {
    let host = g.cuda.mem_alloc_host(2 * MIB)?;
    g.probe("cuMemAllocHost_v2", host as u64);
    expect_refusal(row, host as u64, (2 * MIB) as u64, Verdict::Host);
    // SAFETY: from cuMemAllocHost_v2, and nothing uses it afterwards.
    Ok(unsafe { g.cuda.mem_free_host(host) }?)
}

pub fn s_host_registered(g: &Gpu, row: &mut Row) -> Result<(), String> {
    let host = HostBuffer::new(2 * MIB).ok_or("host allocation failed")?;
    // SAFETY: a live heap buffer of 2 MiB, unregistered before it is freed.
    let registered = unsafe { g.cuda.mem_host_register(host.as_mut_ptr(), 2 * MIB, 0) };
    if registered.is_ok() {
        g.probe("malloc + cuMemHostRegister_v2", host.addr());
        expect_refusal(row, host.addr(), (2 * MIB) as u64, Verdict::Host);
        let _ = g.cuda.mem_host_unregister(host.as_mut_ptr());
    }
    drop(host);
    Ok(registered?)
}

pub fn host_alloc_devicemap(g: &Gpu, row: &mut Row, use_device_pointer: bool) -> Result<(), String> {
    let host = g.cuda.mem_host_alloc(2 * MIB, CU_MEMHOSTALLOC_DEVICEMAP)?;
    let alias = g.cuda.mem_host_get_device_pointer(host);
    if let Ok(device) = alias {
        row.notes.push(format!(
            "host pointer {:#x}, device pointer {device:#x} ({})",
            host as u64,
            if device == host as u64 {
                "the same address"
            } else {
                "different addresses"
            }
        ));
        let ptr = if use_device_pointer { device } else { host as u64 };
        g.probe(
            if use_device_pointer {
                "cuMemHostAlloc(DEVICEMAP), device pointer"
            } else {
                "cuMemHostAlloc(DEVICEMAP), host pointer"
            },
            ptr,
        );
        expect_refusal(row, ptr, (2 * MIB) as u64, Verdict::Host);
    }
    // SAFETY: from cuMemHostAlloc, and nothing uses it afterwards.
    unsafe { g.cuda.mem_free_host(host) }?;
    alias?;
    Ok(())
}

pub fn s_hostalloc_host(g: &Gpu, row: &mut Row) -> Result<(), String> {
    host_alloc_devicemap(g, row, false)
}

pub fn s_hostalloc_device(g: &Gpu, row: &mut Row) -> Result<(), String> {
    host_alloc_devicemap(g, row, true)
}
