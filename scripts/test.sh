#!/usr/bin/env bash
# Runs every test that runs without a GPU:
#   1. Rust unit and integration tests, against the fake libcuda in tests/fake_cuda
#      (the GPU scenarios in tests/gpu.rs report themselves skipped here);
#   2. the committed C header is what cbindgen generates (part of 1);
#   3. the C tests in tests/c, plain and under AddressSanitizer + UndefinedBehaviorSanitizer;
#   4. the CMake examples configured (they need the CUDA toolkit and a GPU: skipped here).
# Installs the C toolchain and CMake with apt-get when run as root; otherwise says what to
# install. The GPU suite runs on a GPU machine: see scripts/gpu-test.sh.
set -euo pipefail
cd "$(dirname "$0")/.."

have() { command -v "$1" >/dev/null 2>&1; }
if ! have cargo; then
  echo "error: Rust is required: install it from https://rustup.rs and run this again." >&2
  exit 1
fi
missing=()
have cc || missing+=(gcc)
have c++ || missing+=(g++)
have cmake || missing+=(cmake)
have make || missing+=(make)
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && have apt-get; then
    echo "== installing ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
  else
    echo "error: missing ${missing[*]}: run 'sudo apt-get install -y ${missing[*]}' and run this again." >&2
    exit 1
  fi
fi

root=$PWD
echo "== Rust tests (fake CUDA driver; GPU scenarios skip without a GPU)"
cargo test --all-targets
cargo test --doc

echo "== C tests against the built library and the fake driver"
cmake -S tests/c -B target/c-tests -DVRAM_MONITOR_LIB_DIR="$root/target/debug" >/dev/null
cmake --build target/c-tests -j 2
ctest --test-dir target/c-tests --output-on-failure

echo "== C tests under AddressSanitizer and UndefinedBehaviorSanitizer"
cmake -S tests/c -B target/c-tests-sanitized -DVRAM_MONITOR_LIB_DIR="$root/target/debug" -DVRAM_MONITOR_SANITIZE=ON >/dev/null
cmake --build target/c-tests-sanitized -j 2
ctest --test-dir target/c-tests-sanitized --output-on-failure

echo "== C and C++ examples (configure; they build and run only where the CUDA toolkit is)"
cmake -S c-examples -B target/examples -DVRAM_MONITOR_LIB_DIR="$root/target/debug"
if [ -f target/examples/Makefile ] && grep -q "add_test\|vram_example" target/examples/CTestTestfile.cmake 2>/dev/null; then
  cmake --build target/examples -j 2
fi

echo "== all tests passed"
