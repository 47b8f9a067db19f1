//! Registering a whole model in one call, and reading one registration back.

use std::collections::HashSet;
use std::ffi::{c_char, c_void, CStr};

use crate::handle::{on_monitor, VramMonitor};
use crate::result::VramMonitorResult;
use vram_monitor::batch::Region;

/// One entry of `vram_monitor_register_many`: `[ptr, ptr + size)` under `label` (UTF-8, at
/// most `VRAM_MONITOR_MAX_LABEL_BYTES`, copied).
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct VramMonitorRegion {
    /// First byte of the range.
    pub ptr: *const c_void,
    /// Length in bytes (non-zero).
    pub size: usize,
    /// The engine's name for it, NUL-terminated.
    pub label: *const c_char,
}

/// `vram_monitor_register_many` flag: a failed entry stops the call and nothing is
/// registered.
pub const VRAM_MONITOR_REGISTER_ALL_OR_NOTHING: u32 = 1;

/// One registration as it stands now (`vram_monitor_registration`).
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct VramMonitorRegistrationInfo {
    /// Its id.
    pub id: u64,
    /// First byte.
    pub ptr: *const c_void,
    /// Length in bytes.
    pub size: usize,
    /// The device that held it when registered.
    pub device: i32,
    /// Its verdict from the last check that could judge it (`VramMonitorVerdict`).
    pub verdict: i32,
    /// The allocations or VMM mappings that hold it (1 for nearly every range).
    pub pieces: u32,
    /// 1 when the driver query for it failed in the last check (the verdict is then the
    /// last one known), else 0.
    pub check_failing: u32,
}

/// Registers `count` ranges in one call (a whole model), as `vram_monitor_register` would
/// each, but asking the driver once per distinct allocation or mapping instead of once per
/// entry, and judging every entry from the answers of this one call (one consistent
/// snapshot).
///
/// For entry `i`, `out_results[i]` receives its own code (`OK`, or what
/// `vram_monitor_register` would return for it: `INVALID_ARGUMENT` for size 0 or a range that
/// wraps, `NULL_ARGUMENT` for a NULL ptr or label, `INVALID_LABEL`, `REFUSED_<VERDICT>`,
/// `DRIVER_ERROR`; `DUPLICATE_RANGE` when the same ptr and size appear earlier in this call)
/// and `out_ids[i]` its id, or 0 when it was not registered.
///
/// A failed entry fails only itself, unless `flags` has
/// `VRAM_MONITOR_REGISTER_ALL_OR_NOTHING`: then, when any entry fails, nothing is registered,
/// every `out_ids[i]` is 0, and the entries that did not fail themselves get
/// `ENTRIES_FAILED`. (An entry with a NULL ptr or label, or a label that is not UTF-8, then
/// stops the call before the others are judged: they all get `ENTRIES_FAILED`, except a
/// repeat of an earlier entry's range, which gets `DUPLICATE_RANGE`.)
///
/// Returns `OK` when every entry was registered, `ENTRIES_FAILED` when at least one was not
/// (read `out_results`), `NULL_ARGUMENT` for a NULL monitor, a NULL `regions` with `count`
/// > 0, or a NULL `out_ids` / `out_results` (nothing is done, nothing written),
/// `INVALID_ARGUMENT` for `count` 0 or unknown flag bits. `out_registered` may be NULL; if not,
/// it receives how many entries were registered (on `OK` and `ENTRIES_FAILED`). May be called
/// from any thread, also from a callback; never waits for a check.
///
/// # Safety
/// `regions`, `out_ids` and `out_results` must point to `count` elements each; labels must
/// be NUL-terminated.
#[no_mangle]
pub unsafe extern "C" fn vram_monitor_register_many(
    monitor: *mut VramMonitor,
    regions: *const VramMonitorRegion,
    count: usize,
    flags: u32,
    out_ids: *mut u64,
    out_results: *mut VramMonitorResult,
    out_registered: *mut usize,
) -> VramMonitorResult {
    on_monitor(monitor, |monitor| {
        if (regions.is_null() && count > 0) || out_ids.is_null() || out_results.is_null() {
            return VramMonitorResult::NullArgument;
        }
        if count == 0 || flags & !VRAM_MONITOR_REGISTER_ALL_OR_NOTHING != 0 {
            return VramMonitorResult::InvalidArgument;
        }
        // SAFETY: `count` elements each (the caller's contract).
        let entries = unsafe { std::slice::from_raw_parts(regions, count) };
        let ids = unsafe { std::slice::from_raw_parts_mut(out_ids, count) };
        let results = unsafe { std::slice::from_raw_parts_mut(out_results, count) };
        // Entries C itself rejects (NULL pointers, labels not UTF-8) are judged here, in
        // `own` (index, why); the others go to the core together, `positions` mapping them
        // back (only needed once an entry was rejected here).
        let split = |repeats_here: bool| {
            let mut own: Vec<(usize, VramMonitorResult)> = Vec::new();
            let mut regions_for_core = Vec::with_capacity(count);
            let mut positions: Vec<usize> = Vec::new();
            let mut seen: HashSet<(usize, usize)> = HashSet::new();
            for (i, entry) in entries.iter().enumerate() {
                let judged = if repeats_here && !seen.insert((entry.ptr as usize, entry.size)) {
                    Err(VramMonitorResult::DuplicateRange)
                } else {
                    // SAFETY: a label is NULL or NUL-terminated (the caller's contract).
                    unsafe { label_of(entry) }
                };
                match judged {
                    Ok(label) => {
                        regions_for_core.push(Region { ptr: entry.ptr as u64, size: entry.size as u64, label });
                        if !own.is_empty() {
                            positions.push(i);
                        }
                    }
                    Err(rejected) => {
                        if own.is_empty() {
                            positions.extend(0..i);
                        }
                        own.push((i, rejected));
                    }
                }
            }
            (own, regions_for_core, positions)
        };
        let (mut own, mut regions_for_core, mut positions) = split(false);
        if !own.is_empty() {
            // An entry rejected here never reaches the core's check for the same range
            // twice: with one, that check is made here for every entry, first as in the core
            // (a repeat is DUPLICATE_RANGE whatever else is wrong with it).
            (own, regions_for_core, positions) = split(true);
        }
        let all_or_nothing = flags & VRAM_MONITOR_REGISTER_ALL_OR_NOTHING != 0;
        // With all-or-nothing, an entry C rejected already fails the call: register nothing.
        let registered = if all_or_nothing && !own.is_empty() {
            None
        } else {
            match monitor.register_many(&regions_for_core, all_or_nothing) {
                Ok(registered) => Some(registered),
                Err(error) => return VramMonitorResult::from(&error),
            }
        };
        ids.fill(0);
        results.fill(VramMonitorResult::EntriesFailed);
        for &(i, rejected) in &own {
            results[i] = rejected;
        }
        let mut count_registered = 0usize;
        if let Some(registered) = registered {
            for (k, result) in registered.results().enumerate() {
                let i = if own.is_empty() { k } else { positions[k] };
                match result {
                    Ok(id) => {
                        ids[i] = id;
                        results[i] = VramMonitorResult::Ok;
                        count_registered += 1;
                    }
                    Err(error) => results[i] = VramMonitorResult::from(&error),
                }
            }
        }
        if !out_registered.is_null() {
            unsafe { *out_registered = count_registered };
        }
        if count_registered == count {
            VramMonitorResult::Ok
        } else {
            VramMonitorResult::EntriesFailed
        }
    })
}

