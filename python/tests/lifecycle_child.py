"""One process of a lifecycle scenario (run by test_lifecycle.py, one subprocess per run).

    python lifecycle_child.py SCENARIO

Scenarios, against the fake driver (LD_LIBRARY_PATH set by the caller):
  exit-log       a live monitor checking every 1 ms with a Python log handler; exits while
                 records flow.
  exit-event     a live monitor whose registration flips between device and host memory
                 every millisecond, so event callbacks fire while the interpreter finalises.
  exit-all       both, plus a daemon thread calling health() in a loop.
  close-race     4 threads call register / health / report / check_now while the main thread
                 closes; each must end with results or MonitorClosed, and all must finish.
  gc-callback    the last reference to a monitor drops inside its own callback.
  gc-collect     a monitor in a reference cycle is collected by gc.collect() inside its own
                 callback (on the monitor thread).
A scenario prints "ok" as its last line when its checks held; the caller also checks the exit
status and that nothing printed "FATAL".
"""

import ctypes
import gc
import logging
import os
import sys
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
if os.environ.get("VRAM_MONITOR_TEST_INSTALLED") != "1":
    sys.path.insert(0, os.path.join(os.path.dirname(HERE), ""))

import vram_monitor  # noqa: E402

MIB = 1 << 20
DEVICE, HOST = 1, 3


def fake():
    lib = ctypes.CDLL("libcuda.so.1")
    lib.fake_cuda_alloc.restype = ctypes.c_ulonglong
    lib.fake_cuda_alloc.argtypes = [ctypes.c_int, ctypes.c_size_t, ctypes.c_int]
    lib.fake_cuda_set_kind.restype = ctypes.c_int
    lib.fake_cuda_set_kind.argtypes = [ctypes.c_ulonglong, ctypes.c_int]
    lib.fake_cuda_pointer_queries.restype = ctypes.c_ulonglong
    lib.fake_cuda_pointer_queries.argtypes = []
    return lib


def flipper(lib, base):
    """A daemon thread flipping the allocation's kind, so every check sees a change."""

    def run():
        kind = HOST
        while True:
            lib.fake_cuda_set_kind(base, kind)
            kind = DEVICE if kind == HOST else HOST
            time.sleep(0.001)

    threading.Thread(target=run, daemon=True).start()


def live_monitor(lib, with_events):
    m = vram_monitor.Monitor(interval_ms=1)
    base = lib.fake_cuda_alloc(DEVICE, 4 * MIB, 0)
    m.register((base, MIB), "weights")
    if with_events:
        seen = []
        m.set_callback(lambda e: seen.append(e.kind) if len(seen) < 1000 else None)
        flipper(lib, base)
        deadline = time.time() + 10
        while not seen and time.time() < deadline:
            time.sleep(0.001)
        assert seen, "no event arrived"
    return m


def exit_scenario(log, events, daemon):
    if log:
        logging.basicConfig(level=5, stream=open(os.devnull, "w"))
        vram_monitor.log_to_python_logging()
    lib = fake()
    m = live_monitor(lib, events)
    if daemon:
        def poll():
            while True:
                try:
                    m.health()
                except vram_monitor.MonitorClosed:
                    time.sleep(0.001)

        threading.Thread(target=poll, daemon=True).start()
    time.sleep(0.02)
    print("ok")
    sys.stdout.flush()
    # Falls off the end with the monitor live: the package's exit handler must stop it.
    globals()["kept"] = m


def close_race():
    lib = fake()
    m = vram_monitor.Monitor(interval_ms=1)
    base = lib.fake_cuda_alloc(DEVICE, 64 * MIB, 0)
    m.register((base, MIB), "w")
    outcomes = {}
    start = threading.Barrier(5)

    def worker(name, call):
        start.wait()
        count = 0
        while True:
            try:
                call()
                count += 1
            except vram_monitor.MonitorClosed:
                outcomes[name] = count
                return
            except vram_monitor.VramMonitorError as e:
                outcomes[name] = "unexpected %s" % e
                return

    offsets = iter(range(1, 1 << 30))
    calls = {
        "register": lambda: m.register((base + (next(offsets) % 1024) * 4096, 4096), "r"),
        "health": m.health,
        "report": lambda: m.report("json"),
        "check_now": m.check_now,
    }
    threads = [threading.Thread(target=worker, args=(n, c), daemon=True) for n, c in calls.items()]
    for t in threads:
        t.start()
    start.wait()
    time.sleep(0.005)
    m.close()
    for t in threads:
        t.join(30)
        assert not t.is_alive(), "a caller hangs after close"
    bad = {n: o for n, o in outcomes.items() if not isinstance(o, int)}
    assert len(outcomes) == 4 and not bad, outcomes
    assert m.closed
    print("ok")


def stopped(lib, what):
    """The C monitor has stopped: the driver's query counter does not move over 300 ms of a
    monitor that checks every 5 ms."""
    first = lib.fake_cuda_pointer_queries()
    time.sleep(0.3)
    second = lib.fake_cuda_pointer_queries()
    assert first == second, "%s: the C monitor still queries the driver (%d -> %d)" % (what, first, second)


def wait_for(event, what):
    assert event.wait(10), what


def gc_callback():
    lib = fake()
    holder = [vram_monitor.Monitor(interval_ms=5)]
    base = lib.fake_cuda_alloc(DEVICE, 4 * MIB, 0)
    holder[0].register((base, MIB), "w")
    dropped = threading.Event()
    calls = []

    def on_event(event):
        calls.append(event.kind)
        if holder:
            holder.clear()  # the last reference: Monitor.__del__ runs here, on the monitor thread
            dropped.set()

    holder[0].set_callback(on_event)
    flipper(lib, base)
    wait_for(dropped, "no callback ran")
    time.sleep(0.1)  # the closer thread frees once the callback returned
    stopped(lib, "last reference in the callback")
    n = len(calls)
    time.sleep(0.1)
    assert len(calls) == n, "callbacks still arrive"
    print("ok")


def gc_collect():
    lib = fake()
    m = vram_monitor.Monitor(interval_ms=5)
    base = lib.fake_cuda_alloc(DEVICE, 4 * MIB, 0)
    m.register((base, MIB), "w")
    m.cycle = m  # only the cycle holds it once `m` is deleted
    collected = threading.Event()

    def on_event(event):
        gc.collect()  # collects the monitor, on its own thread
        collected.set()

    m.set_callback(on_event)
    gc.disable()  # so that only the callback's collection can find it
    del m
    flipper(lib, base)
    wait_for(collected, "no callback ran")
    time.sleep(0.1)
    stopped(lib, "collected on the monitor thread")
    assert not vram_monitor.lifecycle.live_monitors(), "the monitor is still tracked as live"
    print("ok")


SCENARIOS = {
    "exit-log": lambda: exit_scenario(True, False, False),
    "exit-event": lambda: exit_scenario(False, True, False),
    "exit-all": lambda: exit_scenario(True, True, True),
    "close-race": close_race,
    "gc-callback": gc_callback,
    "gc-collect": gc_collect,
}

if __name__ == "__main__":
    SCENARIOS[sys.argv[1]]()
