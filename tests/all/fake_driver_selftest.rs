//! Proves the fake libcuda (tests/fake_cuda) answers like the real driver does in
//! the facts file `cuda-pointer-facts.md` (what the driver answers, measured on the GPU machine), by calling its driver symbols directly, and proves the
//! harness in tests/support fails when it should. Independent of the library's API.

use std::ffi::{c_int, c_uint, c_void, CStr};
use std::os::raw::c_char;
use std::time::{Duration, Instant};

use crate::support::{fake_driver_test, no_driver_test, Fake, FakeDriverVariant, Kind};

const SUCCESS: i32 = 0;
const INVALID_VALUE: i32 = 1;
const NOT_INITIALIZED: i32 = 3;
const DEINITIALIZED: i32 = 4;
const STUB_LIBRARY: i32 = 34;
const INVALID_DEVICE: i32 = 101;
const INVALID_CONTEXT: i32 = 201;
const UNKNOWN: i32 = 999;

const MEMORY_TYPE: i32 = 2;
const BUFFER_ID: i32 = 7;
const IS_MANAGED: i32 = 8;
const DEVICE_ORDINAL: i32 = 9;
const RANGE_START_ADDR: i32 = 11;
const RANGE_SIZE: i32 = 12;
const MAPPING_SIZE: i32 = 18;
const MAPPING_BASE_ADDR: i32 = 19;

const MIB: usize = 1 << 20;
const GIB: usize = 1 << 30;

/// Everything the fake answers for one address.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Attrs {
    memory_type: u32,
    is_managed: u32,
    ordinal: i32,
    buffer_id: u64,
    range_start: u64,
    range_size: usize,
    mapping_base: u64,
    mapping_size: usize,
}

/// What the real driver answers for memory it does not know (freed, never allocated).
const UNREGISTERED: Attrs = Attrs {
    memory_type: 0,
    is_managed: 0,
    ordinal: -2,
    buffer_id: 0,
    range_start: 0,
    range_size: 0,
    mapping_base: 0,
    mapping_size: 0,
};

/// Filled in before a query, so a query that must write nothing can be checked.
const SENTINEL: Attrs = Attrs {
    memory_type: 0xAAAA_AAAA,
    is_managed: 0xBBBB_BBBB,
    ordinal: 0x3CCC_CCCC,
    buffer_id: 0xDDDD_DDDD_DDDD_DDDD,
    range_start: 0xEEEE_EEEE_EEEE_EEEE,
    range_size: 0x1111_1111,
    mapping_base: 0x2222_2222_2222,
    mapping_size: 0x3333_3333,
};

/// The fake's driver entry points, looked up by name in the loaded libcuda.so.1.
struct Driver {
    lib: &'static libloading::Library,
}

impl Driver {
    fn get() -> Driver {
        Driver { lib: Fake::get().library() }
    }

    fn sym<T: Copy>(&self, name: &str) -> T {
        unsafe { *self.lib.get::<T>(name).unwrap_or_else(|e| panic!("fake has no {name}: {e}")) }
    }

    fn has(&self, name: &str) -> bool {
        unsafe { self.lib.get::<*const c_void>(name).is_ok() }
    }

    fn init(&self) -> i32 {
        unsafe { self.sym::<unsafe extern "C" fn(c_uint) -> c_int>("cuInit")(0) }
    }

    fn init_ok(&self) {
        assert_eq!(self.init(), SUCCESS, "cuInit");
    }

    fn driver_version(&self) -> Result<i32, i32> {
        let mut v = -1;
        let rc = unsafe { self.sym::<unsafe extern "C" fn(*mut c_int) -> c_int>("cuDriverGetVersion")(&mut v) };
        if rc == SUCCESS { Ok(v) } else { Err(rc) }
    }

    fn device_count(&self) -> Result<i32, i32> {
        let mut n = -1;
        let rc = unsafe { self.sym::<unsafe extern "C" fn(*mut c_int) -> c_int>("cuDeviceGetCount")(&mut n) };
        if rc == SUCCESS { Ok(n) } else { Err(rc) }
    }

    fn device_get(&self, ordinal: i32) -> Result<i32, i32> {
        let mut d = -1;
        let rc = unsafe { self.sym::<unsafe extern "C" fn(*mut c_int, c_int) -> c_int>("cuDeviceGet")(&mut d, ordinal) };
        if rc == SUCCESS { Ok(d) } else { Err(rc) }
    }

    /// cuPointerGetAttributes with the given attribute numbers and output pointers.
    fn query_raw(&self, attributes: &mut [c_int], data: &mut [*mut c_void], ptr: u64) -> i32 {
        assert_eq!(attributes.len(), data.len());
        type F = unsafe extern "C" fn(c_uint, *mut c_int, *mut *mut c_void, u64) -> c_int;
        unsafe { self.sym::<F>("cuPointerGetAttributes")(attributes.len() as c_uint, attributes.as_mut_ptr(), data.as_mut_ptr(), ptr) }
    }

