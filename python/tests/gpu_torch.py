"""The Python package on a real GPU, against real PyTorch (and CuPy where installed) memory.

    python3 python/tests/gpu_torch.py            (run by scripts/gpu-suites/20-python.sh)

- a CUDA tensor, and a view into one, register RESIDENT and stay so through a check;
- a pinned host tensor (pin_memory=True) is refused HOST; a plain CPU tensor NOT_MAPPED;
- a tensor freed (del + torch.cuda.empty_cache()) is NOT_MAPPED (or REPLACED) at the next check,
  and the callback hears of it; a same-size tensor allocated after it is REPLACED if it got the
  same address;
- with PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True (a child process), a large tensor that
  spans several VMM mappings registers, checks RESIDENT, and is NOT_MAPPED once freed;
- CuPy: an array registers RESIDENT; an array from a managed-memory pool is refused MANAGED;
  watch() of CuPy arrays in a dict;
- the package is the pip-installed one (VRAM_MONITOR_TEST_INSTALLED=1: imported from
  site-packages, its bundled library loaded);
- exit: 20 processes, each ending with two live monitors checking every millisecond, event
  callbacks firing (tensors freed and reallocated under them), a log handler at trace level and
  a daemon thread calling health(): all 20 exit 0, none prints "FATAL";
- watch() of a GPT-2-shaped module (124 M parameters, fp16, lm_head tied to wte): every
  parameter and buffer once, labels by qualified name, all RESIDENT, one call (timed, printed);
  a meta-device module is refused naming its tensors; closing the watch unregisters all.

- content integrity (each in a child process): a GPT-2-shaped module sealed, verify_now clean;
  one byte changed in place found MODIFIED with its label and chunk offset, nothing else; no
  false MODIFIED in 1000 verifications while a matmul loop runs; a sealed tensor del-ed without
  empty_cache and its block refilled by a same-size tensor found MODIFIED; a write 64 bytes past
  a neighbouring buffer found MODIFIED at offset 0; expandable-segments weights unmapped,
  remapped and reloaded with one tensor wrong, taken back with rebind, found MODIFIED at its
  offset; verify_now of 1 GiB and 16 GiB timed.

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
INSTALLED = os.environ.get("VRAM_MONITOR_TEST_INSTALLED") == "1"
if not INSTALLED:
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


class TestInstalled(unittest.TestCase):
    @unittest.skipUnless(INSTALLED or REQUIRED, "not run on an installed package")
    def test_the_pip_installed_package_and_its_bundled_library(self):
        package = os.path.dirname(os.path.abspath(vram_monitor.__file__))
        loaded = os.path.abspath(vram_monitor.library_path())
        ok = INSTALLED and "site-packages" in package and os.path.dirname(loaded) == package
        result("package is the pip-installed one", "site-packages, bundled library", "%s, %s" % (package, loaded), ok)
        self.assertTrue(INSTALLED, "VRAM_MONITOR_TEST_INSTALLED=1 is not set: the suite must run the installed package")
        self.assertIn("site-packages", package)
        self.assertEqual(os.path.dirname(loaded), package)


EXIT_RUNS = 20


def exit_child():
    """One process that ends with live monitors, callbacks, a log handler and a daemon thread."""
    import logging
    import time

    import torch

    logging.basicConfig(level=5, stream=open(os.devnull, "w"))
    vram_monitor.log_to_python_logging()
    monitors = [vram_monitor.Monitor(interval_ms=1) for _ in range(2)]
    seen = []
    for m in monitors:
        m.set_callback(lambda e: seen.append(e.kind) if len(seen) < 10000 else None)
    keep = [torch.empty(MIB, dtype=torch.uint8, device="cuda") for _ in range(4)]
    for i, t in enumerate(keep):
        monitors[i % 2].register(t, "weights.%d" % i)

    stop_churn = threading.Event()
    import atexit

    # Registered after the package's own exit handler, so it runs first (atexit is LIFO): the
    # churning thread stops calling into torch before finalisation, which would end it inside
    # torch's C++ frames (torch's own exit hazard, not this library's). Log records, the
    # daemon thread's health() calls and callbacks of events already found still run.
    churner = []

    def stop():
        stop_churn.set()
        for thread in churner:
            thread.join(10)

    atexit.register(stop)

    def churn():
        # Registers a tensor, frees it: a violation event at the next check, every few ms.
        while not stop_churn.is_set():
            t = torch.empty(MIB, dtype=torch.uint8, device="cuda")
            for m in monitors:
                try:
                    m.register(t, "churn")
                except vram_monitor.VramMonitorError:
                    pass
            del t
            torch.cuda.empty_cache()
            time.sleep(0.002)

    def poll():
        while True:
            for m in monitors:
                try:
                    m.health()
                except vram_monitor.MonitorClosed:
                    pass
            time.sleep(0.0005)

    churner.append(threading.Thread(target=churn, daemon=True))
    churner[0].start()
    threading.Thread(target=poll, daemon=True).start()
    deadline = time.time() + 20
    while not seen and time.time() < deadline:
        time.sleep(0.005)
    print("events before exit: %d" % len(seen))
    print("ok", flush=True)
    globals()["kept"] = (monitors, keep)  # still live when the interpreter exits


class TestExit(unittest.TestCase):
    def test_exit_with_live_monitors_callbacks_log_handler_and_daemon_thread(self):
        torch_or_skip(self)
        def one_run(_):
            try:
                p = subprocess.run([sys.executable, os.path.abspath(__file__), "exit-child"], capture_output=True, text=True, timeout=120)
            except subprocess.TimeoutExpired:
                return "hang"
            out = p.stdout + p.stderr
            if p.returncode != 0 or "FATAL" in out or "ok" not in p.stdout or "events before exit: 0" in out:
                return "exit %d: %s" % (p.returncode, out[-400:])
            return None

        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(4) as pool:  # four processes at a time: fits the suite's time
            failures = [f for f in pool.map(one_run, range(EXIT_RUNS)) if f]
        result(
            "exit with live monitors, callbacks, log handler, daemon thread (PyTorch)",
            "%d/%d clean exits" % (EXIT_RUNS, EXIT_RUNS),
            "%d/%d clean exits" % (EXIT_RUNS - len(failures), EXIT_RUNS),
            not failures,
        )
        self.assertEqual(failures, [])


def gpt2_shaped(torch, device):
    """A GPT-2 (124 M) shaped module: wte, wpe, 12 blocks, ln_f, lm_head tied to wte, and the
    causal-mask buffer of each attention."""
    nn = torch.nn
    d, n_ctx, vocab = 768, 1024, 50257

    class Attention(nn.Module):
        def __init__(self):
            super().__init__()
            self.c_attn = nn.Linear(d, 3 * d)
            self.c_proj = nn.Linear(d, d)
            self.register_buffer("bias", torch.tril(torch.ones(n_ctx, n_ctx, dtype=torch.bool, device=device)).view(1, 1, n_ctx, n_ctx))

    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.ln_1 = nn.LayerNorm(d)
            self.attn = Attention()
            self.ln_2 = nn.LayerNorm(d)
            self.mlp = nn.Sequential()
            self.mlp.add_module("c_fc", nn.Linear(d, 4 * d))
            self.mlp.add_module("c_proj", nn.Linear(4 * d, d))

    class GPT2(nn.Module):
        def __init__(self):
            super().__init__()
            self.transformer = nn.Module()
            self.transformer.wte = nn.Embedding(vocab, d)
            self.transformer.wpe = nn.Embedding(n_ctx, d)
            self.transformer.h = nn.ModuleList([Block() for _ in range(12)])
            self.transformer.ln_f = nn.LayerNorm(d)
            self.lm_head = nn.Linear(d, vocab, bias=False)
            self.lm_head.weight = self.transformer.wte.weight

    with torch.device(device):
        return GPT2().half()


class TestWatch(GpuTest):
    def test_watch_a_gpt2_shaped_module(self):
        import time

        torch = self.torch
        model = gpt2_shaped(torch, "cuda")
        tensors = list(model.named_parameters()) + list(model.named_buffers())
        storages = {t.untyped_storage().data_ptr() for _, t in tensors}
        # Timed against the alternative a user writes by hand, doing the same work: walk the
        # module's parameters and buffers, skip tied storages, one register per storage. In
        # alternating rounds; the median of 7 each.
        def by_hand():
            seen = set()
            ids = []
            for name, t in list(model.named_parameters()) + list(model.named_buffers()):
                storage = t.untyped_storage()
                key = storage.data_ptr()
                if key in seen:
                    continue
                seen.add(key)
                ids.append(self.monitor.register((key, storage.nbytes()), name))
            return ids

        watch_ms, loop_ms = [], []
        for _ in range(7):
            started = time.perf_counter()
            ids = by_hand()
            loop_ms.append((time.perf_counter() - started) * 1000)
            for i in ids:
                self.monitor.unregister(i)
            started = time.perf_counter()
            w = self.monitor.watch(model)
            watch_ms.append((time.perf_counter() - started) * 1000)
            w.close()
        took_ms, by_hand_ms = sorted(watch_ms)[3], sorted(loop_ms)[3]
        w = self.monitor.watch(model)
        summary = self.monitor.check_now()
        ok = len(w) == len(storages) and summary.resident == len(storages) and summary.healthy
        result(
            "watch() of a GPT-2-shaped module (%d tensors, %d storages)" % (len(tensors), len(storages)),
            "%d registrations, all RESIDENT" % len(storages),
            "%d registrations, %d resident; watch() %.2f ms, a register loop %.2f ms (medians of 7)" % (len(w), summary.resident, took_ms, by_hand_ms),
            ok,
        )
        self.assertEqual(len(w), len(storages))
        self.assertIn("transformer.h.0.attn.c_attn.weight", w.labels)
        self.assertIn("transformer.h.11.attn.bias", w.labels)
        self.assertNotIn("lm_head.weight", w.labels)
        self.assertEqual(summary.resident, len(storages))
        rid = dict(w)["transformer.h.5.mlp.c_fc.weight"]
        self.assertEqual(self.monitor.verdict(rid), Verdict.RESIDENT)
        w.close()
        self.assertEqual(self.monitor.health().registrations, 0)

    def test_meta_and_cpu_modules_are_refused_naming_them(self):
        torch = self.torch
        meta = gpt2_shaped(torch, "meta")
        with self.assertRaises(ValueError) as raised:
            self.monitor.watch(meta)
        named = "transformer.wte.weight (meta" in str(raised.exception)
        cpu = torch.nn.Linear(4, 4)
        with self.assertRaises(ValueError) as raised_cpu:
            self.monitor.watch(cpu, prefix="head")
        named_cpu = "head.weight (on cpu" in str(raised_cpu.exception)
        result("watch() of meta / CPU modules", "refused, tensors named, nothing registered", "named=%s/%s, registrations=%d" % (named, named_cpu, self.monitor.health().registrations), named and named_cpu and self.monitor.health().registrations == 0)
        self.assertTrue(named and named_cpu)
        self.assertEqual(self.monitor.health().registrations, 0)


MIB = 1 << 20


IN_CHILD = os.environ.get("VRAM_MONITOR_TEST_CHILD") == "1"


def in_child(test, **extra_env):
    """Runs the test in a child process of its own: what it leaves in PyTorch's caching
    allocator (cuBLAS workspaces, cached segments) must not keep other tests' freed tensors
    mapped. `extra_env` is set for the child (the allocator reads its configuration once)."""

    def run(self):
        if IN_CHILD:
            return test(self)
        name = "%s.%s" % (type(self).__name__, test.__name__)
        env = dict(os.environ, VRAM_MONITOR_TEST_CHILD="1", **extra_env)
        child = subprocess.run([sys.executable, os.path.abspath(__file__), name], env=env, capture_output=True, text=True, timeout=400)
        sys.stdout.write(child.stdout)
        sys.stderr.write(child.stderr)
        self.assertEqual(child.returncode, 0, "%s failed in its child process" % name)
        self.assertIn("RESULT | ", child.stdout)

    run.__name__ = test.__name__
    return run


class TestIntegrity(GpuTest):
    """Content integrity on real memory: the lent primary context (torch's), the shipped PTX
    through the driver's JIT, MODIFIED with the right label and offset. Each test in a child."""

    def setUp(self):
        super().setUp()
        if IN_CHILD:
            self.device = self.monitor.enable_integrity()

    def seal_module(self, module):
        """Every parameter and buffer registered and sealed in one watch(seal=True) (tied
        weights once): {label: (tensor, id)}."""
        self.watched = self.monitor.watch(module, seal=True)
        named = dict(list(module.named_parameters()) + list(module.named_buffers()))
        return {label: (named[label], rid) for label, rid in self.watched}

    def modified(self):
        with self.lock:
            return [e for e in self.events if e.kind == EventKind.MODIFIED]

    @in_child
    def test_a_real_model_sealed_then_changes_found(self):
        torch = self.torch
        model = gpt2_shaped(torch, "cuda")
        sealed = self.seal_module(model)
        clean = self.monitor.verify_now()
        total = sum(t.numel() * t.element_size() for t, _ in sealed.values())
        ok = clean.modified == 0 and clean.bytes == total and clean.registrations == len(sealed)
        result("GPT-2-shaped module (fp16) sealed, verify_now", "0 modified, every byte", "%d registrations, %d bytes, %d modified, %d us" % (clean.registrations, clean.bytes, clean.modified, clean.duration_us), ok)
        self.assertTrue(ok)

        # (a) one byte of one parameter changed by a torch in-place op.
        label = "transformer.h.5.mlp.c_fc.weight"
        t, rid = sealed[label]
        offset = 3 * MIB + 12345
        with torch.no_grad():
            t.view(-1).view(torch.uint8)[offset].add_(1)
        torch.cuda.synchronize()
        self.monitor.verify_now()
        info, seal = self.monitor.registration(rid), self.monitor.seal_info(rid)
        events = [e for e in self.modified() if e.registration_id == rid]
        ok = info.verdict == Verdict.MODIFIED and seal.modified_chunks == 1 and seal.first_modified_offset == 3 * MIB and events and events[0].label == label
        result("(a) one byte changed in place", "MODIFIED '%s' at +%d" % (label, 3 * MIB), "%s, %d chunks, +%d, event %s" % (info.verdict.name, seal.modified_chunks, seal.first_modified_offset, events[0].label if events else None), ok)
        self.assertTrue(ok)
        others = [lbl for lbl, (_, i) in sealed.items() if i != rid and self.monitor.registration(i).verdict != Verdict.RESIDENT]
        result("(a) nothing else modified", "0 others", "%d others" % len(others), not others)
        self.assertEqual(others, [])
        self.monitor.reseal(rid)
        self.assertEqual(self.monitor.registration(rid).verdict, Verdict.RESIDENT)

        # No false MODIFIED in 1000 verifications while the engine computes.
        stop = threading.Event()

        def engine():
            x = torch.randn(1, 4096, device="cuda", dtype=torch.float16)
            w = torch.randn(4096, 4096, device="cuda", dtype=torch.float16)
            while not stop.is_set():
                (x @ w).relu_()
                torch.cuda.synchronize()

        runner = threading.Thread(target=engine)
        runner.start()
        try:
            false = sum(self.monitor.verify_now().modified for _ in range(1000))
        finally:
            stop.set()
            runner.join()
        result("1000 verifications of unchanged weights, engine running", "0 MODIFIED", "%d MODIFIED" % false, false == 0)
        self.assertEqual(false, 0)

    @in_child
    def test_the_blind_spot_a_block_reused_by_the_caching_allocator(self):
        torch = self.torch
        weights = torch.randn(8 * MIB // 2, device="cuda", dtype=torch.float16)
        rid = self.monitor.register(weights, "layers.0.weight", seal=True)
        ptr = weights.data_ptr()
        del weights  # no empty_cache: the block stays with PyTorch's allocator
        other = torch.empty(8 * MIB // 2, device="cuda", dtype=torch.float16)
        other.fill_(1.0)
        torch.cuda.synchronize()
        same = other.data_ptr() == ptr
        self.monitor.check_now()
        self.monitor.verify_now()
        verdict = self.monitor.registration(rid).verdict
        ok = (verdict == Verdict.MODIFIED) if same else True
        result("(b) del without empty_cache, same-size tensor filled", "MODIFIED (block reused)", "%s (same address: %s)" % (verdict.name, same), ok)
        self.assertTrue(same, "the allocator did not reuse the block; the case was not produced")
        self.assertEqual(verdict, Verdict.MODIFIED)

    def test_expandable_segments_unmapped_remapped_and_reloaded_with_one_tensor_wrong(self):
        """(c) Sleep and wake on expandable segments: the weights' pages released
        (del + empty_cache unmaps them), the same tensors allocated again at the same
        addresses and reloaded from the host copy with one byte of one tensor wrong. rebind
        takes each registration back with its seal; verify_now finds the wrong one."""
        in_child(type(self)._expandable_case, PYTORCH_CUDA_ALLOC_CONF="expandable_segments:True")(self)

    def _expandable_case(self):
        torch = self.torch
        assert "expandable_segments:True" in os.environ.get("PYTORCH_CUDA_ALLOC_CONF", "")
        names = ["layers.%d.mlp.weight" % i for i in range(4)]
        weights = [torch.randn(32 * MIB, device="cuda", dtype=torch.float16) for _ in names]  # 64 MiB each
        checkpoint = [w.cpu() for w in weights]
        ptrs = [w.data_ptr() for w in weights]
        ids = [self.monitor.register(w, n, seal=True) for w, n in zip(weights, names)]
        # Sleep: the pages go back to the driver.
        del weights
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
        self.monitor.check_now()
        asleep = [self.monitor.registration(i).verdict for i in ids]
        # Wake: the same tensors again, reloaded; tensor 2 gets one byte wrong at +5 MiB + 3.
        weights = [torch.empty(32 * MIB, device="cuda", dtype=torch.float16) for _ in names]
        same = [w.data_ptr() for w in weights] == ptrs
        for w, c in zip(weights, checkpoint):
            w.copy_(c)
        wrong = weights[2].view(torch.uint8)
        wrong[5 * MIB + 3] = wrong[5 * MIB + 3] ^ 0x40
        torch.cuda.synchronize()
        self.monitor.check_now()
        woke = [self.monitor.registration(i).verdict for i in ids]
        new_ids = [self.monitor.rebind(i) for i in ids]
        summary = self.monitor.verify_now()
        verdicts = [self.monitor.registration(i).verdict for i in new_ids]
        seal = self.monitor.seal_info(new_ids[2])
        events = [e for e in self.modified() if e.registration_id == new_ids[2]]
        ok = (
            same
            and verdicts == [Verdict.RESIDENT, Verdict.RESIDENT, Verdict.MODIFIED, Verdict.RESIDENT]
            and seal.modified_chunks == 1
            and seal.first_modified_offset == 5 * MIB
            and summary.modified == 1
        )
        result(
            "(c) expandable segments: unmapped, remapped, reloaded with one tensor wrong",
            "MODIFIED '%s' at +%d, the rest RESIDENT" % (names[2], 5 * MIB),
            "asleep %s, woke %s; after rebind + verify_now %s, +%d, same addresses %s, event %s"
            % ([v.name for v in asleep], [v.name for v in woke], [v.name for v in verdicts], seal.first_modified_offset, same, bool(events) or "(pending)"),
            ok,
        )
        self.assertTrue(same, "the allocator did not map the tensors at the same addresses; the case was not produced")
        self.assertTrue(ok)

    @in_child
    def test_a_kernel_writing_past_its_buffer_into_sealed_weights(self):
        torch = self.torch
        block = torch.randn(4 * MIB // 2, device="cuda", dtype=torch.float16).view(torch.uint8)
        scratch, weights = block[: MIB], block[MIB:]
        rid = self.monitor.register(weights, "neighbour.weight", seal=True)
        # A kernel told its buffer is 64 bytes longer than it is: the last 64 land in the weights.
        block[MIB - 64 : MIB + 64].fill_(0xAB)
        torch.cuda.synchronize()
        self.monitor.verify_now()
        info, seal = self.monitor.registration(rid), self.monitor.seal_info(rid)
        ok = info.verdict == Verdict.MODIFIED and seal.first_modified_offset == 0 and seal.modified_chunks == 1
        result("(d) a write past a neighbouring buffer", "MODIFIED at +0", "%s, %d chunks, +%d" % (info.verdict.name, seal.modified_chunks, seal.first_modified_offset), ok)
        self.assertTrue(ok)
        del scratch

    @in_child
    def test_verify_now_throughput(self):
        torch = self.torch
        for gib in (1, 16):
            t = torch.empty(gib << 30, device="cuda", dtype=torch.uint8)
            t.fill_(3)
            rid = self.monitor.register(t, "%d GiB" % gib, seal=True)
            best = min((self.monitor.verify_now() for _ in range(5)), key=lambda s: s.duration_us)
            rate = best.bytes / max(best.duration_us, 1) / 1e6
            result("verify_now of %d GiB (best of 5, wall time incl. the call)" % gib, "measured", "%d us = %.2f TB/s" % (best.duration_us, rate), best.modified == 0)
            self.monitor.unregister(rid)
            del t
            torch.cuda.empty_cache()


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


    def test_watch_cupy_arrays(self):
        arrays = {"k": self.cupy.zeros((256, 1024), dtype=self.cupy.float16), "v": self.cupy.zeros((256, 1024), dtype=self.cupy.float16)}
        with self.monitor.watch(arrays, prefix="kv.") as w:
            summary = self.monitor.check_now()
            ok = w.labels == ["kv.k", "kv.v"] and summary.resident == 2
            result("watch() of CuPy arrays", "2 RESIDENT", "%d resident" % summary.resident, ok)
            self.assertTrue(ok)
        self.assertEqual(self.monitor.health().registrations, 0)


if __name__ == "__main__":
    if sys.argv[1:] == ["exit-child"]:
        exit_child()
    else:
        unittest.main(verbosity=2)
