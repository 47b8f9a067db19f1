"""The C ABI of libvram_monitor through ctypes: finding the library, the struct mirrors and the
function prototypes. Internal: use the classes the package re-exports.

The struct mirrors follow include/vram_monitor.h field by field; python/tests/test_fake_driver.py
compares them with the header, so a change there that is not made here fails the tests.

Nothing here calls CUDA: loading the library loads no driver (the library loads libcuda on the
first `vram_monitor_new`).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import glob
import os
import threading
from typing import Any, List, Optional, Tuple, Type, TypeVar

# ---- enums and constants (numbers are part of the C ABI) -------------------------------------

REPORT_FORMAT_TEXT = 0
REPORT_FORMAT_JSON = 1
REPORT_FORMAT_PROMETHEUS = 2
REGISTER_ALL_OR_NOTHING = 1
DEVICE_STRING_BYTES = 96

# ---- struct mirrors ------------------------------------------------------------------------------


class VramMonitorHealth(ctypes.Structure):
    _fields_ = [
        ("healthy", ctypes.c_bool),
        ("last_check_failed", ctypes.c_bool),
        ("registrations", ctypes.c_uint64),
        ("tracked_bytes", ctypes.c_uint64),
        ("current_violations", ctypes.c_uint64),
        ("total_violations", ctypes.c_uint64),
        ("checks_completed", ctypes.c_uint64),
        ("checks_failed", ctypes.c_uint64),
        ("last_check_unix_ms", ctypes.c_uint64),
        ("last_check_duration_us", ctypes.c_uint64),
        ("process_vram_bytes", ctypes.c_uint64),
        ("process_vram_source", ctypes.c_int32),
        ("interval_ms", ctypes.c_uint64),
        ("device_faults", ctypes.c_uint64),
    ]


class VramMonitorCheckSummary(ctypes.Structure):
    _fields_ = [
        ("checked", ctypes.c_uint64),
        ("resident", ctypes.c_uint64),
        ("violations", ctypes.c_uint64),
        ("check_failures", ctypes.c_uint64),
        ("duration_us", ctypes.c_uint64),
        ("healthy", ctypes.c_bool),
    ]


class VramMonitorEvent(ctypes.Structure):
    _fields_ = [
        ("kind", ctypes.c_int32),
        ("registration_id", ctypes.c_uint64),
        ("label", ctypes.c_char_p),
        ("ptr", ctypes.c_void_p),
        ("size", ctypes.c_size_t),
        ("device", ctypes.c_int32),
        ("verdict", ctypes.c_int32),
        ("previous_verdict", ctypes.c_int32),
        ("healthy", ctypes.c_bool),
        ("message", ctypes.c_char_p),
        ("timestamp_unix_ms", ctypes.c_uint64),
        ("modified_chunks", ctypes.c_uint64),
        ("first_modified_offset", ctypes.c_uint64),
        ("error_kind", ctypes.c_char_p),
    ]


class VramMonitorDeviceHealth(ctypes.Structure):
    _fields_ = [
        ("device", ctypes.c_int32),
        ("nvml_available", ctypes.c_bool),
        ("memory_fault", ctypes.c_bool),
        ("ecc_uncorrected_volatile_status", ctypes.c_int32),
        ("ecc_uncorrected_volatile", ctypes.c_uint64),
        ("retired_pages_pending_status", ctypes.c_int32),
        ("retired_pages_pending", ctypes.c_bool),
        ("remapped_rows_status", ctypes.c_int32),
        ("remapped_rows_pending", ctypes.c_bool),
        ("remapped_rows_failed", ctypes.c_bool),
        ("remapped_rows_correctable", ctypes.c_uint64),
        ("remapped_rows_uncorrectable", ctypes.c_uint64),
        ("critical_xid_status", ctypes.c_int32),
        ("critical_xid_events", ctypes.c_uint64),
        ("last_critical_xid", ctypes.c_uint64),
        ("read_unix_ms", ctypes.c_uint64),
        ("uuid", ctypes.c_char * DEVICE_STRING_BYTES),
        ("name", ctypes.c_char * DEVICE_STRING_BYTES),
    ]


class VramMonitorStall(ctypes.Structure):
    _fields_ = [
        ("stalled", ctypes.c_bool),
        ("check_in_progress", ctypes.c_bool),
        ("check_in_progress_ms", ctypes.c_uint64),
        ("last_check_started_unix_ms", ctypes.c_uint64),
        ("deadline_ms", ctypes.c_uint64),
        ("grace_ms", ctypes.c_uint64),
    ]


class VramMonitorIntegrityOptions(ctypes.Structure):
    _fields_ = [("slice_bytes", ctypes.c_uint64), ("max_gpu_share_ppm", ctypes.c_uint32), ("period_ms", ctypes.c_uint64)]


class VramMonitorVerifySummary(ctypes.Structure):
    _fields_ = [
        ("registrations", ctypes.c_uint64),
        ("bytes", ctypes.c_uint64),
        ("modified", ctypes.c_uint64),
        ("duration_us", ctypes.c_uint64),
    ]


class VramMonitorSealInfo(ctypes.Structure):
    _fields_ = [
        ("sealed", ctypes.c_bool),
        ("integrity_failing", ctypes.c_bool),
        ("chunks", ctypes.c_uint64),
        ("last_verified_unix_ms", ctypes.c_uint64),
        ("modified_chunks", ctypes.c_uint64),
        ("first_modified_offset", ctypes.c_uint64),
    ]


class VramMonitorIntegrity(ctypes.Structure):
    _fields_ = [
        ("devices_enabled", ctypes.c_uint32),
        ("failed", ctypes.c_bool),
        ("failed_device", ctypes.c_int32),
        ("failed_code", ctypes.c_int32),
        ("sealed", ctypes.c_uint64),
        ("sealed_bytes", ctypes.c_uint64),
        ("modified", ctypes.c_uint64),
        ("verified_bytes_total", ctypes.c_uint64),
        ("passes_completed", ctypes.c_uint64),
        ("last_pass_unix_ms", ctypes.c_uint64),
    ]


class VramMonitorRegion(ctypes.Structure):
    """One entry of vram_monitor_register_many (an input: its size is fixed by the ABI)."""

    _fields_ = [("ptr", ctypes.c_void_p), ("size", ctypes.c_size_t), ("label", ctypes.c_char_p)]


class VramMonitorRegistrationInfo(ctypes.Structure):
    _fields_ = [
        ("id", ctypes.c_uint64),
        ("ptr", ctypes.c_void_p),
        ("size", ctypes.c_size_t),
        ("device", ctypes.c_int32),
        ("verdict", ctypes.c_int32),
        ("pieces", ctypes.c_uint32),
        ("check_failing", ctypes.c_uint32),
    ]


# Out-structs are passed inside a buffer this large, so that a library newer than this mirror
# (a field appended) never writes past Python's memory.
OUT_STRUCT_BYTES = 4096

S = TypeVar("S", bound=ctypes.Structure)


def out_struct(struct_type: Type[S]) -> Tuple[Any, S]:
    """A zeroed buffer of OUT_STRUCT_BYTES and a view of its start as `struct_type`."""
    size = max(OUT_STRUCT_BYTES, ctypes.sizeof(struct_type))
    buf = ctypes.create_string_buffer(size)
    return buf, struct_type.from_buffer(buf)


EVENT_CALLBACK = ctypes.CFUNCTYPE(None, ctypes.POINTER(VramMonitorEvent), ctypes.c_void_p)
USER_DATA_FREE = ctypes.CFUNCTYPE(None, ctypes.c_void_p)
LOG_CALLBACK = ctypes.CFUNCTYPE(None, ctypes.c_int32, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_void_p)

# ---- range checks before ctypes ------------------------------------------------------------------
#
# ctypes converts a Python int to c_size_t / c_void_p / c_uint64 modulo 2**64 without a word:
# (p, 2**64 + 4096) would register 4096 bytes. Every size, pointer and id is checked here first.

_U64 = 1 << 64
_U32 = 1 << 32


def _as_int(value: Any, what: str) -> int:
    if isinstance(value, bool) or not hasattr(value, "__index__"):
        raise TypeError("%s must be an integer, not %s" % (what, type(value).__name__))
    return int(value.__index__())


def u64(value: Any, what: str) -> int:
    """`value` as an unsigned 64-bit integer (sizes, pointers, ids); ValueError outside it."""
    n = _as_int(value, what)
    if n < 0 or n >= _U64:
        raise ValueError("%s must be in [0, 2**64): got %d" % (what, n))
    return n


def u32(value: Any, what: str) -> int:
    """`value` as an unsigned 32-bit integer (intervals, pacing); ValueError outside it."""
    n = _as_int(value, what)
    if n < 0 or n >= _U32:
        raise ValueError("%s must be in [0, 2**32): got %d" % (what, n))
    return n


# ---- finding the library ---------------------------------------------------------------------------

LIBRARY_ENV = "VRAM_MONITOR_LIBRARY"
_HERE = os.path.dirname(os.path.abspath(__file__))


def bundled() -> List[str]:
    """The library that `pip install` built into this package (setuptools-rust names it as an
    extension module: _libvram_monitor.<abi tag>.so)."""
    return sorted(glob.glob(os.path.join(_HERE, "_libvram_monitor*.so"))) + [
        p for p in (os.path.join(_HERE, "libvram_monitor.so"),) if os.path.exists(p)
    ]


def candidates() -> List[str]:
    """Where the library is looked for, in order: the copy bundled in this package by
    `pip install`; $VRAM_MONITOR_LIBRARY; the loader's search path (LD_LIBRARY_PATH, the
    ldconfig cache: an installed prefix); a checkout's own build (target/debug, then
    target/release) when the package is run from the repository without installing."""
    found = bundled()
    env = os.environ.get(LIBRARY_ENV)
    if env:
        found.append(env)
    found += ["libvram_monitor.so.0", "libvram_monitor.so"]
    by_util = ctypes.util.find_library("vram_monitor")
    if by_util:
        found.append(by_util)
    repo = os.path.dirname(os.path.dirname(_HERE))
    for profile in ("debug", "release"):
        path = os.path.join(repo, "target", profile, "libvram_monitor.so")
        if os.path.exists(path):
            found.append(path)
    return found


_lib: Optional[ctypes.CDLL] = None
_lib_lock = threading.Lock()


def library() -> ctypes.CDLL:
    """The loaded library (loaded and declared on first use). Raises OSError saying where it
    looked."""
    global _lib
    with _lib_lock:
        if _lib is None:
            _lib = _load()
        return _lib


def _load() -> ctypes.CDLL:
    errors = []
    for candidate in candidates():
        try:
            lib = ctypes.CDLL(candidate)
        except OSError as e:
            errors.append("%s: %s" % (candidate, e))
            continue
        declare(lib)
        lib.vram_monitor_loaded_from = candidate  # type: ignore[attr-defined]
        return lib
    raise OSError(
        "libvram_monitor could not be loaded; reinstall the package (pip install builds it in), "
        "or set %s to its path. Tried:\n  %s" % (LIBRARY_ENV, "\n  ".join(errors))
    )


def has(lib: ctypes.CDLL, name: str) -> bool:
    """Whether the loaded library exports `name` (functions newer than some libraries)."""
    try:
        getattr(lib, name)
        return True
    except AttributeError:
        return False


def declare(lib: ctypes.CDLL) -> None:
    """Sets the prototypes of every function the package calls. Functions that a library may
    not have yet (newer than it) are declared only where present."""
    p = ctypes.POINTER
    vm = ctypes.c_void_p  # VramMonitor * (opaque)
    result = ctypes.c_int32
    signatures = {
        "vram_monitor_new": (result, [ctypes.c_uint32, p(vm)]),
        "vram_monitor_free": (result, [vm]),
        "vram_monitor_register": (
            result,
            [vm, ctypes.c_void_p, ctypes.c_size_t, ctypes.c_char_p, p(ctypes.c_uint64)],
        ),
        "vram_monitor_unregister": (result, [vm, ctypes.c_uint64]),
        "vram_monitor_set_callback": (result, [vm, EVENT_CALLBACK, ctypes.c_void_p, USER_DATA_FREE]),
        "vram_monitor_set_interval_ms": (result, [vm, ctypes.c_uint32]),
        "vram_monitor_set_pacing": (result, [vm, ctypes.c_uint32, ctypes.c_uint32]),
        "vram_monitor_check_now": (result, [vm, ctypes.c_void_p]),
        "vram_monitor_health": (result, [vm, ctypes.c_void_p]),
        "vram_monitor_stall": (result, [vm, ctypes.c_void_p]),
        "vram_monitor_set_stall_limits": (result, [vm, ctypes.c_uint64, ctypes.c_uint64]),
        "vram_monitor_report": (
            result,
            [vm, ctypes.c_int32, ctypes.c_char_p, ctypes.c_size_t, p(ctypes.c_size_t)],
        ),
        "vram_monitor_result_str": (ctypes.c_char_p, [ctypes.c_int32]),
        "vram_monitor_verdict_str": (ctypes.c_char_p, [ctypes.c_int32]),
        "vram_monitor_signal_status_str": (ctypes.c_char_p, [ctypes.c_int32]),
        "vram_monitor_version": (ctypes.c_char_p, []),
        "vram_monitor_set_log_callback": (None, [LOG_CALLBACK, ctypes.c_void_p]),
        "vram_monitor_device_health": (result, [vm, ctypes.c_void_p, ctypes.c_size_t, p(ctypes.c_size_t)]),
        "vram_monitor_serve_http": (result, [vm, ctypes.c_char_p, p(ctypes.c_uint16)]),
        "vram_monitor_stop_http": (result, [vm]),
        "vram_monitor_enable_integrity": (result, [vm, ctypes.c_int32, ctypes.c_void_p]),
        "vram_monitor_disable_integrity": (result, [vm, ctypes.c_int32]),
        "vram_monitor_set_integrity_options": (result, [vm, ctypes.c_void_p]),
        "vram_monitor_seal": (result, [vm, ctypes.c_uint64]),
        "vram_monitor_reseal": (result, [vm, ctypes.c_uint64]),
        "vram_monitor_unseal": (result, [vm, ctypes.c_uint64]),
        "vram_monitor_register_sealed": (
            result,
            [vm, ctypes.c_void_p, ctypes.c_size_t, ctypes.c_char_p, p(ctypes.c_uint64)],
        ),
        "vram_monitor_verify_now": (result, [vm, ctypes.c_void_p]),
        "vram_monitor_seal_info": (result, [vm, ctypes.c_uint64, ctypes.c_void_p]),
        "vram_monitor_integrity": (result, [vm, ctypes.c_void_p]),
        # Newer than some libraries: bound where the loaded one has them.
        "vram_monitor_register_many": (
            result,
            [vm, p(VramMonitorRegion), ctypes.c_size_t, ctypes.c_uint32, p(ctypes.c_uint64), p(ctypes.c_int32), p(ctypes.c_size_t)],
        ),
        "vram_monitor_registration": (
            result,
            [vm, ctypes.c_uint64, ctypes.c_void_p, ctypes.c_char_p, ctypes.c_size_t, p(ctypes.c_size_t)],
        ),
        "vram_monitor_rebind": (result, [vm, ctypes.c_uint64, p(ctypes.c_uint64)]),
    }
    optional = {"vram_monitor_register_many", "vram_monitor_registration", "vram_monitor_rebind"}
    for name, (restype, argtypes) in signatures.items():
        if name in optional and not has(lib, name):
            continue
        function = getattr(lib, name)
        function.restype = restype
        function.argtypes = argtypes
