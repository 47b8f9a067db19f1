"""Content integrity on two GPUs from one process (the multi-GPU run, scripts/gpu-multi.sh).

Each GPU's primary context is lent from a thread of its own (torch makes it current there);
weights are sealed on both; one byte changed on GPU 1 must be found as MODIFIED naming GPU 1
and that registration only, nothing on GPU 0. Prints one line per check ("PASS"/"FAIL") and
exits non-zero if any failed; needs two or more GPUs (exit 2 otherwise).

Run with the package importable and its library found (PYTHONPATH=<carry>/python
VRAM_MONITOR_LIBRARY=<carry>/lib/libvram_monitor.so).
"""

import sys
import threading

import torch

from vram_monitor import EventKind, Monitor, Verdict

MIB = 1 << 20
failures = []


def check(ok, what):
    print("%s | %s" % ("PASS" if ok else "FAIL", what), flush=True)
    if not ok:
        failures.append(what)


def main():
    if torch.cuda.device_count() < 2:
        print("gpu_integrity_multi: %d GPU(s) visible; needs two" % torch.cuda.device_count())
        return 2
    monitor = Monitor(interval_ms=3_600_000)
    events, lock = [], threading.Lock()

    def on_event(e):
        with lock:
            events.append(e)

    monitor.set_callback(on_event)
    weights = {}
    ids = {}
    errors = []

    def lend(device):
        # The engine's thread for this GPU: its primary context current here, lent to the
        # monitor, the weights made and sealed from here.
        try:
            torch.cuda.set_device(device)
            monitor.enable_integrity(device)
            ws = [torch.randn(64 * MIB, device="cuda:%d" % device, dtype=torch.float16) for _ in range(4)]  # 128 MiB each
            torch.cuda.synchronize(device)
            weights[device] = ws
            ids[device] = [monitor.register(w, "gpu%d.layers.%d.weight" % (device, i), seal=True) for i, w in enumerate(ws)]
        except Exception as e:  # reported below, in the main thread
            errors.append("GPU %d: %r" % (device, e))

    threads = [threading.Thread(target=lend, args=(d,)) for d in (0, 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    check(not errors, "integrity enabled and weights sealed on both GPUs, each from its own thread %s" % (errors or ""))
    if errors:
        return 1
    status = monitor.integrity()
    check(status.devices_enabled == 2 and status.sealed == 8, "2 devices enabled, 8 sealed (%d, %d)" % (status.devices_enabled, status.sealed))
    for d in (0, 1):
        devs = {monitor.registration(i).device for i in ids[d]}
        check(devs == {d}, "GPU %d's registrations are on device %d (%s)" % (d, d, devs))
    clean = monitor.verify_now()
    check(clean.modified == 0 and clean.registrations == 8, "verify_now on both: 8 registrations, 0 modified (%d, %d)" % (clean.registrations, clean.modified))

    # One byte changed on GPU 1, in the third tensor, at +7 MiB + 1.
    target = weights[1][2].view(torch.uint8)
    target[7 * MIB + 1] = target[7 * MIB + 1] ^ 0x10
    torch.cuda.synchronize(1)
    found = monitor.verify_now()
    changed = ids[1][2]
    info, seal = monitor.registration(changed), monitor.seal_info(changed)
    check(found.modified == 1, "one registration modified (%d)" % found.modified)
    check(info.verdict == Verdict.MODIFIED and info.device == 1, "the changed one is MODIFIED on GPU 1 (%s, GPU %d)" % (info.verdict.name, info.device))
    check(seal.modified_chunks == 1 and seal.first_modified_offset == 7 * MIB, "1 chunk at +7 MiB (%d, +%d)" % (seal.modified_chunks, seal.first_modified_offset))
    others = [i for d in (0, 1) for i in ids[d] if i != changed and monitor.registration(i).verdict != Verdict.RESIDENT]
    check(not others, "nothing else changed, nothing on GPU 0 (%s)" % others)
    monitor.check_now()  # delivers pending events
    with lock:
        modified = [e for e in events if e.kind == EventKind.MODIFIED]
    check(len(modified) == 1 and modified[0].device == 1 and modified[0].registration_id == changed,
          "one MODIFIED event, naming GPU 1 and the registration (%s)" % [(e.device, e.label) for e in modified])
    monitor.close()
    print("gpu_integrity_multi: %s" % ("FAILED: " + "; ".join(failures) if failures else "every check passed"))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
