//! The command line.

use std::ffi::c_int;

pub const USAGE: &str = "\
usage: vram-monitor-doctor [--no-alloc] [--device N]

Reports what vram-monitor sees on this machine: the CUDA driver, the GPUs, NVML, whether
this process can be monitored; then, where a GPU (or the test suite's fake driver) is
present, allocates each kind of memory and prints the monitor's verdict for each.

  --no-alloc   report only: create no CUDA context and allocate nothing
  --device N   the GPU to allocate on (default 0)

Exit status: 0 everything as expected; 1 the monitor misjudged a kind of memory (or could
not start); 2 no CUDA driver found; 3 driver found but unusable; 64 bad arguments.";

/// What the command line asked for.
pub struct Options {
    /// Allocate each kind of memory (false: `--no-alloc`, report only).
    pub allocate: bool,
    /// The GPU to allocate on.
    pub device: c_int,
}

/// Reads the arguments; `--help` prints the usage and exits 0.
pub fn parse_args() -> Result<Options, String> {
    let mut options = Options { allocate: true, device: 0 };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--no-alloc" => options.allocate = false,
            "--device" => {
                let value = args.next().ok_or("--device needs a number")?;
                options.device = value.parse().map_err(|_| format!("--device: not a number: {value}"))?;
            }
            "-h" | "--help" => {
                println!("{USAGE}");
                std::process::exit(crate::exit::OK);
            }
            other => return Err(format!("unknown argument {other}")),
        }
    }
    Ok(options)
}
