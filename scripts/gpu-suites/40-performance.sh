#!/usr/bin/env bash
# GPU suite: performance. Runs the Rust benchmark (examples/perf_gpu/, carried as
# CARRY/bin/perf_gpu) and the hand-written C++ alternative (benches/gpu/naive_monitor.cu,
# compiled here with nvcc), and writes the comparison table (docs/performance.md's content).
#   bash suite.sh CARRY MARKDOWN_FILE
set -u
carry=$1
md=$2
work=$(mktemp -d)
status=0

echo "== perf_gpu (vram-monitor)"
if [ -x "$carry/bin/perf_gpu" ]; then
  timeout 300 "$carry/bin/perf_gpu" | tee "$work/vram.txt"
  rc=${PIPESTATUS[0]}
  echo "exit status: $rc"
  [ "$rc" = 0 ] || status=1
else
  echo "missing $carry/bin/perf_gpu"
  status=1
fi

echo "== naive_monitor (unordered_map + mutex + cudaPointerGetAttributes under the lock)"
if [ -f benches/gpu/naive_monitor.cu ] && command -v nvcc >/dev/null 2>&1; then
  if nvcc -O2 -std=c++17 -arch=sm_90 benches/gpu/naive_monitor.cu -lcuda -o "$work/naive_monitor"; then
    timeout 200 "$work/naive_monitor" | tee "$work/naive.txt"
    rc=${PIPESTATUS[0]}
    echo "exit status: $rc"
    [ "$rc" = 0 ] || status=1
  else
    echo "nvcc failed"
    status=1
  fi
else
  echo "benches/gpu/naive_monitor.cu or nvcc missing"
  status=1
fi

gpu=$(nvidia-smi --query-gpu=name,driver_version --format=csv,noheader 2>/dev/null | head -n 1)
python3 - "$work/vram.txt" "$work/naive.txt" "$gpu" >"$md" <<'PY'
import sys, datetime
def read(path):
    out = {}
    try:
        for line in open(path):
            parts = line.split()
            if len(parts) == 4 and parts[0] == "RESULT":
                out[parts[2]] = float(parts[3])
    except OSError:
        pass
    return out
v, n, gpu = read(sys.argv[1]), read(sys.argv[2]), sys.argv[3]
def f(d, k, digits=1):
    x = d.get(k)
    if x is None:
        return "—"
    return f"{x:,.{digits}f}"
def ratio(a, b):
    try:
        return f"{a / b:.2f}x"
    except (TypeError, ZeroDivisionError):
        return "—"
print("## Performance (GPU benchmark)\n")
print(f"- Date (UTC): {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M}; GPU, driver: {gpu}")
print("- vram-monitor: `examples/perf_gpu/`; the alternative: `benches/gpu/naive_monitor.cu` "
      "(`std::unordered_map` behind one `std::mutex`, `cudaPointerGetAttributes` per entry while holding it)")
print("- Times in microseconds. Floor = the same 8 attributes with `cuPointerGetAttributes` in a tight loop, same process, same allocations.\n")
print("| figure | target | vram-monitor | naive alternative |")
print("|---|---|---|---|")
for N in (10000, 100000):
    print(f"| full check, {N:,} registrations in {N:,} allocations (flat out) | <= 1.10x floor | {f(v, f'sweep_us_{N}')} us = {f(v, f'sweep_ratio_{N}', 2)}x floor ({f(v, f'floor_us_{N}')} us); median of 21 paired rounds {f(v, f'sweep_ratio_paired_{N}', 2)}x | {f(n, f'sweep_us_{N}')} us = {ratio(n.get(f'sweep_us_{N}'), (n.get(f'floor_us_per_query_{N}') or 0) * N)} floor |")
    print(f"| same, default pacing | — | {f(v, f'sweep_paced_us_{N}')} us | — |")
    print(f"| same check against the floor of a thread with no current context, as the monitor's thread is | <= 1.10x floor | {f(v, f'sweep_ratio_no_context_{N}', 2)}x ({f(v, f'floor_no_context_us_{N}')} us); median of 21 paired rounds {f(v, f'sweep_ratio_no_context_paired_{N}', 2)}x | — |")
    print(f"| floor in shuffled order (why a check asks in address order) | — | {f(v, f'floor_shuffled_us_{N}')} us | — |")
print(f"| full check, 1,000,000 registrations in 10,000 allocations | <= 2x floor(10k) | {f(v, 'sharing_sweep_us_1000000')} us = {f(v, 'sharing_ratio', 2)}x floor ({f(v, 'sharing_floor_us_10000')} us), paired median {f(v, 'sharing_ratio_paired', 2)}x (against a thread with no context: {f(v, 'sharing_ratio_no_context_paired', 2)}x); freeing one arena gave {f(v, 'sharing_violations_after_freeing_one_arena', 0)} violations (100 expected) | {f(n, 'sharing_sweep_us_1000000')} us = {ratio(n.get('sharing_sweep_us_1000000'), n.get('sharing_floor_us_10000'))} floor |")
print(f"| engine launch+sync alone, p50 / p99.9 | — | {f(v, 'engine_p50_alone')} / {f(v, 'engine_p999_alone')} | {f(n, 'engine_p50_alone')} / {f(n, 'engine_p999_alone')} |")
for name in ("default", "slice64_pause50", "slice1024_pause100", "flat_out"):
    p999 = v.get(f"engine_p999_with_{name}")
    print(f"| engine p50 / p99.9 while 100k are checked every 1 ms, pacing {name} | p99.9 <= 1.10x alone | {f(v, f'engine_p50_with_{name}')} / {f(v, f'engine_p999_with_{name}')} ({ratio(p999, v.get('engine_p999_alone'))}; {f(v, f'engine_checks_during_{name}', 0)} checks of {f(v, f'engine_check_us_{name}', 0)} us) | " + ("— |" if name != "default" else f"{f(n, 'engine_p50_with')} / {f(n, 'engine_p999_with')} ({ratio(n.get('engine_p999_with'), n.get('engine_p999_alone'))}) |"))
