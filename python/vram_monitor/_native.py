"""The C ABI of libvram_monitor through ctypes: finding the library, the struct mirrors and the
function prototypes. Internal: use the classes in vram_monitor/__init__.py.

The struct mirrors follow include/vram_monitor.h field by field; python/tests/test_fake_driver.py
compares them with the header, so a change there that is not made here fails the tests.
"""

import ctypes
import ctypes.util
import os

# ---- enums and constants (numbers are part of the C ABI) -------------------------------------

REPORT_FORMAT_TEXT = 0
REPORT_FORMAT_JSON = 1

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
    ]


# Out-structs are passed inside a buffer this large, so that a library newer than this mirror
# (a field appended) never writes past Python's memory.
OUT_STRUCT_BYTES = 4096


def out_struct(struct_type):
    """A zeroed buffer of OUT_STRUCT_BYTES and a view of its start as `struct_type`."""
    size = max(OUT_STRUCT_BYTES, ctypes.sizeof(struct_type))
    buf = ctypes.create_string_buffer(size)
    return buf, struct_type.from_buffer(buf)


EVENT_CALLBACK = ctypes.CFUNCTYPE(None, ctypes.POINTER(VramMonitorEvent), ctypes.c_void_p)
USER_DATA_FREE = ctypes.CFUNCTYPE(None, ctypes.c_void_p)
LOG_CALLBACK = ctypes.CFUNCTYPE(None, ctypes.c_int32, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_void_p)

# ---- finding the library ---------------------------------------------------------------------------

LIBRARY_ENV = "VRAM_MONITOR_LIBRARY"


def candidates():
    """Where the library is looked for, in order: $VRAM_MONITOR_LIBRARY; next to this package;
    the loader's search path (LD_LIBRARY_PATH, the ldconfig cache: an installed prefix); the
    repository's own build (target/release, then target/debug) when the package is run from a
    checkout."""
    env = os.environ.get(LIBRARY_ENV)
    if env:
        return [env]
    here = os.path.dirname(os.path.abspath(__file__))
    found = []
    for name in ("libvram_monitor.so", "libvram_monitor.so.0"):
        path = os.path.join(here, name)
        if os.path.exists(path):
            found.append(path)
    found += ["libvram_monitor.so.0", "libvram_monitor.so"]
    by_util = ctypes.util.find_library("vram_monitor")
    if by_util:
        found.append(by_util)
    repo = os.path.dirname(os.path.dirname(here))
    for profile in ("release", "debug"):
        path = os.path.join(repo, "target", profile, "libvram_monitor.so")
        if os.path.exists(path):
            found.append(path)
    return found


def load():
    """Loads libvram_monitor and declares its functions. Raises OSError saying where it looked."""
    errors = []
    for candidate in candidates():
        try:
            lib = ctypes.CDLL(candidate)
        except OSError as e:
            errors.append("%s: %s" % (candidate, e))
            continue
        declare(lib)
        lib.vram_monitor_loaded_from = candidate
        return lib
    raise OSError(
        "libvram_monitor could not be loaded; set %s to its path, or install it (scripts/install.sh) "
        "and put its folder on LD_LIBRARY_PATH. Tried:\n  %s" % (LIBRARY_ENV, "\n  ".join(errors))
    )


def declare(lib):
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
        "vram_monitor_check_now": (result, [vm, ctypes.c_void_p]),
        "vram_monitor_health": (result, [vm, ctypes.c_void_p]),
        "vram_monitor_report": (
            result,
            [vm, ctypes.c_int32, ctypes.c_char_p, ctypes.c_size_t, p(ctypes.c_size_t)],
        ),
        "vram_monitor_result_str": (ctypes.c_char_p, [ctypes.c_int32]),
        "vram_monitor_verdict_str": (ctypes.c_char_p, [ctypes.c_int32]),
        "vram_monitor_version": (ctypes.c_char_p, []),
        "vram_monitor_set_log_callback": (None, [LOG_CALLBACK, ctypes.c_void_p]),
    }
    for name, (restype, argtypes) in signatures.items():
        function = getattr(lib, name)
        function.restype = restype
        function.argtypes = argtypes
