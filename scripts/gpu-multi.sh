#!/usr/bin/env bash
# The GPU suite on a machine with two or more GPUs (the multi-GPU run of the project's plan):
#
#   scripts/gpu-test.sh prepare            on the development machine (as for one GPU)
#   bash .gpu-carry/gpu-multi.sh [PART...] on the GPU machine, repository root, $OUT set
#
# PARTS are passed to `gpu-test.sh run` (scenarios, examples, suite names or number
# prefixes; none: every part). The whole suite twice is longer than one command of the GPU
# machine may run: split it over calls, e.g. `gpu-multi.sh scenarios 20`, then
# `gpu-multi.sh 35 45` (each call writes its own $OUT).
#
# Runs the whole suite twice:
#   $OUT/gpus-0-1/  every GPU visible in the driver's order: the engine uses GPU 0, and the
#                   WRONG_DEVICE scenarios use GPU 1 (real memory on another GPU);
#   $OUT/gpus-1-0/  CUDA_VISIBLE_DEVICES=1,0: every scenario again with the engine on the
#                   second GPU (CUDA ordinal 0 is physical GPU 1), and the per-GPU series'
#                   `gpu` / `UUID` labels checked against NVML's numbering (35-operations.sh),
#                   which does not follow CUDA_VISIBLE_DEVICES;
# and, when the package has them, the Python integrity checks on both GPUs from one process
# (python/tests/gpu_integrity_multi.py). Each part writes gpu-results.md and gpu-log.txt;
# $OUT/multi-gpu.md says which parts passed. Exits non-zero if any part failed, and with 2 when
# fewer than two GPUs are visible (nothing is run then).
set -u
here=$(cd "$(dirname "$0")" && pwd)
out=${OUT:?set OUT to an output folder}
gpus=$(nvidia-smi -L 2>/dev/null | grep -c '^GPU ')
if [ "${gpus:-0}" -lt 2 ]; then
  echo "gpu-multi: $gpus GPU(s) visible; this run needs two or more (run gpu-test.sh run instead)" | tee "$out/multi-gpu.md"
  exit 2
fi
summary="$out/multi-gpu.md"
{
  echo "# Multi-GPU run"
  echo
  echo "- Date (UTC): $(date -u '+%Y-%m-%d %H:%M:%S')"
  echo "- GPUs (nvidia-smi): $(nvidia-smi --query-gpu=index,name,uuid --format=csv,noheader | paste -sd ';' -)"
  echo
} >"$summary"
failed=0
for order in "0,1" "1,0"; do
  dir="$out/gpus-${order/,/-}"
  mkdir -p "$dir"
  if [ "$order" = "0,1" ]; then
    env -u CUDA_VISIBLE_DEVICES OUT="$dir" bash "$here/gpu-test.sh" run "$@" >"$dir/console.txt" 2>&1
  else
    env CUDA_VISIBLE_DEVICES="$order" OUT="$dir" bash "$here/gpu-test.sh" run "$@" >"$dir/console.txt" 2>&1
  fi
  rc=$?
  echo "- CUDA_VISIBLE_DEVICES=$order: suite exit $rc ($(grep -m1 'Result:' "$dir/gpu-results.md" 2>/dev/null || echo 'no report'))" >>"$summary"
  [ "$rc" -eq 0 ] || failed=1
done
multi="$here/python/tests/gpu_integrity_multi.py"
if [ -f "$multi" ]; then
  dir="$out/integrity"
  mkdir -p "$dir"
  PYTHONPATH="$here/python" VRAM_MONITOR_LIBRARY="$here/lib/libvram_monitor.so" timeout 300 python3 "$multi" 2>&1 | tee "$dir/console.txt"
  rc=${PIPESTATUS[0]}
  echo "- integrity on both GPUs (gpu_integrity_multi.py): exit $rc" >>"$summary"
  [ "$rc" -eq 0 ] || failed=1
else
  echo "- integrity on both GPUs: not run (python/tests/gpu_integrity_multi.py is not in this build)" >>"$summary"
fi
# The integrity budget held per GPU: the benchmark's engine-impact figure on GPU 1 as well
# (GPU 0's is in gpus-0-1/ when suite 45 ran there).
bench="$here/suites/45-integrity-bench.sh"
if [ -f "$bench" ] && { [ $# -eq 0 ] || printf '%s\n' "$@" | grep -qx '45\|45-integrity-bench'; }; then
  dir="$out/integrity-bench-gpu1"
  mkdir -p "$dir"
  INTEGRITY_BENCH_DEVICE=1 LD_LIBRARY_PATH="$here/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}" bash "$bench" "$here" "$dir/integrity-bench.md" 2>&1 | tee "$dir/console.txt"
  rc=${PIPESTATUS[0]}
  echo "- integrity benchmark on GPU 1: exit $rc" >>"$summary"
  [ "$rc" -eq 0 ] || failed=1
fi
cat "$summary"
exit $failed