    /// All eight attributes; `out` keeps what it held where the fake writes nothing.
    fn query_into(&self, ptr: u64, out: &mut Attrs) -> i32 {
        let mut attributes =
            [MEMORY_TYPE, IS_MANAGED, DEVICE_ORDINAL, BUFFER_ID, RANGE_START_ADDR, RANGE_SIZE, MAPPING_BASE_ADDR, MAPPING_SIZE];
        let mut data: [*mut c_void; 8] = [
            &mut out.memory_type as *mut u32 as *mut c_void,
            &mut out.is_managed as *mut u32 as *mut c_void,
            &mut out.ordinal as *mut i32 as *mut c_void,
            &mut out.buffer_id as *mut u64 as *mut c_void,
            &mut out.range_start as *mut u64 as *mut c_void,
            &mut out.range_size as *mut usize as *mut c_void,
            &mut out.mapping_base as *mut u64 as *mut c_void,
            &mut out.mapping_size as *mut usize as *mut c_void,
        ];
        self.query_raw(&mut attributes, &mut data, ptr)
    }

    fn query(&self, ptr: u64) -> Result<Attrs, i32> {
        let mut out = SENTINEL;
        let rc = self.query_into(ptr, &mut out);
        if rc == SUCCESS {
            Ok(out)
        } else {
            assert_eq!(out, SENTINEL, "a failed query (code {rc}) wrote data");
            Err(rc)
        }
    }

    fn attrs(&self, ptr: u64) -> Attrs {
        self.query(ptr).unwrap_or_else(|rc| panic!("query of {ptr:#x} failed with {rc}"))
    }

    fn primary_state(&self, device: i32) -> Result<bool, i32> {
        let (mut flags, mut active) = (99u32, -1);
        type F = unsafe extern "C" fn(c_int, *mut c_uint, *mut c_int) -> c_int;
        let rc = unsafe { self.sym::<F>("cuDevicePrimaryCtxGetState")(device, &mut flags, &mut active) };
        if rc == SUCCESS {
            assert_eq!(flags, 0);
            Ok(active != 0)
        } else {
            Err(rc)
        }
    }

    fn retain(&self, device: i32) -> Result<*mut c_void, i32> {
        let mut ctx = std::ptr::null_mut();
        type F = unsafe extern "C" fn(*mut *mut c_void, c_int) -> c_int;
        let rc = unsafe { self.sym::<F>("cuDevicePrimaryCtxRetain")(&mut ctx, device) };
        if rc == SUCCESS { Ok(ctx) } else { Err(rc) }
    }

    fn release(&self, device: i32) -> i32 {
        unsafe { self.sym::<unsafe extern "C" fn(c_int) -> c_int>("cuDevicePrimaryCtxRelease_v2")(device) }
    }

    fn ctx_create(&self, device: i32) -> Result<*mut c_void, i32> {
        let mut ctx = std::ptr::null_mut();
        type F = unsafe extern "C" fn(*mut *mut c_void, c_uint, c_int) -> c_int;
        let rc = unsafe { self.sym::<F>("cuCtxCreate_v2")(&mut ctx, 0, device) };
        if rc == SUCCESS { Ok(ctx) } else { Err(rc) }
    }

    fn push(&self, ctx: *mut c_void) -> i32 {
        unsafe { self.sym::<unsafe extern "C" fn(*mut c_void) -> c_int>("cuCtxPushCurrent_v2")(ctx) }
    }

    fn pop(&self) -> Result<*mut c_void, i32> {
        let mut ctx = std::ptr::null_mut();
        let rc = unsafe { self.sym::<unsafe extern "C" fn(*mut *mut c_void) -> c_int>("cuCtxPopCurrent_v2")(&mut ctx) };
        if rc == SUCCESS { Ok(ctx) } else { Err(rc) }
    }

    fn current(&self) -> Result<*mut c_void, i32> {
        let mut ctx = std::ptr::NonNull::<c_void>::dangling().as_ptr(); // overwritten on success
        let rc = unsafe { self.sym::<unsafe extern "C" fn(*mut *mut c_void) -> c_int>("cuCtxGetCurrent")(&mut ctx) };
        if rc == SUCCESS { Ok(ctx) } else { Err(rc) }
    }

    fn set_current(&self, ctx: *mut c_void) -> i32 {
        unsafe { self.sym::<unsafe extern "C" fn(*mut c_void) -> c_int>("cuCtxSetCurrent")(ctx) }
    }

    fn mem_info(&self) -> Result<(usize, usize), i32> {
        let (mut free, mut total) = (0usize, 0usize);
        type F = unsafe extern "C" fn(*mut usize, *mut usize) -> c_int;
        let rc = unsafe { self.sym::<F>("cuMemGetInfo_v2")(&mut free, &mut total) };
        if rc == SUCCESS { Ok((free, total)) } else { Err(rc) }
    }

    fn error_string(&self, code: i32) -> Option<String> {
        let mut s: *const c_char = std::ptr::null();
        type F = unsafe extern "C" fn(c_int, *mut *const c_char) -> c_int;
        let rc = unsafe { self.sym::<F>("cuGetErrorString")(code, &mut s) };
        (rc == SUCCESS).then(|| unsafe { CStr::from_ptr(s) }.to_string_lossy().into_owned())
    }
}

