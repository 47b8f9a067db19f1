#!/usr/bin/env bash
# GPU suite: the integrity kernel (src/adapters/cuda/fingerprint.cu, shipped as fingerprint.ptx).
#   bash 25-integrity-kernel.sh CARRY MARKDOWN_FILE
# Run from the repository root (as gpu-test.sh runs every suite). Two parts:
#  1. scripts/gen-ptx.sh --check: the committed PTX is what the source gives with this
#     machine's nvcc. No nvcc here is a visible skip of this part (the PTX is still tested
#     below); a difference is a failure (it can also mean another nvcc release: the diff and
#     the PTX header say which).
#  2. integrity_kernel_check.py (beside this file): loads the committed PTX through the
#     driver's JIT, compares every chunk value with a NumPy reference of fingerprint v1 over
#     several sizes and alignments, one changed byte changes exactly one chunk, and prints the
#     kernel's throughput against a read-and-reduce floor at 1 GiB and 16 GiB.
set -u
carry=${1:?usage: 25-integrity-kernel.sh CARRY MARKDOWN_FILE}
md=${2:?usage: 25-integrity-kernel.sh CARRY MARKDOWN_FILE}
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
check_py="$here/integrity_kernel_check.py"
title='## Integrity kernel (fingerprint v1 PTX)'
log=$(mktemp)
trap 'rm -f "$log"' EXIT

if [ ! -f scripts/gen-ptx.sh ] || [ ! -f src/adapters/cuda/fingerprint.ptx ]; then
  echo "FAIL: run from the repository root: scripts/gen-ptx.sh or src/adapters/cuda/fingerprint.ptx is missing in $PWD"
  printf '%s\n\n**Not run**: scripts/gen-ptx.sh or src/adapters/cuda/fingerprint.ptx is not in the working tree.\n' "$title" >"$md"
  exit 1
fi

echo "== scripts/gen-ptx.sh --check"
bash scripts/gen-ptx.sh --check 2>&1 | tee "$log"
rc_ptx=${PIPESTATUS[0]}
echo "exit status: $rc_ptx"
case "$rc_ptx" in
  0) ptx_status=PASS ;;
  2) ptx_status="SKIPPED ($(tail -n 1 "$log"))" ;;
  *) ptx_status="FAIL (exit status $rc_ptx)" ;;
esac
ptx_log=$(cat "$log")

py=$(command -v python3 || command -v python)
echo "== $py $check_py"
PYTHONUNBUFFERED=1 timeout 300 "$py" "$check_py" src/adapters/cuda/fingerprint.ptx 2>&1 | tee "$log"
rc_py=${PIPESTATUS[0]}
echo "exit status: $rc_py"
py_status=PASS
[ "$rc_py" = 0 ] || py_status="FAIL (exit status $rc_py)"

{
  printf '%s\n\n' "$title"
  printf -- '- date: %s\n' "$(date -u '+%Y-%m-%d %H:%M:%S UTC')"
  command -v nvidia-smi >/dev/null 2>&1 && printf -- '- GPU: %s\n' "$(nvidia-smi --query-gpu=name,driver_version --format=csv,noheader 2>&1 | head -n 1)"
  printf -- '- PTX: %s\n' "$(grep -m1 '^\.version' src/adapters/cuda/fingerprint.ptx), $(grep -m1 '^\.target' src/adapters/cuda/fingerprint.ptx)"
  printf -- '- `scripts/gen-ptx.sh --check`: **%s**\n' "$ptx_status"
  printf -- '- `integrity_kernel_check.py` (reference comparison, one-change, throughput): **%s**\n' "$py_status"
  printf '\n```text\n'
  grep '^throughput' "$log"
  printf '```\n\n<details><summary>full output</summary>\n\n```text\n%s\n\n' "$ptx_log"
  cat "$log"
  printf '```\n</details>\n'
} >"$md"

[ "$rc_ptx" = 0 ] || [ "$rc_ptx" = 2 ] || exit 1
[ "$rc_py" = 0 ]
