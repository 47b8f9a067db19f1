//! Test harness for running the monitor against the fake libcuda in `tests/fake_cuda/`.
//!
//! The library finds libcuda with `dlopen("libcuda.so")` (cudarc's dynamic loading), searched
//! through `LD_LIBRARY_PATH`. The loader reads `LD_LIBRARY_PATH` once, at process start, and a
//! test needs a fresh driver state anyway, so every test body runs in a child process: the test
//! binary re-executes itself with `<test_name> --exact`, `LD_LIBRARY_PATH` pointing at the fake
//! and `VRAM_MONITOR_TEST_CHILD=<test_name>`; in the child the same test function sees that
//! variable and runs its body.
//!
//! The core's tests are one binary, tests/all/main.rs (`#[macro_use] #[path = "../support/mod.rs"]
//! mod support;`), with a module per topic; in one of them:
//!
//! ```ignore
//! use crate::support::{fake_driver_test, Fake, FakeDriverVariant, Kind};
//!
//! #[test]
//! fn managed_memory_is_reported() {
//!     // In tests/all/stall.rs, test_name!() is "stall::managed_memory_is_reported".
//!     fake_driver_test(&test_name!(), FakeDriverVariant::Complete, &[], || {
//!         let fake = Fake::get();
//!         let ptr = fake.alloc(Kind::Managed, 1 << 20, 0);
//!         // ... drive vram_monitor here ...
//!     });
//! }
//! ```
//! `test_name` must be the name libtest gives the test (`module::function` when the test sits in
//! a module); `test_name!()` computes it. A wrong name fails loudly: the child then runs no
//! test, and the parent panics because the child's output lacks "1 passed".
#![allow(dead_code)]

use std::ffi::{c_int, c_uint, OsStr, OsString};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant, SystemTime};

/// Set in the child to the name of the test it runs.
pub const CHILD_ENV: &str = "VRAM_MONITOR_TEST_CHILD";
/// Seconds a child may run before it is killed and the test fails (default 300).
pub const TIMEOUT_ENV: &str = "VRAM_MONITOR_TEST_TIMEOUT_S";
/// Variables the fake reads; cleared in the child unless the test passes them.
const FAKE_ENV: &[&str] = &["FAKE_CUDA_INIT_RESULT", "FAKE_CUDA_DEVICE_COUNT"];

/// The libtest name of the test function this is expanded in (`my_test`, or `module::my_test`).
#[macro_export]
macro_rules! test_name {
    () => {{
        fn __vram_monitor_test_here() {}
        $crate::support::test_name_from_type_name(::std::any::type_name_of_val(&__vram_monitor_test_here))
    }};
}

/// Turns `crate::module::test::{{closure}}::__vram_monitor_test_here` into `module::test`.
pub fn test_name_from_type_name(type_name: &str) -> String {
    let mut parts: Vec<&str> = type_name.split("::").filter(|p| !p.starts_with("{{")).collect();
    parts.pop(); // the marker function
    if !parts.is_empty() {
        parts.remove(0); // the test crate
    }
    parts.join("::")
}

/// Which build of the fake driver a test loads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FakeDriverVariant {
    /// Every symbol the fake has.
    Complete,
    /// Built with `-DFAKE_CUDA_WITHOUT_POINTER_QUERY`: no `cuPointerGetAttributes`.
    WithoutPointerQuery,
}

impl FakeDriverVariant {
    fn dir_name(self) -> &'static str {
        match self {
            FakeDriverVariant::Complete => "complete",
            FakeDriverVariant::WithoutPointerQuery => "without-pointer-query",
        }
    }

    fn defines(self) -> &'static [&'static str] {
        match self {
            FakeDriverVariant::Complete => &[],
            FakeDriverVariant::WithoutPointerQuery => &["-DFAKE_CUDA_WITHOUT_POINTER_QUERY"],
        }
    }
}

