"""The package's surface against the fake driver: parity with the header, range checks,
copying, MonitorClosed, the endpoint and the reports, register_many and watch() with stand-in
tensors (torch itself is exercised by gpu_torch.py on the GPU machine)."""

import copy
import ctypes
import json
import os
import pickle
import re
import sys
import types
import unittest
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
if os.environ.get("VRAM_MONITOR_TEST_INSTALLED") != "1":
    sys.path.insert(0, os.path.join(ROOT, "python"))

import vram_monitor  # noqa: E402
from vram_monitor import MonitorClosed, Result, Verdict, VramMonitorError  # noqa: E402

MIB = 1 << 20
DEVICE, MANAGED, HOST = 1, 2, 3


def header():
    with open(os.path.join(ROOT, "include", "vram_monitor.h")) as f:
        return f.read()


def fake():
    lib = ctypes.CDLL("libcuda.so.1")
    lib.fake_cuda_alloc.restype = ctypes.c_ulonglong
    lib.fake_cuda_alloc.argtypes = [ctypes.c_int, ctypes.c_size_t, ctypes.c_int]
    lib.fake_cuda_set_kind.restype = ctypes.c_int
    lib.fake_cuda_set_kind.argtypes = [ctypes.c_ulonglong, ctypes.c_int]
    return lib


class Parity(unittest.TestCase):
    def test_every_header_function_is_declared_and_called_by_the_package(self):
        """A C function without a Python binding fails here (the Python half of the parity
        check: header names against the package)."""
        names = sorted(set(re.findall(r"\b(vram_monitor_[a-z_]+)\(", header())))
        self.assertIn("vram_monitor_serve_http", names)
        package = os.path.dirname(vram_monitor.__file__)
        sources = ""
        for name in os.listdir(package):
            if name.endswith(".py") and name != "_native.py":
                with open(os.path.join(package, name)) as f:
                    sources += f.read()
        with open(os.path.join(package, "_native.py")) as f:
            native = f.read()
        undeclared = [n for n in names if '"%s"' % n not in native]
        uncalled = [n for n in names if "." + n + "(" not in sources and n != "vram_monitor_set_log_callback"]
        self.assertEqual(undeclared, [], "header functions without a ctypes prototype in _native.py")
        self.assertEqual(uncalled, [], "header functions no package code calls")

    @unittest.skipUnless(os.environ.get("VRAM_MONITOR_TEST_INSTALLED") == "1", "run from a checkout, not an installed package")
    def test_the_installed_package_loads_its_bundled_library(self):
        """pip install put the library inside the package, and it is the one loaded: no
        environment variable, no install script."""
        package = os.path.dirname(os.path.abspath(vram_monitor.__file__))
        self.assertFalse(package.startswith(os.path.join(ROOT, "python")), "imported from the checkout: %s" % package)
        self.assertNotIn("VRAM_MONITOR_LIBRARY", os.environ)
        self.assertEqual(os.path.dirname(os.path.abspath(vram_monitor.library_path())), package)

    def test_typed_package(self):
        self.assertTrue(os.path.exists(os.path.join(os.path.dirname(vram_monitor.__file__), "py.typed")))

    def test_signal_status_and_verdict_names(self):
        self.assertEqual(vram_monitor.signal_status_str(vram_monitor.SignalStatus.SUPPORTED), "supported")
        self.assertEqual(vram_monitor.verdict_str(Verdict.HOST), "HOST")
        self.assertIn("freed", vram_monitor.result_str(Result.CLOSED))


class WithMonitor(unittest.TestCase):
    def setUp(self):
        try:
            self.m = vram_monitor.Monitor(interval_ms=3_600_000)
        except VramMonitorError as e:
            if os.environ.get("VRAM_MONITOR_TEST_REQUIRE_FAKE") == "1":
                raise
            self.skipTest("no driver (%s); run through scripts/test.sh" % e)
        self.fake = fake()

    def tearDown(self):
        self.m.close()

    def alloc(self, size=4 * MIB, kind=DEVICE):
        return self.fake.fake_cuda_alloc(kind, size, 0)


