"""The package's lifecycle against the fake driver: exit with live monitors and callbacks,
close racing other threads, a monitor collected on its own thread. Each run is a fresh
process (lifecycle_child.py), a few at a time; every run must exit 0, print "ok" and never
"FATAL" (the abort a callback entering a finalising interpreter caused)."""

import os
import subprocess
import sys
import unittest
from concurrent.futures import ThreadPoolExecutor

HERE = os.path.dirname(os.path.abspath(__file__))
CHILD = os.path.join(HERE, "lifecycle_child.py")
RUNS = int(os.environ.get("VRAM_MONITOR_TEST_LIFECYCLE_RUNS", "50"))
AT_ONCE = 4


def run_child(scenario):
    try:
        p = subprocess.run([sys.executable, CHILD, scenario], capture_output=True, text=True, timeout=120)
    except subprocess.TimeoutExpired:
        return "hang (120 s)"
    out = p.stdout + p.stderr
    if p.returncode != 0 or "FATAL" in out or not p.stdout.rstrip().endswith("ok"):
        return "exit %d: %s" % (p.returncode, out[-600:])
    return None


class Lifecycle(unittest.TestCase):
    def repeat(self, scenario, runs=RUNS):
        with ThreadPoolExecutor(AT_ONCE) as pool:
            failures = [f for f in pool.map(run_child, [scenario] * runs) if f]
        self.assertEqual(failures, [], "%s: %d of %d runs failed; first: %s" % (scenario, len(failures), runs, failures[:1]))

    def test_exit_with_a_live_monitor_and_a_log_handler(self):
        self.repeat("exit-log")

    def test_exit_while_event_callbacks_fire(self):
        self.repeat("exit-event")

    def test_exit_with_log_handler_events_and_a_daemon_thread_calling_health(self):
        self.repeat("exit-all")

    def test_close_racing_four_calling_threads(self):
        self.repeat("close-race")

    def test_last_reference_dropped_in_its_own_callback_stops_the_monitor(self):
        self.repeat("gc-callback")

    def test_collected_by_the_gc_on_the_monitor_thread_stops_the_monitor(self):
        self.repeat("gc-collect")


if __name__ == "__main__":
    unittest.main()
