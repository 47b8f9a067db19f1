#!/usr/bin/env bash
# Builds the library and runs the demo (examples/demo.rs): on a GPU machine against the real
# CUDA driver; elsewhere against the fake driver the tests use, which the demo announces.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v cargo >/dev/null 2>&1; then
  echo "error: Rust is required: install it from https://rustup.rs and run this again." >&2
  exit 1
fi
if ! command -v cc >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq gcc >/dev/null
  else
    echo "error: a C compiler is required: run 'sudo apt-get install -y gcc' and run this again." >&2
    exit 1
  fi
fi
cargo build --release --example demo
demo=target/release/examples/demo
# A GPU, not only a driver library (a CUDA toolkit's stub libcuda has no device behind it).
if [ -e /dev/nvidiactl ] || { command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L 2>/dev/null | grep -q '^GPU '; }; then
  echo "== vram-monitor demo on this machine's GPU (the real CUDA driver)"
  exec "$demo"
fi
fake=target/fake-cuda/demo
mkdir -p "$fake"
cc -std=c11 -O2 -shared -fPIC -pthread -Wl,-soname,libcuda.so.1 -o "$fake/libcuda.so.1" tests/fake_cuda/fake_cuda.c
ln -sf libcuda.so.1 "$fake/libcuda.so"
echo "== vram-monitor demo on the FAKE CUDA driver (tests/fake_cuda): this machine has no GPU."
echo "   Every verdict below is what the monitor says on a real GPU for the same memory; the"
echo "   addresses are the fake driver's. On a GPU machine this runs on the real driver."
LD_LIBRARY_PATH="$PWD/$fake${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}" exec "$demo"
