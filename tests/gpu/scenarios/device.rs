//! Device memory (`cuMemAlloc_v2`): freed or reallocated while registered, an interior
//! range, ranges past the end or across two adjacent allocations, a freed pointer.

use cuda_engine::DeviceBuffer;
use vram_monitor::Verdict;

use crate::engine::Gpu;
use crate::results::{Row, Status};
use crate::watch::{expect_refusal, watch_change, Change};
use crate::{KIB, MIB};

pub fn s_device_freed(g: &Gpu, row: &mut Row) -> Result<(), String> {
    let mut mem = g.alloc(2 * MIB)?;
    let ptr = mem.ptr();
    g.probe("cuMemAlloc_v2 (2 MiB)", ptr);
    watch_change(row, ptr, (2 * MIB) as u64, Verdict::NotMapped, || match mem.free().map_err(String::from) {
        Ok(()) => Change::Done,
        Err(e) => Change::Failed(e),
    });
    g.probe("cuMemAlloc_v2, after cuMemFree_v2", ptr);
    Ok(())
}

pub fn s_device_realloc(g: &Gpu, row: &mut Row) -> Result<(), String> {
    let mut first = g.alloc(2 * MIB)?;
    let ptr = first.ptr();
    g.probe("cuMemAlloc_v2 (2 MiB), before free and reallocation", ptr);
    let mut second = None;
    watch_change(row, ptr, (2 * MIB) as u64, Verdict::Replaced, || {
        if let Err(e) = first.free().map_err(String::from) {
            return Change::Failed(e);
        }
        match g.alloc(2 * MIB) {
            Ok(mem) => {
                let same = mem.ptr() == ptr;
                let at = mem.ptr();
                second = Some(mem);
                if same {
                    Change::Expect(Verdict::Replaced, format!("address reused: yes ({ptr:#x})"))
                } else {
                    Change::Expect(
                        Verdict::NotMapped,
                        format!("address reused: no (first {ptr:#x}, second {at:#x}); the old address is unmapped"),
                    )
                }
            }
            Err(e) => Change::Failed(e),
        }
    });
    g.probe("cuMemAlloc_v2, freed and reallocated (same size)", ptr);
    drop(second);
    Ok(())
}

pub fn s_interior_freed(g: &Gpu, row: &mut Row) -> Result<(), String> {
    let mut mem = g.alloc(2 * MIB)?;
    let inner = mem.ptr() + 4096;
    g.probe("cuMemAlloc_v2 + 4096 (interior)", inner);
    watch_change(row, inner, 4096, Verdict::NotMapped, || match mem.free().map_err(String::from) {
        Ok(()) => Change::Done,
        Err(e) => Change::Failed(e),
    });
    Ok(())
}

pub fn s_past_the_end(g: &Gpu, row: &mut Row) -> Result<(), String> {
    let mem = g.alloc(2 * MIB)?;
    g.probe(
        "cuMemAlloc_v2 (2 MiB) + 2 MiB (one past the end)",
        mem.ptr() + (2 * MIB) as u64,
    );
    expect_refusal(row, mem.ptr(), (2 * MIB + 4 * KIB) as u64, Verdict::OutOfRange);
    Ok(())
}

pub fn s_past_the_end_small(g: &Gpu, row: &mut Row) -> Result<(), String> {
    let mem = g.alloc(4 * KIB)?;
    g.probe("cuMemAlloc_v2 (4 KiB)", mem.ptr());
    g.probe(
        "cuMemAlloc_v2 (4 KiB) + 4 KiB (one past the end)",
        mem.ptr() + (4 * KIB) as u64,
    );
    expect_refusal(row, mem.ptr(), (8 * KIB) as u64, Verdict::OutOfRange);
    Ok(())
}

/// Allocates `size` bytes up to 64 times until one allocation starts where an earlier one
/// ends, then registers the two as one range: running from one ordinary allocation into the
/// next must be refused, whatever MAPPING_* the driver reports for ordinary memory.
pub fn adjacent(g: &Gpu, row: &mut Row, size: usize) -> Result<(), String> {
    let mut held: Vec<DeviceBuffer<'_>> = Vec::new();
    for _ in 0..64 {
        let mem = g.alloc(size)?;
        let low = if let Some(h) = held.iter().find(|h| h.ptr() + size as u64 == mem.ptr()) {
            Some(h.ptr())
        } else if held.iter().any(|h| mem.ptr() + size as u64 == h.ptr()) {
            Some(mem.ptr())
        } else {
            None
        };
        held.push(mem);
        if let Some(low) = low {
            let high = low + size as u64;
            row.notes.push(format!(
                "adjacent allocations at {low:#x} and {high:#x} after {} tries",
                held.len()
            ));
            g.probe(
                format!("cuMemAlloc_v2 ({} KiB), first of two adjacent", size / KIB),
                low,
            );
            g.probe(
                format!("cuMemAlloc_v2 ({} KiB), second of two adjacent", size / KIB),
                high,
            );
            expect_refusal(row, low, 2 * size as u64, Verdict::OutOfRange);
            return Ok(());
        }
    }
    row.status = Status::Skip;
    row.saw = format!("no two adjacent {} KiB allocations in 64 tries", size / KIB);
    Ok(())
}

pub fn s_adjacent_2mib(g: &Gpu, row: &mut Row) -> Result<(), String> {
    adjacent(g, row, 2 * MIB)
}

pub fn s_adjacent_4kib(g: &Gpu, row: &mut Row) -> Result<(), String> {
    adjacent(g, row, 4 * KIB)
}

pub fn s_freed_pointer(g: &Gpu, row: &mut Row) -> Result<(), String> {
    let mut mem = g.alloc(2 * MIB)?;
    mem.free()?;
    g.probe("freed cuMemAlloc_v2 pointer", mem.ptr());
    expect_refusal(row, mem.ptr(), (2 * MIB) as u64, Verdict::NotMapped);
    Ok(())
}
