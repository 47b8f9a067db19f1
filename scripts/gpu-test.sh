#!/usr/bin/env bash
# The GPU suite: build here, run on the GPU machine (no Rust toolchain, no network there).
#
#   scripts/gpu-test.sh prepare   on the development machine: builds the release library and
#                                 test programs and copies what the GPU machine needs into
#                                 .gpu-carry/ (a clean folder each time, gitignored), then
#                                 prints the one command to run there.
#   bash .gpu-carry/gpu-test.sh run
#                                 on the GPU machine, from the repository root, with $OUT set
#                                 to an output folder: runs the Rust GPU scenarios
#                                 (tests/gpu/) and the C examples (cmake + ctest), writes
#                                 $OUT/gpu-results.md and the full log $OUT/gpu-log.txt. Every
#                                 part runs; exits non-zero if any part failed.
#   bash .gpu-carry/gpu-test.sh run PART...
#                                 the same, only the parts named: "scenarios", "examples" and
#                                 suite names or their number prefixes ("20", "45-integrity-bench"),
#                                 so that a long suite can run in a call of its own.
#   bash .gpu-carry/gpu-test.sh bench
#                                 on the GPU machine: only the benchmark (about 2 minutes),
#                                 writing its table to $OUT/performance.md.
#
# .gpu-carry/ holds: gpu (the scenario program), tests/ (the other test programs, for running
# by hand: the core's by name, e.g. tests/all, the other members' as <folder>-<name>, e.g.
# tests/vram-monitor-capi-all), bin/ (the workspace's binaries, the doctor among them, and examples, release build), lib/libvram_monitor.so,
# include/, c-examples/ and python/ when present, suites/ (scripts/gpu-suites/*.sh, run in
# name order after the scenarios and examples), this script, and MANIFEST.txt.
set -u

CARRY_NAME=.gpu-carry
# The run tool carries at most this much (all carried paths together).
CARRY_LIMIT_BYTES=$((64 * 1024 * 1024))

die() {
  echo "error: $*" >&2
  exit 1
}

# Prints "<target name>\t<first kind>\t<executable>\t<package's Cargo.toml>" for each test
# program in cargo's JSON.
test_executables() {
  if command -v jq >/dev/null 2>&1; then
    jq -r 'select(.reason == "compiler-artifact" and .profile.test == true and .executable != null)
           | "\(.target.name)\t\(.target.kind[0])\t\(.executable)\t\(.manifest_path)"' "$1"
  else
    python3 - "$1" <<'EOF'
import json, sys
for line in open(sys.argv[1]):
    try:
        m = json.loads(line)
    except ValueError:
        continue
    if m.get("reason") == "compiler-artifact" and m.get("profile", {}).get("test") and m.get("executable"):
        print("%s\t%s\t%s\t%s" % (m["target"]["name"], m["target"]["kind"][0], m["executable"], m.get("manifest_path", "")))
EOF
  fi
}

# Copies folder $1 to $2 without build outputs, caches or virtual environments.
copy_tree() {
  mkdir -p "$2"
  tar -C "$1" -cf - \
    --exclude='build' --exclude='build-*' --exclude='CMakeFiles' --exclude='CMakeCache.txt' \
    --exclude='__pycache__' --exclude='*.pyc' --exclude='.pytest_cache' --exclude='*.egg-info' \
    --exclude='.venv' --exclude='venv' --exclude='*.so' --exclude='*.o' --exclude='*.a' . |
    tar -C "$2" -xf -
}

