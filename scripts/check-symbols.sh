#!/usr/bin/env bash
# The C ABI is one artefact (crates/libvram-monitor over crates/vram-monitor-capi); the core
# crate is Rust only. Checks a build of the workspace:
#  1. the core's rlib, what a Rust engine links, defines no vram_monitor_* C symbol;
#  2. libvram_monitor.so exports exactly the functions include/vram_monitor.h declares (and
#     vram_monitor_event_layout_anchor, exported since the first release and kept), nothing
#     else;
#  3. libvram_monitor.a defines the same functions;
#  4. the shared library's SONAME is libvram_monitor.so.<major>.
# Usage: scripts/check-symbols.sh [PROFILE_DIR]   (default: target/debug, after cargo build)
set -euo pipefail
cd "$(dirname "$0")/.."
dir=${1:-target/debug}
fail=0
bad() {
  echo "error: $*" >&2
  fail=1
}

for f in libvram_monitor.rlib libvram_monitor.so libvram_monitor.a; do
  [ -f "$dir/$f" ] || { echo "error: $dir/$f is missing: run cargo build --workspace first" >&2; exit 1; }
done

# The functions the header declares: the name before '(' on a declaration line (comments and
# their examples begin with a space or '*').
header=$(sed -n 's/^[A-Za-z].*[ *]\(vram_monitor_[a-z0-9_]*\)(.*/\1/p' include/vram_monitor.h | sort -u)
[ -n "$header" ] || bad "no function declarations found in include/vram_monitor.h"
want=$(printf '%s\nvram_monitor_event_layout_anchor\n' "$header" | sort -u)

# 1. Defined (not undefined, 'U') C symbols of the library's prefix in the core's rlib.
in_rlib=$(nm "$dir/libvram_monitor.rlib" 2>/dev/null | awk '$2 ~ /^[A-TV-Z]$/ && $3 ~ /^vram_monitor_/ {print $3}' | sort -u)
if [ -n "$in_rlib" ]; then
  bad "the core's rlib ($dir/libvram_monitor.rlib) defines C symbols a Rust engine would link: $(echo $in_rlib)"
fi

# 2. Every dynamic symbol the shared library defines.
exported=$(nm -D --defined-only "$dir/libvram_monitor.so" | awk '{print $3}' | sort -u)
if [ "$exported" != "$want" ]; then
  bad "libvram_monitor.so exports other symbols than the header's functions:"
  diff <(echo "$want") <(echo "$exported") | sed -n 's/^</  missing:/p; s/^>/  extra:  /p' >&2
fi

# 3. The static library defines each of them.
in_a=$(nm "$dir/libvram_monitor.a" 2>/dev/null | awk '$2 == "T" && $3 ~ /^vram_monitor_/ {print $3}' | sort -u)
if [ "$in_a" != "$want" ]; then
  bad "libvram_monitor.a does not define exactly the header's functions:"
  diff <(echo "$want") <(echo "$in_a") | sed -n 's/^</  missing:/p; s/^>/  extra:  /p' >&2
fi

# 4. The SONAME (crates/libvram-monitor/build.rs).
version=$(sed -n 's/^version *= *"\([^"]*\)".*/\1/p' Cargo.toml | head -n 1)
soname=$(readelf -d "$dir/libvram_monitor.so" | sed -n 's/.*(SONAME).*\[\(.*\)\].*/\1/p')
[ "$soname" = "libvram_monitor.so.${version%%.*}" ] || bad "SONAME is '$soname', expected libvram_monitor.so.${version%%.*}"

[ "$fail" = 0 ] || exit 1
echo "symbols: the core's rlib defines no vram_monitor_* symbol; libvram_monitor.so exports the header's $(echo "$header" | wc -l) functions (and the event layout anchor), libvram_monitor.a defines them; SONAME $soname"