/// An ordinary allocation: RANGE_* is the allocation, MAPPING_* the driver's 2 MiB-granular
/// chunk around it (as measured on an H100, driver 580).
fn device(base: u64, size: usize, ordinal: i32, buffer_id: u64) -> Attrs {
    const CHUNK: u64 = 2 << 20;
    let mapping_base = base & !(CHUNK - 1);
    let mapping_end = (base + size as u64).div_ceil(CHUNK) * CHUNK;
    Attrs {
        memory_type: 2,
        ordinal,
        buffer_id,
        range_start: base,
        range_size: size,
        mapping_base,
        mapping_size: (mapping_end - mapping_base) as usize,
        ..UNREGISTERED
    }
}

#[test]
fn every_call_but_version_needs_cuinit() {
    fake_driver_test(&test_name!(), FakeDriverVariant::Complete, &[], || {
        let fake = Fake::get();
        let d = Driver::get();
        let ptr = fake.alloc(Kind::Device, MIB, 0);
        assert_eq!(d.driver_version(), Ok(13000), "like the real driver, cuDriverGetVersion answers before cuInit");
        assert_eq!(d.device_count(), Err(NOT_INITIALIZED));
        assert_eq!(d.device_get(0), Err(NOT_INITIALIZED));
        assert_eq!(d.query(ptr), Err(NOT_INITIALIZED));
        assert_eq!(d.primary_state(0), Err(NOT_INITIALIZED));
        assert_eq!(d.retain(0), Err(NOT_INITIALIZED));
        assert_eq!(d.mem_info(), Err(NOT_INITIALIZED));
        assert_eq!(d.pop(), Err(NOT_INITIALIZED));
        assert_eq!(d.error_string(STUB_LIBRARY).as_deref(), Some("CUDA driver is a stub library"));

        d.init_ok();
        assert_eq!(d.device_count(), Ok(2));
        assert_eq!(d.device_get(1), Ok(1));
        assert_eq!(d.device_get(2), Err(INVALID_DEVICE));
        assert_eq!(d.device_get(-1), Err(INVALID_DEVICE));
        assert_eq!(d.attrs(ptr), device(ptr, MIB, 0, 1000), "the first buffer id is 1000");
        assert_eq!(d.error_string(12345), None);
    });
}

#[test]
fn init_result_and_device_count_from_environment() {
    let env = [("FAKE_CUDA_INIT_RESULT", "34"), ("FAKE_CUDA_DEVICE_COUNT", "4")];
    fake_driver_test(&test_name!(), FakeDriverVariant::Complete, &env, || {
        let fake = Fake::get();
        let d = Driver::get();
        assert_eq!(d.init(), STUB_LIBRARY);
        fake.set_init_result(0);
        assert_eq!(d.init(), STUB_LIBRARY, "the environment wins over the control call");
        assert_eq!(d.device_count(), Err(NOT_INITIALIZED));
        assert_ne!(fake.try_alloc(Kind::Device, MIB, 3), 0, "device 3 exists with FAKE_CUDA_DEVICE_COUNT=4");
        assert_eq!(fake.try_alloc(Kind::Device, MIB, 4), 0);
    });
}

#[test]
fn init_result_from_control_call() {
    fake_driver_test(&test_name!(), FakeDriverVariant::Complete, &[], || {
        let fake = Fake::get();
        let d = Driver::get();
        fake.set_init_result(100);
        assert_eq!(d.init(), 100);
        assert_eq!(d.device_count(), Err(NOT_INITIALIZED));
        fake.set_init_result(0);
        d.init_ok();
        assert_eq!(d.device_count(), Ok(2));
        assert_eq!(fake.try_alloc(Kind::Device, MIB, 2), 0, "only devices 0 and 1 by default");
    });
}

