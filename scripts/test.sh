#!/usr/bin/env bash
# Runs every test that runs without a GPU:
#   0. parity: every function of the C header is reached by the C++ wrapper and the Python
#      package (scripts/check-parity.py, after its self-test); the rooms of src/ and their one
#      direction of dependencies (scripts/check-architecture.sh, after its self-test);
#   1. Rust unit and integration tests of the workspace (the core, the C ABI in
#      crates/vram-monitor-capi, the engine-side CUDA kit in crates/cuda-engine, the doctor in
#      crates/doctor), against the fake libcuda in tests/fake_cuda (the GPU scenarios in
#      tests/gpu/ report themselves skipped here); before them, the symbols of the build
#      (scripts/check-symbols.sh: a Rust program linking the core gets no C symbol, the .so
#      exports exactly the header's functions, the SONAME);
#   2. the committed C header is what cbindgen generates (part of 1: crates/vram-monitor-capi/tests/header.rs);
#   3. the C tests in tests/c, plain and under AddressSanitizer + UndefinedBehaviorSanitizer;
#   4. the CMake examples configured (they need the CUDA toolkit and a GPU: skipped here).
#   4b. the C and C++ tests under valgrind (helgrind, memcheck), and the fuzz targets over their
#      committed seeds (docs/reliability.md; the stress and model tests run in step 1).
#   5. the built-in HTTP endpoint with curl, malformed and slow requests, `promtool check
#      metrics` and a real Prometheus server scraping it (scripts/observability-test.sh).
#   5b. the README's first command (scripts/demo.sh) on the fake driver, its story checked;
#   6. scripts/install.sh to a temporary prefix, then C and C++ consumers built through
#      find_package and pkg-config (shared and static) and run (tests/install/test_install.sh);
#   7. the Python package (python/), pip-installed into a fresh virtual environment, against the fake driver;
#      a wheel made by `python -m build` (our library inside, no driver library), and an import
#      that loads no libcuda.
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
have pkg-config || missing+=(pkg-config)
have readelf || missing+=(binutils)
have python3 || missing+=(python3)
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
echo "== parity: every C function reached by the C++ wrapper and the Python package"
# The self-test first: it shows the check fails on a function missing on either side.
python3 scripts/check-parity.py --self-test
python3 scripts/check-parity.py

echo "== architecture: the core imports no other room, the monitor no output (docs/architecture.md)"
# The self-test first: it plants a violation in each room and shows the check fails on it.
bash scripts/check-architecture.sh --self-test

echo "== the core without its optional outputs: builds with no default feature (no HTTP endpoint)"
cargo check -p vram-monitor --no-default-features

echo "== build: the workspace (the core, the C ABI, libvram_monitor.so and .a, the doctor, the CUDA kit), its binaries and examples"
# `cargo test` alone does not produce the shared library the C tests link against.
cargo build --workspace --all-targets

echo "== symbols: no C symbol in the core's rlib; the .so and .a export the header's functions; SONAME"
bash scripts/check-symbols.sh target/debug

echo "== Rust tests (fake CUDA driver; GPU scenarios skip without a GPU)"
cargo test --workspace --all-targets
cargo test --workspace --doc

echo "== C tests against the built library and the fake driver"
cmake -S tests/c -B target/c-tests -DVRAM_MONITOR_LIB_DIR="$root/target/debug" >/dev/null
cmake --build target/c-tests -j 2
ctest --test-dir target/c-tests --output-on-failure

echo "== C tests under AddressSanitizer and UndefinedBehaviorSanitizer"
cmake -S tests/c -B target/c-tests-sanitized -DVRAM_MONITOR_LIB_DIR="$root/target/debug" -DVRAM_MONITOR_SANITIZE=ON >/dev/null
cmake --build target/c-tests-sanitized -j 2
ctest --test-dir target/c-tests-sanitized --output-on-failure

echo "== C and C++ tests under valgrind: helgrind (threads) and memcheck (memory, also inside the Rust library)"
# Suppressions and what helgrind cannot see: tests/valgrind/rust-sync.supp (the library's
# futex-based locks), tests/valgrind/libstdcxx-shared-ptr.supp and helgrind-reused-lock-address.supp. Findings fail the run.
if ! have valgrind; then
  if [ "$(id -u)" = 0 ] && have apt-get; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq valgrind >/dev/null
  else
    echo "error: valgrind is needed: run 'sudo apt-get install -y valgrind' and run this again." >&2
    exit 1
  fi
fi
for tool in helgrind memcheck; do
  cmake -S tests/c -B "target/c-tests-$tool" -DVRAM_MONITOR_LIB_DIR="$root/target/debug" -DVRAM_MONITOR_VALGRIND=$tool >/dev/null
  cmake --build "target/c-tests-$tool" -j 2
  ctest --test-dir "target/c-tests-$tool" --output-on-failure -j 2
done

