//! The engine on a real GPU, through the `cuda-engine` crate: the device's primary context
//! retained and current, then each kind of memory allocated, registered and judged. What it
//! allocated is freed at the end ([`Gpu::finish`]), after the monitor is gone.

use std::cell::RefCell;
use std::ffi::c_int;

use cuda_engine::symbols::{CONTEXTS, DEVICES, MEMORY, POOLS, STREAMS, VMM};
use cuda_engine::{
    Cuda, HostBuffer, Location, PrimaryContext, Reservation, Stream, CU_MEMHOSTALLOC_DEVICEMAP, CU_MEM_ATTACH_GLOBAL,
};
use vram_monitor::{Monitor, Verdict};

use crate::table::{judge, judge_change, judge_vmm_device, Row};
use crate::MIB;


/// A real GPU, played as the engine plays it.
pub struct Gpu {
    cuda: &'static Cuda,
    /// The device's primary context, once started.
    context: Option<PrimaryContext<'static>>,
    /// What to undo at the end, in reverse order.
    cleanup: RefCell<Vec<Box<dyn FnOnce()>>>,
}

impl Gpu {
    /// The driver, with every function the table needs but the stream-ordered ones (a driver
    /// without those reports that one row as not available).
    pub fn load() -> Result<Gpu, String> {
        let cuda = Cuda::get().map_err(|e| e.to_string())?;
        cuda.require(&[DEVICES, CONTEXTS, MEMORY, STREAMS, VMM]).map_err(|e| e.to_string())?;
        Ok(Gpu { cuda, context: None, cleanup: Default::default() })
    }

    pub fn device_name(&self, device: c_int) -> Option<String> {
        self.cuda.device_name(device).ok()
    }

    /// Retains `device`'s primary context and makes it current: what an engine does first.
    pub fn start(mut self, device: c_int) -> Result<Gpu, String> {
        self.context = Some(PrimaryContext::retain_current(self.cuda, device).map_err(|e| e.to_string())?);
        Ok(self)
    }

    fn later(&self, undo: impl FnOnce() + 'static) {
        self.cleanup.borrow_mut().push(Box::new(undo));
    }

    /// Waits for the device, frees what the scenarios left, then releases the context.
    pub fn finish(self) {
        let _ = self.cuda.synchronize();
        let undo: Vec<_> = self.cleanup.borrow_mut().drain(..).collect();
        for f in undo.into_iter().rev() {
            f();
        }
        drop(self.context);
    }

    /// `cuMemAlloc_v2`, freed at the end.
    fn alloc(&self, size: usize) -> Result<u64, String> {
        let buffer = self.cuda.alloc(size).map_err(|e| e.to_string())?;
        let ptr = buffer.ptr();
        self.later(move || drop(buffer));
        Ok(ptr)
    }

