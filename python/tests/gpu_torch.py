"""The Python package on a real GPU, against real PyTorch (and CuPy where installed) memory.

    python3 python/tests/gpu_torch.py            (run by scripts/gpu-suites/20-python.sh)

- a CUDA tensor, and a view into one, register RESIDENT and stay so through a check;
- a pinned host tensor (pin_memory=True) is refused HOST; a plain CPU tensor NOT_MAPPED;
- a tensor freed (del + torch.cuda.empty_cache()) is NOT_MAPPED (or REPLACED) at the next check,
  and the callback hears of it; a same-size tensor allocated after it is REPLACED if it got the
  same address;
- with PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True (a child process), a large tensor that
  spans several VMM mappings registers, checks RESIDENT, and is NOT_MAPPED once freed;
- CuPy: an array registers RESIDENT; an array from a managed-memory pool is refused MANAGED.

Each scenario prints "RESULT | name | expected | saw | PASS/FAIL" (the suite turns those into
Markdown). Without torch or a GPU every test skips; with VRAM_MONITOR_GPU_REQUIRED=1 that is a
failure.
"""

import ctypes
import os
import subprocess
import sys
import threading
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(HERE)))

import vram_monitor  # noqa: E402
from vram_monitor import EventKind, Verdict, VramMonitorError  # noqa: E402

MIB = 1 << 20
REQUIRED = os.environ.get("VRAM_MONITOR_GPU_REQUIRED") == "1"
EXPANDABLE = "expandable_segments:True" in os.environ.get("PYTORCH_CUDA_ALLOC_CONF", "")


def result(name, expected, saw, ok):
    print("RESULT | %s | %s | %s | %s" % (name, expected, saw, "PASS" if ok else "FAIL"), flush=True)


def torch_or_skip(test):
    try:
        import torch
    except ImportError as e:
        why = "torch is not installed (%s)" % e
    else:
        if torch.cuda.is_available():
            return torch
        why = "torch sees no CUDA device"
    if REQUIRED:
        test.fail("VRAM_MONITOR_GPU_REQUIRED=1 but " + why)
    test.skipTest(why)


def mapping_size(ptr):
    """CU_POINTER_ATTRIBUTE_MAPPING_SIZE (18) of an address, from the driver (None if unknown)."""
    try:
        cuda = ctypes.CDLL("libcuda.so.1")
    except OSError:
        return None
    value = ctypes.c_size_t(0)
    code = cuda.cuPointerGetAttribute(ctypes.byref(value), ctypes.c_int(18), ctypes.c_uint64(ptr))
    return value.value if code == 0 else None


class GpuTest(unittest.TestCase):
    def setUp(self):
        self.torch = torch_or_skip(self)
        self.torch.cuda.init()
        self.monitor = vram_monitor.Monitor(interval_ms=3_600_000)
        self.events = []
        self.lock = threading.Lock()

        def on_event(event):
            with self.lock:
                self.events.append(event)

        self.monitor.set_callback(on_event)

    def tearDown(self):
        self.monitor.close()

    def violations_of(self, rid):
        with self.lock:
            return [e for e in self.events if e.kind == EventKind.VIOLATION and e.registration_id == rid]


