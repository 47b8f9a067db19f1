//! Observability end to end: an "engine" allocates weights, registers them, starts the
//! built-in HTTP endpoint, and takes commands on stdin so that a script can fetch `/health`
//! and `/metrics` with curl, scrape it with Prometheus, and make it unhealthy and healthy
//! again. Used by scripts/observability-test.sh (fake driver, CI) and
//! scripts/gpu-suites/30-observability.sh (real GPU, where it is carried as
//! `.gpu-carry/bin/observability`).
//!
//! ```text
//! observability [--address ADDR] [--request-timeout-ms N] [--port-file PATH]
//!               [--device-health-fixture UUID]
//! ```
//! `--device-health-fixture` reads device health from a fixed source instead of NVML: every
//! GPU is NVML index = CUDA ordinal, with that UUID and no fault (scripts/operations-test.sh
//! joins our series with a dcgm-exporter file by it on a machine without a GPU).
//! Prints `listening <port>` once serving, then for each command line on stdin prints its
//! output and a line `done <command>`:
//!
//! | command | does |
//! |---|---|
//! | `check` | a full check now; prints `healthy=<bool>` |
//! | `free` | frees the second buffer behind the monitor's back, then checks (a violation) |
//! | `restore` | unregisters it, allocates and registers a new buffer, then checks |
//! | `devices` | prints the GPUs' memory health (JSON array, one line) |
//! | `hang` | fake driver only: queries block until `unhang`, checks every 1 ms, stall deadline 200 ms (the monitor stalls) |
//! | `unhang` | releases the queries; interval back to 60 s (the monitor recovers) |
//! | `report text\|json\|prometheus` | prints the report |
//! | `quit` (or end of input) | frees the monitor (stops the endpoint) and exits |
//!
//! On a machine without a GPU it runs against the fake libcuda of the tests (put its folder
//! on `LD_LIBRARY_PATH`); with a GPU it allocates with the CUDA driver API through cudarc,
//! as an engine would (the engine, not the library, creates the context).

use std::io::{BufRead, Write};

use vram_monitor::http::{HttpOptions, HttpServer};
use vram_monitor::{Driver, DeviceHealthSource, DeviceReading, Monitor, MonitorOptions, RemappedRows, ReportFormat, Signal};

/// Device health as a healthy GPU with a known UUID would give it (see the options above).
struct Fixture(String);

impl DeviceHealthSource for Fixture {
    fn read(&mut self, _driver: &dyn Driver, device: i32) -> Result<DeviceReading, String> {
        Ok(DeviceReading {
            index: u32::try_from(device).ok(),
            uuid: Some(self.0.clone()),
            name: Some("fixture GPU".into()),
            ecc_uncorrected_volatile: Signal::Value(0),
            retired_pages_pending: Signal::Unsupported,
            remapped_rows: Signal::Value(RemappedRows::default()),
            new_critical_xids: Signal::Value(Vec::new()),
        })
    }
}

const MIB: usize = 1 << 20;
const BUFFER: usize = 64 * MIB;

enum Memory {
    Gpu,
    Fake(libloading::Library),
}

impl Memory {
    fn detect() -> Memory {
        // The monitor has loaded libcuda already; opening it again returns the same library.
        match unsafe { libloading::Library::new("libcuda.so.1") } {
            Ok(lib) if unsafe { lib.get::<unsafe extern "C" fn()>(b"fake_cuda_alloc") }.is_ok() => Memory::Fake(lib),
            _ => {
                use cudarc::driver::sys::*;
                unsafe {
                    let mut context = std::ptr::null_mut();
                    let r = cuDevicePrimaryCtxRetain(&mut context, 0);
                    assert_eq!(r, CUresult::CUDA_SUCCESS, "no GPU 0 ({r:?})");
                    cuCtxSetCurrent(context);
                }
                Memory::Gpu
            }
        }
    }

    fn name(&self) -> &'static str {
        match self {
            Memory::Gpu => "the real CUDA driver (GPU 0)",
            Memory::Fake(_) => "the fake CUDA driver of the tests",
        }
    }

    /// Makes the fake driver's queries block (`true`) or releases them; false on a GPU.
    fn hold_queries(&self, hold: bool) -> bool {
        match self {
            Memory::Fake(lib) => unsafe {
                lib.get::<unsafe extern "C" fn(i32)>(b"fake_cuda_hold_queries").unwrap()(i32::from(hold));
                true
            },
            Memory::Gpu => false,
        }
    }

    fn alloc(&self) -> u64 {
        match self {
            Memory::Fake(lib) => unsafe {
                let f = lib.get::<unsafe extern "C" fn(i32, usize, i32) -> u64>(b"fake_cuda_alloc").unwrap();
                f(1, BUFFER, 0)
            },
            Memory::Gpu => unsafe {
                let mut ptr = 0;
                let r = cudarc::driver::sys::cuMemAlloc_v2(&mut ptr, BUFFER);
                assert_eq!(r, cudarc::driver::sys::CUresult::CUDA_SUCCESS, "cuMemAlloc failed");
                ptr
            },
        }
    }

    fn free(&self, ptr: u64) {
        match self {
            Memory::Fake(lib) => unsafe {
                lib.get::<unsafe extern "C" fn(u64) -> i32>(b"fake_cuda_free").unwrap()(ptr);
            },
            Memory::Gpu => unsafe {
                cudarc::driver::sys::cuMemFree_v2(ptr);
            },
        }
    }
}