/// The repository root, the workspace's: this module serves the tests of the core (tests/),
/// of the C ABI (crates/vram-monitor-capi/tests/) and of the doctor (crates/doctor/tests/),
/// which include it by `#[path]`, so it
/// walks up from the test's package to the folder that holds the fake driver's source.
fn repo_root() -> PathBuf {
    let package = Path::new(env!("CARGO_MANIFEST_DIR"));
    package
        .ancestors()
        .find(|dir| dir.join("tests/fake_cuda/fake_cuda.c").is_file())
        .unwrap_or_else(|| panic!("no tests/fake_cuda/fake_cuda.c in {} or a folder above it", package.display()))
        .to_path_buf()
}

fn target_dir() -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(dir) if !dir.is_empty() => {
            let dir = PathBuf::from(dir);
            if dir.is_absolute() {
                dir
            } else {
                repo_root().join(dir)
            }
        }
        _ => repo_root().join("target"),
    }
}

fn modified(path: &Path) -> Option<SystemTime> {
    std::fs::metadata(path).and_then(|m| m.modified()).ok()
}

fn unique_suffix() -> String {
    let nanos = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map(|d| d.subsec_nanos()).unwrap_or(0);
    format!("{}.{:?}.{}", std::process::id(), std::thread::current().id(), nanos).replace(|c: char| !c.is_ascii_alphanumeric() && c != '.', "")
}

/// The folder holding `libcuda.so.1` and `libcuda.so` (a symlink) for `variant`, built on first
/// use in this process (and again whenever `fake_cuda.c` or `fake_cuda_control.h` is newer).
/// Several test binaries may build it at once: each compiles to its own temporary name and
/// renames it into place, so a reader only ever sees a complete library.
pub fn fake_driver_dir(variant: FakeDriverVariant) -> PathBuf {
    static COMPLETE: OnceLock<PathBuf> = OnceLock::new();
    static WITHOUT_POINTER_QUERY: OnceLock<PathBuf> = OnceLock::new();
    let cell = match variant {
        FakeDriverVariant::Complete => &COMPLETE,
        FakeDriverVariant::WithoutPointerQuery => &WITHOUT_POINTER_QUERY,
    };
    cell.get_or_init(|| build_fake_driver(variant)).clone()
}

fn build_fake_driver(variant: FakeDriverVariant) -> PathBuf {
    let src_dir = repo_root().join("tests").join("fake_cuda");
    let source = src_dir.join("fake_cuda.c");
    let header = src_dir.join("fake_cuda_control.h");
    let out_dir = target_dir().join("fake-cuda").join(variant.dir_name());
    std::fs::create_dir_all(&out_dir).unwrap_or_else(|e| panic!("creating {}: {e}", out_dir.display()));
    let library = out_dir.join("libcuda.so.1");

    let newest_source = [&source, &header]
        .iter()
        .map(|p| modified(p).unwrap_or_else(|| panic!("fake driver source {} is missing", p.display())))
        .max()
        .unwrap();
    let stale = match modified(&library) {
        Some(built) => built < newest_source,
        None => true,
    };
    if stale {
        let temp = out_dir.join(format!(".libcuda.so.1.tmp.{}", unique_suffix()));
        let cc = std::env::var("CC").ok().filter(|cc| !cc.trim().is_empty()).unwrap_or_else(|| "cc".to_string());
        let mut cc_words = cc.split_whitespace();
        let mut command = Command::new(cc_words.next().unwrap());
        command
            .args(cc_words)
            .args(["-std=c11", "-Wall", "-Wextra", "-Wpedantic", "-Werror", "-shared", "-fPIC", "-pthread", "-O2", "-g"])
            .arg("-Wl,-soname,libcuda.so.1")
            .args(variant.defines())
            .arg("-I")
            .arg(&src_dir)
            .arg("-o")
            .arg(&temp)
            .arg(&source);
        let output = command.output().unwrap_or_else(|e| panic!("running the C compiler {cc:?}: {e}"));
        if !output.status.success() {
            let _ = std::fs::remove_file(&temp);
            panic!(
                "building the fake libcuda failed ({:?}):\n{}{}",
                command,
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            );
        }
        std::fs::rename(&temp, &library).unwrap_or_else(|e| panic!("renaming {} into place: {e}", temp.display()));
    }

    let link = out_dir.join("libcuda.so");
    if std::fs::read_link(&link).ok().as_deref() != Some(Path::new("libcuda.so.1")) {
        let temp = out_dir.join(format!(".libcuda.so.tmp.{}", unique_suffix()));
        std::os::unix::fs::symlink("libcuda.so.1", &temp).unwrap_or_else(|e| panic!("symlink {}: {e}", temp.display()));
        std::fs::rename(&temp, &link).unwrap_or_else(|e| panic!("renaming {} into place: {e}", temp.display()));
    }
    out_dir
}

