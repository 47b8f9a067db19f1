//! The `vram-monitor-doctor` binary, run as an operator would: with no driver, with the fake
//! driver (complete, without the pointer query, and as the toolkit's stub), and with bad
//! arguments. Checks its exit status and what it says.

// The repository's fake-driver harness (tests/support), shared with the root package's tests.
#[path = "../../../tests/support/mod.rs"]
mod support;

use std::path::PathBuf;
use std::process::{Command, Output};

use support::{fake_driver_dir, system_libcuda, FakeDriverVariant};

fn doctor(ld_library_path: &PathBuf, args: &[&str], env: &[(&str, &str)]) -> (i32, String) {
    let output: Output = Command::new(env!("CARGO_BIN_EXE_vram-monitor-doctor"))
        .args(args)
        .env("LD_LIBRARY_PATH", ld_library_path)
        .env_remove("FAKE_CUDA_INIT_RESULT")
        .env_remove("FAKE_CUDA_DEVICE_COUNT")
        .env_remove("VRAM_MONITOR_LOG")
        .envs(env.iter().copied())
        .output()
        .expect("running vram-monitor-doctor");
    let text = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    println!("{text}");
    (output.status.code().unwrap_or(-1), text)
}

#[test]
fn without_a_driver_it_says_so_and_exits_2() {
    if let Some(found) = system_libcuda() {
        eprintln!("without_a_driver_it_says_so_and_exits_2: skipped: a system libcuda is installed ({found})");
        return;
    }
    let empty = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("doctor-no-driver");
    std::fs::create_dir_all(&empty).unwrap();
    let (code, text) = doctor(&empty, &[], &[]);
    assert_eq!(code, 2, "exit status 2 means no driver");
    assert!(text.contains("NOT FOUND: no libcuda.so.1"), "says plainly that the driver is missing");
    assert!(text.contains("NO: there is no CUDA driver"), "says the process cannot be monitored");
    assert!(!text.contains("| memory |"), "no verdict table without a driver");
}

#[test]
fn against_the_fake_driver_it_says_so_and_every_kind_is_judged_right() {
    let (code, text) = doctor(&fake_driver_dir(FakeDriverVariant::Complete), &[], &[]);
    assert_eq!(code, 0, "exit status 0: every verdict as expected");
    assert!(text.contains("THE FAKE DRIVER"), "the report says it is the fake driver");
    assert!(text.contains("YES, this process can be monitored (by the fake driver)"));
    assert!(text.contains("API version:    13.0 (13000)"), "the fake's driver version");
    for (memory, verdict) in [
        ("cudaMallocManaged", "refused MANAGED"),
        ("pinned host memory (cuMemAllocHost)", "refused HOST"),
        ("plain malloc (never CUDA memory)", "refused NOT_MAPPED"),
        ("range one byte past a cuMemAlloc", "refused OUT_OF_RANGE"),
        ("VMM host-located mapping (cuMemCreate HOST)", "refused HOST"),
    ] {
        let row = text.lines().find(|l| l.starts_with(&format!("| {memory} |"))).unwrap_or_else(|| panic!("no row for {memory}"));
        assert!(row.contains(&format!("| {verdict} | {verdict} |")) && row.ends_with("as expected |"), "{row}");
    }
    let freed = text.lines().find(|l| l.starts_with("| cuMemAlloc freed while registered |")).unwrap();
    assert!(freed.contains("| registered (RESIDENT) | NOT_MAPPED | as expected"), "{freed}");
    let replaced = text.lines().find(|l| l.starts_with("| freed and reallocated at the same address |")).unwrap();
    assert!(replaced.contains("| REPLACED | as expected"), "{replaced}");
    let summary = text.lines().find(|l| l.starts_with("summary:")).expect("a summary line");
    assert!(summary.contains(", 0 misjudged, 0 not available here (fake driver)"), "{summary}");
    assert!(!text.contains("MISJUDGED"));
}

#[test]
fn no_alloc_reports_without_allocating() {
    let (code, text) = doctor(&fake_driver_dir(FakeDriverVariant::Complete), &["--no-alloc"], &[]);
    assert_eq!(code, 0);
    assert!(text.contains("--no-alloc: no memory allocated"));
    assert!(!text.contains("| memory |"));
}

#[test]
fn a_stub_driver_is_found_but_unusable_exit_3() {
    // 34 = CUDA_ERROR_STUB_LIBRARY: what the toolkit's stub libcuda answers to cuInit.
    let (code, text) = doctor(&fake_driver_dir(FakeDriverVariant::Complete), &[], &[("FAKE_CUDA_INIT_RESULT", "34")]);
    assert_eq!(code, 3, "exit status 3: driver unusable");
    assert!(text.contains("found, but UNUSABLE: cuInit failed with CUDA_ERROR_STUB_LIBRARY (34)"));
    assert!(text.contains("stub libcuda"));
}

#[test]
fn a_driver_without_the_pointer_query_is_unusable_exit_3() {
    let (code, text) = doctor(&fake_driver_dir(FakeDriverVariant::WithoutPointerQuery), &[], &[]);
    assert_eq!(code, 3);
    assert!(text.contains("UNUSABLE") && text.contains("cuPointerGetAttributes"), "names the missing symbol");
}

#[test]
fn bad_arguments_exit_64_with_usage() {
    let (code, text) = doctor(&fake_driver_dir(FakeDriverVariant::Complete), &["--frobnicate"], &[]);
    assert_eq!(code, 64);
    assert!(text.contains("unknown argument --frobnicate") && text.contains("usage: vram-monitor-doctor"));
    let (code, text) = doctor(&fake_driver_dir(FakeDriverVariant::Complete), &["--help"], &[]);
    assert_eq!(code, 0);
    assert!(text.contains("Exit status: 0 everything as expected"));
}
