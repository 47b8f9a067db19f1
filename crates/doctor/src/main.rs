//! `vram-monitor-doctor`: what the monitor sees on this machine, in one command.
//!
//! On any machine it reports the CUDA driver (found or not, where, its version, whether it is
//! the fake driver the tests use), the GPUs (count, names, memory; from NVML where it is
//! present, else from the driver), NVML, and whether this process could be monitored (the
//! driver loads, a monitor starts, a pointer query answers). Where a GPU is present it then
//! plays the engine: it creates GPU 0's primary context (the library itself never does),
//! allocates each kind of memory from the measured facts table, registers it, changes some of
//! it underneath (free, reallocate) and prints what the monitor said next to what it should
//! say. Against the fake driver (tests/fake_cuda) it does the same with the fake's memory and
//! says plainly that the results are the fake's.
//!
//! One file a part of the report, in the order printed: [`driver`] (the CUDA driver),
//! [`nvml`], [`gpus`], [`monitoring`] (can this process be monitored?) and [`memory`] (what
//! the monitor sees, kind by kind: [`gpu_engine`] on a GPU, through the `cuda-engine` crate,
//! [`fake_engine`] on the fake driver, judged and printed by [`table`]). The command line is
//! [`args`]; the exit statuses are [`exit`].

mod args;
mod driver;
mod exit;
mod fake_engine;
mod gpu_engine;
mod gpus;
mod memory;
mod monitoring;
mod nvml;
mod table;

const MIB: usize = 1 << 20;
const GIB: f64 = (1u64 << 30) as f64;

fn main() {
    let options = match args::parse_args() {
        Ok(options) => options,
        Err(why) => {
            eprintln!("vram-monitor-doctor: {why}\n\n{}", args::USAGE);
            std::process::exit(exit::USAGE);
        }
    };
    std::process::exit(run(&options));
}

/// Prints the report, section by section; the exit status.
fn run(options: &args::Options) -> i32 {
    println!("vram-monitor doctor {} (library {})", env!("CARGO_PKG_VERSION"), vram_monitor::VERSION);
    println!();

    let (driver, fake) = driver::section();
    let nvml = nvml::section();
    gpus::section(driver.is_ok(), &nvml, fake);
    let monitor = match monitoring::section(driver, fake) {
        Ok(monitor) => monitor,
        Err(code) => return code,
    };
    if !options.allocate {
        println!("(--no-alloc: no memory allocated, no context created)");
        return exit::OK;
    }
    memory::section(monitor, options.device, fake)
}