fn join_paths(first: &Path, rest: Option<OsString>) -> OsString {
    let mut value = OsString::from(first.as_os_str());
    if let Some(rest) = rest.filter(|r| !r.is_empty()) {
        value.push(":");
        value.push(rest);
    }
    value
}

/// True in the child that runs `test_name`; panics if this is a child for another name (the
/// `test_name` passed does not match the test that libtest ran).
fn is_child_for(test_name: &str) -> bool {
    match std::env::var(CHILD_ENV) {
        Ok(child) if child == test_name => true,
        Ok(child) => panic!(
            "{CHILD_ENV}={child:?} but this test passed test_name {test_name:?}: pass the test's own libtest name \
             (module::function; test_name!() computes it)"
        ),
        Err(_) => false,
    }
}

/// Runs `body` in a child process that loads the fake libcuda (`variant`) instead of any real
/// one, with `env` added to its environment (e.g. `("FAKE_CUDA_INIT_RESULT", "34")`).
/// `test_name` must be the calling test's libtest name. In the parent this spawns the child
/// and panics with the child's stdout and stderr unless it reports exactly one passed test.
pub fn fake_driver_test(test_name: &str, variant: FakeDriverVariant, env: &[(&str, &str)], body: impl FnOnce()) {
    if is_child_for(test_name) {
        body();
        return;
    }
    let dir = fake_driver_dir(variant);
    run_child(test_name, join_paths(&dir, std::env::var_os("LD_LIBRARY_PATH")), env);
}

/// Runs `body` in a child process in which no libcuda can be found (`LD_LIBRARY_PATH` starts
/// with an empty folder). Only meaningful where no system libcuda exists: the loader would still
/// find one in its cache or default folders. So when the loader cache, a default library
/// folder or `LD_LIBRARY_PATH` has a libcuda, this prints "skipped: a system libcuda is
/// installed" to stderr (uncaptured) and returns without running `body`.
pub fn no_driver_test(test_name: &str, body: impl FnOnce()) {
    if is_child_for(test_name) {
        body();
        return;
    }
    if let Some(found) = system_libcuda() {
        let _ = writeln!(
            std::io::stderr(),
            "{test_name}: skipped: a system libcuda is installed ({found}); the no-driver test only means something without one"
        );
        return;
    }
    let empty = target_dir().join("fake-cuda").join("empty");
    std::fs::create_dir_all(&empty).unwrap_or_else(|e| panic!("creating {}: {e}", empty.display()));
    // Whatever LD_LIBRARY_PATH held has no libcuda (checked above); keep it for anything else.
    run_child(test_name, join_paths(&empty, std::env::var_os("LD_LIBRARY_PATH")), &[]);
}

fn is_libcuda_name(name: &OsStr) -> bool {
    let name = name.to_string_lossy();
    name.starts_with("libcuda.so") || name.starts_with("libcuda64")
}