for name in ("default", "flat_out"):
    print(f"| register p50 / p99.9 / max, 8 threads, checks running (pacing {name}) | p50 <= 1, p99.9 <= 20 | {f(v, f'register_{name}_p50', 2)} / {f(v, f'register_{name}_p999', 2)} / {f(v, f'register_{name}_max')} ({f(v, f'register_{name}_calls', 0)} calls) | " + ("— |" if name != "default" else f"{f(n, 'register_p50', 2)} / {f(n, 'register_p999', 2)} / {f(n, 'register_max')} ({f(n, 'register_calls', 0)} calls, {f(n, 'register_stuck', 0)} stuck) |"))
    print(f"| unregister p50 / p99.9 / max (pacing {name}) | — | {f(v, f'unregister_{name}_p50', 2)} / {f(v, f'unregister_{name}_p999', 2)} / {f(v, f'unregister_{name}_max')} | " + ("— |" if name != "default" else f"{f(n, 'unregister_p50', 2)} / {f(n, 'unregister_p999', 2)} / {f(n, 'unregister_max')} |"))
print(f"| bare registration-time query, 8 threads, checks running: p50 / p99.9 (the driver's floor for the line above) | — | {f(v, 'query_only_8_threads_p50', 2)} / {f(v, 'query_only_8_threads_p999', 2)} | — |")
print(f"| registration-time inspection (query + pieces), 8 threads, checks running: p50 / p99.9 | — | {f(v, 'inspect_only_8_threads_p50', 2)} / {f(v, 'inspect_only_8_threads_p999', 2)} | — |")
print(f"| registry insert / remove alone (no query), 8 threads: p50 / p99.9 | — | {f(v, 'registry_insert_8_threads_p50', 2)} / {f(v, 'registry_insert_8_threads_p999', 2)} and {f(v, 'registry_remove_8_threads_p50', 2)} / {f(v, 'registry_remove_8_threads_p999', 2)} | — |")
print(f"| register, one registering thread, checks running: p50 / p99.9 | — | {f(v, 'register_1_thread_p50', 2)} / {f(v, 'register_1_thread_p999', 2)} | — |")
print(f"| host memory per registration, empty label: 100k in distinct allocations | <= 128 B | {f(v, 'memory_bytes_per_registration_distinct_100000', 0)} B | {f(n, 'memory_bytes_per_registration', 0)} B |")
print(f"| same, 1M in 10k allocations | <= 128 B | {f(v, 'memory_bytes_per_registration_shared_1000000', 0)} B | — |")
print(f"| register, mean (single thread, 100k) | — | {f(v, 'register_mean_us_100000', 2)} us | — |")
print("\n### Registration under load, taken apart\n")
print("The bare registration-time query (`cuPointerGetAttributes`, no registry) and a whole register + unregister, "
      "on 1 to 16 threads with no check running, and on 8 threads while 100k registrations are checked every 1 ms. "
      "p50 / p99.9 in microseconds.\n")
print("| threads | bare query, no checks | register, no checks |")
print("|---|---|---|")
for t in (1, 2, 4, 8, 16):
    print(f"| {t} | {f(v, f'no_checks_query_{t}_threads_p50', 2)} / {f(v, f'no_checks_query_{t}_threads_p999', 1)} | {f(v, f'no_checks_register_{t}_threads_p50', 2)} / {f(v, f'no_checks_register_{t}_threads_p999', 1)} |")
print("\n| 8 threads, bare query | p50 / p99.9 |")
print("|---|---|")
for g in (250, 500, 1000):
    print(f"| after {g} ns of the caller's own work, no checks | {f(v, f'no_checks_query_after_{g}ns_of_work_8_threads_p50', 2)} / {f(v, f'no_checks_query_after_{g}ns_of_work_8_threads_p999', 1)} |")
print(f"| let into the driver one at a time by our own spin lock | {f(v, 'no_checks_query_behind_spin_lock_8_threads_p50', 2)} / {f(v, 'no_checks_query_behind_spin_lock_8_threads_p999', 1)} |")
print(f"| let into the driver one at a time by a std mutex | {f(v, 'no_checks_query_behind_mutex_8_threads_p50', 2)} / {f(v, 'no_checks_query_behind_mutex_8_threads_p999', 1)} |")
print("\n| checks running (pacing) | check of 100k | bare query, 8 threads | register, 8 threads |")
print("|---|---|---|---|")
for name in ("default", "flat_out", "slice64_pause50", "slice16_pause20"):
    print(f"| {name} | {f(v, f'checks_{name}_check_us', 0)} us | {f(v, f'checks_{name}_query_8_threads_p50', 2)} / {f(v, f'checks_{name}_query_8_threads_p999', 1)} | {f(v, f'checks_{name}_register_8_threads_p50', 2)} / {f(v, f'checks_{name}_register_8_threads_p999', 1)} |")
print(f"\nOne clock read (two per timed step): {f(v, 'clock_read_ns', 0)} ns.")
print("\n<details><summary>raw RESULT lines</summary>\n\n```text")
for name, d in (("vram", v), ("naive", n)):
    for k in sorted(d):
        print(f"{name} {k} {d[k]}")
print("```\n</details>")
PY
rm -rf "$work"
exit $status
