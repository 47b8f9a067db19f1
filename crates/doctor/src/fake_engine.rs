//! The engine on the fake driver: its memory made through the fake's control functions
//! (tests/fake_cuda/fake_cuda_control.h), the same rows as on a GPU.

use std::ffi::c_int;

use cuda_engine::{Cuda, HostBuffer};
use vram_monitor::{Monitor, Verdict};

use crate::table::{judge, judge_change, judge_vmm_device, Row};
use crate::MIB;

// Kinds of memory, as fake_cuda_control.h numbers them.
const FAKE_DEVICE: c_int = 1;
const FAKE_MANAGED: c_int = 2;
const FAKE_HOST: c_int = 3;
const FAKE_VMM_DEVICE: c_int = 4;
const FAKE_VMM_HOST: c_int = 5;

/// The fake's control functions.
pub struct FakeEngine {
    alloc: unsafe extern "C" fn(c_int, usize, c_int) -> u64,
    free: unsafe extern "C" fn(u64) -> c_int,
    reallocate: unsafe extern "C" fn(u64) -> c_int,
    reserve: unsafe extern "C" fn(usize) -> u64,
    map: unsafe extern "C" fn(u64, usize, c_int, c_int) -> c_int,
}

impl FakeEngine {
    pub fn load() -> Result<FakeEngine, String> {
        let cuda = Cuda::get().map_err(|e| e.to_string())?;
        // SAFETY: the signatures of fake_cuda_control.h.
        let found = unsafe {
            (|| {
                Ok(FakeEngine {
                    alloc: cuda.symbol("fake_cuda_alloc")?,
                    free: cuda.symbol("fake_cuda_free")?,
                    reallocate: cuda.symbol("fake_cuda_reallocate")?,
                    reserve: cuda.symbol("fake_cuda_reserve")?,
                    map: cuda.symbol("fake_cuda_map")?,
                })
            })()
        };
        found.map_err(|e: cuda_engine::Error| e.to_string())
    }

    fn alloc(&self, kind: c_int, size: usize) -> u64 {
        // SAFETY: plain call; 0 means refused.
        unsafe { (self.alloc)(kind, size, 0) }
    }

    pub fn scenarios(&self, monitor: &Monitor) -> Vec<Row> {
        let size = 4 * MIB;
        let mut rows = Vec::new();
        let device = self.alloc(FAKE_DEVICE, size);
        rows.push(judge(monitor, "cudaMalloc / cuMemAlloc", device, size, Verdict::Resident));
        rows.push(judge(monitor, "interior range of a cuMemAlloc", device + MIB as u64, 2 * MIB, Verdict::Resident));
        rows.push(judge(monitor, "range one byte past a cuMemAlloc", device, size + 1, Verdict::OutOfRange));
        rows.push(judge(monitor, "cudaMallocManaged", self.alloc(FAKE_MANAGED, size), size, Verdict::Managed));
        rows.push(judge(monitor, "pinned host memory (cuMemAllocHost)", self.alloc(FAKE_HOST, size), size, Verdict::Host));
        let heap = HostBuffer::new(size).expect("out of host memory");
        rows.push(judge(monitor, "plain malloc (never CUDA memory)", heap.addr(), size, Verdict::NotMapped));
        let freed = self.alloc(FAKE_DEVICE, size);
        rows.push(judge_change(monitor, "cuMemAlloc freed while registered", freed, size, || {
            // SAFETY: plain call.
            (unsafe { (self.free)(freed) } == 0)
                .then(|| (vec![Verdict::NotMapped], String::new()))
                .ok_or_else(|| "fake_cuda_free refused".to_string())
        }));
        let replaced = self.alloc(FAKE_DEVICE, size);
        rows.push(judge_change(monitor, "freed and reallocated at the same address", replaced, size, || {
            // SAFETY: plain call.
            (unsafe { (self.reallocate)(replaced) } == 0)
                .then(|| (vec![Verdict::Replaced], "new BUFFER_ID".to_string()))
                .ok_or_else(|| "fake_cuda_reallocate refused".to_string())
        }));
        // VMM: one reservation, two device mappings side by side, one host mapping, a hole.
        let chunk = 2 * MIB;
        // SAFETY: plain calls.
        let base = unsafe { (self.reserve)(8 * chunk) };
        let mapped = |offset: usize, kind: c_int| unsafe { (self.map)(base + offset as u64, chunk, kind, 0) } == 0;
        if base != 0 && mapped(0, FAKE_VMM_DEVICE) && mapped(chunk, FAKE_VMM_DEVICE) && mapped(4 * chunk, FAKE_VMM_HOST) {
            rows.extend(judge_vmm_device(monitor, base, chunk));
            rows.push(judge(monitor, "VMM host-located mapping (cuMemCreate HOST)", base + 4 * chunk as u64, chunk, Verdict::Host));
            rows.push(judge(monitor, "VMM address reserved, nothing mapped", base + 6 * chunk as u64, chunk, Verdict::NotMapped));
        } else {
            rows.push(Row::unavailable("VMM", "—", "the fake refused to reserve or map".into()));
        }
        rows
    }
}