/// Where a libcuda the loader could find lives, if anywhere.
pub fn system_libcuda() -> Option<String> {
    for ldconfig in ["/sbin/ldconfig", "/usr/sbin/ldconfig", "ldconfig"] {
        if let Ok(output) = Command::new(ldconfig).arg("-p").stderr(Stdio::null()).output() {
            if output.status.success() {
                let listing = String::from_utf8_lossy(&output.stdout);
                if let Some(line) = listing.lines().map(str::trim).find(|l| l.starts_with("libcuda.so") || l.starts_with("libcuda64")) {
                    return Some(format!("{ldconfig} -p: {line}"));
                }
                break;
            }
        }
    }
    let mut dirs: Vec<PathBuf> = std::env::var_os("LD_LIBRARY_PATH")
        .map(|v| std::env::split_paths(&v).filter(|p| !p.as_os_str().is_empty()).collect())
        .unwrap_or_default();
    dirs.extend(
        ["/lib", "/usr/lib", "/lib64", "/usr/lib64", "/lib/x86_64-linux-gnu", "/usr/lib/x86_64-linux-gnu", "/lib/aarch64-linux-gnu", "/usr/lib/aarch64-linux-gnu"]
            .iter()
            .map(PathBuf::from),
    );
    for dir in dirs {
        if let Ok(entries) = std::fs::read_dir(&dir) {
            for entry in entries.flatten() {
                if is_libcuda_name(&entry.file_name()) {
                    return Some(entry.path().display().to_string());
                }
            }
        }
    }
    None
}

fn run_child(test_name: &str, ld_library_path: OsString, env: &[(&str, &str)]) {
    let exe = std::env::current_exe().expect("current_exe");
    let mut command = Command::new(&exe);
    // --include-ignored: an #[ignore]d test (a soak run) that was asked for by name runs its
    // body in the child too.
    command.args([test_name, "--exact", "--nocapture", "--test-threads=1", "--include-ignored"]);
    for var in FAKE_ENV {
        command.env_remove(var);
    }
    command
        .env(CHILD_ENV, test_name)
        .env("LD_LIBRARY_PATH", &ld_library_path)
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = command.spawn().unwrap_or_else(|e| panic!("spawning {}: {e}", exe.display()));
    let mut stdout_pipe = child.stdout.take().unwrap();
    let mut stderr_pipe = child.stderr.take().unwrap();
    let stdout_reader = std::thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = stdout_pipe.read_to_end(&mut buf);
        buf
    });
    let stderr_reader = std::thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = stderr_pipe.read_to_end(&mut buf);
        buf
    });

    let timeout_s: u64 = std::env::var(TIMEOUT_ENV).ok().and_then(|v| v.parse().ok()).unwrap_or(300);
    let deadline = Instant::now() + Duration::from_secs(timeout_s);
    let (status, timed_out) = loop {
        if let Some(status) = child.try_wait().expect("waiting for the test child") {
            break (status, false);
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            break (child.wait().expect("waiting for the killed test child"), true);
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    let stdout = String::from_utf8_lossy(&stdout_reader.join().unwrap()).into_owned();
    let stderr = String::from_utf8_lossy(&stderr_reader.join().unwrap()).into_owned();
    let report = format!(
        "child `{} {test_name} --exact` with LD_LIBRARY_PATH={} env={env:?}\n\
         --- child stdout ---\n{stdout}\n--- child stderr ---\n{stderr}\n--- end of child output ---",
        exe.display(),
        ld_library_path.to_string_lossy(),
    );
    if timed_out {
        panic!("test child ran past {timeout_s} s ({TIMEOUT_ENV}) and was killed\n{report}");
    }
    if !status.success() {
        panic!("test child failed ({status})\n{report}");
    }
    if !stdout.contains("test result: ok. 1 passed") {
        panic!("test child did not run exactly one passing test (is {test_name:?} the test's libtest name?)\n{report}");
    }
    println!("{report}");
}

/// Kinds of fake memory (`enum fake_cuda_kind` in fake_cuda_control.h).
#[repr(i32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// `cudaMalloc`: MEMORY_TYPE DEVICE, IS_MANAGED 0.
    Device = 1,
    /// `cudaMallocManaged`: MEMORY_TYPE DEVICE, IS_MANAGED 1.
    Managed = 2,
    /// Pinned, mapped or registered host memory: MEMORY_TYPE HOST.
    Host = 3,
    /// `cuMemCreate` on the device + `cuMemMap`, inside a reservation.
    VmmDevice = 4,
    /// `cuMemCreate` on the host + `cuMemMap`, inside a reservation.
    VmmHost = 5,
}