#[test]
fn pointer_attributes_reproduce_the_facts_table() {
    fake_driver_test(&test_name!(), FakeDriverVariant::Complete, &[], || {
        let fake = Fake::get();
        let d = Driver::get();
        d.init_ok();
        let size = 3 * MIB + 17;
        let dev = fake.alloc(Kind::Device, size, 0);
        let managed = fake.alloc(Kind::Managed, MIB, 0);
        let host = fake.alloc(Kind::Host, 4096, 1);
        let on_device_1 = fake.alloc(Kind::Device, MIB, 1);
        for p in [dev, managed, host, on_device_1] {
            assert_eq!(p % (2 * MIB as u64), 0, "{p:#x} is 2 MiB aligned");
        }

        // cudaMalloc, its interior and one past its end.
        let dev_attrs = d.attrs(dev);
        assert_eq!(dev_attrs, device(dev, size, 0, dev_attrs.buffer_id));
        assert_ne!(dev_attrs.buffer_id, 0);
        assert_eq!(d.attrs(dev + 4096), dev_attrs, "an interior pointer reports the base's id and range");
        assert_eq!(d.attrs(dev + size as u64 - 1), dev_attrs);
        assert_eq!(d.attrs(dev + size as u64), UNREGISTERED, "one past the end is unmapped");

        // cudaMallocManaged reports DEVICE; only IS_MANAGED tells.
        let m = d.attrs(managed);
        assert_eq!(m, Attrs { is_managed: 1, ..device(managed, MIB, 0, m.buffer_id) });

        // Pinned / mapped / registered host memory.
        let h = d.attrs(host + 100);
        assert_eq!(h, Attrs { memory_type: 1, ..device(host, 4096, 1, h.buffer_id) });

        assert_eq!(d.attrs(on_device_1).ordinal, 1);

        let ids = [dev_attrs.buffer_id, m.buffer_id, h.buffer_id, d.attrs(on_device_1).buffer_id];
        assert_eq!(ids, [1000, 1001, 1002, 1003], "unique ids from a counter starting at 1000");

        // Never allocated: null, 0x1234, a stack address, a heap address.
        let local = 5u64;
        let heap = Box::new(7u64);
        for p in [0, 0x1234, &local as *const u64 as u64, &*heap as *const u64 as u64, u64::MAX] {
            assert_eq!(d.attrs(p), UNREGISTERED, "{p:#x}");
        }

        // Freed: success with the defaults, not an error.
        assert!(fake.free(dev));
        assert_eq!(d.query(dev), Ok(UNREGISTERED));
        assert_eq!(d.query(dev + 4096), Ok(UNREGISTERED));
        assert!(!fake.free(dev), "double free is refused");
        assert!(!fake.free(managed + 8), "free needs the base");
        assert_eq!(d.attrs(managed), m, "other allocations are untouched");

        // Bad input to the control API.
        assert_eq!(fake.try_alloc(Kind::Device, 0, 0), 0);
        assert_eq!(fake.try_alloc(Kind::VmmDevice, MIB, 0), 0, "VMM memory comes from reserve + map");
        assert_eq!(fake.try_alloc(Kind::Device, MIB, -1), 0);
    });
}

#[test]
fn vmm_reservations_and_mappings() {
    fake_driver_test(&test_name!(), FakeDriverVariant::Complete, &[], || {
        let fake = Fake::get();
        let d = Driver::get();
        d.init_ok();
        let res_size = 95_000_000_000usize; // like PyTorch's expandable segments on an 80 GB card
        let res = fake.reserve(res_size);
        let chunk = 20 * MIB;
        let (a, b, c) = (res, res + chunk as u64, res + 2 * chunk as u64);
        assert!(fake.map(a, chunk, Kind::VmmDevice, 0));
        assert!(fake.map(b, chunk, Kind::VmmDevice, 1));
        assert!(fake.map(c, chunk, Kind::VmmHost, 0));

        let in_a = d.attrs(a + 12345);
        assert_eq!(
            in_a,
            Attrs {
                memory_type: 2,
                is_managed: 0,
                ordinal: 0,
                buffer_id: in_a.buffer_id,
                range_start: res,
                range_size: res_size,
                mapping_base: a,
                mapping_size: chunk
            },
            "RANGE is the whole reservation, MAPPING the mapping"
        );
        let in_b = d.attrs(b);
        assert_eq!((in_b.memory_type, in_b.ordinal, in_b.mapping_base, in_b.range_start), (2, 1, b, res));
        let in_c = d.attrs(c + chunk as u64 - 1);
        assert_eq!((in_c.memory_type, in_c.is_managed, in_c.mapping_base, in_c.mapping_size), (1, 0, c, chunk), "host VMM memory is HOST");
        assert!(in_a.buffer_id != 0 && in_a.buffer_id != in_b.buffer_id && in_b.buffer_id != in_c.buffer_id, "each mapping has its own id");

        // Reserved, nothing mapped: type 0, yet RANGE is the reservation.
        let unmapped = Attrs { range_start: res, range_size: res_size, ..UNREGISTERED };
        assert_eq!(d.attrs(c + chunk as u64), unmapped);
        assert_eq!(d.attrs(res + res_size as u64 - 1), unmapped);
        assert_eq!(d.attrs(res + res_size as u64), UNREGISTERED, "past the reservation");

        // Refused mappings: overlapping, outside any reservation, running past its end, wrong kind.
        assert!(!fake.map(a + MIB as u64, MIB, Kind::VmmDevice, 0));
        assert!(!fake.map(c - MIB as u64, 2 * MIB, Kind::VmmDevice, 0));
        assert!(!fake.map(res - 4 * MIB as u64, MIB, Kind::VmmDevice, 0));
        assert!(!fake.map(res + res_size as u64 - MIB as u64, 2 * MIB, Kind::VmmDevice, 0));
        assert!(!fake.map(res + 10 * GIB as u64, MIB, Kind::Device, 0));
        assert!(!fake.map(res + 10 * GIB as u64, MIB, Kind::VmmDevice, 7));

        // Unmapped: the address reads type 0, the reservation stays; a new mapping there has a new id.
        assert!(fake.unmap(b));
        assert!(!fake.unmap(b));
        assert_eq!(d.attrs(b + 5), unmapped);
        assert!(fake.map(b, chunk, Kind::VmmDevice, 0));
        let again = d.attrs(b);
        assert!(again.buffer_id > in_c.buffer_id, "new mapping, new id");
        assert!(fake.free(b), "fake_cuda_free also unmaps");
        assert!(!fake.unmap(res + 1), "unmap needs the mapping's base");

        // A reservation can only be released once empty.
        assert!(!fake.release(res));
        assert!(fake.unmap(a) && fake.unmap(c));
        assert!(fake.release(res));
        assert_eq!(d.attrs(a), UNREGISTERED);
        assert!(!fake.release(res));
        assert!(!fake.map(a, chunk, Kind::VmmDevice, 0), "no reservation any more");
        assert_eq!(fake.try_alloc(Kind::Device, 0, 0), 0);
    });
}

