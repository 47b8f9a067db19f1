#!/usr/bin/env bash
# GPU suite: the Python package (python/vram_monitor, ctypes) against real PyTorch tensors and
# CuPy arrays: python/tests/gpu_torch.py, with VRAM_MONITOR_GPU_REQUIRED=1 (no torch or no GPU
# is a failure). The expandable-segments test runs itself in a child process with
# PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True.
#   bash 20-python.sh CARRY MARKDOWN_FILE
set -u
carry=${1:?usage: 20-python.sh CARRY MARKDOWN_FILE}
md=${2:?usage: 20-python.sh CARRY MARKDOWN_FILE}
tests="$carry/python/tests/gpu_torch.py"
log=$(mktemp)

printf '## Python package with PyTorch and CuPy (python/tests/gpu_torch.py)\n\n' >"$md"
if [ ! -f "$tests" ]; then
  echo "FAIL: $tests is missing (python/ was not carried)"
  printf '**FAIL**: python/ is not in the carry.\n' >>"$md"
  exit 1
fi
sys_py=$(command -v python3 || command -v python)
# The suite runs the pip-installed package: the wheel built on the development machine (pip
# built the library into it with cargo), installed without an index into a fresh virtual
# environment that sees the machine's torch and cupy. No VRAM_MONITOR_LIBRARY, no PYTHONPATH.
wheel=$(ls "$carry"/python-dist/vram_monitor-*.whl 2>/dev/null | head -n 1)
venv=$(mktemp -d)
trap 'rm -f "$log"; rm -rf "$venv"' EXIT
if [ -z "$wheel" ]; then
  echo "FAIL: no wheel in $carry/python-dist (gpu-test.sh prepare builds it: pip wheel --no-deps -w .gpu-carry/python-dist ./python)" | tee "$log"
  rc=1
elif ! { "$sys_py" -m venv --system-site-packages "$venv" >>"$log" 2>&1 ||
    # Without ensurepip (Debian's python3 without python3-venv): the system's pip, seen
    # through the system site-packages, installs into the venv all the same.
    { rm -rf "$venv" && "$sys_py" -m venv --system-site-packages --without-pip "$venv" >>"$log" 2>&1; }; } ||
  ! "$venv/bin/python" -m pip install -q --no-index --no-deps "$wheel" >>"$log" 2>&1; then
  echo "FAIL: installing $wheel into a fresh virtual environment failed" | tee -a "$log"
  rc=1
else
  py="$venv/bin/python"
  echo "== $py $tests (installed: $wheel)"
  (cd "$venv" && env -u VRAM_MONITOR_LIBRARY -u PYTHONPATH VRAM_MONITOR_TEST_INSTALLED=1 \
    VRAM_MONITOR_GPU_REQUIRED=1 VRAM_MONITOR_LOG=warn \
    timeout 540 "$py" "$tests") 2>&1 | tee -a "$log"
  rc=${PIPESTATUS[0]}
fi
py=${py:-$sys_py}
echo "exit status: $rc"
versions=$("$py" -c 'import sys
parts = ["Python " + sys.version.split()[0]]
for name in ("torch", "cupy"):
    try:
        m = __import__(name)
        parts.append(name + " " + m.__version__)
    except Exception as e:
        parts.append(name + ": not importable")
print(", ".join(parts))' 2>&1)
{
  printf -- '- date: %s\n' "$(date -u '+%Y-%m-%d %H:%M:%S UTC')"
  command -v nvidia-smi >/dev/null 2>&1 && printf -- '- GPU: %s\n' "$(nvidia-smi --query-gpu=name,driver_version --format=csv,noheader 2>&1 | head -n 1)"
  printf -- '- %s\n' "$versions"
  printf -- '- unittest: %s (exit status %s)\n\n' "$(grep -E '^(OK|FAILED)' "$log" | tail -n 1)" "$rc"
  printf '| scenario | expected | saw | result |\n|---|---|---|---|\n'
  grep '^RESULT | ' "$log" | sed 's/^RESULT | /| /; s/$/ |/'
  printf '\n<details><summary>full output</summary>\n\n```text\n'
  cat "$log"
  printf '```\n</details>\n'
} >>"$md"
exit "$rc"
