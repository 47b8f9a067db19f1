//! Where the library's `log` records go in a C host: to the host's log callback if it set
//! one (like llama.cpp's `llama_log_set`), otherwise to stderr, filtered by the environment
//! variable `VRAM_MONITOR_LOG` (`off`, `error`, `warn` (default), `info`, `debug`, `trace`).
//!
//! Installed only through the C API (on `vram_monitor_new` or `vram_monitor_set_log_callback`):
//! a Rust host keeps whatever `log` implementation it chose. If a logger is already installed
//! in the process, that one keeps receiving the records.

use std::ffi::{c_char, c_void, CString};
use std::fmt::Write;
use std::sync::RwLock;

use once_cell::sync::OnceCell;

/// Severity of a log record. The numbers are part of the C ABI.
#[repr(i32)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VramMonitorLogLevel {
    /// Errors, and every residency violation ("CRITICAL: ...").
    Error = 1,
    /// Warnings, such as a registration that recovered.
    Warn = 2,
    /// Health changes.
    Info = 3,
    /// Passing checks.
    Debug = 4,
    /// Detail.
    Trace = 5,
}

impl From<log::Level> for VramMonitorLogLevel {
    fn from(level: log::Level) -> Self {
        match level {
            log::Level::Error => VramMonitorLogLevel::Error,
            log::Level::Warn => VramMonitorLogLevel::Warn,
            log::Level::Info => VramMonitorLogLevel::Info,
            log::Level::Debug => VramMonitorLogLevel::Debug,
            log::Level::Trace => VramMonitorLogLevel::Trace,
        }
    }
}

/// Receives one log record: `target` is the module ("vram_monitor"), `message` the sentence
/// followed by its structured fields as ` {key=value ...}`. Both strings are valid only
/// during the call. Runs on the thread that logged: the monitor thread or any thread calling
/// into the library. It must not call `vram_monitor_set_log_callback`.
pub type VramMonitorLogCallback = Option<
    unsafe extern "C" fn(level: VramMonitorLogLevel, target: *const c_char, message: *const c_char, user_data: *mut c_void),
>;

struct Sink {
    callback: unsafe extern "C" fn(VramMonitorLogLevel, *const c_char, *const c_char, *mut c_void),
    user_data: *mut c_void,
}

// SAFETY: the header tells the host that the callback runs on the library's threads.
unsafe impl Send for Sink {}
unsafe impl Sync for Sink {}

static SINK: RwLock<Option<Sink>> = RwLock::new(None);

struct Bridge {
    stderr_level: log::LevelFilter,
}

fn level_from_env() -> log::LevelFilter {
    match std::env::var("VRAM_MONITOR_LOG").unwrap_or_default().to_ascii_lowercase().as_str() {
        "off" => log::LevelFilter::Off,
        "error" => log::LevelFilter::Error,
        "info" => log::LevelFilter::Info,
        "debug" => log::LevelFilter::Debug,
        "trace" => log::LevelFilter::Trace,
        _ => log::LevelFilter::Warn,
    }
}

/// Formats the record's message and its key-values.
fn render(record: &log::Record<'_>) -> String {
    struct Fields<'a>(&'a mut String, bool);
    impl<'kvs> log::kv::VisitSource<'kvs> for Fields<'_> {
        fn visit_pair(&mut self, key: log::kv::Key<'kvs>, value: log::kv::Value<'kvs>) -> Result<(), log::kv::Error> {
            let _ = write!(self.0, "{}{key}={value}", if self.1 { " " } else { " {" });
            self.1 = true;
            Ok(())
        }
    }
    let mut out = record.args().to_string();
    let mut fields = Fields(&mut out, false);
    let _ = record.key_values().visit(&mut fields);
    if fields.1 {
        out.push('}');
    }
    out
}

impl log::Log for Bridge {
    fn enabled(&self, _: &log::Metadata<'_>) -> bool {
        true
    }

    fn log(&self, record: &log::Record<'_>) {
        let sink = SINK.read().unwrap_or_else(|e| e.into_inner());
        if let Some(sink) = sink.as_ref() {
            let target = CString::new(record.target()).unwrap_or_default();
            let message = CString::new(render(record).replace('\0', " ")).unwrap_or_default();
            // SAFETY: the host registered a valid function; the strings outlive the call.
            // Nothing reaches the host once it has begun to exit (src/adapters/process_exit.rs).
            vram_monitor::process_exit::deliver(|| unsafe {
                (sink.callback)(record.level().into(), target.as_ptr(), message.as_ptr(), sink.user_data)
            });
        } else if record.level() <= self.stderr_level {
            // Not eprintln!: it panics when stderr is a closed pipe, and a log record must
            // never take the monitor thread (or the host) down.
            use std::io::Write as _;
            let _ = writeln!(std::io::stderr().lock(), "[{} {}] {}", record.level(), record.target(), render(record));
        }
    }

    fn flush(&self) {}
}

/// Installs the bridge as the process's logger unless one is installed already.
pub(crate) fn install() {
    static BRIDGE: OnceCell<Bridge> = OnceCell::new();
    let bridge = BRIDGE.get_or_init(|| Bridge { stderr_level: level_from_env() });
    if log::set_logger(bridge).is_ok() {
        // Records at every level reach the bridge: the host's callback filters for itself.
        log::set_max_level(log::LevelFilter::Trace);
    }
}

/// Sets (or with NULL removes) the process-wide function that receives the library's log
/// records (see `VramMonitorLogCallback`). Without one, records at warning level and above
/// go to stderr (`VRAM_MONITOR_LOG=off|error|warn|info|debug|trace` changes the level).
/// Process-wide, not per monitor: call it once, before `vram_monitor_new`, from any thread.
#[no_mangle]
pub extern "C" fn vram_monitor_set_log_callback(callback: VramMonitorLogCallback, user_data: *mut c_void) {
    let _ = std::panic::catch_unwind(|| {
        install();
        if callback.is_some() {
            vram_monitor::process_exit::arm();
        }
        let mut sink = SINK.write().unwrap_or_else(|e| e.into_inner());
        *sink = callback.map(|callback| Sink { callback, user_data });
    });
}
