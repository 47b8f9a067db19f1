#!/usr/bin/env bash
# Installs vram-monitor like any C library: one command with a prefix.
#
#   bash scripts/install.sh --prefix /usr/local        (as root for a system prefix)
#   bash scripts/install.sh --prefix "$HOME/.local"
#
# Builds with cargo (release by default) and installs:
#   PREFIX/lib/libvram_monitor.so.X.Y.Z       the shared library, SONAME libvram_monitor.so.X
#   PREFIX/lib/libvram_monitor.so.X -> .so.X.Y.Z,  libvram_monitor.so -> .so.X
#   PREFIX/lib/libvram_monitor.a              the static library
#   PREFIX/include/vram_monitor.h             the C API
#   PREFIX/include/vram_monitor.hpp           the header-only C++17 wrapper (and its parts in
#   PREFIX/include/vram_monitor/*.hpp)
#   PREFIX/lib/pkgconfig/vram_monitor.pc, vram_monitor_static.pc
#   PREFIX/lib/cmake/vram_monitor/vram_monitorConfig.cmake (+ ConfigVersion): find_package
#       gives vram_monitor::vram_monitor (shared) and vram_monitor::vram_monitor_static
#   PREFIX/bin/vram-monitor-doctor            what the monitor sees on this machine
#
# Options:
#   --prefix DIR      where to install (default /usr/local)
#   --libdir DIR      libraries, pkgconfig/ and cmake/ (default PREFIX/lib)
#   --includedir DIR  headers (default PREFIX/include)
#   --bindir DIR      the doctor (default PREFIX/bin)
#   --destdir DIR     stage under DIR (for packagers: files go to DIR/PREFIX/..., the paths
#                     written into the .pc and CMake files are the final ones). Also $DESTDIR.
#   --profile NAME    cargo profile: release (default) or debug
#   --no-build        install what target/<profile>/ holds; do not run cargo
#
# Why a script and not cargo-c: cargo-c would have to be built from crates.io for each
# toolchain (and pinned to one that builds on ours); this script needs only cargo and
# coreutils, and the layout above is all it does. The CMake package is relocatable (paths
# relative to its own folder); the .pc files hold absolute paths.
#
# After installing to a system prefix, run `ldconfig` so the loader finds the library.
set -euo pipefail

die() {
  echo "install.sh: error: $*" >&2
  exit 1
}

prefix=/usr/local
libdir=
includedir=
bindir=
destdir=${DESTDIR:-}
profile=release
build=1
while [ $# -gt 0 ]; do
  case "$1" in
    --prefix) prefix=${2:?--prefix needs a folder}; shift 2 ;;
    --prefix=*) prefix=${1#*=}; shift ;;
    --libdir) libdir=${2:?--libdir needs a folder}; shift 2 ;;
    --libdir=*) libdir=${1#*=}; shift ;;
    --includedir) includedir=${2:?--includedir needs a folder}; shift 2 ;;
    --includedir=*) includedir=${1#*=}; shift ;;
    --bindir) bindir=${2:?--bindir needs a folder}; shift 2 ;;
    --bindir=*) bindir=${1#*=}; shift ;;
    --destdir) destdir=${2:?--destdir needs a folder}; shift 2 ;;
    --destdir=*) destdir=${1#*=}; shift ;;
    --profile) profile=${2:?--profile needs release or debug}; shift 2 ;;
    --profile=*) profile=${1#*=}; shift ;;
    --no-build) build=0; shift ;;
    -h | --help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) die "unknown option $1 (see --help)" ;;
  esac
done
case "$profile" in release | debug) ;; *) die "--profile must be release or debug" ;; esac

