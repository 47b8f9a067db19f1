//! The engine side: the driver (through `cuda-engine`), GPU 0 and its primary context, and
//! what the report keeps about the run (raw pointer attributes, NVML's figures, the
//! CHECK_FAILED attempts).

use std::cell::RefCell;
use std::ffi::c_int;
use std::panic::catch_unwind;

use cuda_engine::symbols::{CONTEXTS, DEVICES, MEMORY, POINTERS, POOLS, STREAMS, VMM};
use cuda_engine::{
    Cuda, DeviceBuffer, Error, Handle, Location, PrimaryContext, Reservation, ATTR_MAPPING_BASE_ADDR, ATTR_MAPPING_SIZE,
};
use vram_monitor::{CudaDriver, Driver};

use crate::results::{NoContext, Probe, ProcessVramResult};
use crate::scenarios::check_failed::Attempt;


/// The driver the library would load, with every function the scenarios call (those only the
/// CHECK_FAILED attempts use are not required: a driver without one skips that attempt alone).
/// Calls nothing.
pub fn load_cuda() -> Result<&'static Cuda, String> {
    let cuda = Cuda::get()?;
    cuda.require(&[DEVICES, CONTEXTS, MEMORY, STREAMS, POOLS, VMM, POINTERS]).map_err(|e| match e {
        Error::MissingSymbol(name) => format!("the CUDA driver library has no symbol {name} (a stub or fake libcuda?)"),
        other => other.to_string(),
    })?;
    Ok(cuda)
}

/// The `CUresult` of a driver call: 0 for success.
pub fn code_of<T>(result: &cuda_engine::Result<T>) -> c_int {
    match result {
        Ok(_) => 0,
        Err(e) => e.code().unwrap_or(c_int::MIN),
    }
}

/// What the driver answered to a call: its name for the `CUresult`, success included.
pub fn answer_of<T>(cuda: &Cuda, result: &cuda_engine::Result<T>) -> String {
    match result {
        Ok(_) => cuda.error_name(0),
        Err(e) => e.answer(),
    }
}

/// GPU 0 as the engine holds it, and what the report keeps about the run.
pub struct Gpu {
    pub cuda: &'static Cuda,
    pub dev: c_int,
    pub name: String,
    /// `cuDeviceGetCount`, and every device's name (index = ordinal).
    pub device_count: c_int,
    pub device_names: Vec<String>,
    pub driver_version: c_int,
    /// VMM chunk: a multiple of the device (and, where supported, host) granularity.
    pub chunk: usize,
    pub host_vmm: Result<(), String>,
    pub nvml: Result<nvml_wrapper::Nvml, String>,
    pub probes: RefCell<Vec<Probe>>,
    pub no_context: RefCell<NoContext>,
    pub process_vram: RefCell<Option<ProcessVramResult>>,
    /// What each attempt to make the driver's pointer query fail did.
    pub check_failed: RefCell<Vec<Attempt>>,
}

impl Gpu {
    /// `cuMemAlloc_v2` in the engine's context, freed when dropped.
    pub fn alloc(&self, size: usize) -> Result<DeviceBuffer<'static>, String> {
        Ok(self.cuda.alloc(size)?)
    }

    /// One VMM reservation of `slots` chunks; mappings give GPU 0 access.
    pub fn reserve(&self, slots: usize) -> Result<Reservation<'static>, String> {
        Ok(Reservation::reserve(self.cuda, self.dev, self.chunk, slots, 0)?)
    }

    /// Records what the driver says about `address`, through the library's `Driver` and
    /// with direct calls, for the report's raw-attribute table.
    pub fn probe(&self, what: impl Into<String>, address: u64) {
        let library = CudaDriver::get()
            .map_err(|e| e.to_string())
            .and_then(|driver| driver.pointer_info(address).map_err(|e| e.to_string()));
        let direct_all = code_of(&self.cuda.pointer_attributes(address));
        let alone = |attribute| {
            let value = self.cuda.pointer_attribute_u64(attribute, address);
            (code_of(&value), value.unwrap_or(0))
        };
        self.probes.borrow_mut().push(Probe {
            what: what.into(),
            address,
            library,
            direct_all,
            mapping_size: alone(ATTR_MAPPING_SIZE),
            mapping_base: alone(ATTR_MAPPING_BASE_ADDR),
        });
    }

    /// NVML's figure for this process, summed over every GPU: Ok(None) when NVML does not
    /// list it on any.
    pub fn nvml_process_bytes(&self) -> Result<Option<u64>, String> {
        let nvml = self.nvml.as_ref().map_err(Clone::clone)?;
        nvml_bytes_for(nvml, std::process::id())
    }
}

