//! The C ABI of content integrity: lend a context, seal, verify, read the state.
//!
//! Cost on the GPU, exactly: enabling loads one small module (the fingerprint kernel, a few
//! KiB of code), creates one non-blocking stream and allocates a 128 KiB scratch buffer in
//! the lent context; nothing else. Host memory: 8 bytes per sealed MiB.

use std::ffi::{c_char, c_void};
use std::time::Duration;

use crate::handle::{on_monitor, VramMonitor};
use crate::result::{try_ffi, VramMonitorResult};
use vram_monitor::integrity::{IntegrityOptions, DEFAULT_MAX_GPU_SHARE_PPM, DEFAULT_SLICE_BYTES};

/// Default bytes per background verification slice (64 MiB).
pub const VRAM_MONITOR_DEFAULT_INTEGRITY_SLICE_BYTES: u64 = 64 << 20;
/// Default share of GPU time background verification may take, in parts per million (1%).
pub const VRAM_MONITOR_DEFAULT_INTEGRITY_GPU_SHARE_PPM: u32 = 10_000;
/// Bytes per fingerprinted chunk (1 MiB): one 64-bit value each.
pub const VRAM_MONITOR_INTEGRITY_CHUNK_BYTES: u64 = 1 << 20;
const _: () = assert!(VRAM_MONITOR_DEFAULT_INTEGRITY_SLICE_BYTES == DEFAULT_SLICE_BYTES);
const _: () = assert!(VRAM_MONITOR_DEFAULT_INTEGRITY_GPU_SHARE_PPM == DEFAULT_MAX_GPU_SHARE_PPM);
const _: () = assert!(VRAM_MONITOR_INTEGRITY_CHUNK_BYTES == vram_monitor::integrity::fingerprint::CHUNK_BYTES);

/// How background verification is paced. Zero in any field means its default.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct VramMonitorIntegrityOptions {
    /// Bytes one background slice verifies, rounded up to whole 1 MiB chunks (0: 64 MiB; at
    /// most 1 TiB).
    pub slice_bytes: u64,
    /// The most GPU time verification may take, in parts per million of wall time: after a
    /// slice that took t, the next waits at least t * (1e6 / ppm - 1) (0: 10000 = 1%; at
    /// most 1000000).
    pub max_gpu_share_ppm: u32,
    /// Every sealed byte is verified at least once per this many milliseconds, unless the
    /// share cap forbids it (the cap wins; 0: the check interval).
    pub period_ms: u64,
}

impl VramMonitorIntegrityOptions {
    fn to_core(self) -> IntegrityOptions {
        let defaults = IntegrityOptions::default();
        IntegrityOptions {
            slice_bytes: if self.slice_bytes == 0 { defaults.slice_bytes } else { self.slice_bytes },
            max_gpu_share_ppm: if self.max_gpu_share_ppm == 0 { defaults.max_gpu_share_ppm } else { self.max_gpu_share_ppm },
            period: (self.period_ms > 0).then(|| Duration::from_millis(self.period_ms)),
        }
    }
}

/// What `vram_monitor_verify_now` did.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct VramMonitorVerifySummary {
    /// Sealed registrations verified (those whose memory was not resident are skipped:
    /// their residency verdict says why).
    pub registrations: u64,
    /// Bytes verified.
    pub bytes: u64,
    /// Sealed registrations MODIFIED (found now or before, not yet resealed).
    pub modified: u64,
    /// Wall time, microseconds.
    pub duration_us: u64,
}

/// One registration's integrity state, filled by `vram_monitor_seal_info`.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct VramMonitorSealInfo {
    /// Whether it is sealed (false: every other field is 0).
    pub sealed: bool,
    /// True when verification on its device failed (the lent context has a sticky error):
    /// its content is unknown, not modified.
    pub integrity_failing: bool,
    /// 1 MiB chunks fingerprinted (the last may be partial).
    pub chunks: u64,
    /// When every chunk was last verified, ms since the Unix epoch (the seal's time until
    /// the first full verification).
    pub last_verified_unix_ms: u64,
    /// Chunks found different from the seal (0: unchanged). They stay counted until reseal.
    pub modified_chunks: u64,
    /// Byte offset of the first differing chunk from the registration's first byte.
    pub first_modified_offset: u64,
}