#[test]
fn reallocate_set_kind_and_set_device() {
    fake_driver_test(&test_name!(), FakeDriverVariant::Complete, &[], || {
        let fake = Fake::get();
        let d = Driver::get();
        d.init_ok();
        let ptr = fake.alloc(Kind::Device, 8 * MIB, 0);
        let before = d.attrs(ptr);

        // Free + allocate at the same address: still DEVICE, but a new buffer id.
        assert!(fake.reallocate(ptr));
        let after = d.attrs(ptr);
        assert_eq!(after, Attrs { buffer_id: after.buffer_id, ..before });
        assert_ne!(after.buffer_id, before.buffer_id);
        assert!(!fake.reallocate(ptr + 1));

        // Kind changes in place keep the id.
        assert!(fake.set_kind(ptr, Kind::Managed));
        assert_eq!(d.attrs(ptr), Attrs { is_managed: 1, ..after });
        assert!(fake.set_kind(ptr, Kind::Host));
        assert_eq!(d.attrs(ptr), Attrs { memory_type: 1, ..after });
        assert!(!fake.set_kind(ptr, Kind::VmmDevice), "an allocation cannot become a VMM mapping");
        assert!(fake.set_kind(ptr, Kind::Device));
        assert_eq!(d.attrs(ptr), after);

        assert!(fake.set_device(ptr, 1));
        assert_eq!(d.attrs(ptr), Attrs { ordinal: 1, ..after });
        assert!(!fake.set_device(ptr, 2));
        assert!(!fake.set_device(ptr + 64, 0));

        // Mappings: VMM kinds only, and reallocate gives them a new id too.
        let res = fake.reserve(64 * MIB);
        assert!(fake.map(res, 2 * MIB, Kind::VmmDevice, 0));
        let m = d.attrs(res);
        assert!(!fake.set_kind(res, Kind::Device));
        assert!(fake.set_kind(res, Kind::VmmHost));
        assert_eq!(d.attrs(res), Attrs { memory_type: 1, ..m });
        assert!(fake.reallocate(res));
        assert_ne!(d.attrs(res).buffer_id, m.buffer_id);
    });
}

#[test]
fn injected_and_invalid_query_errors_write_nothing() {
    fake_driver_test(&test_name!(), FakeDriverVariant::Complete, &[], || {
        let fake = Fake::get();
        let d = Driver::get();
        d.init_ok();
        let ptr = fake.alloc(Kind::Device, 4 * MIB, 0);
        let other = fake.alloc(Kind::Device, 4 * MIB, 0);
        let good = d.attrs(ptr);

        // An attribute the fake does not know (10 = CU_POINTER_ATTRIBUTE_IS_LEGACY_CUDA_IPC_CAPABLE
        // here; the real driver knows it, the fake refuses all but eight) after a valid one.
        let (mut t, mut x) = (77u32, 88u64);
        let mut attributes = [MEMORY_TYPE, 10];
        let mut data = [&mut t as *mut u32 as *mut c_void, &mut x as *mut u64 as *mut c_void];
        assert_eq!(d.query_raw(&mut attributes, &mut data, ptr), INVALID_VALUE);
        assert_eq!((t, x), (77, 88), "nothing written, not even the valid attribute before it");
        let mut attributes = [MEMORY_TYPE, BUFFER_ID];
        let mut data = [&mut t as *mut u32 as *mut c_void, std::ptr::null_mut()];
        assert_eq!(d.query_raw(&mut attributes, &mut data, ptr), INVALID_VALUE, "NULL data[i]");
        assert_eq!(t, 77);

        // Every query fails while a query result is set.
        for code in [UNKNOWN, DEINITIALIZED] {
            fake.set_query_result(code);
            assert_eq!(d.query(ptr), Err(code));
            assert_eq!(d.query(0x1234), Err(code));
        }
        fake.set_query_result(0);
        assert_eq!(d.attrs(ptr), good);

        // A fault on one allocation: anywhere inside it, not elsewhere.
        fake.fail_query_at(ptr + 100, UNKNOWN);
        assert_eq!(d.query(ptr), Err(UNKNOWN));
        assert_eq!(d.query(ptr + 4 * MIB as u64 - 1), Err(UNKNOWN));
        assert!(d.query(other).is_ok());
        assert_eq!(d.query(ptr + 4 * MIB as u64), Ok(UNREGISTERED));
        fake.fail_query_at(ptr, 0);
        assert_eq!(d.attrs(ptr), good);
        fake.fail_query_at(ptr, DEINITIALIZED);
        assert!(fake.reallocate(ptr));
        assert!(d.query(ptr).is_ok(), "a reallocation is new memory: the fault is gone");
        fake.fail_query_at(other, UNKNOWN);
        assert!(fake.free(other));
        assert_eq!(d.query(other), Ok(UNREGISTERED), "freed memory takes its fault with it");

        // Faults on a mapping and on the unmapped part of a reservation.
        let res = fake.reserve(16 * MIB);
        assert!(fake.map(res, 2 * MIB, Kind::VmmDevice, 0));
        fake.fail_query_at(res + 1, DEINITIALIZED);
        assert_eq!(d.query(res), Err(DEINITIALIZED));
        assert!(d.query(res + 4 * MIB as u64).is_ok());
        fake.fail_query_at(res + 4 * MIB as u64, UNKNOWN);
        assert_eq!(d.query(res + 8 * MIB as u64), Err(UNKNOWN));
        assert_eq!(d.query(res), Err(DEINITIALIZED));
    });
}

