"""The Python package against the fake libcuda (tests/fake_cuda), on any machine.

Run by scripts/test.sh as

    LD_LIBRARY_PATH=<fake driver folder> VRAM_MONITOR_LIBRARY=target/debug/libvram_monitor.so \
    VRAM_MONITOR_TEST_REQUIRE_FAKE=1 python3 -m unittest discover -s python/tests -v

(the loader reads LD_LIBRARY_PATH once, at process start, so it is set for the process). Without
the fake driver loaded the tests skip visibly, or fail with VRAM_MONITOR_TEST_REQUIRE_FAKE=1.
"""

import ctypes
import gc
import logging
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
import unittest
import weakref

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
if os.environ.get("VRAM_MONITOR_TEST_INSTALLED") != "1":
    sys.path.insert(0, os.path.join(ROOT, "python"))

import vram_monitor  # noqa: E402
from vram_monitor import _native  # noqa: E402
from vram_monitor import EventKind, Result, Verdict, VramMonitorError  # noqa: E402
from vram_monitor.tensors import buffer_range  # noqa: E402

MIB = 1 << 20
FAKE_DEVICE, FAKE_MANAGED, FAKE_HOST = 1, 2, 3


def read_header():
    with open(os.path.join(ROOT, "include", "vram_monitor.h")) as f:
        return f.read()


class Fake:
    """The fake driver's control API, in the libcuda.so.1 the library loaded."""

    def __init__(self):
        lib = ctypes.CDLL("libcuda.so.1")
        self.alloc_ = lib.fake_cuda_alloc
        self.alloc_.restype = ctypes.c_ulonglong
        self.alloc_.argtypes = [ctypes.c_int, ctypes.c_size_t, ctypes.c_int]
        self.free_ = lib.fake_cuda_free
        self.free_.restype = ctypes.c_int
        self.free_.argtypes = [ctypes.c_ulonglong]
        self.set_kind_ = lib.fake_cuda_set_kind
        self.set_kind_.restype = ctypes.c_int
        self.set_kind_.argtypes = [ctypes.c_ulonglong, ctypes.c_int]
        self.reallocate_ = lib.fake_cuda_reallocate
        self.reallocate_.restype = ctypes.c_int
        self.reallocate_.argtypes = [ctypes.c_ulonglong]

    def reallocate(self, base):
        """Freed and allocated again at the same address: a new buffer (sleep and wake)."""
        return self.reallocate_(base) == 0

    def alloc(self, kind, size):
        base = self.alloc_(kind, size, 0)
        assert base != 0, "fake_cuda_alloc refused"
        return base

    def free(self, base):
        return self.free_(base) == 0

    def set_kind(self, base, kind):
        return self.set_kind_(base, kind) == 0


def fake_or_skip(test):
    """A monitor must exist first: it is what loads libcuda (through cudarc's search)."""
    try:
        return Fake()
    except (OSError, AttributeError) as e:
        why = "the fake libcuda is not loaded (%s); run through scripts/test.sh" % e
        if os.environ.get("VRAM_MONITOR_TEST_REQUIRE_FAKE") == "1":
            test.fail(why)
        test.skipTest(why)


class FakeDriverTest(unittest.TestCase):
    def setUp(self):
        try:
            self.monitor = vram_monitor.Monitor(interval_ms=3_600_000)
        except VramMonitorError as e:
            if os.environ.get("VRAM_MONITOR_TEST_REQUIRE_FAKE") == "1":
                raise
            self.skipTest("no driver to run against (%s); run through scripts/test.sh" % e)
        self.fake = fake_or_skip(self)

    def tearDown(self):
        if getattr(self, "monitor", None) is not None:
            self.monitor.close()