/// The monitor-wide integrity state, filled by `vram_monitor_integrity`.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct VramMonitorIntegrity {
    /// Devices with integrity enabled.
    pub devices_enabled: u32,
    /// True when verification failed in a lent context (`failed_device`, `failed_code`):
    /// the monitor is unhealthy until integrity is disabled for that device.
    pub failed: bool,
    /// The device whose context failed (-1: none).
    pub failed_device: i32,
    /// The driver's `CUresult` (0: none).
    pub failed_code: i32,
    /// Sealed registrations.
    pub sealed: u64,
    /// Their bytes.
    pub sealed_bytes: u64,
    /// Sealed registrations MODIFIED.
    pub modified: u64,
    /// Bytes verified since the monitor was created.
    pub verified_bytes_total: u64,
    /// Full passes over a device's sealed bytes completed.
    pub passes_completed: u64,
    /// When the last pass completed, ms since the Unix epoch (0: none yet).
    pub last_pass_unix_ms: u64,
}


/// Enables content integrity for CUDA device `device`, borrowing the CUDA context that is
/// current on the calling thread: call it where the engine's context for that device is
/// current (after the engine's first CUDA call on that thread). The library creates no
/// context.
///
/// If the current context is the device's primary context, the monitor takes a reference to
/// it here (it cannot race the engine's teardown: the engine is inside this call) and gives
/// it back at `vram_monitor_disable_integrity` or `vram_monitor_free`. For a context the
/// engine created itself (`cuCtxCreate`), the contract is: disable integrity (or free the
/// monitor) before destroying that context.
///
/// Costs, exactly: the fingerprint kernel's module, one non-blocking stream and a 128 KiB
/// scratch buffer in that context; nothing else on the GPU. `options` may be NULL (defaults).
///
/// `NO_CURRENT_CONTEXT` when no context is current; `CONTEXT_WRONG_DEVICE` when it is
/// another device's; `INTEGRITY_ALREADY_ENABLED`; `INVALID_ARGUMENT` for options out of
/// range; `KERNEL_UNAVAILABLE` when the driver refuses the kernel (older than the PTX);
/// `INTEGRITY_FAILED` when the context cannot take it (logged).
///
/// # Safety
/// `options` must be NULL or point to a `VramMonitorIntegrityOptions`.
#[no_mangle]
pub unsafe extern "C" fn vram_monitor_enable_integrity(
    monitor: *mut VramMonitor,
    device: i32,
    options: *const VramMonitorIntegrityOptions,
) -> VramMonitorResult {
    on_monitor(monitor, |monitor| {
        // SAFETY: NULL or valid per the contract.
        let options = if options.is_null() { VramMonitorIntegrityOptions::default() } else { unsafe { *options } };
        try_ffi!(monitor.enable_integrity(device, options.to_core()));
        VramMonitorResult::Ok
    })
}

/// Disables integrity for `device`: its seals are dropped (the registrations stay,
/// residency only; a MODIFIED one returns to its residency verdict), the kernel unloaded,
/// the context reference given back. Waits for a verification slice in progress (tens of
/// microseconds). May be called from any thread (the context need not be current).
/// `INTEGRITY_NOT_ENABLED` when it was not enabled.
///
/// # Safety
/// `monitor` must be NULL or a handle from `vram_monitor_new`.
#[no_mangle]
pub unsafe extern "C" fn vram_monitor_disable_integrity(monitor: *mut VramMonitor, device: i32) -> VramMonitorResult {
    on_monitor(monitor, |monitor| {
        try_ffi!(monitor.disable_integrity(device));
        VramMonitorResult::Ok
    })
}

/// Changes the pacing of background verification on every enabled device (zero fields:
/// their defaults). `NULL_ARGUMENT` for a NULL `options`; `INVALID_ARGUMENT` out of range.
///
/// # Safety
/// `options` must be NULL or point to a `VramMonitorIntegrityOptions`.
#[no_mangle]
pub unsafe extern "C" fn vram_monitor_set_integrity_options(
    monitor: *mut VramMonitor,
    options: *const VramMonitorIntegrityOptions,
) -> VramMonitorResult {
    on_monitor(monitor, |monitor| {
        if options.is_null() {
            return VramMonitorResult::NullArgument;
        }
        // SAFETY: checked non-NULL; valid per the contract.
        let options = unsafe { *options };
        try_ffi!(monitor.set_integrity_options(options.to_core()));
        VramMonitorResult::Ok
    })
}

