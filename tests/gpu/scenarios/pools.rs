//! Stream-ordered allocation: `cuMemAllocAsync` from the device's default pool, freed with
//! `cuMemFreeAsync` (the pool keeps it) and then trimmed back to the device.

use cuda_engine::CU_STREAM_NON_BLOCKING;
use vram_monitor::Verdict;

use crate::engine::Gpu;
use crate::results::Row;
use crate::watch::{watch_change, Change};
use crate::MIB;

pub fn s_async_freed(g: &Gpu, row: &mut Row) -> Result<(), String> {
    let cu = g.cuda;
    let stream = cu.stream_create(CU_STREAM_NON_BLOCKING)?;
    let allocated = cu
        .mem_alloc_async(2 * MIB, stream)
        .and_then(|ptr| cu.stream_synchronize(stream).map(|()| ptr));
    if let Ok(ptr) = allocated {
        g.probe("cuMemAllocAsync (default pool)", ptr);
        watch_change(row, ptr, (2 * MIB) as u64, Verdict::NotMapped, || {
            let freed = cu.mem_free_async(ptr, stream).and_then(|()| cu.stream_synchronize(stream));
            if let Err(e) = freed {
                return Change::Failed(e.to_string());
            }
            g.probe(
                "cuMemAllocAsync, after cuMemFreeAsync + stream sync (pool not trimmed)",
                ptr,
            );
            let trimmed = cu
                .device_mem_pool(g.dev)
                .and_then(|pool| cu.mem_pool_trim_to(pool, 0))
                .and_then(|()| cu.synchronize());
            match trimmed {
                Ok(()) => Change::Done,
                Err(e) => Change::Failed(e.to_string()),
            }
        });
        g.probe("cuMemAllocAsync, after cuMemPoolTrimTo(0)", ptr);
    }
    let _ = cu.stream_destroy(stream);
    allocated?;
    Ok(())
}