/// NVML's figure for `pid` summed over every GPU (NVML's index order need not be CUDA's, so
/// on a machine with several GPUs "device 0" in one is not device 0 in the other; the library
/// sums the same way).
pub fn nvml_bytes_for(nvml: &nvml_wrapper::Nvml, pid: u32) -> Result<Option<u64>, String> {
    let count = nvml.device_count().map_err(|e| format!("NVML device_count: {e}"))?;
    let mut total = None;
    for index in 0..count {
        let device = nvml
            .device_by_index(index)
            .map_err(|e| format!("NVML device_by_index({index}): {e}"))?;
        let processes = device
            .running_compute_processes()
            .map_err(|e| format!("NVML running_compute_processes (device {index}): {e}"))?;
        for process in processes.iter().filter(|p| p.pid == pid) {
            match process.used_gpu_memory {
                nvml_wrapper::enums::device::UsedGpuMemory::Used(bytes) => *total.get_or_insert(0) += bytes,
                nvml_wrapper::enums::device::UsedGpuMemory::Unavailable => {
                    return Err("NVML lists this process but not its memory".into())
                }
            }
        }
    }
    Ok(total)
}

pub fn init_nvml() -> Result<nvml_wrapper::Nvml, String> {
    match catch_unwind(nvml_wrapper::Nvml::init) {
        Ok(Ok(nvml)) => Ok(nvml),
        Ok(Err(e)) => Err(format!("NVML init failed: {e}")),
        Err(_) => Err("NVML init panicked".into()),
    }
}

/// Plays the engine's start-up: device 0, its primary context retained and current.
pub fn engine_start(cuda: &'static Cuda) -> Result<(Gpu, PrimaryContext<'static>), String> {
    let dev = cuda.device(0)?;
    let device_count = cuda.device_count()?;
    let mut device_names = Vec::new();
    for ordinal in 0..device_count.max(1) {
        let handle = cuda.device(ordinal)?;
        device_names.push(cuda.device_name(handle)?);
    }
    let name = device_names[0].clone();
    let driver_version = cuda.driver_version()?;
    let context = PrimaryContext::retain_current(cuda, dev)?;

    let device_gran = cuda.granularity(Location::Device(dev))?;
    let host_gran = cuda.granularity(Location::Host).or_else(|_| cuda.granularity(Location::HostNuma(0)));
    let chunk = match &host_gran {
        Ok(h) if device_gran % h == 0 => device_gran,
        Ok(h) if h % device_gran == 0 => *h,
        Ok(h) => device_gran * h,
        Err(_) => device_gran,
    };
    let host_vmm = host_gran.map(|_| ()).map_err(|e| format!("host-located VMM: {e}"));
    let gpu = Gpu {
        cuda,
        dev,
        name,
        device_count,
        device_names,
        driver_version,
        chunk,
        host_vmm,
        nvml: init_nvml(),
        probes: RefCell::new(Vec::new()),
        no_context: RefCell::new(NoContext::default()),
        process_vram: RefCell::new(None),
        check_failed: RefCell::new(Vec::new()),
    };
    Ok((gpu, context))
}

/// Host-located physical memory for one chunk of `vmm`: location HOST, else HOST_NUMA node 0.
/// Returns the handle and the location used; Err says why neither worked.
pub fn create_host(vmm: &Reservation<'_>) -> Result<(Handle, &'static str), String> {
    match vmm.create(Location::Host) {
        Ok(h) => Ok((h, "HOST")),
        Err(host) => match vmm.create(Location::HostNuma(0)) {
            Ok(h) => Ok((h, "HOST_NUMA node 0")),
            Err(numa) => Err(format!(
                "cuMemCreate(location HOST) failed with {}, (location HOST_NUMA 0) with {}",
                host.answer(),
                numa.answer()
            )),
        },
    }
}

/// Physical memory on device `dev` (one chunk of `vmm`). If the driver refuses without a
/// context of that device, tries again with `dev`'s primary context pushed, and returns it
/// retained (release it after the memory is gone). The string says how it was made.
pub fn create_on<'a>(vmm: &Reservation<'a>, dev: c_int) -> Result<(Handle, Option<PrimaryContext<'a>>, String), String> {
    let location = Location::Device(dev);
    let first = match vmm.create(location) {
        Ok(handle) => return Ok((handle, None, format!("cuMemCreate(location DEVICE {dev})"))),
        Err(e) => e.answer(),
    };
    let cuda = vmm.cuda();
    let retained = PrimaryContext::retain(cuda, dev)
        .map_err(|e| format!("cuMemCreate(location DEVICE {dev}) failed with {first}; {e}"))?;
    cuda.push(retained.context())?;
    let second = vmm.create(location);
    let _ = cuda.pop();
    match second {
        Ok(handle) => Ok((
            handle,
            Some(retained),
            format!("cuMemCreate(location DEVICE {dev}) with GPU {dev}'s primary context pushed (without: {first})"),
        )),
        Err(e) => Err(format!(
            "cuMemCreate(location DEVICE {dev}) failed with {first}, and with GPU {dev}'s primary context pushed with {}",
            e.answer()
        )),
    }
}
