#!/usr/bin/env bash
# GPU suite: what content integrity costs (integrity_bench.py beside this file): verify_now
# against a read-and-reduce floor at 1 GiB, 16 GiB and the largest size that fits; a decode-like
# PyTorch loop alone and with 16 GiB sealed at the default budget (alternating rounds); the time
# until every sealed byte was verified in the background; host memory per sealed GiB.
#   bash 45-integrity-bench.sh CARRY MARKDOWN_FILE
# Uses the carried package (CARRY/python) and release library (CARRY/lib), the machine's torch
# and CuPy. About 4 minutes.
set -u
carry=${1:?usage: 45-integrity-bench.sh CARRY MARKDOWN_FILE}
md=${2:?usage: 45-integrity-bench.sh CARRY MARKDOWN_FILE}
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
title='## Integrity benchmark'
if [ ! -f "$carry/python/vram_monitor/__init__.py" ] || [ ! -f "$carry/lib/libvram_monitor.so" ]; then
  echo "FAIL: $carry/python or $carry/lib/libvram_monitor.so is missing (scripts/gpu-test.sh prepare)"
  printf '%s\n\n**Not run**: the carry has no python/ or lib/libvram_monitor.so.\n' "$title" >"$md"
  exit 1
fi
py=$(command -v python3 || command -v python)
PYTHONUNBUFFERED=1 PYTHONPATH="$carry/python" VRAM_MONITOR_LIBRARY="$carry/lib/libvram_monitor.so" \
  VRAM_MONITOR_LOG=warn timeout 380 "$py" "$here/integrity_bench.py" "$md"
rc=$?
echo "exit status: $rc"
if [ ! -s "$md" ]; then
  printf '%s\n\n**FAILED** (exit status %s): see gpu-log.txt.\n' "$title" "$rc" >"$md"
fi
exit "$rc"