fn arg(args: &[String], name: &str) -> Option<String> {
    args.iter().position(|a| a == name).and_then(|i| args.get(i + 1).cloned())
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let address = arg(&args, "--address").unwrap_or_else(|| "127.0.0.1:0".into());
    let mut options = HttpOptions::default();
    if let Some(ms) = arg(&args, "--request-timeout-ms").and_then(|s| s.parse().ok()) {
        options.request_timeout = std::time::Duration::from_millis(ms);
    }
    let monitor = match Monitor::new(MonitorOptions::default()) {
        Ok(m) => m,
        Err(e) => {
            eprintln!("vram-monitor could not start: {e}");
            std::process::exit(2);
        }
    };
    if let Some(uuid) = arg(&args, "--device-health-fixture") {
        monitor.set_device_health_source(Box::new(Fixture(uuid)));
    }
    let memory = Memory::detect();
    eprintln!("observability example on {}", memory.name());
    let first = memory.alloc();
    let mut second = memory.alloc();
    monitor.register(first, BUFFER as u64, "weights.0").expect("device memory registers");
    let mut second_id = monitor.register(second, BUFFER as u64, "weights.1").expect("device memory registers");
    // Serves until `endpoint` is dropped (at the end of main).
    let endpoint = match HttpServer::serve(&monitor, Some(&address), options) {
        Ok(endpoint) => endpoint,
        Err(e) => {
            eprintln!("HttpServer::serve({address}): {e}");
            std::process::exit(3);
        }
    };
    let bound = endpoint.local_addr();
    monitor.check_now().expect("check");
    if let Some(path) = arg(&args, "--port-file") {
        std::fs::write(&path, format!("{}\n", bound.port())).expect("write the port file");
    }
    let stdout = std::io::stdout();
    let say = |line: &str| {
        let mut out = stdout.lock();
        let _ = writeln!(out, "{line}");
        let _ = out.flush();
    };
    say(&format!("listening {}", bound.port()));

    let check = |monitor: &Monitor| match monitor.check_now() {
        Ok(summary) => format!("healthy={}", summary.healthy),
        Err(e) => format!("check failed: {e}"),
    };
    for line in std::io::stdin().lock().lines() {
        let Ok(line) = line else { break };
        let command = line.trim();
        match command.split_whitespace().collect::<Vec<_>>().as_slice() {
            ["check"] => say(&check(&monitor)),
            ["free"] => {
                memory.free(second);
                say(&check(&monitor));
            }
            ["restore"] => {
                let _ = monitor.unregister(second_id);
                second = memory.alloc();
                second_id = monitor.register(second, BUFFER as u64, "weights.1").expect("device memory registers");
                say(&check(&monitor));
            }
            ["hang"] => {
                let limits = vram_monitor::StallLimits { deadline: std::time::Duration::from_millis(200), ..Default::default() };
                monitor.set_stall_limits(limits).expect("stall limits");
                if memory.hold_queries(true) {
                    monitor.set_interval(std::time::Duration::from_millis(1)).expect("interval");
                    say("queries held");
                } else {
                    say("hang needs the fake driver");
                }
            }
            ["unhang"] => {
                memory.hold_queries(false);
                monitor.set_interval(std::time::Duration::from_secs(60)).expect("interval");
                say("queries released");
            }
            ["devices"] => {
                let mut json = String::new();
                vram_monitor::report::devices_json(&mut json, &monitor.device_health());
                say(&json);
            }
            ["report", format] => {
                let format = match *format {
                    "text" => ReportFormat::Text,
                    "json" => ReportFormat::Json,
                    _ => ReportFormat::Prometheus,
                };
                say(monitor.report(format).trim_end());
            }
            ["quit"] => break,
            [] => continue,
            _ => say(&format!("unknown command {command:?}")),
        }
        say(&format!("done {command}"));
    }
    drop(monitor);
    say("stopped");
}
