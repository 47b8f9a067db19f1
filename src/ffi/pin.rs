//! Keeping the shared library mapped while monitors may run.
//!
//! A host that `dlclose()`s the library while a monitor thread runs would unmap the code under
//! that thread (and under its HTTP threads): a crash at some later moment, far from the cause.
//! So when the first monitor is created, the library marks itself `RTLD_NODELETE`: a
//! `dlclose` then leaves it mapped, and its threads keep running code that exists until the
//! host frees the monitors. A static link is never unloaded; there this finds the executable
//! and changes nothing.

use std::ffi::{c_char, c_int, c_void};
use std::sync::Once;

#[repr(C)]
struct DlInfo {
    dli_fname: *const c_char,
    dli_fbase: *mut c_void,
    dli_sname: *const c_char,
    dli_saddr: *mut c_void,
}

extern "C" {
    fn dladdr(address: *const c_void, info: *mut DlInfo) -> c_int;
    fn dlopen(filename: *const c_char, flags: c_int) -> *mut c_void;
}

// glibc and musl values (Linux).
const RTLD_NOW: c_int = 0x2;
const RTLD_NOLOAD: c_int = 0x4;
const RTLD_NODELETE: c_int = 0x1000;

/// Marks the object holding this code `RTLD_NODELETE`, once per process.
pub(crate) fn pin_library() {
    static PINNED: Once = Once::new();
    PINNED.call_once(|| {
        let mut info = DlInfo {
            dli_fname: std::ptr::null(),
            dli_fbase: std::ptr::null_mut(),
            dli_sname: std::ptr::null(),
            dli_saddr: std::ptr::null_mut(),
        };
        // SAFETY: dladdr fills `info` for an address of our own code; dlopen with RTLD_NOLOAD
        // only takes another reference to an object already loaded (never loads one), which
        // is never closed: that reference, with NODELETE, is the pin.
        unsafe {
            if dladdr(pin_library as fn() as *const c_void, &mut info) != 0 && !info.dli_fname.is_null() {
                dlopen(info.dli_fname, RTLD_NOW | RTLD_NOLOAD | RTLD_NODELETE);
            }
        }
    });
}