#[test]
fn query_counter_delay_and_reset() {
    fake_driver_test(&test_name!(), FakeDriverVariant::Complete, &[], || {
        let fake = Fake::get();
        let d = Driver::get();
        assert_eq!(fake.pointer_queries(), 0);
        assert_eq!(d.query(0), Err(NOT_INITIALIZED));
        d.init_ok();
        let ptr = fake.alloc(Kind::Device, MIB, 0);
        for _ in 0..10 {
            d.attrs(ptr);
        }
        fake.set_query_result(UNKNOWN);
        assert!(d.query(ptr).is_err());
        fake.set_query_result(0);
        assert_eq!(fake.pointer_queries(), 12, "every call counts, failed ones too");

        fake.set_query_delay_us(20_000);
        let start = Instant::now();
        d.attrs(ptr);
        assert!(start.elapsed() >= Duration::from_millis(20), "query took {:?}", start.elapsed());
        fake.set_query_delay_us(0);
        let start = Instant::now();
        d.attrs(ptr);
        assert!(start.elapsed() < Duration::from_millis(15));

        let id = d.attrs(ptr).buffer_id;
        let res = fake.reserve(4 * MIB);
        fake.set_query_result(UNKNOWN);
        fake.set_primary_context_active(0, false);
        assert!(d.retain(1).is_ok());
        fake.reset();
        assert_eq!(fake.pointer_queries(), 0);
        assert_eq!(fake.context_creations(), 0);
        assert_eq!(fake.primary_context_retains(1), 0);
        assert_eq!(d.primary_state(0), Ok(true), "primary contexts are active again");
        assert_eq!(d.query(ptr), Ok(UNREGISTERED), "cuInit survives a reset; memory and faults do not");
        assert_eq!(d.attrs(res + 5), UNREGISTERED, "reservations too");
        let fresh = fake.alloc(Kind::Device, MIB, 0);
        assert!(fresh > ptr && d.attrs(fresh).buffer_id > id, "addresses and ids are never reused");
    });
}