class TestLibrary(unittest.TestCase):
    def test_version_matches_the_header(self):
        header = read_header()
        parts = [re.search(r"#define VRAM_MONITOR_VERSION_%s (\d+)" % p, header).group(1) for p in ("MAJOR", "MINOR", "PATCH")]
        self.assertEqual(vram_monitor.library_version(), ".".join(parts))
        self.assertEqual(vram_monitor.__version__, ".".join(parts))

    def test_struct_mirrors_match_the_header(self):
        """_native's ctypes structs list the header's fields, in order, with the same C types."""
        header = read_header()
        c_types = {
            "bool": ctypes.c_bool,
            "uint64_t": ctypes.c_uint64,
            "uint32_t": ctypes.c_uint32,
            "int32_t": ctypes.c_int32,
            "size_t": ctypes.c_size_t,
            "const char *": ctypes.c_char_p,
            "const void *": ctypes.c_void_p,
            "VramMonitorVramSource": ctypes.c_int32,
            "VramMonitorEventKind": ctypes.c_int32,
            "VramMonitorVerdict": ctypes.c_int32,
        }
        c_types["VramMonitorSignalStatus"] = ctypes.c_int32
        structs = [_native.VramMonitorHealth, _native.VramMonitorCheckSummary, _native.VramMonitorEvent, _native.VramMonitorStall]
        # register_many's structs are checked once the header has them.
        structs += [s for s in (_native.VramMonitorRegion, _native.VramMonitorRegistrationInfo) if "typedef struct %s {" % s.__name__ in header]
        for struct in structs:
            name = struct.__name__
            body = re.search(r"typedef struct %s \{(.*?)\} %s;" % (name, name), header, re.S)
            self.assertIsNotNone(body, "%s is in the header" % name)
            body = re.sub(r"/\*.*?\*/", "", body.group(1), flags=re.S)
            fields = re.findall(r"^\s*([A-Za-z_][\w ]*?(?:\s*\*)?)\s*\b(\w+);", body, re.M)
            header_fields = [(n, " ".join(t.replace("*", " *").split()).replace(" *", " *")) for t, n in fields]
            mirror = [(n, t) for n, t in struct._fields_]
            self.assertEqual([n for n, _ in header_fields], [n for n, _ in mirror], "%s field names" % name)
            for (n, ctype), (_, mtype) in zip(header_fields, mirror):
                self.assertIn(ctype, c_types, "%s.%s: unknown C type %r" % (name, n, ctype))
                self.assertIs(c_types[ctype], mtype, "%s.%s: %s" % (name, n, ctype))

    def test_result_and_verdict_numbers_match_the_header(self):
        header = read_header()
        # register_many's codes (106, 107) are bound ahead of the library that has them; once
        # the header has a name, it must carry the same number.
        ahead = {"DUPLICATE_RANGE", "ENTRIES_FAILED"}
        for member in Result:
            if member.name in ahead and "VRAM_MONITOR_RESULT_%s " % member.name not in header:
                continue
            self.assertRegex(header, r"VRAM_MONITOR_RESULT_%s = %d," % (member.name, member.value))
        for member in Verdict:
            self.assertRegex(header, r"VRAM_MONITOR_VERDICT_%s = %d," % (member.name, member.value))
        for member in EventKind:
            self.assertRegex(header, r"VRAM_MONITOR_EVENT_KIND_%s = %d," % (member.name, member.value))
        # And the other way: every code of the header is known here.
        for prefix, enum_type in (("RESULT", Result), ("VERDICT", Verdict), ("EVENT_KIND", EventKind)):
            for name, value in re.findall(r"VRAM_MONITOR_%s_([A-Z_]+) = (\d+)," % prefix, header):
                self.assertIn(name, enum_type.__members__, "%s.%s (%s) is missing in python/vram_monitor" % (enum_type.__name__, name, value))
                self.assertEqual(enum_type[name].value, int(value))

    def test_buffer_range_of_tensor_like_objects(self):
        class CudaArray:  # what CuPy and Numba expose
            def __init__(self, ptr, shape, typestr, strides=None):
                self.__cuda_array_interface__ = {"data": (ptr, False), "shape": shape, "typestr": typestr, "strides": strides, "version": 3}

        self.assertEqual(buffer_range((0x1000, 64)), (0x1000, 64))
        self.assertEqual(buffer_range(CudaArray(0x2000, (4, 8), "<f4")), (0x2000, 128))
        # A transposed 4x8 float32 view: strides in bytes (4, 16); the last element starts at
        # 7*4 + 3*16 = 76 and ends at 80.
        self.assertEqual(buffer_range(CudaArray(0x2000, (8, 4), "<f4", (4, 32))), (0x2000, 7 * 4 + 3 * 32 + 4))
        self.assertEqual(buffer_range(CudaArray(0x2000, (0, 8), "<f4")), (0x2000, 0))

        class TensorLike:  # duck-typed like torch.Tensor
            def __init__(self, contiguous):
                self.contiguous = contiguous
                self.shape = (3, 5)

            def data_ptr(self):
                return 0x4000

            def element_size(self):
                return 2

            def numel(self):
                return 15

            def is_contiguous(self):
                return self.contiguous

            def stride(self):
                return (1, 3)  # a transposed 5x3

            def untyped_storage(self):
                class Storage:
                    def data_ptr(self):
                        return 0x3f00

                    def nbytes(self):
                        return 4096

                return Storage()

        self.assertEqual(buffer_range(TensorLike(True)), (0x4000, 30))
        self.assertEqual(buffer_range(TensorLike(False)), (0x4000, (2 * 1 + 4 * 3 + 1) * 2))
        self.assertEqual(buffer_range(TensorLike(True), whole_storage=True), (0x3F00, 4096))
        with self.assertRaises(TypeError):
            buffer_range(object())

    def test_without_a_driver_monitor_raises_driver_not_found(self):
        system = [p for p in ("/usr/lib/x86_64-linux-gnu/libcuda.so.1", "/usr/lib64/libcuda.so.1", "/usr/lib/libcuda.so.1") if os.path.exists(p)]
        ldconfig = subprocess.run(["sh", "-c", "ldconfig -p 2>/dev/null | grep -q 'libcuda\\.so'"]).returncode == 0
        if system or ldconfig:
            self.skipTest("skipped: a system libcuda is installed (%s)" % (system or "ldconfig cache"))
        with tempfile.TemporaryDirectory() as empty:
            code = (
                "import sys; sys.path.insert(0, %r)\n"
                "import vram_monitor\n"
                "try:\n"
                "    vram_monitor.Monitor()\n"
                "except vram_monitor.VramMonitorError as e:\n"
                "    print('code', int(e.code), e.code.name)\n"
            ) % os.path.join(ROOT, "python")
            env = dict(os.environ, LD_LIBRARY_PATH=empty)
            out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
        self.assertEqual(out.returncode, 0, out.stderr)
        self.assertIn("code 300 DRIVER_NOT_FOUND", out.stdout)


