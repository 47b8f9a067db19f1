#!/usr/bin/env bash
# The rooms of src/ and the one direction of their dependencies (docs/architecture.md):
#
#   output  ->  monitor  ->  adapters  ->  core
#
# A file may name (as `crate::<room>`, in code, not in comments) its own room and the rooms to
# its right, nothing else:
#   src/core/      crate::core only: no I/O of its own, no thread, no adapter, no output;
#   src/adapters/  crate::core, crate::adapters;
#   src/monitor/   crate::core, crate::adapters, crate::monitor: never an output;
#   src/output/    anything (it reads the monitor through its read view).
# Any other `crate::` path there (an old flat path such as `crate::report`, a re-export from
# lib.rs such as `crate::Monitor`) is refused too, so nothing slips in through an alias.
# `super::` chains that climb out of a room (`super::super::` from a room's top level) are
# not used in these rooms; the check also refuses `crate::{` groups, which it cannot read.
#
# And no hand-written source file outside tests over 500 lines (a file that long holds more than
# one concept): Rust, C, C++, CUDA, Python and shell files that git tracks, except tests and the
# generated C header.
#
#   scripts/check-architecture.sh              checks src/ of this checkout
#   scripts/check-architecture.sh --self-test  plants a violation in a copy of each room and
#                                              shows the check fails on it, then checks src/
set -euo pipefail
cd "$(dirname "$0")/.."

# check DIR: prints each violation under DIR (a tree laid out like src/), fails if any.
check() {
  local src=$1 bad=0 room allowed file line
  for room in core adapters monitor; do
    case $room in
      core) allowed='core' ;;
      adapters) allowed='core|adapters' ;;
      monitor) allowed='core|adapters|monitor' ;;
    esac
    [ -d "$src/$room" ] || continue
    while IFS= read -r -d '' file; do
      # Code lines only: comments (doc links such as [`crate::Monitor`]) name no dependency.
      while IFS= read -r line; do
        echo "architecture: ${file#"$src"/}:${line%%:*} names ${line#*:} (src/$room may name crate::{${allowed//|/, }} only)" >&2
        bad=1
      done < <(grep -nE 'crate::' "$file" | grep -vE '^[0-9]+:\s*//' \
                 | grep -oE '^[0-9]+:|crate::(\{|[A-Za-z_][A-Za-z0-9_]*)' \
                 | awk -v ok="^crate::($allowed)\$" '/^[0-9]+:$/ { n = $0; next } $0 !~ ok { print n $0 }')
    done < <(find "$src/$room" -name '*.rs' -print0 | sort -z)
  done
  return $bad
}

MAX_LINES=500

# sizes FILE...: prints each file over MAX_LINES lines, fails if any.
sizes() {
  local bad=0 file lines
  for file in "$@"; do
    lines=$(wc -l <"$file")
    if [ "$lines" -gt "$MAX_LINES" ]; then
      echo "architecture: $file has $lines lines, over $MAX_LINES: split it, one concept per file" >&2
      bad=1
    fi
  done
  return $bad
}

source_files() {
  git ls-files -- '*.rs' '*.c' '*.h' '*.hpp' '*.cpp' '*.cu' '*.cuh' '*.py' '*.sh' |
    grep -vE '(^|/)tests?/|^include/vram_monitor\.h$'
}

if [ "${1:-}" = --self-test ]; then
  tmp=$(mktemp -d)
  trap 'rm -rf "$tmp"' EXIT
  plant() { # plant ROOM LINE: a copy of src/ with LINE added to ROOM's mod.rs must fail.
    rm -rf "$tmp/src" && cp -r src "$tmp/src"
    printf '%s\n' "$2" >>"$tmp/src/$1/mod.rs"
    if check "$tmp/src" 2>/dev/null; then
      echo "check-architecture self-test: '$2' planted in src/$1 was not caught" >&2
      exit 1
    fi
  }
  plant core 'use crate::output::report::render;'
  plant core 'use crate::adapters::cuda::CudaDriver;'
  plant core 'use crate::monitor::Monitor;'
  plant core 'fn f() -> Option<crate::prometheus::RegistrationFigures> { None }'
  plant adapters 'use crate::monitor::MonitorView;'
  plant monitor 'use crate::output::prometheus;'
  plant monitor 'use crate::report::ReportFormat;'
  plant monitor 'use crate::{core, output};'
  # A comment that names an output is no dependency.
  rm -rf "$tmp/src" && cp -r src "$tmp/src"
  printf '%s\n' '// see crate::output::report' >>"$tmp/src/core/mod.rs"
  check "$tmp/src" || { echo "check-architecture self-test: a comment was taken for a dependency" >&2; exit 1; }
  seq "$MAX_LINES" >"$tmp/long.rs"
  sizes "$tmp/long.rs" || { echo "check-architecture self-test: a file of $MAX_LINES lines was refused" >&2; exit 1; }
  echo >>"$tmp/long.rs"
  if sizes "$tmp/long.rs" 2>/dev/null; then
    echo "check-architecture self-test: a file of $((MAX_LINES + 1)) lines was not caught" >&2
    exit 1
  fi
  echo "check-architecture self-test: every planted violation was caught"
fi

check src
mapfile -t files < <(source_files)
[ "${#files[@]}" -gt 0 ] || { echo "check-architecture: git lists no source file (run it in a checkout)" >&2; exit 1; }
sizes "${files[@]}"
echo "check-architecture: core names no other room, adapters only the core, the monitor no output;" \
  "no source file outside tests over $MAX_LINES lines (${#files[@]} files)"
