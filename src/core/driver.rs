//! The one seam to CUDA, the port: what the monitor asks the driver ([`Driver`]) and the
//! values it answers with. The adapter that loads the real driver is
//! [`crate::adapters::cuda::CudaDriver`]; tests implement [`Driver`] for a model or reach the
//! adapter through a fake `libcuda`.

/// What the driver says a pointer's memory is (`CU_POINTER_ATTRIBUTE_MEMORY_TYPE`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MemoryType {
    /// 0: not CUDA memory (freed, never allocated, or unmapped VMM space).
    Unregistered,
    /// 1: host memory (pinned, mapped, registered, host-located VMM).
    Host,
    /// 2: device memory (also what managed memory reports).
    Device,
    /// 3: a CUDA array.
    Array,
    /// 4: unified addressing.
    Unified,
    /// A value this library does not know.
    Other(u32),
}

impl MemoryType {
    /// Maps the driver's integer to a memory type; unknown values are kept, not trusted.
    pub fn from_raw(raw: u32) -> MemoryType {
        match raw {
            0 => MemoryType::Unregistered,
            1 => MemoryType::Host,
            2 => MemoryType::Device,
            3 => MemoryType::Array,
            4 => MemoryType::Unified,
            other => MemoryType::Other(other),
        }
    }
}

/// The attributes of one address, as one `cuPointerGetAttributes` call returns them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PointerInfo {
    /// `MEMORY_TYPE`.
    pub memory_type: MemoryType,
    /// `IS_MANAGED`: the only attribute that reveals unified memory.
    pub is_managed: bool,
    /// `DEVICE_ORDINAL` (-2 when the address is not CUDA memory).
    pub device_ordinal: i32,
    /// `BUFFER_ID`: unique per allocation or mapping; changes when an address is reused.
    pub buffer_id: u64,
    /// `RANGE_START_ADDR`: the allocation, or for VMM the whole address reservation.
    pub range_start: u64,
    /// `RANGE_SIZE`.
    pub range_size: u64,
    /// `MAPPING_BASE_ADDR` (0 where the driver gives none).
    pub mapping_base: u64,
    /// `MAPPING_SIZE` (0 where the driver gives none).
    pub mapping_size: u64,
}

impl PointerInfo {
    /// What the driver reports for an address that is not CUDA memory.
    pub fn unregistered() -> PointerInfo {
        PointerInfo {
            memory_type: MemoryType::Unregistered,
            is_managed: false,
            device_ordinal: -2,
            buffer_id: 0,
            range_start: 0,
            range_size: 0,
            mapping_base: 0,
            mapping_size: 0,
        }
    }

    /// The memory that really backs the address: the intersection of the two extents the
    /// driver names. For an ordinary allocation RANGE_* is the allocation and MAPPING_* the
    /// driver's larger chunk holding it (2 MiB granular, shared by small allocations); for
    /// VMM, RANGE_* is the whole address reservation and MAPPING_* the one mapping. Either
    /// way the intersection is the memory that belongs to the address.
    pub fn extent(&self) -> Option<(u64, u64)> {
        let range = (self.range_size > 0).then(|| (self.range_start, self.range_start.saturating_add(self.range_size)));
        let mapping = (self.mapping_size > 0).then(|| (self.mapping_base, self.mapping_base.saturating_add(self.mapping_size)));
        let (start, end) = match (range, mapping) {
            (Some(r), Some(m)) => (r.0.max(m.0), r.1.min(m.1)),
            (Some(only), None) | (None, Some(only)) => only,
            (None, None) => return None,
        };
        (end > start).then_some((start, end - start))
    }

    /// Whether the address lies in one VMM mapping of a larger address reservation, so that
    /// a registered range may go on into the reservation's next mapping (as one tensor does
    /// over PyTorch's expandable segments).
    pub fn is_mapping_in_larger_reservation(&self) -> bool {
        self.mapping_size > 0
            && self.range_size > self.mapping_size
            && self.range_start <= self.mapping_base
            && self.mapping_base.saturating_add(self.mapping_size) <= self.range_start.saturating_add(self.range_size)
    }
}

/// Why the driver could not answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DriverError {
    /// No CUDA driver library could be loaded.
    NotFound,
    /// The driver library lacks a symbol this library needs.
    SymbolMissing(&'static str),
    /// `cuInit` failed (for example CUDA_ERROR_STUB_LIBRARY = 34, or no device = 100).
    InitFailed(i32),
    /// A driver call returned an error code (possibly one no binding knows).
    Call {
        /// The driver function.
        function: &'static str,
        /// The raw `CUresult`.
        code: i32,
    },
}