class Ownership(WithMonitor):
    def test_copy_deepcopy_and_pickle_are_refused(self):
        for attempt in (copy.copy, copy.deepcopy, pickle.dumps):
            with self.assertRaises(TypeError):
                attempt(self.m)
        self.assertFalse(self.m.closed)
        self.m.health()

    def test_every_call_after_close_raises_monitor_closed(self):
        base = self.alloc()
        rid = self.m.register((base, MIB), "w")
        self.m.close()
        calls = [
            lambda: self.m.register((base, MIB), "x"),
            lambda: self.m.unregister(rid),
            self.m.health,
            self.m.check_now,
            self.m.report,
            self.m.device_health,
            lambda: self.m.set_interval_ms(5),
            lambda: self.m.set_pacing(16, 0),
            self.m.stall,
            lambda: self.m.set_stall_limits(1000, 1000),
            lambda: self.m.set_callback(print),
            lambda: self.m.serve_http("127.0.0.1:0"),
            self.m.stop_http,
            lambda: self.m.registration(rid),
            lambda: self.m.register_many([(base, MIB, "y")]),
        ]
        for call in calls:
            with self.assertRaises(MonitorClosed):
                call()
        self.m.close()  # idempotent

    def test_with_block_closes(self):
        with vram_monitor.Monitor(interval_ms=3_600_000) as m:
            self.assertFalse(m.closed)
        self.assertTrue(m.closed)


class ExitHandler(WithMonitor):
    def test_close_all_closes_live_monitors_and_detaches_the_log_handler(self):
        """What the atexit handler runs: afterwards no monitor of the package is open and no
        log record reaches Python (they go back to the library's stderr sink)."""
        records = []
        vram_monitor.set_log_handler(lambda level, target, message: records.append(message))
        try:
            base = self.alloc()
            self.m.register((base, MIB), "w")
            self.m.check_now()
            self.assertTrue(records, "the handler receives records")
            vram_monitor.close_all()
            self.assertTrue(self.m.closed)
            self.assertEqual(vram_monitor.lifecycle.live_monitors(), [])
            seen = len(records)
            with vram_monitor.Monitor(interval_ms=3_600_000) as other:
                other.register((base, MIB), "w")
                other.check_now()
            self.assertEqual(len(records), seen, "records still reach Python after close_all")
        finally:
            vram_monitor.set_log_handler(None)


class RangeChecks(WithMonitor):
    def test_sizes_and_pointers_outside_64_bits_raise_value_error(self):
        base = self.alloc()
        for ptr, size in ((base, 2**64 + 4096), (base + 2**64, 4096), (base, -1), (-base, 4096)):
            with self.assertRaises(ValueError, msg="(%#x, %d)" % (ptr, size)):
                self.m.register((ptr, size), "wrap")
            with self.assertRaises(ValueError):
                self.m.register(ptr, "wrap", nbytes=size)
            with self.assertRaises(ValueError):
                self.m.register_many([(ptr, size, "wrap")])
        self.assertEqual(self.m.health().registrations, 0, "nothing was registered")
        for bad in (2**32, -1):
            with self.assertRaises(ValueError):
                self.m.set_interval_ms(bad)
            with self.assertRaises(ValueError):
                self.m.set_pacing(bad, 0)
        with self.assertRaises(ValueError):
            self.m.unregister(2**64)
        with self.assertRaises(TypeError):
            self.m.register((base, 4096.0), "float")