/// Entry `entry`'s label, or why C itself rejects the entry: a NULL ptr or label, a label
/// that is not UTF-8.
///
/// # Safety
/// `entry.label` is NULL or NUL-terminated.
unsafe fn label_of(entry: &VramMonitorRegion) -> Result<&str, VramMonitorResult> {
    if entry.ptr.is_null() || entry.label.is_null() {
        return Err(VramMonitorResult::NullArgument);
    }
    // SAFETY: non-NULL and NUL-terminated (the caller's contract).
    unsafe { CStr::from_ptr(entry.label) }.to_str().map_err(|_| VramMonitorResult::InvalidLabel)
}

/// Reads one registration: fills `*out_info` and copies its label, NUL-terminated, into
/// `label_buf` (no JSON, no copy of other registrations).
///
/// `UNKNOWN_REGISTRATION` for an id this monitor does not hold. `label_buf` may be NULL with
/// `label_buf_len` 0: then only `*out_info` is filled (`OK`) and, if `out_label_len` is not
/// NULL, it receives the label's size with the NUL. If `label_buf_len` is non-zero but too
/// small, `*out_info` is filled, nothing is written to `label_buf`, `*out_label_len` is the
/// size needed with the NUL, and the result is `BUFFER_TOO_SMALL`. On `OK` with a buffer,
/// `*out_label_len` (if not NULL) is the label's length without the NUL. `NULL_ARGUMENT` for
/// a NULL monitor or `out_info`, or `label_buf` NULL with `label_buf_len` > 0. Cheap (no
/// driver query); callable from any thread, also from a callback.
///
/// # Safety
/// `label_buf` must have `label_buf_len` writable bytes.
#[no_mangle]
pub unsafe extern "C" fn vram_monitor_registration(
    monitor: *const VramMonitor,
    id: u64,
    out_info: *mut VramMonitorRegistrationInfo,
    label_buf: *mut c_char,
    label_buf_len: usize,
    out_label_len: *mut usize,
) -> VramMonitorResult {
    on_monitor(monitor, |monitor| {
        if out_info.is_null() || (label_buf.is_null() && label_buf_len > 0) {
            return VramMonitorResult::NullArgument;
        }
        let Some(info) = monitor.registration(id) else {
            return VramMonitorResult::UnknownRegistration;
        };
        // SAFETY: checked non-NULL; writable per the contract.
        unsafe {
            *out_info = VramMonitorRegistrationInfo {
                id: info.id,
                ptr: info.ptr as *const c_void,
                size: info.size as usize,
                device: info.device,
                verdict: info.verdict as i32,
                pieces: u32::try_from(info.pieces.len()).unwrap_or(u32::MAX),
                check_failing: u32::from(info.check_failing),
            };
        }
        let needed = info.label.len() + 1;
        if label_buf.is_null() {
            if !out_label_len.is_null() {
                unsafe { *out_label_len = needed };
            }
            return VramMonitorResult::Ok;
        }
        if label_buf_len < needed {
            if !out_label_len.is_null() {
                unsafe { *out_label_len = needed };
            }
            return VramMonitorResult::BufferTooSmall;
        }
        unsafe {
            std::ptr::copy_nonoverlapping(info.label.as_ptr(), label_buf.cast::<u8>(), info.label.len());
            *label_buf.add(info.label.len()) = 0;
            if !out_label_len.is_null() {
                *out_label_len = info.label.len();
            }
        }
        VramMonitorResult::Ok
    })
}
