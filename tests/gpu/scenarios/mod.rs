//! The scenarios, one module a kind: [`device`] memory (`cuMemAlloc`: freed, reallocated,
//! past the end, adjacent), [`host`] and managed memory (refused at registration), stream-ordered
//! [`pools`], [`vmm`] mappings, a second GPU ([`wrong_device`]), [`no_context`] created by the
//! library, [`process_vram`] from NVML, and CHECK_FAILED from the real driver
//! ([`check_failed`]). [`SCENARIOS`] lists them in the order they run.

pub mod check_failed;
pub mod device;
pub mod host;
pub mod no_context;
pub mod pools;
pub mod process_vram;
pub mod vmm;
pub mod wrong_device;

use crate::engine::Gpu;
use crate::results::Row;

/// A scenario: fills its row; Err when it could not be set up.
pub type Scenario = fn(&Gpu, &mut Row) -> Result<(), String>;

/// Every scenario, in the order it runs: (name, allocation, expected, function). The
/// no-context check runs first, so it sees the first monitor this process creates.
pub const SCENARIOS: &[(&str, &str, &str, Scenario)] = &[
    (
        "no-context-created",
        "cuMemAlloc 64 MiB; engine's primary context current",
        "NVML figure unchanged by the monitor",
        no_context::s_no_context_created,
    ),
    (
        "no-context-child",
        "child process without a context: Monitor::new, register, check_now",
        "no primary context, no current context, NVML does not list the child",
        no_context::s_no_context_child,
    ),
    (
        "device-freed",
        "cuMemAlloc_v2 2 MiB, then cuMemFree_v2",
        "RESIDENT, then NOT_MAPPED",
        device::s_device_freed,
    ),
    (
        "device-realloc-same-size",
        "cuMemAlloc_v2 2 MiB, free, cuMemAlloc_v2 2 MiB again",
        "RESIDENT, then REPLACED (NOT_MAPPED if the address is not reused)",
        device::s_device_realloc,
    ),
    (
        "interior-pointer-freed",
        "cuMemAlloc_v2 2 MiB, register [+4096, +8192), then free",
        "RESIDENT, then NOT_MAPPED",
        device::s_interior_freed,
    ),
    (
        "past-the-end",
        "cuMemAlloc_v2 2 MiB, register 2 MiB + 4 KiB",
        "refused: OUT_OF_RANGE",
        device::s_past_the_end,
    ),
    (
        "past-the-end-small",
        "cuMemAlloc_v2 4 KiB, register 8 KiB",
        "refused: OUT_OF_RANGE",
        device::s_past_the_end_small,
    ),
    (
        "spans-two-adjacent-allocations",
        "two cuMemAlloc_v2 2 MiB allocations that happen to be adjacent, register both as one range",
        "refused: OUT_OF_RANGE",
        device::s_adjacent_2mib,
    ),
    (
        "spans-two-adjacent-small-allocations",
        "two cuMemAlloc_v2 4 KiB allocations that happen to be adjacent, register both as one range",
        "refused: OUT_OF_RANGE",
        device::s_adjacent_4kib,
    ),
    (
        "freed-pointer",
        "cuMemAlloc_v2 2 MiB, freed before registering",
        "refused: NOT_MAPPED",
        device::s_freed_pointer,
    ),
    (
        "managed",
        "cuMemAllocManaged 2 MiB (ATTACH_GLOBAL)",
        "refused: MANAGED",
        host::s_managed,
    ),
    ("pinned-host", "cuMemAllocHost_v2 2 MiB", "refused: HOST", host::s_pinned_host),
    (
        "host-registered",
        "malloc (std::alloc, 4 KiB aligned) 2 MiB + cuMemHostRegister_v2",
        "refused: HOST",
        host::s_host_registered,
    ),
    (
        "host-alloc-devicemap-host-pointer",
        "cuMemHostAlloc(DEVICEMAP) 2 MiB, host pointer",
        "refused: HOST",
        host::s_hostalloc_host,
    ),
    (
        "host-alloc-devicemap-device-pointer",
        "cuMemHostAlloc(DEVICEMAP) 2 MiB, cuMemHostGetDevicePointer_v2",
        "refused: HOST",
        host::s_hostalloc_device,
    ),
    (
        "async-freed-and-trimmed",
        "cuMemAllocAsync 2 MiB + stream sync; cuMemFreeAsync, sync, cuMemPoolTrimTo(0)",
        "RESIDENT, then NOT_MAPPED",
        pools::s_async_freed,
    ),
    (
        "vmm-device-unmapped",
        "VMM cuMemCreate(DEVICE) + cuMemMap, then cuMemUnmap + cuMemRelease",
        "RESIDENT, then NOT_MAPPED",
        vmm::s_vmm_unmapped,
    ),
    (
        "vmm-device-remapped",
        "VMM DEVICE mapping replaced by a new DEVICE mapping at the same address",
        "RESIDENT, then REPLACED",
        vmm::s_vmm_remapped,
    ),
    (
        "vmm-device-replaced-by-host",
        "VMM DEVICE mapping replaced by a HOST-located mapping at the same address",
        "RESIDENT, then HOST",
        vmm::s_vmm_to_host,
    ),
    (
        "vmm-host",
        "VMM cuMemCreate(location HOST) + cuMemMap + cuMemSetAccess(device)",
        "refused: HOST",
        vmm::s_vmm_host,
    ),
    (
        "vmm-reserved-unmapped",
        "cuMemAddressReserve, nothing mapped",
        "refused: NOT_MAPPED",
        vmm::s_vmm_reserved,
    ),
    (
        "vmm-three-mappings-middle-unmapped",
        "one reservation, 3 adjacent DEVICE mappings; register all 3, unmap the middle",
        "RESIDENT, then NOT_MAPPED",
        vmm::s_vmm_three,
    ),
    (
        "vmm-range-over-a-hole",
        "one reservation, mappings 1 and 3 of 3; register all 3",
        "refused: OUT_OF_RANGE",
        vmm::s_vmm_hole,
    ),
    (
        "wrong-device-vmm-remapped",
        "VMM DEVICE mapping on GPU 0 (registered), replaced at the same address by memory created on GPU 1 (cuMemCreate location DEVICE 1; cuMemSetAccess for GPUs 0 and 1)",
        "RESIDENT, then WRONG_DEVICE",
        wrong_device::s_wrong_device_remapped,
    ),
    (
        "wrong-device-range-spans-two-gpus",
        "one reservation: mapping 1 on GPU 0, mapping 2 on GPU 1; register both",
        "refused: WRONG_DEVICE",
        wrong_device::s_wrong_device_span,
    ),
    (
        "check-failed-real-driver",
        "child processes: cuMemAlloc_v2 2 MiB registered, then the driver broken underneath (attempts in order: sticky illegal address, sticky trap, primary context reset, own context destroyed, process exit)",
        "CHECK_FAILED from check_now and the periodic thread (cuPointerGetAttributes itself fails)",
        check_failed::s_check_failed,
    ),
    (
        "process-vram-from-nvml",
        "cuMemAlloc_v2 32 MiB registered; health().process_vram",
        "source nvml_process",
        process_vram::s_process_vram,
    ),
];