class Outputs(WithMonitor):
    def test_prometheus_report_and_device_health(self):
        base = self.alloc()
        self.m.register((base, MIB), "w")
        self.m.check_now()
        text = self.m.report("prometheus")
        self.assertRegex(text, r"(?m)^# TYPE vram_monitor_\w+ ")
        self.assertIsInstance(self.m.device_health(), list)
        self.m.set_pacing(16, 0)
        with self.assertRaises(VramMonitorError) as raised:
            self.m.set_pacing(0, 0)
        self.assertEqual(raised.exception.code, Result.INVALID_ARGUMENT)

    def test_stall_state_and_limits(self):
        self.m.set_stall_limits(5000, 7000)
        st = self.m.stall()
        self.assertEqual((st.stalled, st.deadline_ms, st.grace_ms), (False, 5000, 7000))
        with self.assertRaises(VramMonitorError) as raised:
            self.m.set_stall_limits(0, 1000)
        self.assertEqual(raised.exception.code, Result.INVALID_ARGUMENT)
        with self.assertRaises(ValueError):
            self.m.set_stall_limits(2**64, 1000)

    def test_serve_http_answers_health_and_stops(self):
        base = self.alloc()
        self.m.register((base, MIB), "w")
        self.m.check_now()
        port = self.m.serve_http("127.0.0.1:0")
        self.assertGreater(port, 0)
        with urllib.request.urlopen("http://127.0.0.1:%d/health" % port, timeout=10) as r:
            self.assertEqual(r.status, 200)
            self.assertTrue(json.loads(r.read())["health"]["healthy"])
        with self.assertRaises(VramMonitorError) as raised:
            self.m.serve_http("127.0.0.1:0")
        self.assertEqual(raised.exception.code, Result.HTTP_ALREADY_SERVING)
        self.m.stop_http()
        with self.assertRaises(OSError):
            urllib.request.urlopen("http://127.0.0.1:%d/health" % port, timeout=2)

    def test_registration_lookup_and_verdict(self):
        base = self.alloc()
        rid = self.m.register((base, MIB), "layer.0")
        info = self.m.registration(rid)
        self.assertEqual((info.id, info.ptr, info.size, info.label, info.verdict), (rid, base, MIB, "layer.0", Verdict.RESIDENT))
        self.fake.fake_cuda_set_kind(base, HOST)
        self.m.check_now()
        self.assertEqual(self.m.verdict(rid), Verdict.HOST)
        self.m.unregister(rid)
        self.assertIsNone(self.m.registration(rid))
        self.assertIsNone(self.m.verdict(rid))


def library_with(real, **functions):
    """The loaded library, plus stand-ins for functions it does not have yet."""

    class Library:
        def __getattr__(self, name):
            return functions[name] if name in functions else getattr(real, name)

    return Library()


class PlannedRegisterMany(WithMonitor):
    """The binding of vram_monitor_register_many (agreed C API) before the library has it: a
    stand-in with the agreed prototype, made of the real register, checks what the package
    passes and how it reads the per-entry answers."""

    def setUp(self):
        super().setUp()
        from vram_monitor import _native

        real = self.m._lib
        self.calls = []
        proto = ctypes.CFUNCTYPE(
            ctypes.c_int32, ctypes.c_void_p, ctypes.POINTER(_native.VramMonitorRegion), ctypes.c_size_t, ctypes.c_uint32,
            ctypes.POINTER(ctypes.c_uint64), ctypes.POINTER(ctypes.c_int32), ctypes.POINTER(ctypes.c_size_t),
        )

        def register_many(handle, regions, count, flags, out_ids, out_results, out_registered):
            self.calls.append((count, flags, [(regions[i].ptr, regions[i].size, regions[i].label) for i in range(count)]))
            failed = False
            for i in range(count):
                rid = ctypes.c_uint64()
                code = real.vram_monitor_register(handle, regions[i].ptr, regions[i].size, regions[i].label, ctypes.byref(rid))
                out_results[i], out_ids[i] = code, (rid.value if code == 0 else 0)
                failed = failed or code != 0
            if failed and flags & 1:
                for i in range(count):
                    if out_ids[i]:
                        real.vram_monitor_unregister(handle, out_ids[i])
                        out_ids[i] = 0
            return 107 if failed else 0

        self.fn = proto(register_many)
        self.m._lib = library_with(real, vram_monitor_register_many=self.fn)

    def test_one_call_with_every_entry_and_the_ids_in_order(self):
        base = self.alloc(8 * MIB)
        ids = self.m.register_many([(base, MIB, "a"), (base + MIB, 2 * MIB, "b")])
        self.assertEqual(self.calls, [(2, 1, [(base, MIB, b"a"), (base + MIB, 2 * MIB, b"b")])])
        self.assertEqual(len(set(ids)), 2)
        self.assertEqual(self.m.health().registrations, 2)

    def test_per_entry_codes_and_nothing_registered(self):
        base = self.alloc()
        host = self.alloc(kind=HOST)
        with self.assertRaises(vram_monitor.EntriesFailed) as raised:
            self.m.register_many([(base, MIB, "good"), (host, MIB, "pinned")])
        self.assertEqual(raised.exception.results, [Result.OK, Result.REFUSED_HOST])
        self.assertEqual(raised.exception.ids, [0, 0])
        self.assertEqual(self.m.health().registrations, 0)
        with self.assertRaises(vram_monitor.EntriesFailed) as raised:
            self.m.register_many([(base, MIB, "good"), (host, MIB, "pinned")], all_or_nothing=False)
        self.assertEqual(self.calls[-1][1], 0)
        self.assertNotEqual(raised.exception.ids[0], 0)
        self.assertEqual(self.m.health().registrations, 1)