absolute() {
  case "$1" in
    /*) printf '%s\n' "$1" ;;
    *) printf '%s/%s\n' "$PWD" "$1" ;;
  esac
}
# Paths in the installed files are the final ones (without DESTDIR), normalised.
prefix=$(realpath -m "$(absolute "$prefix")")
libdir=$(realpath -m "$(absolute "${libdir:-$prefix/lib}")")
includedir=$(realpath -m "$(absolute "${includedir:-$prefix/include}")")
bindir=$(realpath -m "$(absolute "${bindir:-$prefix/bin}")")
[ -z "$destdir" ] || destdir=$(realpath -m "$(absolute "$destdir")")
pkgconfigdir=$libdir/pkgconfig
cmakedir=$libdir/cmake/vram_monitor

cd "$(dirname "$0")/.."
root=$PWD
[ -f Cargo.toml ] && [ -f include/vram_monitor.h ] || die "run from a vram-monitor checkout ($root)"

version=$(sed -n 's/^version *= *"\([^"]*\)".*/\1/p' Cargo.toml | head -n 1)
[[ "$version" =~ ^([0-9]+)\.([0-9]+)\.([0-9]+) ]] || die "cannot read the version from Cargo.toml ($version)"
major=${BASH_REMATCH[1]}
minor=${BASH_REMATCH[2]}

if [ "$build" = 1 ]; then
  command -v cargo >/dev/null 2>&1 || die "cargo is required (https://rustup.rs), or pass --no-build"
  flags=()
  [ "$profile" = release ] && flags+=(--release)
  # --workspace: the libraries of every crate, libvram_monitor.so and .a (crates/libvram-monitor) among them.
  echo "== cargo build ${flags[*]} --workspace --lib --bin vram-monitor-doctor"
  cargo build "${flags[@]}" --workspace --lib --bin vram-monitor-doctor
fi

target_dir=${CARGO_TARGET_DIR:-target}
case "$target_dir" in /*) ;; *) target_dir=$root/$target_dir ;; esac
built=$target_dir/$profile
for f in libvram_monitor.so libvram_monitor.a vram-monitor-doctor; do
  [ -f "$built/$f" ] || die "$built/$f is missing (build first, or drop --no-build)"
done
if command -v readelf >/dev/null 2>&1; then
  soname=$(readelf -d "$built/libvram_monitor.so" | sed -n 's/.*(SONAME).*\[\(.*\)\].*/\1/p')
  [ "$soname" = "libvram_monitor.so.$major" ] ||
    die "$built/libvram_monitor.so has SONAME '$soname', expected libvram_monitor.so.$major (is crates/libvram-monitor/build.rs in use?)"
fi

# The system libraries a program linking the static library needs (what
# `rustc --print native-static-libs` reports for crates/libvram-monitor on Linux with glibc).
static_libs="-lgcc_s -lutil -lrt -lpthread -lm -ldl -lc"
static_libs_cmake="gcc_s;util;rt;pthread;m;dl;c"

real=libvram_monitor.so.$version
echo "== installing vram-monitor $version to ${destdir}$prefix"
install -d "$destdir$libdir" "$destdir$includedir" "$destdir$bindir" "$destdir$pkgconfigdir" "$destdir$cmakedir"
install -m 0755 "$built/libvram_monitor.so" "$destdir$libdir/$real"
ln -sfn "$real" "$destdir$libdir/libvram_monitor.so.$major"
ln -sfn "libvram_monitor.so.$major" "$destdir$libdir/libvram_monitor.so"
install -m 0644 "$built/libvram_monitor.a" "$destdir$libdir/libvram_monitor.a"
install -m 0644 include/vram_monitor.h include/vram_monitor.hpp "$destdir$includedir/"
install -d "$destdir$includedir/vram_monitor"
install -m 0644 include/vram_monitor/*.hpp "$destdir$includedir/vram_monitor/"
install -m 0755 "$built/vram-monitor-doctor" "$destdir$bindir/vram-monitor-doctor"

# pkg-config: ${prefix}-relative where the folders are inside the prefix.
pc_path() {
  case "$1" in
    "$prefix") printf '%s\n' '${prefix}' ;;
    "$prefix"/*) printf '%s\n' "\${prefix}/${1#"$prefix"/}" ;;
    *) printf '%s\n' "$1" ;;
  esac
}
substitute() { # template output
  sed -e "s|@PREFIX@|$prefix|g" \
    -e "s|@LIBDIR@|$(pc_path "$libdir")|g" \
    -e "s|@INCLUDEDIR@|$(pc_path "$includedir")|g" \
    -e "s|@VERSION@|$version|g" \
    -e "s|@MAJOR@|$major|g" \
    -e "s|@MINOR@|$minor|g" \
    -e "s|@STATIC_LIBS@|$static_libs|g" \
    -e "s|@STATIC_LIBS_CMAKE@|$static_libs_cmake|g" \
    -e "s|@CMAKEDIR_TO_LIBDIR@|$(realpath -m --relative-to="$cmakedir" "$libdir")|g" \
    -e "s|@CMAKEDIR_TO_INCLUDEDIR@|$(realpath -m --relative-to="$cmakedir" "$includedir")|g" \
    -e "s|@SIZEOF_VOID_P@|$(getconf LONG_BIT | awk '{ print $1 / 8 }')|g" \
    "$1" >"$2"
  if grep -n '@[A-Z_]*@' "$2" >&2; then
    die "unreplaced placeholders in $2"
  fi
  chmod 0644 "$2"
}
substitute packaging/vram_monitor.pc.in "$destdir$pkgconfigdir/vram_monitor.pc"
substitute packaging/vram_monitor_static.pc.in "$destdir$pkgconfigdir/vram_monitor_static.pc"
substitute packaging/vram_monitorConfig.cmake.in "$destdir$cmakedir/vram_monitorConfig.cmake"
substitute packaging/vram_monitorConfigVersion.cmake.in "$destdir$cmakedir/vram_monitorConfigVersion.cmake"

echo "installed:"
(cd "${destdir:-/}" && find ".${libdir}" ".${includedir}" ".${bindir}/vram-monitor-doctor" \
  \( -name 'libvram_monitor*' -o -name 'vram_monitor*' -o -name 'vram-monitor-doctor' \) 2>/dev/null |
  sed 's|^\.|  |' | sort)
cat <<EOF

Use it:
  CMake:      find_package(vram_monitor $major.$minor CONFIG REQUIRED)   (CMAKE_PREFIX_PATH=$prefix)
              target_link_libraries(app PRIVATE vram_monitor::vram_monitor)
  pkg-config: cc app.c \$(pkg-config --cflags --libs vram_monitor)   (PKG_CONFIG_PATH=$pkgconfigdir)
  run time:   the loader must find libvram_monitor.so.$major: run ldconfig for a system prefix,
              or set LD_LIBRARY_PATH=$libdir (or link with -Wl,-rpath,$libdir)
  doctor:     $bindir/vram-monitor-doctor
EOF
