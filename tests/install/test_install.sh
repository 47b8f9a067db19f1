#!/usr/bin/env bash
# Installs vram-monitor to a temporary prefix with scripts/install.sh, then, as an engine's
# build would, builds and runs a C and a C++ consumer (tests/install/consumer.{c,cpp})
# through find_package(vram_monitor) and through pkg-config, shared and static, against the
# fake libcuda. Checks the SONAME and the symlink chain with readelf, that the consumers record
# libvram_monitor.so.<major> (and the static ones no libvram_monitor at all), that an
# incompatible version is refused by find_package, and that c-examples/ configures from the
# installed prefix.
#
#   bash tests/install/test_install.sh [--profile debug|release]   (default debug: what
#   scripts/test.sh has just built; the install script's own default is release)
#
# Needs cargo, cc, c++, cmake, pkg-config and readelf. Prints "N passed, M failed".
set -uo pipefail
cd "$(dirname "$0")/../.."
root=$PWD
profile=debug
[ "${1:-}" = --profile ] && profile=${2:?}

passed=0
failed=0
ok() { echo "ok   $*"; passed=$((passed + 1)); }
fail() { echo "FAIL $*"; failed=$((failed + 1)); }
check() { # description command...
  local what=$1
  shift
  if "$@"; then ok "$what"; else fail "$what"; fi
}
finish() {
  echo
  echo "install test: $passed passed, $failed failed"
  [ "$failed" = 0 ]
  exit $?
}

for tool in cargo cc c++ cmake pkg-config readelf; do
  command -v "$tool" >/dev/null 2>&1 || { fail "missing tool: $tool"; finish; }
done

work=$(mktemp -d "${TMPDIR:-/tmp}/vram-monitor-install.XXXXXX")
trap 'rm -rf "$work"' EXIT
prefix="$work/prefix"
version=$(sed -n 's/^version *= *"\([^"]*\)".*/\1/p' Cargo.toml | head -n 1)
major=${version%%.*}

echo "== scripts/install.sh --prefix '$prefix' --profile $profile"
if bash scripts/install.sh --prefix "$prefix" --profile "$profile" >"$work/install.log" 2>&1; then
  ok "install.sh exited 0"
else
  cat "$work/install.log"
  fail "install.sh failed"
  finish
fi
lib="$prefix/lib"

echo "== layout and SONAME"
check "libvram_monitor.so.$version is a file" test -f "$lib/libvram_monitor.so.$version" -a ! -L "$lib/libvram_monitor.so.$version"
check "libvram_monitor.so.$major -> libvram_monitor.so.$version" test "$(readlink "$lib/libvram_monitor.so.$major")" = "libvram_monitor.so.$version"
check "libvram_monitor.so -> libvram_monitor.so.$major" test "$(readlink "$lib/libvram_monitor.so")" = "libvram_monitor.so.$major"
for f in lib/libvram_monitor.a include/vram_monitor.h include/vram_monitor.hpp include/vram_monitor/monitor.hpp bin/vram-monitor-doctor \
  lib/pkgconfig/vram_monitor.pc lib/pkgconfig/vram_monitor_static.pc \
  lib/cmake/vram_monitor/vram_monitorConfig.cmake lib/cmake/vram_monitor/vram_monitorConfigVersion.cmake; do
  check "installed $f" test -f "$prefix/$f"
done
soname=$(readelf -d "$lib/libvram_monitor.so.$version" | sed -n 's/.*(SONAME).*\[\(.*\)\].*/\1/p')
echo "     readelf -d: SONAME [$soname]"
check "readelf -d shows SONAME libvram_monitor.so.$major" test "$soname" = "libvram_monitor.so.$major"
check "the headers installed are the repository's" cmp -s include/vram_monitor.h "$prefix/include/vram_monitor.h"

# The fake driver the consumers run against (built by the Rust tests; built here if not).
fake="$root/target/fake-cuda/complete"
if [ ! -f "$fake/libcuda.so.1" ]; then
  fake="$work/fake"
  mkdir -p "$fake"
  cc -std=c11 -O2 -shared -fPIC -pthread -Wl,-soname,libcuda.so.1 -o "$fake/libcuda.so.1" tests/fake_cuda/fake_cuda.c
  ln -sf libcuda.so.1 "$fake/libcuda.so"
fi

needed() { readelf -d "$1" | sed -n 's/.*(NEEDED).*\[\(.*\)\].*/\1/p' | tr '\n' ' '; }
run_consumer() { # name binary [extra LD_LIBRARY_PATH folder]
  local name=$1 bin=$2 extra=${3:-} out
  out=$(env VRAM_MONITOR_LOG=off LD_LIBRARY_PATH="${extra:+$extra:}$fake" FAKE_CUDA_INIT_RESULT= FAKE_CUDA_DEVICE_COUNT= "$bin" 2>&1)
  local rc=$?
  echo "$out" | sed 's/^/     /'
  if [ "$rc" = 0 ] && echo "$out" | grep -q "all steps held"; then ok "$name ran against the fake driver"; else fail "$name (exit $rc)"; fi
}