/// Seals registration `id`: its bytes are fingerprinted on its GPU now (at full speed, on
/// the calling thread, with the lent context pushed and popped) and verified in the
/// background from then on; a difference makes its verdict `MODIFIED`.
///
/// Seal only bytes that are final: weights. Never seal a KV cache, activations or anything
/// the engine writes while serving: they would read as MODIFIED.
///
/// `UNKNOWN_REGISTRATION`; `INTEGRITY_NOT_ENABLED` for its device; `ALREADY_SEALED`;
/// `NOT_RESIDENT` when its verdict is not RESIDENT (a fresh driver query decides);
/// `INTEGRITY_FAILED` when the kernel failed in the lent context.
///
/// # Safety
/// `monitor` must be NULL or a handle from `vram_monitor_new`.
#[no_mangle]
pub unsafe extern "C" fn vram_monitor_seal(monitor: *mut VramMonitor, id: u64) -> VramMonitorResult {
    on_monitor(monitor, |monitor| {
        try_ffi!(monitor.seal(id));
        VramMonitorResult::Ok
    })
}

/// Takes a new fingerprint of a sealed registration after an intentional change (a LoRA
/// swap, an RL weight sync, a wake from sleep) and clears `MODIFIED`. `NOT_SEALED` when it
/// is not sealed; otherwise the codes of `vram_monitor_seal`.
///
/// # Safety
/// `monitor` must be NULL or a handle from `vram_monitor_new`.
#[no_mangle]
pub unsafe extern "C" fn vram_monitor_reseal(monitor: *mut VramMonitor, id: u64) -> VramMonitorResult {
    on_monitor(monitor, |monitor| {
        try_ffi!(monitor.reseal(id));
        VramMonitorResult::Ok
    })
}

/// Stops verifying a registration's content; it stays registered (residency only) and
/// `MODIFIED` is cleared. `UNKNOWN_REGISTRATION`; `NOT_SEALED`.
///
/// # Safety
/// `monitor` must be NULL or a handle from `vram_monitor_new`.
#[no_mangle]
pub unsafe extern "C" fn vram_monitor_unseal(monitor: *mut VramMonitor, id: u64) -> VramMonitorResult {
    on_monitor(monitor, |monitor| {
        try_ffi!(monitor.unseal(id));
        VramMonitorResult::Ok
    })
}

/// `vram_monitor_register` and `vram_monitor_seal` in one call: registered and sealed, or
/// neither (a failed seal unregisters). Codes of both.
///
/// # Safety
/// `label` must be NULL or NUL-terminated; `out_id` NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn vram_monitor_register_sealed(
    monitor: *mut VramMonitor,
    ptr: *const c_void,
    size: usize,
    label: *const c_char,
    out_id: *mut u64,
) -> VramMonitorResult {
    // SAFETY: the contract above is register_with's.
    unsafe { crate::functions::register_with(monitor, ptr, size, label, out_id, vram_monitor::Monitor::register_sealed) }
}

/// Takes back registration `id` after the engine unmapped and remapped its range on
/// purpose (a wake from sleep, an expandable segment released and grown again). The memory
/// mapped there now is registered afresh under a new id (same range and label), written to
/// `*out_id`, and `id` is unregistered. A seal moves to the new id with the fingerprints
/// taken before the remap: call `vram_monitor_verify_now` after the reload, and bytes that
/// were not restored exactly read `MODIFIED`. (Without this, remapped memory reads
/// `REPLACED`, and a reseal would seal whatever was reloaded.)
///
/// On any error nothing changed: `UNKNOWN_REGISTRATION`; `NULL_ARGUMENT`; the codes of
/// `vram_monitor_register` for memory that is not resident now; `NOT_RESIDENT` when a
/// sealed registration's memory came back on another device.
///
/// # Safety
/// `monitor` must be NULL or a handle from `vram_monitor_new`; `out_id` NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn vram_monitor_rebind(monitor: *mut VramMonitor, id: u64, out_id: *mut u64) -> VramMonitorResult {
    on_monitor(monitor, |monitor| {
        if out_id.is_null() {
            return VramMonitorResult::NullArgument;
        }
        let new_id = try_ffi!(monitor.rebind(id));
        // SAFETY: checked non-NULL; writable per the contract.
        unsafe { *out_id = new_id };
        VramMonitorResult::Ok
    })
}

