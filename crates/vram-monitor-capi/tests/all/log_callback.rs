//! The C host's log callback (`vram_monitor_set_log_callback`): the library's records,
//! violations as critical records with their structured fields, reach it. Runs against the
//! fake libcuda in a child process (tests/support at the repository root).

use std::ffi::{c_char, c_void, CStr};
use std::sync::Mutex;

use crate::support::{fake_driver_test, Fake, FakeDriverVariant, Kind};
use vram_monitor::{Monitor, MonitorOptions};
use vram_monitor_capi::{vram_monitor_set_log_callback, VramMonitorLogLevel};

const MIB: usize = 1 << 20;

#[test]
fn violations_reach_the_hosts_log_callback_as_critical_records_with_fields() {
    static RECORDS: Mutex<Vec<(VramMonitorLogLevel, String, String)>> = Mutex::new(Vec::new());
    unsafe extern "C" fn collect(level: VramMonitorLogLevel, target: *const c_char, message: *const c_char, _: *mut c_void) {
        let target = unsafe { CStr::from_ptr(target) }.to_string_lossy().into_owned();
        let message = unsafe { CStr::from_ptr(message) }.to_string_lossy().into_owned();
        RECORDS.lock().unwrap().push((level, target, message));
    }
    fake_driver_test(&test_name!(), FakeDriverVariant::Complete, &[], || {
        vram_monitor_set_log_callback(Some(collect), std::ptr::null_mut());
        let fake = Fake::get();
        let m = Monitor::new(MonitorOptions::default()).expect("monitor starts on the fake driver");
        let ptr = fake.alloc(Kind::Device, MIB, 0);
        m.register(ptr, MIB as u64, "lm_head").unwrap();
        m.check_now().unwrap();
        assert!(RECORDS.lock().unwrap().iter().any(|r| r.0 == VramMonitorLogLevel::Debug && r.2.contains("check passed")), "a passing check logs at debug");
        fake.set_kind(ptr, Kind::Managed);
        m.check_now().unwrap();
        let records = RECORDS.lock().unwrap();
        let critical = records.iter().find(|r| r.0 == VramMonitorLogLevel::Error && r.2.starts_with("CRITICAL")).expect("a critical record");
        assert_eq!(critical.1, "vram_monitor");
        for field in ["actor=vram-residency", "action=verify", "target=lm_head", "device=GPU0", "error_kind=residency_violation", "verdict=MANAGED"] {
            assert!(critical.2.contains(field), "missing {field} in {}", critical.2);
        }
    });
}