class PlannedRegistrationLookup(WithMonitor):
    """The binding of vram_monitor_registration (agreed C API) before the library has it: a
    stand-in with the agreed prototype and buffer protocol (NULL/0 asks the label's size with
    the NUL and still fills the info), answering from the JSON report."""

    def setUp(self):
        super().setUp()
        from vram_monitor import _native

        real = self.m._lib
        self.calls = []
        proto = ctypes.CFUNCTYPE(
            ctypes.c_int32, ctypes.c_void_p, ctypes.c_uint64, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t,
            ctypes.POINTER(ctypes.c_size_t),
        )
        monitor = self.m

        def registration(handle, rid, out_info, label_buf, label_len, out_label_len):
            self.calls.append((label_buf is not None, label_len))
            saved, monitor._lib = monitor._lib, real
            try:
                entry = [r for r in monitor.report_json()["registrations"] if r["id"] == rid]
            finally:
                monitor._lib = saved
            if not entry:
                return 104
            r = entry[0]
            label = r["label"].encode() + b"\0"
            if out_label_len:
                out_label_len[0] = len(label)
            if label_buf and label_len < len(label):
                return 103
            info = _native.VramMonitorRegistrationInfo.from_address(out_info)
            info.id, info.size, info.device, info.pieces = rid, r["size"], r["device"], 1
            info.ptr = int(r["ptr"], 16) if isinstance(r["ptr"], str) else r["ptr"]
            info.verdict = int(Verdict[r["verdict"]])
            if label_buf:
                ctypes.memmove(label_buf, label, len(label))
            return 0

        self.fn = proto(registration)
        self.m._lib = library_with(real, vram_monitor_registration=self.fn)

    def test_lookup_through_the_direct_call(self):
        base = self.alloc()
        rid = self.m.register((base, MIB), "layers.3.mlp")
        info = self.m.registration(rid)
        self.assertEqual(self.calls[:2], [(False, 0), (True, len("layers.3.mlp") + 1)])
        self.assertEqual((info.id, info.ptr, info.size, info.pieces, info.label, info.verdict), (rid, base, MIB, 1, "layers.3.mlp", Verdict.RESIDENT))
        self.fake.fake_cuda_set_kind(base, HOST)
        self.m.check_now()
        self.assertEqual(self.m.verdict(rid), Verdict.HOST)
        self.m.unregister(rid)
        self.assertIsNone(self.m.registration(rid))


class Tensor:
    """Stands in for a torch.Tensor: a device, a storage, no torch needed."""

    def __init__(self, ptr, nbytes, device="cuda", storage=None):
        self.device = types.SimpleNamespace(type=device)
        self.is_meta = device == "meta"
        self._storage = storage or types.SimpleNamespace(data_ptr=lambda: ptr, nbytes=lambda: nbytes)

    def untyped_storage(self):
        return self._storage


class Module:
    """Stands in for a torch.nn.Module (named_parameters / named_buffers)."""

    def __init__(self, params, buffers=()):
        self.params, self.buffers = list(params), list(buffers)

    def named_parameters(self, prefix=""):
        return [((prefix + "." if prefix else "") + n, t) for n, t in self.params]

    def named_buffers(self, prefix=""):
        return [((prefix + "." if prefix else "") + n, t) for n, t in self.buffers]


class CudaArray:
    """Stands in for a CuPy array (the CUDA array interface)."""

    def __init__(self, ptr, n, typestr="<f4"):
        self.__cuda_array_interface__ = {"data": (ptr, False), "shape": (n,), "typestr": typestr, "version": 3}