/// Verifies every sealed byte now at full speed (after loading, after a wake from sleep)
/// on the monitor thread, and waits for it; MODIFIED events are delivered as usual. Fills
/// `*out_summary` if not NULL. `INTEGRITY_NOT_ENABLED` when no device has integrity;
/// `INTEGRITY_FAILED` when a lent context failed (the other devices are verified all the
/// same); `CALLED_FROM_CALLBACK` from a callback.
///
/// # Safety
/// `out_summary` must be NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn vram_monitor_verify_now(monitor: *mut VramMonitor, out_summary: *mut VramMonitorVerifySummary) -> VramMonitorResult {
    on_monitor(monitor, |monitor| {
        let summary = try_ffi!(monitor.verify_now());
        if !out_summary.is_null() {
            // SAFETY: checked non-NULL; writable per the contract.
            unsafe {
                *out_summary = VramMonitorVerifySummary {
                    registrations: summary.registrations,
                    bytes: summary.bytes,
                    modified: summary.modified,
                    duration_us: summary.duration_us,
                }
            };
        }
        VramMonitorResult::Ok
    })
}

/// Fills `*out_info` with registration `id`'s integrity state (`sealed` false when it is
/// registered but not sealed). `UNKNOWN_REGISTRATION`; `NULL_ARGUMENT`. Cheap; callable
/// from any thread, also from a callback.
///
/// # Safety
/// `out_info` must be NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn vram_monitor_seal_info(monitor: *const VramMonitor, id: u64, out_info: *mut VramMonitorSealInfo) -> VramMonitorResult {
    on_monitor(monitor, |monitor| {
        if out_info.is_null() {
            return VramMonitorResult::NullArgument;
        }
        if monitor.registration(id).is_none() {
            return VramMonitorResult::UnknownRegistration;
        }
        let info = match monitor.seal_info(id) {
            Some(seal) => VramMonitorSealInfo {
                sealed: true,
                integrity_failing: seal.failing,
                chunks: seal.chunks,
                last_verified_unix_ms: seal.last_verified_unix_ms,
                modified_chunks: seal.modified_chunks,
                first_modified_offset: seal.first_modified_offset,
            },
            None => VramMonitorSealInfo::default(),
        };
        // SAFETY: checked non-NULL; writable per the contract.
        unsafe { *out_info = info };
        VramMonitorResult::Ok
    })
}

/// Fills `*out` with the monitor-wide integrity state. `NULL_ARGUMENT`. Cheap; callable from
/// any thread, also from a callback.
///
/// # Safety
/// `out` must be NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn vram_monitor_integrity(monitor: *const VramMonitor, out: *mut VramMonitorIntegrity) -> VramMonitorResult {
    on_monitor(monitor, |monitor| {
        if out.is_null() {
            return VramMonitorResult::NullArgument;
        }
        let status = monitor.integrity();
        let (failed_device, failed_code) = match &status.failed {
            Some((device, vram_monitor::driver::DriverError::Call { code, .. })) => (*device, *code),
            Some((device, _)) => (*device, -1),
            None => (-1, 0),
        };
        // SAFETY: checked non-NULL; writable per the contract.
        unsafe {
            *out = VramMonitorIntegrity {
                devices_enabled: status.devices_enabled,
                failed: status.failed.is_some(),
                failed_device,
                failed_code,
                sealed: status.sealed,
                sealed_bytes: status.sealed_bytes,
                modified: status.modified,
                verified_bytes_total: status.verified_bytes_total,
                passes_completed: status.passes_completed,
                last_pass_unix_ms: status.last_pass_unix_ms,
            }
        };
        VramMonitorResult::Ok
    })
}
