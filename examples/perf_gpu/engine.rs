//! The engine, played through the `cuda-engine` crate: GPU 0's primary context, an empty kernel,
//! the driver calls the figures need.

use super::*;

/// The engine, played through the `cuda-engine` crate: GPU 0's primary context (retained and
/// current), an empty kernel, and the driver calls the figures need.
pub(crate) struct Cuda {
    pub(crate) cuda: &'static cuda_engine::Cuda,
    pub(crate) context: cuda_engine::PrimaryContext<'static>,
    pub(crate) kernel: cuda_engine::Function,
    pub(crate) name: String,
}

pub(crate) const EMPTY_KERNEL_PTX: &std::ffi::CStr = c".version 7.0\n.target sm_50\n.address_size 64\n.visible .entry noop()\n{\n  ret;\n}\n";

/// Ends the benchmark when a driver call it needs fails.
pub(crate) fn check<T>(result: cuda_engine::Result<T>) -> T {
    result.unwrap_or_else(|error| {
        eprintln!("{error}");
        std::process::exit(1);
    })
}

impl Cuda {
    pub(crate) fn load() -> Cuda {
        let Ok(cuda) = cuda_engine::Cuda::get() else {
            println!("perf_gpu: skipped (no CUDA driver)");
            std::process::exit(0);
        };
        check(cuda.init());
        let context = check(cuda_engine::PrimaryContext::retain_current(cuda, 0));
        let module = check(cuda.module_load_data(EMPTY_KERNEL_PTX));
        let kernel = check(cuda.module_get_function(module, c"noop"));
        let name = cuda.device_name(0).unwrap_or_default();
        Cuda { cuda, context, kernel, name }
    }

    pub(crate) fn make_current(&self) {
        check(self.context.make_current());
    }

    pub(crate) fn alloc(&self, bytes: usize) -> u64 {
        check(self.cuda.mem_alloc(bytes))
    }

    pub(crate) fn free(&self, ptr: u64) {
        let _ = self.cuda.mem_free(ptr);
    }

    /// The floor: the same 8 attributes the library asks, in a tight loop. Best of 20, per query.
    pub(crate) fn floor_us_per_query(&self, pointers: &[u64]) -> f64 {
        (0..20).map(|_| self.floor_pass_us(pointers)).fold(f64::MAX, f64::min) / pointers.len() as f64
    }

    /// One pass of the floor's loop over `pointers`, in microseconds.
    pub(crate) fn floor_pass_us(&self, pointers: &[u64]) -> f64 {
        let started = Instant::now();
        for &p in pointers {
            let _ = std::hint::black_box(self.cuda.pointer_attributes(p));
        }
        started.elapsed().as_secs_f64() * 1e6
    }

    /// One launch of the empty kernel and a synchronisation, in microseconds.
    pub(crate) fn launch_and_sync(&self) -> f64 {
        let started = Instant::now();
        check(self.cuda.launch_one_thread(self.kernel, cuda_engine::Stream::DEFAULT));
        check(self.cuda.stream_synchronize(cuda_engine::Stream::DEFAULT));
        started.elapsed().as_secs_f64() * 1e6
    }
}