class TestTorch(GpuTest):
    def test_cuda_tensor_registers_resident(self):
        t = self.torch.empty(16 * MIB, dtype=self.torch.float16, device="cuda")
        rid = self.monitor.register(t, "weights")
        self.monitor.check_now()
        verdict = self.monitor.verdict(rid)
        ptr, nbytes = vram_monitor.buffer_range(t)
        result("CUDA tensor (32 MiB fp16)", "RESIDENT", "%s (%#x + %d bytes)" % (verdict.name, ptr, nbytes), verdict == Verdict.RESIDENT)
        self.assertEqual((ptr, nbytes), (t.data_ptr(), 32 * MIB))
        self.assertEqual(verdict, Verdict.RESIDENT)
        view = t[1000:2000]
        vid = self.monitor.register(view, "weights[1000:2000]")
        self.monitor.check_now()
        v = self.monitor.verdict(vid)
        result("view of a CUDA tensor (interior pointer)", "RESIDENT", v.name, v == Verdict.RESIDENT)
        self.assertEqual(v, Verdict.RESIDENT)
        h = self.monitor.health()
        self.assertTrue(h.healthy)
        self.assertEqual(h.registrations, 2)
        del t, view

    def test_pinned_host_tensor_is_refused_host(self):
        t = self.torch.empty(4 * MIB, dtype=self.torch.uint8, pin_memory=True)
        self.assertTrue(t.is_pinned())
        with self.assertRaises(VramMonitorError) as e:
            self.monitor.register(t, "offloaded")
        saw = "refused %s" % (e.exception.verdict.name if e.exception.refused else e.exception.code)
        result("pinned host tensor (pin_memory=True)", "refused HOST", saw, e.exception.verdict == Verdict.HOST)
        self.assertEqual(e.exception.verdict, Verdict.HOST)

    def test_plain_cpu_tensor_is_refused_not_mapped(self):
        t = self.torch.empty(4 * MIB, dtype=self.torch.uint8)
        with self.assertRaises(VramMonitorError) as e:
            self.monitor.register(t, "cpu")
        result("plain CPU tensor", "refused NOT_MAPPED", "refused %s" % e.exception.verdict.name, e.exception.verdict == Verdict.NOT_MAPPED)
        self.assertEqual(e.exception.verdict, Verdict.NOT_MAPPED)

    def test_freed_tensor_is_detected(self):
        t = self.torch.empty(64 * MIB, dtype=self.torch.uint8, device="cuda")
        rid = self.monitor.register(t, "freed")
        self.assertEqual(self.monitor.check_now().violations, 0)
        del t
        self.torch.cuda.synchronize()
        self.torch.cuda.empty_cache()
        summary = self.monitor.check_now()
        verdict = self.monitor.verdict(rid)
        heard = self.violations_of(rid)
        ok = verdict in (Verdict.NOT_MAPPED, Verdict.REPLACED) and len(heard) == 1 and not summary.healthy
        result("tensor freed (del + empty_cache)", "NOT_MAPPED or REPLACED, callback", "%s, %d callback event(s)" % (verdict.name, len(heard)), ok)
        self.assertIn(verdict, (Verdict.NOT_MAPPED, Verdict.REPLACED))
        self.assertEqual(len(heard), 1)
        self.assertFalse(self.monitor.health().healthy)

    def test_reallocated_tensor_is_replaced(self):
        t = self.torch.empty(64 * MIB, dtype=self.torch.uint8, device="cuda")
        old = t.data_ptr()
        rid = self.monitor.register(t, "reallocated")
        del t
        self.torch.cuda.synchronize()
        self.torch.cuda.empty_cache()
        again = self.torch.empty(64 * MIB, dtype=self.torch.uint8, device="cuda")
        self.monitor.check_now()
        verdict = self.monitor.verdict(rid)
        expected = Verdict.REPLACED if again.data_ptr() == old else Verdict.NOT_MAPPED
        note = "same address" if again.data_ptr() == old else "another address (%#x)" % again.data_ptr()
        result("freed, then a same-size tensor", expected.name + " (" + note + ")", verdict.name, verdict == expected)
        self.assertEqual(verdict, expected)
        del again

    def test_whole_storage_of_a_view(self):
        t = self.torch.empty(8 * MIB, dtype=self.torch.uint8, device="cuda")
        view = t[MIB : 2 * MIB]
        ptr, nbytes = vram_monitor.buffer_range(view, whole_storage=True)
        self.assertEqual((ptr, nbytes), (t.data_ptr(), 8 * MIB))
        with self.monitor.guard((ptr, nbytes), "storage") as reg:
            self.monitor.check_now()
            self.assertEqual(self.monitor.verdict(reg.id), Verdict.RESIDENT)
        self.assertEqual(self.monitor.health().registrations, 0)
        result("untyped storage of a view (whole_storage=True)", "RESIDENT", "RESIDENT", True)
        del t, view


