//! "What the monitor sees, per kind of memory": the doctor plays the engine (on a GPU, or with
//! the fake driver's memory), prints the verdict table, process VRAM and the summary.

use std::ffi::c_int;

use vram_monitor::Monitor;

use crate::fake_engine::FakeEngine;
use crate::gpu_engine::Gpu;
use crate::table::{print_table, Row};
use crate::{exit, MIB};

/// Who allocates: the fake driver's control functions, or a real GPU through the driver.
enum Engine {
    Fake(FakeEngine),
    Gpu(Box<Gpu>),
}

impl Engine {
    fn describe(&self, device: c_int) -> String {
        match self {
            Engine::Fake(_) => "the FAKE driver's memory: a model of the H100 measurements, not a GPU".into(),
            Engine::Gpu(gpu) => format!(
                "GPU{device}{}; the doctor plays the engine and made GPU{device}'s primary context current",
                gpu.device_name(device).map(|n| format!(" ({n})")).unwrap_or_default()
            ),
        }
    }

    fn scenarios(&self, monitor: &Monitor, device: c_int) -> Vec<Row> {
        match self {
            Engine::Fake(fake) => fake.scenarios(monitor),
            Engine::Gpu(gpu) => gpu.scenarios(monitor, device),
        }
    }

    fn finish(self) {
        if let Engine::Gpu(gpu) = self {
            gpu.finish();
        }
    }
}

/// Prints the section; the exit status.
pub fn section(monitor: Monitor, device: c_int, fake: bool) -> i32 {
    let engine = if fake {
        match FakeEngine::load() {
            Ok(engine) => Engine::Fake(engine),
            Err(why) => {
                println!("What the monitor sees: not run: {why}");
                return exit::MISJUDGED;
            }
        }
    } else {
        match Gpu::load().and_then(|gpu| gpu.start(device)) {
            Ok(gpu) => Engine::Gpu(Box::new(gpu)),
            Err(why) => {
                println!("What the monitor sees: not run: {why}");
                println!("(the process could still be monitored; only the allocation table was skipped)");
                return exit::OK;
            }
        }
    };
    println!("What the monitor sees, per kind of memory ({})", engine.describe(device));
    println!();
    let rows = engine.scenarios(&monitor, device);
    print_table(&rows);
    let misjudged = rows.iter().filter(|r| r.ok == Some(false)).count();
    let not_run = rows.iter().filter(|r| r.ok.is_none()).count();
    let health = monitor.health();
    println!();
    println!(
        "process VRAM after the checks: {} ({})",
        if health.process_vram.bytes > 0 {
            format!("{:.1} MiB", health.process_vram.bytes as f64 / MIB as f64)
        } else {
            "unknown".into()
        },
        health.process_vram.source.name()
    );
    println!(
        "summary: {} kinds of memory, {} as expected, {} misjudged, {} not available here{}",
        rows.len(),
        rows.len() - misjudged - not_run,
        misjudged,
        not_run,
        if fake { " (fake driver)" } else { "" }
    );
    drop(monitor);
    engine.finish();
    if misjudged > 0 {
        exit::MISJUDGED
    } else {
        exit::OK
    }
}