    pub fn scenarios(&self, monitor: &Monitor, device: c_int) -> Vec<Row> {
        let cuda = self.cuda;
        let size = 4 * MIB;
        let mut rows = Vec::new();
        fn unavailable(rows: &mut Vec<Row>, memory: &str, expected: &str, why: String) {
            rows.push(Row::unavailable(memory, expected, why));
        }

        match self.alloc(size) {
            Ok(ptr) => {
                rows.push(judge(monitor, "cudaMalloc / cuMemAlloc", ptr, size, Verdict::Resident));
                rows.push(judge(monitor, "interior range of a cuMemAlloc", ptr + MIB as u64, 2 * MIB, Verdict::Resident));
                rows.push(judge(monitor, "range one byte past a cuMemAlloc", ptr, size + 1, Verdict::OutOfRange));
            }
            Err(why) => unavailable(&mut rows, "cudaMalloc / cuMemAlloc", "RESIDENT", why),
        }

        match cuda.alloc_managed(size, CU_MEM_ATTACH_GLOBAL) {
            Ok(managed) => {
                let ptr = managed.ptr();
                self.later(move || drop(managed));
                rows.push(judge(monitor, "cudaMallocManaged (unified memory)", ptr, size, Verdict::Managed));
            }
            Err(why) => unavailable(&mut rows, "cudaMallocManaged", "refused MANAGED", why.to_string()),
        }

        match cuda.mem_alloc_host(size) {
            Ok(pinned) => {
                // SAFETY: freed once, at the end, after the monitor is gone.
                self.later(move || unsafe {
                    let _ = cuda.mem_free_host(pinned);
                });
                rows.push(judge(monitor, "pinned host memory (cuMemAllocHost)", pinned as u64, size, Verdict::Host));
            }
            Err(why) => unavailable(&mut rows, "pinned host memory", "refused HOST", why.to_string()),
        }

        let alias = cuda.mem_host_alloc(size, CU_MEMHOSTALLOC_DEVICEMAP).and_then(|mapped| {
            // SAFETY: freed once, at the end, after the monitor is gone.
            self.later(move || unsafe {
                let _ = cuda.mem_free_host(mapped);
            });
            cuda.mem_host_get_device_pointer(mapped)
        });
        match alias {
            Ok(alias) => rows.push(judge(
                monitor,
                "mapped host memory, device alias (cuMemHostGetDevicePointer)",
                alias,
                size,
                Verdict::Host,
            )),
            Err(why) => unavailable(&mut rows, "mapped host memory (device alias)", "refused HOST", why.to_string()),
        }

        let registered = HostBuffer::new(size).expect("out of host memory");
        // SAFETY: a live, page-aligned host buffer of `size` bytes, unregistered before it is freed.
        match unsafe { cuda.mem_host_register(registered.as_mut_ptr(), size, 0) } {
            Ok(()) => {
                rows.push(judge(monitor, "malloc + cuMemHostRegister", registered.addr(), size, Verdict::Host));
                let _ = cuda.mem_host_unregister(registered.as_mut_ptr());
            }
            Err(why) => unavailable(&mut rows, "malloc + cuMemHostRegister", "refused HOST", why.to_string()),
        }
        drop(registered);

        let heap = HostBuffer::new(size).expect("out of host memory");
        rows.push(judge(monitor, "plain malloc (never CUDA memory)", heap.addr(), size, Verdict::NotMapped));
        drop(heap);

        match cuda.mem_alloc(size) {
            Ok(doomed) => rows.push(judge_change(monitor, "cuMemAlloc freed while registered", doomed, size, || {
                cuda.mem_free(doomed).map(|()| (vec![Verdict::NotMapped], String::new())).map_err(|e| e.to_string())
            })),
            Err(why) => unavailable(&mut rows, "cuMemAlloc freed while registered", "NOT_MAPPED", why.to_string()),
        }

        match cuda.mem_alloc(size) {
            Ok(first) => rows.push(judge_change(monitor, "freed, then cuMemAlloc of the same size", first, size, || {
                cuda.mem_free(first).map_err(|e| e.to_string())?;
                let second = self.alloc(size)?;
                Ok(if second == first {
                    (vec![Verdict::Replaced], "the driver reused the address (new BUFFER_ID)".into())
                } else {
                    (vec![Verdict::NotMapped], format!("the driver chose another address ({second:#x})"))
                })
            })),
            Err(why) => unavailable(&mut rows, "freed and reallocated", "REPLACED", why.to_string()),
        }

        // The legacy default stream.
        let stream = Stream::DEFAULT;
        let allocated = cuda
            .require(&[POOLS])
            .and_then(|()| cuda.mem_alloc_async(size, stream))
            .and_then(|ptr| cuda.stream_synchronize(stream).map(|()| ptr));
        match allocated {
            Ok(ptr) => {
                self.later(move || {
                    let _ = cuda.mem_free_async(ptr, stream);
                    let _ = cuda.stream_synchronize(stream);
                });
                rows.push(judge(monitor, "cudaMallocAsync (stream-ordered pool)", ptr, size, Verdict::Resident));
            }
            Err(why) => unavailable(&mut rows, "cudaMallocAsync", "RESIDENT", why.to_string()),
        }

        self.vmm(monitor, device, &mut rows);
        rows
    }

    /// VMM: device mappings, a host-located one, and reserved space with nothing mapped, in one
    /// reservation of 8 chunks (each at least 2 MiB).
    fn vmm(&self, monitor: &Monitor, device: c_int, rows: &mut Vec<Row>) {
        let cuda = self.cuda;
        let reserved = cuda.granularity(Location::Device(device)).and_then(|g| {
            let chunk = g.max(2 * MIB).div_ceil(g) * g;
            Reservation::reserve(cuda, device, chunk, 8, g)
        });
        let mut vmm = match reserved {
            Ok(vmm) => vmm,
            Err(why) => return rows.push(Row::unavailable("VMM (cuMemCreate + cuMemMap)", "RESIDENT", why.to_string())),
        };
        let (base, chunk) = (vmm.addr(0), vmm.chunk());
        match vmm.map_device(0).and_then(|()| vmm.map_device(1)) {
            Ok(()) => {
                rows.extend(judge_vmm_device(monitor, base, chunk));
            }
            Err(why) => rows.push(Row::unavailable("VMM device mapping", "RESIDENT", why.to_string())),
        }
        let host_at = vmm.addr(4);
        let host = [Location::Host, Location::HostNuma(0)]
            .into_iter()
            .map(|location| {
                let g = cuda.granularity(location).map_err(|e| e.to_string())?;
                if chunk % g != 0 {
                    return Err(format!("host granularity {g} does not divide {chunk}"));
                }
                let handle = vmm.create(location).map_err(|e| e.to_string())?;
                vmm.map(4, handle).map_err(|e| e.to_string())
            })
            .try_fold(String::new(), |errors, attempt| match attempt {
                Ok(()) => Err(()),
                Err(why) => Ok(if errors.is_empty() { why } else { format!("{errors}; {why}") }),
            });
        match host {
            Err(()) => rows.push(judge(monitor, "VMM host-located mapping (cuMemCreate HOST)", host_at, chunk, Verdict::Host)),
            Ok(why) => rows.push(Row::unavailable("VMM host-located mapping", "refused HOST", why)),
        }
        rows.push(judge(monitor, "VMM address reserved, nothing mapped", vmm.addr(6), chunk, Verdict::NotMapped));
        self.later(move || drop(vmm));
    }
}