prepare() {
  local script root carry json line name kind exe manifest found_gpu=0 bytes soname
  script=$(readlink -f "$0")
  root=$(cd "$(dirname "$script")/.." && pwd)
  cd "$root" || die "cannot enter $root"
  [ -f Cargo.toml ] || die "$root is not the repository root (no Cargo.toml)"
  command -v cargo >/dev/null 2>&1 || die "prepare needs cargo (run it on the development machine)"
  carry="$root/$CARRY_NAME"

  echo "== cargo build --release --workspace"
  cargo build --release --workspace || die "cargo build --release --workspace failed"
  echo "== cargo test --release --workspace --no-run"
  json=$(mktemp)
  cargo test --release --workspace --no-run --message-format=json >"$json" || {
    rm -f "$json"
    die "cargo test --release --workspace --no-run failed (run it without --message-format=json to see why)"
  }
  [ -f target/release/libvram_monitor.so ] || die "target/release/libvram_monitor.so was not built"

  rm -rf "$carry"
  mkdir -p "$carry/lib" "$carry/tests"
  while IFS=$'\t' read -r name kind exe manifest; do
    [ -n "$exe" ] || continue
    if [ "$name" = gpu ] && [ "$kind" = test ]; then
      cp "$exe" "$carry/gpu"
      found_gpu=1
    elif [ "$kind" = test ] && [ -n "$manifest" ] && [ "$manifest" != "$root/Cargo.toml" ]; then
      # Another member's test program: named after its folder too, since two members may
      # have one of the same name (the core's and the C ABI's `all`).
      cp "$exe" "$carry/tests/$(basename "$(dirname "$manifest")")-$name"
    elif [ "$kind" = test ]; then
      cp "$exe" "$carry/tests/$name"
    else
      cp "$exe" "$carry/tests/unit-$name"
    fi
  done < <(test_executables "$json")
  rm -f "$json"
  [ "$found_gpu" = 1 ] || die "cargo built no 'gpu' test program (is [[test]] name = \"gpu\" in Cargo.toml?)"

  cp target/release/libvram_monitor.so "$carry/lib/"
  # Programs linked against it record its SONAME (libvram_monitor.so.<major>, see
  # crates/libvram-monitor/build.rs) and look for that name at run time. A copy, not a
  # symlink: the carry may not keep links.
  soname=$(readelf -d "$carry/lib/libvram_monitor.so" 2>/dev/null | sed -n 's/.*(SONAME).*\[\(.*\)\].*/\1/p')
  if [ -n "$soname" ] && [ "$soname" != libvram_monitor.so ]; then
    cp "$carry/lib/libvram_monitor.so" "$carry/lib/$soname"
  fi
  # Binaries and examples (doctor, benchmarks, demo) for the suites below.
  mkdir -p "$carry/bin"
  json=$(mktemp)
  cargo build --release --workspace --bins --examples --message-format=json >"$json" || die "cargo build --release --workspace --bins --examples failed"
  python3 - "$json" "$carry/bin" <<'PY'
import json, shutil, sys
for line in open(sys.argv[1]):
    try:
        m = json.loads(line)
    except ValueError:
        continue
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["target"]["kind"][0] in ("bin", "example"):
        shutil.copy2(m["executable"], sys.argv[2])
PY
  rm -f "$json"
  # Suites: scripts/gpu-suites/*.sh, each run by `run` in name order (see there).
  if [ -d scripts/gpu-suites ]; then
    copy_tree scripts/gpu-suites "$carry/suites"
  fi
  copy_tree include "$carry/include"
  if [ -d c-examples ]; then
    copy_tree c-examples "$carry/c-examples"
  else
    echo "note: c-examples/ is absent: the GPU run will skip the C examples"
  fi
  if [ -d python ]; then
    copy_tree python "$carry/python"
    # The Python suite installs the package from this wheel (pip builds the library into it
    # with cargo); the GPU machine reaches no package index.
    python3 -m pip wheel -q --no-deps -w "$carry/python-dist" ./python || die "pip wheel ./python failed"
  fi
  cp "$script" "$carry/gpu-test.sh"
  # The multi-GPU run (two or more GPUs): the suite twice, in both GPU orders.
  cp scripts/gpu-multi.sh "$carry/gpu-multi.sh"
  chmod +x "$carry/gpu-test.sh" "$carry/gpu" "$carry"/tests/* 2>/dev/null

  {
    echo "vram-monitor GPU carry"
    echo "prepared: $(date -u '+%Y-%m-%d %H:%M:%S UTC') on $(uname -n)"
    echo "commit: $(git rev-parse HEAD 2>/dev/null || echo unknown)"
    if [ -n "$(git status --porcelain --untracked-files=no 2>/dev/null)" ]; then
      echo "working tree: modified files (uncommitted changes are in this build):"
      git status --porcelain --untracked-files=no | sed 's/^/  /'
    fi
    echo "rustc: $(rustc -V 2>/dev/null)"
    echo "files (sha256):"
    (cd "$carry" && find . -type f ! -name MANIFEST.txt -print0 | sort -z | xargs -0 sha256sum | sed 's/^/  /')
  } >"$carry/MANIFEST.txt"

  bytes=$(du -sb "$carry" | cut -f1)
  echo
  echo "== $CARRY_NAME/ ready: $(du -sh "$carry" | cut -f1) ($bytes bytes)"
  (cd "$carry" && find . -maxdepth 2 \( -type f -o -type d \) ! -path . | sort | sed 's/^\.\//  /')
  if [ "$bytes" -gt "$CARRY_LIMIT_BYTES" ]; then
    echo "warning: larger than the 64 MiB the run tool carries: strip the programs (strip $CARRY_NAME/gpu $CARRY_NAME/tests/*)" >&2
  fi
  echo
  echo "Run the whole GPU suite on the GPU machine with ONE command (repository root, \$OUT set):"
  echo
  echo "    bash $CARRY_NAME/gpu-test.sh run"
  echo
  echo "  e.g. the run tool: command=\"bash $CARRY_NAME/gpu-test.sh run\", carry=[\"$CARRY_NAME\"], timeout_s=600"
  echo "  results: \$OUT/gpu-results.md (report), \$OUT/gpu-log.txt (full log)"
}

section() {
  echo
  echo "======== $* ========"
}

# The body of `run`; its output goes to the terminal and gpu-log.txt.
# Whether part $1 ("scenarios", "examples" or a suite's name) is to run: every part when no
# PART was named, else those named or whose name starts with "<named>-".
wanted() {
  local p
  [ ${#PARTS[@]} -eq 0 ] && return 0
  for p in "${PARTS[@]}"; do
    [ "$1" = "$p" ] && return 0
    case "$1" in "$p"-*) return 0 ;; esac
  done
  return 1
}

run_all() {
  local carry=$1 out=$2 results=$3 failures=() rc build ctest_log examples_status
  section "GPU machine"
  date -u '+%Y-%m-%d %H:%M:%S UTC'
  uname -a
  if command -v nvidia-smi >/dev/null 2>&1; then
    nvidia-smi -L || failures+=("nvidia-smi -L")
    echo "driver version: $(nvidia-smi --query-gpu=driver_version --format=csv,noheader 2>&1 | head -n 1)"
  else
    echo "nvidia-smi: not found"
    failures+=("nvidia-smi not found")
  fi
  command -v nvcc >/dev/null 2>&1 && nvcc --version | tail -n 1
  command -v cmake >/dev/null 2>&1 && cmake --version | head -n 1
  echo "LD_LIBRARY_PATH=${LD_LIBRARY_PATH:-}"
  section "carry manifest"
  cat "$carry/MANIFEST.txt" 2>/dev/null || echo "(no MANIFEST.txt)"

  section "Rust GPU scenarios ($CARRY_NAME/gpu)"
  rm -f "$results"
  if ! wanted scenarios; then
    echo "not run: not among the parts named (${PARTS[*]})"
    printf '# vram-monitor GPU run (parts: %s)\n' "${PARTS[*]}" >"$results"
  elif [ -f "$carry/gpu" ]; then
    [ -x "$carry/gpu" ] || chmod u+x "$carry/gpu" 2>/dev/null
    env -u RUST_LOG VRAM_MONITOR_GPU_RESULTS="$results" VRAM_MONITOR_GPU_REQUIRED=1 RUST_BACKTRACE=1 \
      timeout 300 "$carry/gpu"
    rc=$?
    echo "exit status: $rc"
    [ "$rc" = 0 ] || failures+=("GPU scenarios (exit $rc)")
  else
    rc=missing
    echo "$carry/gpu is missing: run 'scripts/gpu-test.sh prepare' on the development machine"
    failures+=("GPU scenarios (program missing)")
  fi
  if [ ! -s "$results" ]; then
    printf '# vram-monitor GPU scenarios\n\n**The scenario program wrote no report (exit status %s): see gpu-log.txt.**\n' \
      "$rc" >"$results"
  fi

  section "C examples (cmake + ctest)"
  if ! wanted examples; then
    echo "not run: not among the parts named"
  elif [ -f "$carry/c-examples/CMakeLists.txt" ]; then
    build=$(mktemp -d)
    ctest_log="$build/c-examples-output.txt"
    {
      cmake -S "$carry/c-examples" -B "$build" -DVRAM_MONITOR_LIB_DIR="$carry/lib" &&
        cmake --build "$build" -j "$(nproc 2>/dev/null || echo 4)" &&
        LD_LIBRARY_PATH="$carry/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}" \
          ctest --test-dir "$build" --verbose --output-on-failure --no-tests=error --timeout 240
    } 2>&1 | tee "$ctest_log"
    rc=${PIPESTATUS[0]}
    echo "exit status: $rc"
    if [ "$rc" = 0 ]; then
      examples_status="PASS"
    else
      examples_status="FAIL (exit status $rc)"
      failures+=("C examples (exit $rc)")
    fi
    {
      printf '\n## C examples (cmake + ctest)\n\n'
      printf -- '- `cmake -S c-examples -DVRAM_MONITOR_LIB_DIR=%s/lib`, build, `ctest --verbose`\n' "$CARRY_NAME"
      printf -- '- **Result: %s**\n\n```text\n' "$examples_status"
      cat "$ctest_log"
      printf '```\n'
    } >>"$results"
    rm -rf "$build"
  else
    echo "not run: $CARRY_NAME/c-examples/CMakeLists.txt is absent (c-examples/ was missing when prepared)"
    printf '\n## C examples (cmake + ctest)\n\n**Not run**: c-examples/ was not carried.\n' >>"$results"
  fi
  # Each suite is called as `bash suite.sh CARRY MARKDOWN_FILE` from the repository root: it
  # logs to stdout, writes its section of the report (Markdown, starting with a "## " heading)
  # to MARKDOWN_FILE, and exits non-zero if it failed.
  local suite name suite_md
  for suite in "$carry"/suites/*.sh; do
    [ -f "$suite" ] || continue
    name=$(basename "$suite" .sh)
    wanted "$name" || continue
    section "suite $name"
    suite_md=$(mktemp)
    LD_LIBRARY_PATH="$carry/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}" timeout "${VRAM_MONITOR_SUITE_TIMEOUT_S:-580}" bash "$suite" "$carry" "$suite_md"
    rc=$?
    echo "exit status: $rc"
    [ "$rc" = 0 ] || failures+=("suite $name (exit $rc)")
    if [ -s "$suite_md" ]; then
      printf '\n' >>"$results"
      cat "$suite_md" >>"$results"
    else
      printf '\n## %s\n\n**The suite wrote no report (exit status %s): see gpu-log.txt.**\n' "$name" "$rc" >>"$results"
    fi
    rm -f "$suite_md"
  done

  section "summary"
  {
    printf '\n## Summary of this GPU run\n\n'
    if [ ${#failures[@]} -eq 0 ]; then
      printf -- '- every part passed\n'
    else
      printf -- '- FAILED: %s\n' "${failures[@]}"
    fi
    printf -- '- full log: gpu-log.txt\n'
  } >>"$results"
  if [ ${#failures[@]} -eq 0 ]; then
    echo "GPU suite: every part passed"
    return 0
  fi
  echo "GPU suite FAILED:"
  printf '  - %s\n' "${failures[@]}"
  return 1
}

run() {
  local here carry out rc
  PARTS=("$@")
  here=$(cd "$(dirname "$(readlink -f "$0")")" && pwd)
  if [ "$(basename "$here")" = "$CARRY_NAME" ]; then
    carry=$here
  else
    carry="$PWD/$CARRY_NAME"
  fi
  [ -d "$carry" ] || die "no $CARRY_NAME/ here ($PWD): run 'scripts/gpu-test.sh prepare' first and carry $CARRY_NAME"
  if [ -z "${OUT:-}" ]; then
    out="$PWD/gpu-out"
    echo "note: \$OUT is not set; writing to $out" >&2
  else
    out=$OUT
  fi
  mkdir -p "$out" || die "cannot create $out"
  out=$(cd "$out" && pwd)
  run_all "$carry" "$out" "$out/gpu-results.md" 2>&1 | tee "$out/gpu-log.txt"
  rc=${PIPESTATUS[0]}
  # The report is committed: paths inside the checkout are written relative to it.
  sed -i "s#$PWD/##g" "$out/gpu-results.md"
  exit "$rc"
}

# Only the benchmark (the performance suite): $OUT/performance.md and $OUT/performance-log.txt.
bench() {
  local carry out
  # This script runs from inside the carry folder.
  carry=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
  [ -f "$carry/suites/40-performance.sh" ] || die "no $CARRY_NAME/ here: run 'scripts/gpu-test.sh prepare' first and carry $CARRY_NAME"
  out=${OUT:-$PWD/gpu-out}
  mkdir -p "$out" || die "cannot create $out"
  LD_LIBRARY_PATH="$carry/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}" \
    bash "$carry/suites/40-performance.sh" "$carry" "$out/performance.md" 2>&1 | tee "$out/performance-log.txt"
  exit "${PIPESTATUS[0]}"
}

case "${1:-}" in
  prepare) prepare ;;
  run) shift; run "$@" ;;
  bench) bench ;;
  *)
    echo "usage: scripts/gpu-test.sh prepare   (development machine: build and fill $CARRY_NAME/)" >&2
    echo "       bash $CARRY_NAME/gpu-test.sh run   (GPU machine, repository root, \$OUT set)" >&2
    echo "       bash $CARRY_NAME/gpu-test.sh bench (GPU machine: only the benchmark, \$OUT/performance.md)" >&2
    exit 2
    ;;
esac
