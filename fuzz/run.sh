#!/usr/bin/env bash
# Fuzzes the C API with libFuzzer (clang; stable Rust needs no cargo-fuzz):
#
#   bash fuzz/run.sh [api|labels] [SECONDS]     # default: api, 600 s
#   bash fuzz/run.sh build                      # only build both targets
#
# Targets (C, in fuzz/): fuzz_api (sequences of C API calls with the fake driver changing memory
# underneath, checked against a model) and fuzz_labels (labels: UTF-8 rules, copying, JSON and
# text escaping). They link a build of libvram_monitor.so instrumented for libFuzzer's coverage
# (so the fuzzer is guided by the Rust code's branches too), with debug assertions and
# overflow checks, and run with LD_LIBRARY_PATH at the fake libcuda built here. The committed seeds are in
# fuzz/corpus/<target>; what the fuzzer finds goes to target/fuzz/corpus-<target> (not
# committed), crashes to target/fuzz/artifacts/. Needs clang with libFuzzer: as root this
# installs Debian's clang-14 and libclang-rt-14-dev.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
what=${1:-api}
seconds=${2:-600}
out=$root/target/fuzz
mkdir -p "$out/fake" "$out/artifacts"

clang=$(command -v clang-14 || command -v clang || true)
if [ -z "$clang" ] || ! echo 'int LLVMFuzzerTestOneInput(const char*d,unsigned long n){(void)d;(void)n;return 0;}' \
     | "$clang" -x c -fsanitize=fuzzer - -o "$out/.probe" 2>/dev/null; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq clang-14 libclang-rt-14-dev >/dev/null
    clang=$(command -v clang-14)
  else
    echo "error: clang with libFuzzer is needed: sudo apt-get install -y clang-14 libclang-rt-14-dev" >&2
    exit 1
  fi
fi

# The library, with libFuzzer's coverage instrumentation (stable rustc codegen options, what
# cargo-fuzz passes), debug assertions and overflow checks, in its own target folder. An
# explicit --target keeps RUSTFLAGS off build scripts.
lib=$out/lib
CARGO_TARGET_DIR=$lib RUSTFLAGS="-C passes=sancov-module -C llvm-args=-sanitizer-coverage-level=3 \
  -C llvm-args=-sanitizer-coverage-inline-8bit-counters -C llvm-args=-sanitizer-coverage-pc-table \
  -C llvm-args=-sanitizer-coverage-trace-compares -C debug-assertions -C overflow-checks -C force-frame-pointers=yes" \
  cargo build --release -p libvram-monitor --quiet --target "$(rustc -vV | sed -n 's/^host: //p')"
libdir=$lib/$(rustc -vV | sed -n 's/^host: //p')/release
cc -std=c11 -shared -fPIC -pthread -O2 -Wl,-soname,libcuda.so.1 -I tests/fake_cuda \
   -o "$out/fake/libcuda.so.1" tests/fake_cuda/fake_cuda.c
ln -sf libcuda.so.1 "$out/fake/libcuda.so"
for t in api labels; do
  "$clang" -std=c11 -g -O1 -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=undefined \
    -I include -I tests/c -I tests/fake_cuda -I fuzz "fuzz/fuzz_$t.c" \
    -L "$libdir" -lvram_monitor -Wl,-rpath,"$libdir" -ldl -lpthread -o "$out/fuzz_$t"
done
[ "$what" = build ] && exit 0

mkdir -p "$out/corpus-$what"
echo "== fuzz_$what for $seconds s on $(uname -srm), $(nproc) cores; started $(date -u +%Y-%m-%dT%H:%M:%SZ)"
VRAM_MONITOR_LOG=off LD_LIBRARY_PATH=$out/fake "$out/fuzz_$what" -max_total_time="$seconds" -timeout=30 -rss_limit_mb=4096 \
  -print_final_stats=1 -artifact_prefix="$out/artifacts/$what-" "$out/corpus-$what" "fuzz/corpus/$what"
echo "== finished $(date -u +%Y-%m-%dT%H:%M:%SZ)"
