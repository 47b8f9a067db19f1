#!/usr/bin/env bash
# GPU suite: the Rust API with cudarc buffers (tests/cudarc_gpu.rs, built into the carry as
# CARRY/tests/cudarc_gpu by `scripts/gpu-test.sh prepare`).
#   bash 15-rust-cudarc.sh CARRY MARKDOWN_FILE
# VRAM_MONITOR_GPU_REQUIRED=1: finding no GPU is a failure, not a skip.
set -u
carry=${1:?usage: 15-rust-cudarc.sh CARRY MARKDOWN_FILE}
md=${2:?usage: 15-rust-cudarc.sh CARRY MARKDOWN_FILE}
program="$carry/tests/cudarc_gpu"
section=$(mktemp)
log=$(mktemp)
trap 'rm -f "$section" "$log"' EXIT

if [ ! -f "$program" ]; then
  echo "FAIL: $program is missing (built with the default feature \"cudarc\"?)"
  printf '## Rust API with cudarc buffers\n\n**FAIL**: `tests/cudarc_gpu` is not in the carry.\n' >"$md"
  exit 1
fi
chmod u+x "$program" 2>/dev/null
echo "== $program"
VRAM_MONITOR_GPU_REQUIRED=1 VRAM_MONITOR_CUDARC_RESULTS="$section" RUST_BACKTRACE=1 timeout 240 "$program" 2>&1 | tee "$log"
rc=${PIPESTATUS[0]}
echo "exit status: $rc"
if [ -s "$section" ]; then
  cat "$section" >"$md"
else
  printf '## Rust API with cudarc buffers (tests/cudarc_gpu.rs)\n\n**The program wrote no table (exit status %s).**\n' "$rc" >"$md"
fi
{
  printf '\n- date: %s; exit status %s\n\n```text\n' "$(date -u '+%Y-%m-%d %H:%M:%S UTC')" "$rc"
  cat "$log"
  printf '```\n'
} >>"$md"
exit "$rc"