impl std::fmt::Display for DriverError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DriverError::NotFound => f.write_str("no CUDA driver library (libcuda) could be loaded"),
            DriverError::SymbolMissing(name) => write!(f, "the CUDA driver library has no symbol {name}"),
            DriverError::InitFailed(code) => {
                write!(f, "cuInit failed with {} ({code})", cuda_error_name(*code))
            }
            DriverError::Call { function, code } => {
                write!(f, "{function} failed with {} ({code})", cuda_error_name(*code))
            }
        }
    }
}

impl std::error::Error for DriverError {}

/// Names of the `CUresult` codes a residency check or an integrity verification can plausibly
/// meet. Anything else is reported by number: an unknown code is an answer, not a crash.
pub fn cuda_error_name(code: i32) -> &'static str {
    match code {
        0 => "CUDA_SUCCESS",
        1 => "CUDA_ERROR_INVALID_VALUE",
        2 => "CUDA_ERROR_OUT_OF_MEMORY",
        3 => "CUDA_ERROR_NOT_INITIALIZED",
        4 => "CUDA_ERROR_DEINITIALIZED",
        34 => "CUDA_ERROR_STUB_LIBRARY",
        35 => "CUDA_ERROR_INSUFFICIENT_DRIVER",
        100 => "CUDA_ERROR_NO_DEVICE",
        101 => "CUDA_ERROR_INVALID_DEVICE",
        200 => "CUDA_ERROR_INVALID_IMAGE",
        201 => "CUDA_ERROR_INVALID_CONTEXT",
        209 => "CUDA_ERROR_NO_BINARY_FOR_GPU",
        218 => "CUDA_ERROR_INVALID_PTX",
        222 => "CUDA_ERROR_UNSUPPORTED_PTX_VERSION",
        304 => "CUDA_ERROR_OPERATING_SYSTEM",
        46 => "CUDA_ERROR_DEVICE_UNAVAILABLE",
        400 => "CUDA_ERROR_INVALID_HANDLE",
        700 => "CUDA_ERROR_ILLEGAL_ADDRESS",
        701 => "CUDA_ERROR_LAUNCH_OUT_OF_RESOURCES",
        702 => "CUDA_ERROR_LAUNCH_TIMEOUT",
        709 => "CUDA_ERROR_CONTEXT_IS_DESTROYED",
        710 => "CUDA_ERROR_ASSERT",
        714 => "CUDA_ERROR_HARDWARE_STACK_ERROR",
        715 => "CUDA_ERROR_ILLEGAL_INSTRUCTION",
        716 => "CUDA_ERROR_MISALIGNED_ADDRESS",
        717 => "CUDA_ERROR_INVALID_ADDRESS_SPACE",
        718 => "CUDA_ERROR_INVALID_PC",
        719 => "CUDA_ERROR_LAUNCH_FAILED",
        802 => "CUDA_ERROR_SYSTEM_NOT_READY",
        999 => "CUDA_ERROR_UNKNOWN",
        _ => "an unknown CUDA error code",
    }
}

/// The questions the monitor asks the driver. Production uses [`CudaDriver`](crate::adapters::cuda::CudaDriver); tests reach the
/// same implementation through a fake `libcuda`, or implement this for a model.
pub trait Driver: Send + Sync {
    /// The attributes of the memory at `address`. A freed or bogus address is not an error:
    /// it comes back as [`MemoryType::Unregistered`].
    fn pointer_info(&self, address: u64) -> Result<PointerInfo, DriverError>;

    /// Bytes of device memory in use on `device` (all processes), if the driver can say so
    /// without creating a context.
    fn device_used_memory(&self, device: i32) -> Option<u64>;

    /// The driver's API version (for example 13000), if known.
    fn version(&self) -> Option<i32>;

    /// The PCI bus id of CUDA device `device` ("0000:18:00.0"), if the driver can say; it is
    /// how the device-health readings find the same GPU in NVML, whose numbering differs
    /// from CUDA's. The default says nothing.
    fn pci_bus_id(&self, device: i32) -> Option<String> {
        let _ = device;
        None
    }
}

impl<T: Driver + ?Sized> Driver for &T {
    fn pointer_info(&self, address: u64) -> Result<PointerInfo, DriverError> {
        (**self).pointer_info(address)
    }
    fn device_used_memory(&self, device: i32) -> Option<u64> {
        (**self).device_used_memory(device)
    }
    fn version(&self) -> Option<i32> {
        (**self).version()
    }
    fn pci_bus_id(&self, device: i32) -> Option<String> {
        (**self).pci_bus_id(device)
    }
}
