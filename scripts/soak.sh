#!/usr/bin/env bash
# Soak: random operations against the fake CUDA driver for a long time (default 30 minutes),
# checking every invariant of tests/all/stress.rs once a round (default 60 s) and sampling the
# process's resident memory then; fails if an invariant breaks or resident memory grows by
# 8 MiB or more after the first two rounds.
#
#   bash scripts/soak.sh [SECONDS]          # default 1800
#
# Progress goes to target/soak/progress.log (one line per round) and the whole output to
# target/soak/soak.log. It builds in its own target folder (target/soak/build) so that other
# builds in the tree do not replace the running binary. Not part of scripts/test.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${1:-${VRAM_MONITOR_SOAK_SECONDS:-1800}}
round=${VRAM_MONITOR_SOAK_ROUND_SECONDS:-60}
out=$PWD/target/soak
mkdir -p "$out"
rm -f "$out/progress.log"
export CARGO_TARGET_DIR=$out/build
echo "== building the fake-driver tests (release; soak is stress::soak in tests/all) in $CARGO_TARGET_DIR"
cargo test --release -p vram-monitor --test all --no-run
echo "== soak: $seconds s in rounds of $round s; progress in $out/progress.log"
{
  echo "machine: $(uname -srm), $(nproc) cores, $(awk '/MemTotal/ {print int($2/1024/1024) " GiB"}' /proc/meminfo); $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ //')"
  echo "started: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
} | tee "$out/progress.log"
set +e
VRAM_MONITOR_SOAK_SECONDS=$seconds \
VRAM_MONITOR_SOAK_ROUND_SECONDS=$round \
VRAM_MONITOR_SOAK_LOG=$out/progress.log \
VRAM_MONITOR_TEST_TIMEOUT_S=$((seconds + 900)) \
  cargo test --release -p vram-monitor --test all stress::soak -- --ignored --exact --nocapture >"$out/soak.log" 2>&1
status=$?
set -e
grep -E '^(stress:|round|SUMMARY|RSS|test result)' "$out/soak.log" || true
echo "finished: $(date -u +%Y-%m-%dT%H:%M:%SZ), exit $status" | tee -a "$out/progress.log"
exit "$status"
