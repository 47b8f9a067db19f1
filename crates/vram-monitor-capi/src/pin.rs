//! Keeping the shared library mapped while monitors may run.
//!
//! A host that `dlclose()`s the library while a monitor thread runs would unmap the code under
//! that thread (and under its HTTP threads): a crash at some later moment, far from the cause.
//! So when the first monitor is created, the library marks itself `RTLD_NODELETE`: a
//! `dlclose` then leaves it mapped, and its threads keep running code that exists until the
//! host frees the monitors. A static link is never unloaded; there this finds the executable
//! and changes nothing.

use std::ffi::c_void;
use std::sync::Once;

/// Marks the object holding this code `RTLD_NODELETE`, once per process.
pub(crate) fn pin_library() {
    static PINNED: Once = Once::new();
    PINNED.call_once(|| {
        let mut info = libc::Dl_info {
            dli_fname: std::ptr::null(),
            dli_fbase: std::ptr::null_mut(),
            dli_sname: std::ptr::null(),
            dli_saddr: std::ptr::null_mut(),
        };
        // SAFETY: dladdr fills `info` for an address of our own code; dlopen with RTLD_NOLOAD
        // only takes another reference to an object already loaded (never loads one), which
        // is never closed: that reference, with NODELETE, is the pin.
        unsafe {
            if libc::dladdr(pin_library as fn() as *const c_void, &mut info) != 0 && !info.dli_fname.is_null() {
                libc::dlopen(info.dli_fname, libc::RTLD_NOW | libc::RTLD_NOLOAD | libc::RTLD_NODELETE);
            }
        }
    });
}