class Watching(WithMonitor):
    def test_module_tied_weights_once_labels_and_unregister_together(self):
        base = self.alloc(16 * MIB)
        embed = Tensor(base, MIB)
        tied = Tensor(0, 0, storage=embed.untyped_storage())  # lm_head shares embed's storage
        model = Module(
            [("embed.weight", embed), ("layers.0.w", Tensor(base + MIB, 2 * MIB)), ("lm_head.weight", tied)],
            [("rotary.inv_freq", Tensor(base + 3 * MIB, 4096))],
        )
        with self.m.watch(model, prefix="model") as w:
            self.assertEqual(w.labels, ["model.embed.weight", "model.layers.0.w", "model.rotary.inv_freq"])
            self.assertEqual(w.aliases, {"model.embed.weight": ["model.lm_head.weight"]})
            self.assertEqual(self.m.health().registrations, 3)
            self.assertEqual(self.m.registration(w.ids[1]).label, "model.layers.0.w")
            self.assertEqual(self.m.health().tracked_bytes, MIB + 2 * MIB + 4096)
        self.assertEqual(self.m.health().registrations, 0)

    def test_meta_and_cpu_tensors_are_named_and_nothing_is_registered(self):
        base = self.alloc()
        model = Module([("ok", Tensor(base, MIB)), ("lazy", Tensor(0, 0, device="meta")), ("host", Tensor(1, 8, device="cpu"))])
        with self.assertRaises(ValueError) as raised:
            self.m.watch(model)
        self.assertIn("lazy (meta", str(raised.exception))
        self.assertIn("host (on cpu", str(raised.exception))
        self.assertEqual(self.m.health().registrations, 0)

    def test_state_dict_and_array_list_and_dict(self):
        base = self.alloc(8 * MIB)
        with self.m.watch({"a": Tensor(base, MIB), "b": Tensor(base + MIB, MIB)}) as w:
            self.assertEqual(w.labels, ["a", "b"])
        arrays = [CudaArray(base, 1024), CudaArray(base + 2 * MIB, 256, "<f2")]
        with self.m.watch(arrays, prefix="kv.") as w:
            self.assertEqual(w.labels, ["kv.0", "kv.1"])
            self.assertEqual(self.m.health().tracked_bytes, 4096 + 512)
        with self.m.watch({"x": CudaArray(base, 16)}) as w:
            self.assertEqual(len(w), 1)
        self.assertEqual(self.m.health().registrations, 0)

    def test_a_refused_entry_leaves_nothing_registered(self):
        base = self.alloc()
        host = self.alloc(kind=HOST)
        with self.assertRaises(vram_monitor.EntriesFailed) as raised:
            self.m.watch({"good": Tensor(base, MIB), "pinned": Tensor(host, MIB)})
        self.assertEqual(raised.exception.results[1], Result.REFUSED_HOST)
        self.assertEqual(raised.exception.ids, [0, 0])
        self.assertEqual(self.m.health().registrations, 0)

    def test_register_many_keeps_the_good_entries_without_all_or_nothing(self):
        base = self.alloc()
        host = self.alloc(kind=HOST)
        with self.assertRaises(vram_monitor.EntriesFailed) as raised:
            self.m.register_many([(base, MIB, "good"), (host, MIB, "pinned")], all_or_nothing=False)
        self.assertEqual(raised.exception.results, [Result.OK, Result.REFUSED_HOST])
        self.assertNotEqual(raised.exception.ids[0], 0)
        self.assertEqual(self.m.health().registrations, 1)

    def test_seal_without_integrity_registers_nothing(self):
        a, b = self.alloc(), self.alloc()
        with self.assertRaises(VramMonitorError) as raised:
            self.m.watch({"a": Tensor(a, MIB), "b": Tensor(b, MIB)}, seal=True)
        self.assertEqual(raised.exception.code, Result.INTEGRITY_NOT_ENABLED)
        self.assertEqual(self.m.health().registrations, 0, "a failed seal leaves nothing registered")

    def test_not_a_model(self):
        with self.assertRaises(TypeError):
            self.m.watch(42)


if __name__ == "__main__":
    unittest.main()
