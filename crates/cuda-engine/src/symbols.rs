//! The driver functions by what an engine does with them, for [`crate::Cuda::require`]: a
//! program requires the groups it uses up front, so that a driver lacking one of them (a stub,
//! an old driver) is reported once, by name, before anything is allocated.

/// Initialising the driver and asking about devices (count, handles, names, attributes, peer
/// access), the driver's version and its names for results.
pub const DEVICES: &[&str] = &[
    "cuInit",
    "cuDeviceGetCount",
    "cuDeviceGet",
    "cuDeviceGetName",
    "cuDriverGetVersion",
    "cuGetErrorName",
    "cuDeviceGetAttribute",
    "cuDeviceCanAccessPeer",
];

/// Primary contexts (retain, release, state) and the current context (set, get, push, pop,
/// synchronise).
pub const CONTEXTS: &[&str] = &[
    "cuDevicePrimaryCtxRetain",
    "cuDevicePrimaryCtxRelease_v2",
    "cuDevicePrimaryCtxGetState",
    "cuCtxSetCurrent",
    "cuCtxGetCurrent",
    "cuCtxPushCurrent_v2",
    "cuCtxPopCurrent_v2",
    "cuCtxSynchronize",
];

/// Device, managed, pinned, mapped and registered host memory.
pub const MEMORY: &[&str] = &[
    "cuMemAlloc_v2",
    "cuMemFree_v2",
    "cuMemAllocManaged",
    "cuMemAllocHost_v2",
    "cuMemFreeHost",
    "cuMemHostAlloc",
    "cuMemHostGetDevicePointer_v2",
    "cuMemHostRegister_v2",
    "cuMemHostUnregister",
];

/// Streams.
pub const STREAMS: &[&str] = &["cuStreamCreate", "cuStreamSynchronize", "cuStreamDestroy_v2"];

/// Stream-ordered allocation and memory pools (CUDA 11.2+).
pub const POOLS: &[&str] = &["cuMemAllocAsync", "cuMemFreeAsync", "cuDeviceGetMemPool", "cuMemPoolTrimTo"];

/// Virtual memory management: physical memory, address reservations, mappings, access.
pub const VMM: &[&str] = &[
    "cuMemGetAllocationGranularity",
    "cuMemCreate",
    "cuMemRelease",
    "cuMemAddressReserve",
    "cuMemAddressFree",
    "cuMemMap",
    "cuMemUnmap",
    "cuMemSetAccess",
];

/// The pointer queries, asked directly.
pub const POINTERS: &[&str] = &["cuPointerGetAttribute", "cuPointerGetAttributes"];