class TestMonitor(FakeDriverTest):
    def test_register_health_report_unregister(self):
        ptr = self.fake.alloc(FAKE_DEVICE, 4 * MIB)
        rid = self.monitor.register((ptr, 4 * MIB), "model.embed")
        self.assertGreater(rid, 0)
        h = self.monitor.health()
        self.assertEqual((h.registrations, h.tracked_bytes, h.healthy), (1, 4 * MIB, True))
        self.assertEqual(h.as_dict()["registrations"], 1)
        summary = self.monitor.check_now()
        self.assertEqual((summary.checked, summary.resident, summary.violations, summary.healthy), (1, 1, 0, True))
        self.assertIn("model.embed", self.monitor.report())
        report = self.monitor.report_json()
        self.assertEqual(report["registrations"][0]["label"], "model.embed")
        self.assertEqual(int(report["registrations"][0]["ptr"], 16), ptr)
        self.assertEqual(self.monitor.verdict(rid), Verdict.RESIDENT)
        self.monitor.unregister(rid)
        self.assertEqual(self.monitor.health().registrations, 0)
        with self.assertRaises(VramMonitorError) as e:
            self.monitor.unregister(rid)
        self.assertEqual(e.exception.code, Result.UNKNOWN_REGISTRATION)

    def test_rebind_takes_back_remapped_memory_under_a_new_id(self):
        ptr = self.fake.alloc(FAKE_DEVICE, 2 * MIB)
        rid = self.monitor.register((ptr, 2 * MIB), "layers.0.weight")
        self.assertTrue(self.fake.reallocate(ptr))
        self.monitor.check_now()
        self.assertEqual(self.monitor.verdict(rid), Verdict.REPLACED)
        new = self.monitor.rebind(rid)
        self.assertNotEqual(new, rid)
        self.assertIsNone(self.monitor.registration(rid))
        info = self.monitor.registration(new)
        self.assertEqual((info.verdict, info.label), (Verdict.RESIDENT, "layers.0.weight"))
        self.assertTrue(self.monitor.check_now().healthy)
        with self.assertRaises(VramMonitorError) as e:
            self.monitor.rebind(rid)
        self.assertEqual(e.exception.code, Result.UNKNOWN_REGISTRATION)
        self.assertTrue(self.fake.free(ptr))
        with self.assertRaises(VramMonitorError) as e:
            self.monitor.rebind(new)
        self.assertEqual(e.exception.verdict, Verdict.NOT_MAPPED)
        self.assertIsNotNone(self.monitor.registration(new), "a refused rebind changes nothing")

    def test_two_copies_of_the_library_never_share_an_id(self):
        """A second copy of the library in the process (an engine's own beside this wheel's):
        each copy's ids are unknown to the other, so unregistering the other's id removes
        nothing here."""
        import shutil

        with tempfile.TemporaryDirectory() as d:
            copy_path = os.path.join(d, "libvram_monitor_copy.so")
            shutil.copy(vram_monitor.library_path(), copy_path)
            other = ctypes.CDLL(copy_path)
            other.vram_monitor_new.argtypes = [ctypes.c_uint32, ctypes.POINTER(ctypes.c_void_p)]
            other.vram_monitor_register.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t, ctypes.c_char_p, ctypes.POINTER(ctypes.c_uint64)]
            other.vram_monitor_unregister.argtypes = [ctypes.c_void_p, ctypes.c_uint64]
            other.vram_monitor_free.argtypes = [ctypes.c_void_p]
            handle = ctypes.c_void_p()
            self.assertEqual(other.vram_monitor_new(3_600_000, ctypes.byref(handle)), 0)
            try:
                ptr = self.fake.alloc(FAKE_DEVICE, MIB)
                theirs = ctypes.c_uint64()
                self.assertEqual(other.vram_monitor_register(handle, ptr, MIB, b"theirs", ctypes.byref(theirs)), 0)
                ours = self.monitor.register((ptr, MIB), "ours")
                self.assertNotEqual(ours, theirs.value)
                with self.assertRaises(VramMonitorError) as e:
                    self.monitor.unregister(theirs.value)
                self.assertEqual(e.exception.code, Result.UNKNOWN_REGISTRATION)
                self.assertEqual(other.vram_monitor_unregister(handle, ours), int(Result.UNKNOWN_REGISTRATION))
                self.assertEqual(self.monitor.verdict(ours), Verdict.RESIDENT, "ours is still registered")
                self.assertEqual(other.vram_monitor_unregister(handle, theirs.value), 0)
            finally:
                self.assertEqual(other.vram_monitor_free(handle), 0)

    def test_a_flood_of_set_interval_does_not_starve_the_checks(self):
        """Millions of set_interval_ms calls coalesce: the periodic check still runs and finds
        a violation made during the flood."""
        ptr = self.fake.alloc(FAKE_DEVICE, MIB)
        rid = self.monitor.register((ptr, MIB), "w")
        self.monitor.set_interval_ms(20)
        stop = threading.Event()
        calls = [0]

        def flood():
            while not stop.is_set():
                self.monitor.set_interval_ms(20)
                calls[0] += 1

        threads = [threading.Thread(target=flood) for _ in range(2)]
        for t in threads:
            t.start()
        try:
            before = self.monitor.health().checks_completed
            self.assertTrue(self.fake.free(ptr))
            # The violation found, and periodic checks completing one after another (a verdict
            # is visible before the check that found it counts as completed: wait for two).
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline and (
                self.monitor.verdict(rid) != Verdict.NOT_MAPPED or self.monitor.health().checks_completed < before + 2
            ):
                time.sleep(0.01)
            found = self.monitor.verdict(rid)
            checks = self.monitor.health().checks_completed - before
        finally:
            stop.set()
            for t in threads:
                t.join()
        self.assertEqual(found, Verdict.NOT_MAPPED, "the violation was found during the flood")
        self.assertGreaterEqual(checks, 2, "periodic checks went on during the flood")
        self.assertGreater(calls[0], 1000, "the flood ran")

    def test_integer_address_with_nbytes(self):
        ptr = self.fake.alloc(FAKE_DEVICE, MIB)
        rid = self.monitor.register(ptr, "int address", nbytes=MIB)
        self.assertEqual(self.monitor.health().tracked_bytes, MIB)
        self.monitor.unregister(rid)

    def test_memory_that_is_not_vram_is_refused_with_its_verdict(self):
        for kind, verdict, code in (
            (FAKE_HOST, Verdict.HOST, Result.REFUSED_HOST),
            (FAKE_MANAGED, Verdict.MANAGED, Result.REFUSED_MANAGED),
        ):
            ptr = self.fake.alloc(kind, MIB)
            with self.assertRaises(VramMonitorError) as e:
                self.monitor.register((ptr, MIB), "refused")
            self.assertTrue(e.exception.refused)
            self.assertEqual((e.exception.code, e.exception.verdict), (code, verdict))
            self.assertIn("refused", str(e.exception))
        with self.assertRaises(VramMonitorError) as e:
            self.monitor.register((self.fake.alloc(FAKE_DEVICE, MIB), 0), "empty")
        self.assertEqual(e.exception.code, Result.INVALID_ARGUMENT)
        self.assertFalse(e.exception.refused)

    def test_callbacks_receive_events(self):
        events = []
        done = threading.Event()

        def on_event(event):
            events.append((event, threading.current_thread().name))
            done.set()

        self.monitor.set_callback(on_event)
        ptr = self.fake.alloc(FAKE_DEVICE, 2 * MIB)
        rid = self.monitor.register((ptr, 2 * MIB), "layers.0")
        self.assertTrue(self.fake.set_kind(ptr, FAKE_HOST))
        summary = self.monitor.check_now()
        self.assertEqual(summary.violations, 1)
        self.assertFalse(summary.healthy)
        violation = [e for e, _ in events if e.kind == EventKind.VIOLATION]
        self.assertEqual(len(violation), 1, events)
        e = violation[0]
        self.assertEqual((e.registration_id, e.label, e.verdict, e.previous_verdict), (rid, "layers.0", Verdict.HOST, Verdict.RESIDENT))
        self.assertEqual((e.ptr, e.size, e.device), (ptr, 2 * MIB, 0))
        self.assertIn("layers.0", e.message)
        self.assertEqual(e.error_kind, "residency_violation")
        self.assertEqual((e.modified_chunks, e.first_modified_offset), (0, 0))
        self.assertNotEqual(events[0][1], threading.current_thread().name, "callbacks run on the monitor's thread")
        self.assertTrue(self.fake.set_kind(ptr, FAKE_DEVICE))
        self.monitor.check_now()
        recovered = [e for e, _ in events if e.kind == EventKind.RECOVERED and e.registration_id == rid]
        self.assertTrue(recovered)
        self.assertEqual(recovered[0].error_kind, "", "a recovery is no error")
        self.assertEqual(self.monitor.verdict(rid), Verdict.RESIDENT)

    def test_an_exception_in_a_callback_stops_at_the_boundary(self):
        errors = []
        calls = []

        def failing(event):
            calls.append(event.kind)
            raise RuntimeError("engine handler failed on %s" % event.label)

        self.monitor.set_callback(failing, on_error=lambda t, e, tb: errors.append(str(e)))
        a = self.fake.alloc(FAKE_DEVICE, MIB)
        b = self.fake.alloc(FAKE_DEVICE, MIB)
        self.monitor.register((a, MIB), "a")
        self.monitor.register((b, MIB), "b")
        self.fake.free(a)
        self.fake.free(b)
        summary = self.monitor.check_now()
        self.assertEqual((summary.checked, summary.violations), (2, 2))
        self.assertGreaterEqual(calls.count(EventKind.VIOLATION), 2, "the callback ran for every event despite raising")
        self.assertTrue(any("engine handler failed on a" in e for e in errors), errors)
        self.assertEqual(self.monitor.health().current_violations, 2, "the monitor is unharmed")

    def test_check_now_from_a_callback_is_refused(self):
        seen = []

        def reentrant(event):
            try:
                self.monitor.check_now()
                seen.append("ran")
            except VramMonitorError as e:
                seen.append(e.code)

        self.monitor.set_callback(reentrant)
        ptr = self.fake.alloc(FAKE_DEVICE, MIB)
        self.monitor.register((ptr, MIB), "x")
        self.fake.free(ptr)
        self.monitor.check_now()
        self.assertIn(Result.CALLED_FROM_CALLBACK, seen)
        self.assertNotIn("ran", seen)

    def test_a_replaced_callback_is_released(self):
        class Handler:
            def __call__(self, event):
                pass

        handler = Handler()
        ref = weakref.ref(handler)
        self.monitor.set_callback(handler)
        del handler
        gc.collect()
        self.assertIsNotNone(ref(), "the monitor keeps its callback alive")
        self.monitor.set_callback(None)
        gc.collect()
        self.assertIsNone(ref(), "removing it released it (the library freed its user data)")

        handler = Handler()
        ref = weakref.ref(handler)
        self.monitor.set_callback(handler)
        del handler
        self.monitor.close()
        gc.collect()
        self.assertIsNone(ref(), "closing the monitor released the callback")

    def test_guard_and_context_managers(self):
        ptr = self.fake.alloc(FAKE_DEVICE, MIB)
        with self.monitor.guard((ptr, MIB), "scoped") as reg:
            self.assertEqual(self.monitor.health().registrations, 1)
            self.assertGreater(reg.id, 0)
        self.assertEqual(self.monitor.health().registrations, 0)
        reg = self.monitor.guard((ptr, MIB), "explicit")
        reg.unregister()
        with self.assertRaises(VramMonitorError):
            reg.unregister()

        with vram_monitor.Monitor(interval_ms=3_600_000) as m:
            m.register((ptr, MIB), "inner")
            self.assertFalse(m.closed)
        self.assertTrue(m.closed)
        with self.assertRaises(vram_monitor.MonitorClosed) as raised:
            m.health()
        self.assertEqual(raised.exception.code, Result.CLOSED)
        self.assertIsInstance(raised.exception, VramMonitorError)
        m.close()  # idempotent

    def test_log_records_reach_python_logging(self):
        records = []

        class Capture(logging.Handler):
            def emit(self, record):
                records.append(record)

        logger = logging.getLogger("vram_monitor.test")
        logger.setLevel(logging.DEBUG)
        logger.propagate = False
        capture = Capture()
        logger.addHandler(capture)
        try:
            vram_monitor.log_to_python_logging(logger)
            ptr = self.fake.alloc(FAKE_DEVICE, MIB)
            self.monitor.register((ptr, MIB), "logged.weight")
            self.fake.free(ptr)
            self.monitor.check_now()
        finally:
            vram_monitor.set_log_handler(None)
            logger.removeHandler(capture)
        errors = [r for r in records if r.levelno == logging.ERROR and "logged.weight" in r.getMessage()]
        self.assertEqual(len(errors), 1, [r.getMessage() for r in records])
        self.assertIn("NOT_MAPPED", errors[0].getMessage())
        self.assertEqual(errors[0].vram_monitor_target, "vram_monitor")


if __name__ == "__main__":
    unittest.main(verbosity=2)