type AllocFn = unsafe extern "C" fn(c_int, usize, c_int) -> u64;
type AddrFn = unsafe extern "C" fn(u64) -> c_int;
type AddrIntFn = unsafe extern "C" fn(u64, c_int) -> c_int;
type ReserveFn = unsafe extern "C" fn(usize) -> u64;
type MapFn = unsafe extern "C" fn(u64, usize, c_int, c_int) -> c_int;
type SetIntFn = unsafe extern "C" fn(c_int);
type FailAtFn = unsafe extern "C" fn(u64, c_int);
type SetUintFn = unsafe extern "C" fn(c_uint);
type SetActiveFn = unsafe extern "C" fn(c_int, c_int);
type CounterFn = unsafe extern "C" fn() -> u64;
type IntOfIntFn = unsafe extern "C" fn(c_int) -> c_int;
type VoidFn = unsafe extern "C" fn();
type CopyInFn = unsafe extern "C" fn(u64, *const std::ffi::c_void, usize) -> c_int;
type FillFn = unsafe extern "C" fn(u64, c_int, usize) -> c_int;
type CopyOutFn = unsafe extern "C" fn(u64, *mut std::ffi::c_void, usize) -> c_int;
type UintIntFn = unsafe extern "C" fn(c_uint, c_int);
type GpuCountersFn = unsafe extern "C" fn(*mut GpuCounters);

/// `struct fake_cuda_gpu_counters`: what the integrity calls did.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GpuCounters {
    /// cuLaunchKernel calls, whatever they returned.
    pub launches: u64,
    /// Inside cuLaunchKernel now (its delay or its reads).
    pub launches_in_progress: u64,
    /// Bytes the launches read.
    pub bytes_read: u64,
    /// cuModuleLoadData successes.
    pub modules_loaded: u64,
    /// cuModuleUnload successes.
    pub modules_unloaded: u64,
    /// cuCtxSynchronize calls.
    pub context_synchronizes: u64,
    /// Modules loaded and not unloaded, in a context not destroyed.
    pub modules_live: u64,
    /// Streams created and not destroyed, likewise.
    pub streams_live: u64,
    /// cuMemAlloc_v2 allocations not freed, likewise.
    pub driver_allocations_live: u64,
}

impl GpuCounters {
    /// Nothing the integrity calls made is left: no module, stream or scratch allocation.
    pub fn nothing_live(&self) -> bool {
        self.modules_live == 0 && self.streams_live == 0 && self.driver_allocations_live == 0
    }
}

/// The fake driver's control API, from the libcuda.so.1 this process loaded (the same instance
/// the library under test uses). Only usable inside a `fake_driver_test` body.
pub struct Fake {
    alloc: AllocFn,
    free: AddrFn,
    reallocate: AddrFn,
    set_kind: AddrIntFn,
    set_device: AddrIntFn,
    reserve: ReserveFn,
    release: AddrFn,
    map: MapFn,
    unmap: AddrFn,
    set_init_result: SetIntFn,
    set_query_result: SetIntFn,
    fail_query_at: FailAtFn,
    set_query_delay_us: SetUintFn,
    set_primary_context_active: SetActiveFn,
    context_creations: CounterFn,
    pointer_queries: CounterFn,
    primary_context_retains: IntOfIntFn,
    reset: VoidFn,
    write: CopyInFn,
    fill: FillFn,
    read: CopyOutFn,
    set_module_load_result: SetIntFn,
    fail_launches: UintIntFn,
    sticky_error_after_launches: UintIntFn,
    set_launch_delay_us: SetUintFn,
    context_error: IntOfIntFn,
    gpu_counters: GpuCountersFn,
    /// Keeps the library loaded for as long as the function pointers above live (forever).
    library: libloading::Library,
}

