//! The kit against the fake libcuda (tests/fake_cuda) and without any driver: loading never
//! panics, a function the driver lacks is an error naming it, and what the fake has works as an
//! engine uses it (context, allocation, pointer query, kernel, a context of its own).

// The repository's fake-driver harness (tests/support), shared with the root package's tests.
#[path = "../../../tests/support/mod.rs"]
mod support;

use cuda_engine::symbols::{CONTEXTS, MEMORY, STREAMS, VMM};
use cuda_engine::{Cuda, Error, HostBuffer, Location, PrimaryContext, Stream};
use support::{fake_driver_test, no_driver_test, FakeDriverVariant};

#[test]
fn without_a_driver_loading_is_an_error_not_a_panic() {
    no_driver_test(&test_name!(), || {
        let error = Cuda::get().err().expect("no driver to load");
        assert_eq!(error, Error::NoLibrary("no CUDA driver library (libcuda.so) could be loaded".into()));
        assert_eq!(Cuda::get().err(), Some(error), "the same answer the second time");
    });
}

#[test]
fn a_missing_function_is_an_error_naming_it() {
    fake_driver_test(&test_name!(), FakeDriverVariant::Complete, &[], || {
        let cuda = Cuda::get().expect("the fake loads");
        assert!(cuda.has("cuMemAlloc_v2") && cuda.has("fake_cuda_alloc"));
        assert!(!cuda.has("cuMemCreate"), "the fake has no VMM");
        assert_eq!(cuda.require(&[STREAMS, VMM]), Err(Error::MissingSymbol("cuMemGetAllocationGranularity")));
        let missing = cuda.granularity(Location::Device(0)).unwrap_err();
        assert_eq!(missing.to_string(), "the driver has no cuMemGetAllocationGranularity");
        assert_eq!(missing.code(), None);
        assert!(cuda.mem_create(1 << 21, Location::Host).is_err());
        assert!(cuda.require(&[STREAMS]).is_ok());
        // SAFETY: a function of fake_cuda_control.h, with its signature.
        let alloc = unsafe { cuda.symbol::<unsafe extern "C" fn(i32, usize, i32) -> u64>("fake_cuda_alloc") };
        assert!(alloc.is_ok());
        // SAFETY: never called.
        let absent = unsafe { cuda.symbol::<unsafe extern "C" fn()>("cuNoSuchFunction") };
        assert_eq!(absent.err(), Some(Error::MissingSymbol("cuNoSuchFunction")));
    });
}

#[test]
fn a_failed_call_names_the_function_and_the_result() {
    fake_driver_test(&test_name!(), FakeDriverVariant::Complete, &[("FAKE_CUDA_INIT_RESULT", "34")], || {
        let cuda = Cuda::get().expect("the fake loads");
        let error = cuda.init().unwrap_err();
        assert_eq!(error.code(), Some(34));
        assert_eq!(error.to_string(), "cuInit failed with CUDA_ERROR_STUB_LIBRARY (34)");
        assert_eq!(error.answer(), "CUDA_ERROR_STUB_LIBRARY (34)");
        assert_eq!(String::from(error), "cuInit failed with CUDA_ERROR_STUB_LIBRARY (34)");
        assert_eq!(cuda.error_name(0), "CUDA_SUCCESS (0)");
    });
}

#[test]
fn the_engine_side_on_the_fake() {
    fake_driver_test(&test_name!(), FakeDriverVariant::Complete, &[], || {
        let cuda = Cuda::get().expect("the fake loads");
        cuda.init().unwrap();
        assert!(cuda.device_count().unwrap() >= 1);
        let device = cuda.device(0).unwrap();
        assert!(cuda.driver_version().unwrap() > 0);
        cuda.require(&[MEMORY]).unwrap_err();
        cuda.require(&[&CONTEXTS[..2]]).unwrap();

        let active_before = cuda.primary_context_state(device).unwrap().1;
        let primary = PrimaryContext::retain_current(cuda, device).unwrap();
        assert_eq!(cuda.primary_context_state(device).unwrap().1, true);
        assert_eq!(cuda.current().unwrap(), primary.context());

        let mut buffer = cuda.alloc(1 << 20).unwrap();
        let attributes = cuda.pointer_attributes(buffer.ptr()).unwrap();
        assert_eq!(attributes.memory_type, 2, "device memory");
        assert_eq!(attributes.range_start, buffer.ptr());
        assert_eq!(attributes.range_size, 1 << 20);
        buffer.free().unwrap();
        buffer.free().unwrap();
        drop(buffer);
        let attributes = cuda.pointer_attributes(cuda.mem_alloc(4096).unwrap()).unwrap();
        assert_eq!(attributes.device_ordinal, 0);

        let stream = cuda.stream_create(0).unwrap();
        cuda.stream_synchronize(stream).unwrap();
        cuda.stream_destroy(stream).unwrap();
        cuda.synchronize().unwrap();

        let (own, how) = cuda.create_context(device).expect("cuCtxCreate_v2");
        assert_eq!(how, "cuCtxCreate_v2");
        assert_eq!(cuda.current().unwrap(), own);
        assert_eq!(cuda.pop().unwrap(), own);
        cuda.push(primary.context()).unwrap();
        cuda.set_current(cuda_engine::Context::NULL).unwrap();
        primary.make_current().unwrap();
        assert_eq!(cuda.current().unwrap(), primary.context());

        // The fake knows one kernel (the integrity kernel's entry): any other PTX is refused,
        // and a launch of no function is an invalid handle, each an error with its code.
        let refused = cuda.module_load_data(c".version 7.0\n.target sm_50\n.address_size 64\n").unwrap_err();
        assert!(refused.code().is_some_and(|code| code != 0), "{refused}");
        assert!(refused.to_string().starts_with("cuModuleLoadData failed with "), "{refused}");
        let launched = cuda.launch_one_thread(cuda_engine::Function(std::ptr::null_mut()), Stream::DEFAULT);
        assert!(launched.unwrap_err().code().is_some());
        drop(primary);
        assert_eq!(cuda.primary_context_state(device).unwrap().1, active_before, "released when dropped");
    });
}

#[test]
fn locations_and_host_buffers() {
    assert_eq!(Location::Device(3).to_string(), "DEVICE");
    assert_eq!(Location::Host.to_string(), "HOST");
    assert_eq!(Location::HostNuma(0).to_string(), "HOST_NUMA 0");
    assert_eq!(Location::Device(3).prop().location.id, 3);
    let buffer = HostBuffer::new(3 * 4096 + 1).unwrap();
    assert_eq!(buffer.addr() % 4096, 0);
    assert_eq!(buffer.len(), 3 * 4096 + 1);
    assert!(HostBuffer::new(0).is_none());
}