echo "== fuzz targets over their committed seeds (gcc, AddressSanitizer + UBSan; fuzzing itself: fuzz/run.sh)"
mkdir -p target/fuzz-replay
for t in api labels; do
  cc -std=c11 -Wall -Wextra -Wpedantic -Werror -g -O1 -fsanitize=address,undefined -fno-sanitize-recover=all \
    -I include -I tests/c -I tests/fake_cuda -I fuzz "fuzz/fuzz_$t.c" fuzz/standalone_main.c \
    -L target/debug -lvram_monitor -Wl,-rpath,"$root/target/debug" -ldl -lpthread -o "target/fuzz-replay/fuzz_$t"
  env LD_LIBRARY_PATH="$root/target/c-tests/fake-complete" VRAM_MONITOR_LOG=off "target/fuzz-replay/fuzz_$t" fuzz/corpus/$t/*
done

echo "== C and C++ examples (configure; they build and run only where the CUDA toolkit is)"
cmake -S c-examples -B target/examples -DVRAM_MONITOR_LIB_DIR="$root/target/debug"
if [ -f target/examples/Makefile ] && grep -q "add_test\|vram_example" target/examples/CTestTestfile.cmake 2>/dev/null; then
  cmake --build target/examples -j 2
fi

echo "== observability: curl, malformed and slow requests, promtool, a real Prometheus scrape"
bash scripts/observability-test.sh

echo "== the README's first command: scripts/demo.sh (the fake driver here, and it says so)"
bash scripts/demo.sh >target/demo-output.txt 2>&1 || { cat target/demo-output.txt; echo "error: scripts/demo.sh failed" >&2; exit 1; }
for want in "FAKE CUDA driver" "registration refused: memory is MANAGED" "is NOT_MAPPED" "UNHEALTHY" "healthy = true" "is MODIFIED: 1 of its 1 MiB chunks differ" "== done"; do
  grep -qF "$want" target/demo-output.txt || { cat target/demo-output.txt; echo "error: the demo's output lacks '$want'" >&2; exit 1; }
done
echo "demo: every step shown"

echo "== install to a temporary prefix; C and C++ consumers through find_package and pkg-config"
bash tests/install/test_install.sh --profile debug

echo "== Python package: pip install into a fresh virtual environment, its tests against the fake driver"
# pip builds the library with cargo (setuptools-rust, fetched from PyPI) and puts it inside the
# package: the tests run with no VRAM_MONITOR_LIBRARY, from outside the checkout, on the
# installed copy. LD_LIBRARY_PATH only points at the fake libcuda (read at process start).
if ! python3 -c "import ensurepip, venv" 2>/dev/null; then
  if [ "$(id -u)" = 0 ] && have apt-get; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv >/dev/null
  else
    echo "error: python3 -m venv is needed: run 'sudo apt-get install -y python3-venv' and run this again." >&2
    exit 1
  fi
fi
rm -rf target/python-venv
python3 -m venv target/python-venv
target/python-venv/bin/python -m pip install -q ./python mypy
# Type hints are part of the package (py.typed): they must hold under mypy --strict.
target/python-venv/bin/python -m mypy --strict --no-incremental python/vram_monitor
(cd target && env -u VRAM_MONITOR_LIBRARY LD_LIBRARY_PATH="$root/target/fake-cuda/complete" \
  VRAM_MONITOR_TEST_INSTALLED=1 VRAM_MONITOR_TEST_REQUIRE_FAKE=1 VRAM_MONITOR_LOG=off PYTHONDONTWRITEBYTECODE=1 \
  python-venv/bin/python -m unittest discover -s "$root/python/tests" -t "$root/python/tests" -p 'test_*.py' -v)

echo "== Python wheel: python -m build makes one; it carries our library and no driver library"
target/python-venv/bin/python -m pip install -q build
rm -rf target/python-dist
target/python-venv/bin/python -m build --wheel --outdir target/python-dist ./python >target/python-build.log 2>&1 ||
  { tail -n 40 target/python-build.log; echo "error: python -m build --wheel ./python failed" >&2; exit 1; }
target/python-venv/bin/python - target/python-dist/*.whl <<'PY'
import sys, zipfile
names = zipfile.ZipFile(sys.argv[1]).namelist()
libraries = [n for n in names if ".so" in n]
assert any("vram_monitor" in n for n in libraries), "no libvram_monitor in the wheel: %s" % names
bundled = [n for n in libraries if "libcuda" in n or "nvidia-ml" in n]
assert not bundled, "the wheel bundles a driver library: %s" % bundled
print("wheel %s: %s, no driver library" % (sys.argv[1].rsplit("/", 1)[-1], ", ".join(libraries)))
PY

echo "== importing the package touches no CUDA driver (libcuda not loaded by the import)"
for path in "" "$root/target/fake-cuda/complete"; do
  (cd target && env -u VRAM_MONITOR_LIBRARY LD_LIBRARY_PATH="$path" python-venv/bin/python -c '
import vram_monitor
maps = open("/proc/self/maps").read()
assert "libcuda" not in maps, "importing vram_monitor loaded libcuda"
print("import vram_monitor: libcuda not loaded (LD_LIBRARY_PATH=%r)" % __import__("os").environ.get("LD_LIBRARY_PATH"))
')
done

echo "== all tests passed"