class TestExpandableSegments(GpuTest):
    def test_large_tensor_over_several_mappings(self):
        if not EXPANDABLE:
            # The allocator reads its configuration once: run this test in a child process.
            env = dict(os.environ, PYTORCH_CUDA_ALLOC_CONF="expandable_segments:True")
            child = subprocess.run(
                [sys.executable, os.path.abspath(__file__), "TestExpandableSegments.test_large_tensor_over_several_mappings"],
                env=env,
                capture_output=True,
                text=True,
                timeout=300,
            )
            sys.stdout.write(child.stdout)
            sys.stderr.write(child.stderr)
            self.assertEqual(child.returncode, 0, "the expandable-segments child failed")
            self.assertIn("RESULT | expandable segments", child.stdout)
            return
        nbytes = 300 * MIB
        t = self.torch.empty(nbytes, dtype=self.torch.uint8, device="cuda")
        ptr = t.data_ptr()
        mapping = mapping_size(ptr)
        spans = "mapping at the start: %s" % ("%d MiB" % (mapping // MIB) if mapping else "unknown")
        rid = self.monitor.register(t, "expandable")
        self.monitor.check_now()
        verdict = self.monitor.verdict(rid)
        ok = verdict == Verdict.RESIDENT and (mapping is None or mapping < nbytes)
        result("expandable segments: 300 MiB tensor", "RESIDENT over several mappings", "%s (%s)" % (verdict.name, spans), ok)
        self.assertEqual(verdict, Verdict.RESIDENT)
        if mapping is not None:
            self.assertLess(mapping, nbytes, "the tensor spans more than one mapping")
        del t
        self.torch.cuda.synchronize()
        self.torch.cuda.empty_cache()
        self.monitor.check_now()
        after = self.monitor.verdict(rid)
        result("expandable segments: tensor freed", "NOT_MAPPED", after.name, after == Verdict.NOT_MAPPED)
        self.assertEqual(after, Verdict.NOT_MAPPED)


class TestCupy(unittest.TestCase):
    def setUp(self):
        try:
            import cupy
        except ImportError as e:
            self.skipTest("cupy is not installed (%s)" % e)
        try:
            cupy.cuda.runtime.getDeviceCount()
        except Exception as e:  # noqa: BLE001
            self.skipTest("cupy sees no device (%s)" % e)
        self.cupy = cupy
        self.monitor = vram_monitor.Monitor(interval_ms=3_600_000)

    def tearDown(self):
        self.monitor.close()

    def test_cupy_array_registers_resident(self):
        a = self.cupy.zeros((1024, 1024), dtype=self.cupy.float32)
        rid = self.monitor.register(a, "cupy")
        self.monitor.check_now()
        verdict = self.monitor.verdict(rid)
        result("CuPy array (4 MiB)", "RESIDENT", verdict.name, verdict == Verdict.RESIDENT)
        self.assertEqual(vram_monitor.buffer_range(a), (a.data.ptr, 4 * MIB))
        self.assertEqual(verdict, Verdict.RESIDENT)

    def test_cupy_managed_memory_is_refused(self):
        pool = self.cupy.cuda.MemoryPool(self.cupy.cuda.malloc_managed)
        previous = self.cupy.cuda.get_allocator()
        self.cupy.cuda.set_allocator(pool.malloc)
        try:
            a = self.cupy.zeros((1024, 1024), dtype=self.cupy.float32)
            with self.assertRaises(VramMonitorError) as e:
                self.monitor.register(a, "cupy managed")
        finally:
            self.cupy.cuda.set_allocator(previous)
        result("CuPy array from a managed-memory pool", "refused MANAGED", "refused %s" % e.exception.verdict.name, e.exception.verdict == Verdict.MANAGED)
        self.assertEqual(e.exception.verdict, Verdict.MANAGED)


if __name__ == "__main__":
    unittest.main(verbosity=2)