#[test]
fn contexts_and_memory_info() {
    fake_driver_test(&test_name!(), FakeDriverVariant::Complete, &[], || {
        let fake = Fake::get();
        let d = Driver::get();
        d.init_ok();

        // The engine's primary contexts exist: retaining one creates nothing.
        assert_eq!(d.primary_state(0), Ok(true));
        assert_eq!(d.primary_state(2), Err(INVALID_DEVICE));
        let ctx0 = d.retain(0).unwrap();
        assert!(!ctx0.is_null());
        assert_eq!(d.retain(0).unwrap(), ctx0, "one primary context per device");
        assert_eq!(fake.context_creations(), 0);
        assert_eq!(fake.primary_context_retains(0), 2);
        assert_eq!(d.release(0), SUCCESS);
        assert_eq!(d.release(0), SUCCESS);
        assert_eq!(d.release(0), INVALID_CONTEXT, "released more than retained");
        assert_eq!(d.primary_state(0), Ok(true), "the engine still holds it");

        // No primary context on device 1: retaining creates it.
        fake.set_primary_context_active(1, false);
        assert_eq!(d.primary_state(1), Ok(false));
        let ctx1 = d.retain(1).unwrap();
        assert_ne!(ctx1, ctx0);
        assert_eq!(fake.context_creations(), 1);
        assert_eq!(d.primary_state(1), Ok(true));
        assert_eq!(d.release(1), SUCCESS);
        assert_eq!(d.primary_state(1), Ok(false), "the last release destroys it");

        // cuMemGetInfo needs a current context.
        assert_eq!(d.mem_info(), Err(INVALID_CONTEXT));
        assert_eq!(d.pop(), Err(INVALID_CONTEXT));
        assert_eq!(d.current(), Ok(std::ptr::null_mut()));
        assert_eq!(d.push(ctx0), SUCCESS);
        assert_eq!(d.current(), Ok(ctx0));
        let total = 80 * GIB;
        assert_eq!(d.mem_info(), Ok((total - 512 * MIB, total)));
        let big = fake.alloc(Kind::Device, GIB, 0);
        let res = fake.reserve(GIB);
        assert!(fake.map(res, 20 * MIB, Kind::VmmDevice, 0));
        assert!(fake.map(res + 20 * MIB as u64, 20 * MIB, Kind::VmmHost, 0));
        fake.alloc(Kind::Managed, GIB, 0);
        fake.alloc(Kind::Host, GIB, 0);
        fake.alloc(Kind::Device, GIB, 1);
        assert_eq!(d.mem_info(), Ok((total - 512 * MIB - GIB - 20 * MIB, total)), "DEVICE and VMM_DEVICE on device 0 count");
        assert!(fake.free(big));
        assert_eq!(d.mem_info(), Ok((total - 512 * MIB - 20 * MIB, total)));

        // The stack is per thread.
        std::thread::scope(|s| {
            s.spawn(|| {
                let d = Driver::get();
                assert_eq!(d.mem_info(), Err(INVALID_CONTEXT));
                assert_eq!(d.current(), Ok(std::ptr::null_mut()));
            });
        });
        assert_eq!(d.pop(), Ok(ctx0));
        assert_eq!(d.mem_info(), Err(INVALID_CONTEXT));
        assert_eq!(d.push(std::ptr::null_mut()), INVALID_CONTEXT);

        // cuCtxSetCurrent replaces the top; NULL pops.
        assert_eq!(d.set_current(ctx0), SUCCESS);
        assert_eq!(d.current(), Ok(ctx0));
        assert_eq!(d.set_current(std::ptr::null_mut()), SUCCESS);
        assert_eq!(d.current(), Ok(std::ptr::null_mut()));

        // cuCtxCreate always creates (and makes the new context current).
        let created = d.ctx_create(1).unwrap();
        assert_eq!(fake.context_creations(), 2);
        assert_eq!(d.current(), Ok(created));
        assert_eq!(d.mem_info().map(|(free, _)| free), Ok(total - 512 * MIB - GIB), "device 1's memory");
        assert_eq!(d.pop(), Ok(created));
        assert_eq!(d.ctx_create(5), Err(INVALID_DEVICE));
    });
}

#[test]
fn without_pointer_query_variant_lacks_the_symbol() {
    fake_driver_test(&test_name!(), FakeDriverVariant::WithoutPointerQuery, &[], || {
        let fake = Fake::get();
        let d = Driver::get();
        assert!(!d.has("cuPointerGetAttributes"));
        assert!(d.has("cuInit") && d.has("cuMemGetInfo_v2"));
        d.init_ok();
        assert_eq!(d.device_count(), Ok(2));
        assert_ne!(fake.alloc(Kind::Device, MIB, 0), 0);
    });
}

#[test]
fn cudarc_loads_the_same_fake() {
    fake_driver_test(&test_name!(), FakeDriverVariant::Complete, &[], || {
        use cudarc::driver::sys;
        let fake = Fake::get();
        // cudarc dlopen()s "libcuda.so" first; the fake's soname is libcuda.so.1: one instance.
        let by_other_name = unsafe { libloading::Library::new("libcuda.so") }.unwrap();
        let fake_alloc: unsafe extern "C" fn(c_int, usize, c_int) -> u64 = unsafe { *by_other_name.get("fake_cuda_alloc").unwrap() };
        let ptr = unsafe { fake_alloc(Kind::Managed as c_int, MIB, 1) };
        assert!(unsafe { sys::is_culib_present() });
        cudarc::driver::result::init().unwrap();
        let mut version = 0;
        assert_eq!(unsafe { sys::cuDriverGetVersion(&mut version) }, sys::CUresult::CUDA_SUCCESS);
        assert_eq!(version, 13000);
        let (mut managed, mut ordinal) = (0u32, -9i32);
        let mut attributes = [sys::CUpointer_attribute::CU_POINTER_ATTRIBUTE_IS_MANAGED, sys::CUpointer_attribute::CU_POINTER_ATTRIBUTE_DEVICE_ORDINAL];
        let mut data = [&mut managed as *mut u32 as *mut c_void, &mut ordinal as *mut i32 as *mut c_void];
        let rc = unsafe { sys::cuPointerGetAttributes(2, attributes.as_mut_ptr(), data.as_mut_ptr(), ptr) };
        assert_eq!(rc, sys::CUresult::CUDA_SUCCESS);
        assert_eq!((managed, ordinal), (1, 1), "cudarc sees the allocation made through the other handle");
        assert_eq!(fake.pointer_queries(), 1, "and the harness's handle counted that query");
    });
}