echo "== find_package(vram_monitor CONFIG REQUIRED), shared and static"
if cmake -S tests/install -B "$work/cmake" -DCMAKE_PREFIX_PATH="$prefix" -DVRAM_MONITOR_WANT_VERSION="$version" \
  >"$work/cmake.log" 2>&1 && cmake --build "$work/cmake" -j 2 >>"$work/cmake.log" 2>&1; then
  ok "configured and built with find_package(vram_monitor $version)"
  grep "vram_monitor .* found" "$work/cmake.log" | sed 's/^/     /'
  n=$(needed "$work/cmake/consumer_c")
  echo "     consumer_c NEEDED: $n"
  check "consumer_c (find_package) records libvram_monitor.so.$major" grep -q "libvram_monitor.so.$major " <<<"$n "
  check "consumer_c_static records no libvram_monitor" bash -c "! grep -q libvram_monitor <<<'$(needed "$work/cmake/consumer_c_static")'"
  # The build tree's RPATH holds the prefix's lib folder: no LD_LIBRARY_PATH for the library.
  run_consumer "consumer_c (find_package, shared)" "$work/cmake/consumer_c"
  run_consumer "consumer_cpp (find_package, shared, vram_monitor.hpp)" "$work/cmake/consumer_cpp"
  run_consumer "consumer_c_static (find_package, vram_monitor::vram_monitor_static)" "$work/cmake/consumer_c_static"
else
  cat "$work/cmake.log"
  fail "configure/build with find_package"
fi

echo "== find_package refuses an incompatible version"
if cmake -S tests/install -B "$work/cmake-v" -DCMAKE_PREFIX_PATH="$prefix" -DVRAM_MONITOR_WANT_VERSION=$((major + 1)).0 \
  >"$work/cmake-v.log" 2>&1; then
  fail "find_package(vram_monitor $((major + 1)).0) was accepted"
else
  grep -m1 -i "version" "$work/cmake-v.log" | sed 's/^/     /'
  ok "find_package(vram_monitor $((major + 1)).0) is refused"
fi

echo "== pkg-config, shared and static"
export PKG_CONFIG_PATH="$lib/pkgconfig"
check "pkg-config --modversion vram_monitor = $version" test "$(pkg-config --modversion vram_monitor)" = "$version"
cflags=$(pkg-config --cflags vram_monitor)
libs=$(pkg-config --libs vram_monitor)
slibs=$(pkg-config --libs vram_monitor_static)
echo "     cflags: $cflags"
echo "     libs:   $libs"
echo "     static: $slibs"
# shellcheck disable=SC2086 # word splitting of pkg-config output is intended
if cc -std=c11 -Wall -Wextra -Wpedantic -Werror $cflags tests/install/consumer.c $libs -o "$work/pc_c" &&
  c++ -std=c++17 -Wall -Wextra -Wpedantic -Werror $cflags tests/install/consumer.cpp $libs -o "$work/pc_cpp" &&
  cc -std=c11 -Wall -Wextra -Wpedantic -Werror $cflags tests/install/consumer.c $slibs -o "$work/pc_c_static"; then
  ok "compiled and linked through pkg-config"
  check "pc_c records libvram_monitor.so.$major" grep -q "libvram_monitor.so.$major " <<<"$(needed "$work/pc_c") "
  run_consumer "consumer.c (pkg-config, shared)" "$work/pc_c" "$lib"
  run_consumer "consumer.cpp (pkg-config, shared)" "$work/pc_cpp" "$lib"
  run_consumer "consumer.c (pkg-config vram_monitor_static)" "$work/pc_c_static"
else
  fail "compiling through pkg-config"
fi

echo "== the installed doctor runs"
out=$(LD_LIBRARY_PATH="$fake" "$prefix/bin/vram-monitor-doctor" 2>&1)
rc=$?
echo "$out" | head -n 5 | sed 's/^/     /'
check "vram-monitor-doctor against the fake driver says so and exits 0 (exit $rc)" bash -c '[ "$1" = 0 ] && grep -q "THE FAKE DRIVER" <<<"$2"' _ "$rc" "$out"

echo "== c-examples/ configures from the installed prefix (the examples need the CUDA toolkit to build)"
if cmake -S c-examples -B "$work/examples" -DVRAM_MONITOR_INSTALLED=ON -DCMAKE_PREFIX_PATH="$prefix" >"$work/examples.log" 2>&1 &&
  grep -q "vram-monitor examples: using the installed package" "$work/examples.log"; then
  grep "vram-monitor examples" "$work/examples.log" | sed 's/^/     /'
  ok "c-examples found vram_monitor through find_package"
else
  cat "$work/examples.log"
  fail "c-examples with -DVRAM_MONITOR_INSTALLED=ON"
fi

finish
