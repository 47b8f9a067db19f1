"""vram_monitor: prove that a PyTorch or CuPy process's weights stay in GPU memory.

A thin layer over the C API of libvram_monitor (ctypes; the library is built into the
package by `pip install`). Nothing here calls CUDA at import time.

    import torch, vram_monitor

    model = ...  # a torch.nn.Module on the GPU
    with vram_monitor.Monitor(interval_ms=60_000) as monitor:
        monitor.set_callback(lambda event: print(event.message))
        with monitor.watch(model):                          # every parameter and buffer
            print(monitor.check_now())
            print(monitor.health())                         # a dataclass: serve .healthy
            port = monitor.serve_http("127.0.0.1:0")        # /health and /metrics

Registering takes no reference to the tensor: the point is to notice when its memory goes.
The monitor guards where memory lives, not which tensor owns it: a block that PyTorch's
caching allocator hands to another tensor without returning it to the driver still looks
resident. Register long-lived weights, not activations.

Callbacks run on the monitor's own thread ("vram-monitor"), one at a time, with the GIL held
for the call. An exception raised by a callback does not reach the library: it goes to the
`on_error` function given with the callback (default: a traceback on stderr).

Lifetime: a Monitor may be closed from any thread while others call it (they get results or
MonitorClosed); it is closed when collected (also on its own thread) and at interpreter exit,
when the log handler is detached too, so no callback enters a finalising interpreter.
"""



from . import _native
from .events import Event
from .health import CheckSummary, DeviceHealth, Health, Stall
from .integrity import IntegrityStatus, SealInfo, VerifySummary
from .lifecycle import close_all
from .logging_bridge import detach_log_handler, log_to_python_logging, set_log_handler
from .monitor import EntriesFailed, Monitor, Registration, RegistrationInfo
from .results import EventKind, MonitorClosed, Result, SignalStatus, Verdict, VramMonitorError
from .tensors import buffer_range
from .watch import Watch

__all__ = [
    "IntegrityStatus",
    "SealInfo",
    "VerifySummary",
    "CheckSummary",
    "DeviceHealth",
    "EntriesFailed",
    "Event",
    "EventKind",
    "Health",
    "Monitor",
    "MonitorClosed",
    "Registration",
    "RegistrationInfo",
    "Result",
    "SignalStatus",
    "Stall",
    "Verdict",
    "VramMonitorError",
    "Watch",
    "buffer_range",
    "close_all",
    "detach_log_handler",
    "library_path",
    "library_version",
    "log_to_python_logging",
    "result_str",
    "set_log_handler",
    "signal_status_str",
    "verdict_str",
]

__version__ = "0.1.0"


def library_version() -> str:
    """The version of the libvram_monitor actually loaded ("MAJOR.MINOR.PATCH")."""
    return str(_native.library().vram_monitor_version().decode())


def library_path() -> str:
    """The path or name the library was loaded from."""
    return str(_native.library().vram_monitor_loaded_from)


def result_str(code: int) -> str:
    """The library's description of a result code (vram_monitor_result_str)."""
    return str(_native.library().vram_monitor_result_str(int(code)).decode())


def verdict_str(verdict: int) -> str:
    """The library's name of a verdict (vram_monitor_verdict_str): "RESIDENT", ..."""
    return str(_native.library().vram_monitor_verdict_str(int(verdict)).decode())


def signal_status_str(status: int) -> str:
    """The library's name of a signal status (vram_monitor_signal_status_str)."""
    return str(_native.library().vram_monitor_signal_status_str(int(status)).decode())