impl Fake {
    /// Loads the fake once per process. Panics outside a fake-driver child, or if the
    /// libcuda.so.1 found is not the fake.
    pub fn get() -> &'static Fake {
        static FAKE: OnceLock<Fake> = OnceLock::new();
        FAKE.get_or_init(Fake::load)
    }

    /// The loaded library, to look up driver symbols (cuInit, ...) directly.
    pub fn library(&self) -> &libloading::Library {
        &self.library
    }

    fn load() -> Fake {
        if std::env::var_os(CHILD_ENV).is_none() {
            panic!("Fake::get() is only usable inside a fake_driver_test body (the child process)");
        }
        // SAFETY: loading the fake runs no initialisers beyond libc's.
        let library = unsafe { libloading::Library::new("libcuda.so.1") }.unwrap_or_else(|e| {
            panic!("dlopen(libcuda.so.1) failed under LD_LIBRARY_PATH={:?}: {e}", std::env::var_os("LD_LIBRARY_PATH"))
        });
        fn sym<T: Copy>(library: &libloading::Library, name: &str) -> T {
            // SAFETY: the types above mirror fake_cuda_control.h.
            unsafe {
                *library
                    .get::<T>(name)
                    .unwrap_or_else(|e| panic!("the loaded libcuda.so.1 is not the fake (no {name}): {e}"))
            }
        }
        Fake {
            alloc: sym(&library, "fake_cuda_alloc"),
            free: sym(&library, "fake_cuda_free"),
            reallocate: sym(&library, "fake_cuda_reallocate"),
            set_kind: sym(&library, "fake_cuda_set_kind"),
            set_device: sym(&library, "fake_cuda_set_device"),
            reserve: sym(&library, "fake_cuda_reserve"),
            release: sym(&library, "fake_cuda_release"),
            map: sym(&library, "fake_cuda_map"),
            unmap: sym(&library, "fake_cuda_unmap"),
            set_init_result: sym(&library, "fake_cuda_set_init_result"),
            set_query_result: sym(&library, "fake_cuda_set_query_result"),
            fail_query_at: sym(&library, "fake_cuda_fail_query_at"),
            set_query_delay_us: sym(&library, "fake_cuda_set_query_delay_us"),
            set_primary_context_active: sym(&library, "fake_cuda_set_primary_context_active"),
            context_creations: sym(&library, "fake_cuda_context_creations"),
            pointer_queries: sym(&library, "fake_cuda_pointer_queries"),
            primary_context_retains: sym(&library, "fake_cuda_primary_context_retains"),
            reset: sym(&library, "fake_cuda_reset"),
            write: sym(&library, "fake_cuda_write"),
            fill: sym(&library, "fake_cuda_fill"),
            read: sym(&library, "fake_cuda_read"),
            set_module_load_result: sym(&library, "fake_cuda_set_module_load_result"),
            fail_launches: sym(&library, "fake_cuda_fail_launches"),
            sticky_error_after_launches: sym(&library, "fake_cuda_sticky_error_after_launches"),
            set_launch_delay_us: sym(&library, "fake_cuda_set_launch_delay_us"),
            context_error: sym(&library, "fake_cuda_context_error"),
            gpu_counters: sym(&library, "fake_cuda_gpu_counters"),
            library,
        }
    }

    /// New DEVICE/MANAGED/HOST allocation; panics on bad input (the fake returned 0).
    pub fn alloc(&self, kind: Kind, size: usize, device: i32) -> u64 {
        let ptr = self.try_alloc(kind, size, device);
        assert_ne!(ptr, 0, "fake_cuda_alloc({kind:?}, {size}, {device}) refused");
        ptr
    }

    /// `fake_cuda_alloc` as is: 0 on bad input (a VMM kind, size 0, unknown device).
    pub fn try_alloc(&self, kind: Kind, size: usize, device: i32) -> u64 {
        unsafe { (self.alloc)(kind as c_int, size, device) }
    }

    /// Frees the allocation or VMM mapping at `base`; false if there is none.
    pub fn free(&self, base: u64) -> bool {
        unsafe { (self.free)(base) == 0 }
    }

    /// Frees and allocates again at the same address: same kind/size/device, new buffer id.
    pub fn reallocate(&self, base: u64) -> bool {
        unsafe { (self.reallocate)(base) == 0 }
    }

    /// Changes the kind in place (Device/Managed/Host among themselves, VmmDevice/VmmHost
    /// among themselves), keeping the buffer id.
    pub fn set_kind(&self, base: u64, kind: Kind) -> bool {
        unsafe { (self.set_kind)(base, kind as c_int) == 0 }
    }

    /// Moves the allocation or mapping at `base` to another device ordinal.
    pub fn set_device(&self, base: u64, device: i32) -> bool {
        unsafe { (self.set_device)(base, device) == 0 }
    }

    /// New VMM address reservation; panics on bad input.
    pub fn reserve(&self, size: usize) -> u64 {
        let base = unsafe { (self.reserve)(size) };
        assert_ne!(base, 0, "fake_cuda_reserve({size}) refused");
        base
    }

    /// Releases a reservation that has no mappings left.
    pub fn release(&self, base: u64) -> bool {
        unsafe { (self.release)(base) == 0 }
    }

    /// Maps `[addr, addr+size)` (VmmDevice or VmmHost) inside a reservation; false if refused.
    pub fn map(&self, addr: u64, size: usize, kind: Kind, device: i32) -> bool {
        unsafe { (self.map)(addr, size, kind as c_int, device) == 0 }
    }

    /// Unmaps the mapping at `addr` (the reservation stays).
    pub fn unmap(&self, addr: u64) -> bool {
        unsafe { (self.unmap)(addr) == 0 }
    }

    /// cuInit returns `code` (FAKE_CUDA_INIT_RESULT in the environment wins over this).
    pub fn set_init_result(&self, code: i32) {
        unsafe { (self.set_init_result)(code) }
    }

    /// While nonzero, every cuPointerGetAttributes returns `code` and writes nothing.
    pub fn set_query_result(&self, code: i32) {
        unsafe { (self.set_query_result)(code) }
    }

    /// Queries inside the allocation/mapping containing `addr` return `code`; 0 clears.
    pub fn fail_query_at(&self, addr: u64, code: i32) {
        unsafe { (self.fail_query_at)(addr, code) }
    }

    /// Each cuPointerGetAttributes call sleeps this long.
    pub fn set_query_delay_us(&self, us: u32) {
        unsafe { (self.set_query_delay_us)(us) }
    }

    /// Whether `device`'s primary context exists (the engine's); false also drops retains.
    pub fn set_primary_context_active(&self, device: i32, active: bool) {
        unsafe { (self.set_primary_context_active)(device, active as c_int) }
    }

    /// Contexts created: cuCtxCreate calls plus retains that activated a primary context.
    pub fn context_creations(&self) -> u64 {
        unsafe { (self.context_creations)() }
    }

    /// cuPointerGetAttributes calls so far.
    pub fn pointer_queries(&self) -> u64 {
        unsafe { (self.pointer_queries)() }
    }

    /// Outstanding cuDevicePrimaryCtxRetain references on `device`.
    pub fn primary_context_retains(&self, device: i32) -> i32 {
        unsafe { (self.primary_context_retains)(device) }
    }

    /// Drops all memory, faults and counters (keeps cuInit, buffer ids and addresses moving on).
    pub fn reset(&self) {
        unsafe { (self.reset)() }
    }

    /// Writes `bytes` at fake address `addr` (the engine writing its memory); false if a byte
    /// is outside live fake memory.
    pub fn write(&self, addr: u64, bytes: &[u8]) -> bool {
        unsafe { (self.write)(addr, bytes.as_ptr().cast(), bytes.len()) == 0 }
    }

    /// Sets `len` bytes at `addr` to `byte`.
    pub fn fill(&self, addr: u64, byte: u8, len: usize) -> bool {
        unsafe { (self.fill)(addr, c_int::from(byte), len) == 0 }
    }

    /// The `len` bytes at `addr` (never-written memory reads as 0); panics outside live memory.
    pub fn read(&self, addr: u64, len: usize) -> Vec<u8> {
        let mut bytes = vec![0u8; len];
        assert_eq!(unsafe { (self.read)(addr, bytes.as_mut_ptr().cast(), len) }, 0, "fake_cuda_read({addr:#x}, {len})");
        bytes
    }

    /// cuModuleLoadData returns `code` (222: a driver older than the PTX); 0 accepts again.
    pub fn set_module_load_result(&self, code: i32) {
        unsafe { (self.set_module_load_result)(code) }
    }

    /// The next `count` launches return `code` and run nothing (the context stays usable).
    pub fn fail_launches(&self, count: u32, code: i32) {
        unsafe { (self.fail_launches)(count, code) }
    }

    /// After `launches` more launches, the next one faults: its context keeps the sticky `code`.
    pub fn sticky_error_after_launches(&self, launches: u32, code: i32) {
        unsafe { (self.sticky_error_after_launches)(launches, code) }
    }

    /// Each launch sleeps this long before it reads.
    pub fn set_launch_delay_us(&self, us: u32) {
        unsafe { (self.set_launch_delay_us)(us) }
    }

    /// The sticky error of `device`'s primary context (0: none).
    pub fn context_error(&self, device: i32) -> i32 {
        unsafe { (self.context_error)(device) }
    }

    /// One consistent reading of the integrity counters.
    pub fn gpu_counters(&self) -> GpuCounters {
        let mut counters = GpuCounters::default();
        unsafe { (self.gpu_counters)(&mut counters) };
        counters
    }

    /// What the engine's runtime does on its thread: `device`'s primary context made current.
    /// The test's retain is given back at once (the engine's own reference keeps the context
    /// active), so `primary_context_retains` counts the library's references only.
    pub fn make_primary_current(&self, device: i32) {
        type RetainFn = unsafe extern "C" fn(*mut *mut std::ffi::c_void, c_int) -> c_int;
        type SetCurrentFn = unsafe extern "C" fn(*mut std::ffi::c_void) -> c_int;
        type ReleaseFn = unsafe extern "C" fn(c_int) -> c_int;
        // SAFETY: the driver signatures of cuda.h; the out-pointer is a local.
        unsafe {
            let retain = *self.library.get::<RetainFn>(b"cuDevicePrimaryCtxRetain").unwrap();
            let set_current = *self.library.get::<SetCurrentFn>(b"cuCtxSetCurrent").unwrap();
            let release = *self.library.get::<ReleaseFn>(b"cuDevicePrimaryCtxRelease_v2").unwrap();
            let mut context = std::ptr::null_mut();
            assert_eq!(retain(&mut context, device), 0, "cuDevicePrimaryCtxRetain({device})");
            assert_eq!(set_current(context), 0, "cuCtxSetCurrent");
            assert_eq!(release(device), 0, "cuDevicePrimaryCtxRelease_v2({device})");
        }
    }
}