#[test]
fn cudarc_sees_a_stub_library_and_formats_the_error() {
    fake_driver_test(&test_name!(), FakeDriverVariant::Complete, &[("FAKE_CUDA_INIT_RESULT", "34")], || {
        let err = cudarc::driver::result::init().unwrap_err();
        assert_eq!(err.0, cudarc::driver::sys::CUresult::CUDA_ERROR_STUB_LIBRARY);
        let text = format!("{err}");
        assert!(text.contains("CUDA driver is a stub library"), "{text}");
    });
}

#[test]
fn no_driver_means_no_libcuda() {
    no_driver_test(&test_name!(), || {
        assert!(unsafe { libloading::Library::new("libcuda.so") }.is_err());
        assert!(unsafe { libloading::Library::new("libcuda.so.1") }.is_err());
        assert!(!unsafe { cudarc::driver::sys::is_culib_present() });
    });
}

#[test]
fn concurrent_use_from_many_threads() {
    fake_driver_test(&test_name!(), FakeDriverVariant::Complete, &[], || {
        let fake = Fake::get();
        Driver::get().init_ok();
        let per_thread = 2000;
        let ids: Vec<Vec<u64>> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..8)
                .map(|t| {
                    s.spawn(move || {
                        let d = Driver::get();
                        let mut ids = Vec::new();
                        let ptrs: Vec<u64> = (0..per_thread).map(|_| fake.alloc(Kind::Device, 4096, t % 2)).collect();
                        for (i, &p) in ptrs.iter().enumerate() {
                            let a = d.attrs(p + 100);
                            assert_eq!((a.memory_type, a.range_start, a.ordinal), (2, p, t % 2));
                            ids.push(a.buffer_id);
                            if i % 2 == 0 {
                                assert!(fake.free(p));
                                assert_eq!(d.attrs(p), UNREGISTERED);
                            }
                        }
                        ids
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        let mut all: Vec<u64> = ids.into_iter().flatten().collect();
        let n = all.len();
        all.sort_unstable();
        all.dedup();
        assert_eq!(all.len(), n, "buffer ids are unique across threads");
        assert_eq!(fake.pointer_queries(), 8 * per_thread as u64 * 3 / 2);
    });
}

#[test]
fn hundred_thousand_allocations_stay_fast_and_correct() {
    fake_driver_test(&test_name!(), FakeDriverVariant::Complete, &[], || {
        let fake = Fake::get();
        let d = Driver::get();
        d.init_ok();
        let start = Instant::now();
        let ptrs: Vec<u64> = (0..100_000).map(|_| fake.alloc(Kind::Device, 4096, 0)).collect();
        for (i, &p) in ptrs.iter().enumerate() {
            assert_eq!(d.attrs(p + 8).buffer_id, 1000 + i as u64);
        }
        for &p in ptrs.iter().step_by(3) {
            assert!(fake.free(p));
        }
        for (i, &p) in ptrs.iter().enumerate() {
            let a = d.attrs(p);
            assert_eq!(a.memory_type == 0, i % 3 == 0, "allocation {i}");
        }
        for &p in &ptrs {
            fake.free(p);
        }
        assert_eq!(d.attrs(ptrs[99_999]), UNREGISTERED);
        let elapsed = start.elapsed();
        assert!(elapsed < Duration::from_secs(10), "100k allocations took {elapsed:?}");
    });
}

/// Runs (and fails) only as the child of `harness_reports_a_failing_child`.
#[test]
fn child_that_fails() {
    if std::env::var(crate::support::CHILD_ENV).as_deref() == Ok(test_name!().as_str()) {
        panic!("deliberate failure in the child");
    }
}

fn panic_text(payload: Box<dyn std::any::Any + Send>) -> String {
    payload
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| payload.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_default()
}

#[test]
fn harness_reports_a_failing_child() {
    // The libtest name of the sibling test above: this module's path, then its name.
    let here = test_name!();
    let child = match here.rsplit_once("::") {
        Some((module, _)) => format!("{module}::child_that_fails"),
        None => "child_that_fails".to_string(),
    };
    let result = std::panic::catch_unwind(|| fake_driver_test(&child, FakeDriverVariant::Complete, &[], || {}));
    let text = panic_text(result.expect_err("the harness must fail when the child fails"));
    assert!(text.contains("test child failed") && text.contains("deliberate failure in the child"), "{text}");
}

#[test]
fn harness_reports_a_child_that_ran_no_test() {
    let result = std::panic::catch_unwind(|| fake_driver_test("no_such_test", FakeDriverVariant::Complete, &[], || {}));
    let text = panic_text(result.expect_err("a child that ran no test must not pass"));
    assert!(text.contains("did not run exactly one passing test") && text.contains("0 passed"), "{text}");
}

mod nested {
    use crate::support::{fake_driver_test, FakeDriverVariant};

    #[test]
    fn test_name_macro_gives_the_libtest_name() {
        let name = crate::test_name!();
        assert_eq!(name, "fake_driver_selftest::nested::test_name_macro_gives_the_libtest_name");
        fake_driver_test(&name, FakeDriverVariant::Complete, &[], || {
            assert_eq!(std::env::var(crate::support::CHILD_ENV).unwrap(), name);
        });
    }
}
