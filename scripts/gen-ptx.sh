#!/usr/bin/env bash
# Builds the shipped PTX of the integrity kernel from its CUDA C source:
#
#   scripts/gen-ptx.sh           writes src/adapters/cuda/fingerprint.ptx from src/adapters/cuda/fingerprint.cu
#   scripts/gen-ptx.sh --check   regenerates into a temporary file and diffs it against the
#                                committed one: exit 1 with the diff if they differ
#
# Needs nvcc (CUDA 12 or 13); without it the script stops with a one-line message (exit 2), so
# that a caller can tell "could not check" from "differs". The library embeds the PTX and the
# driver JIT-compiles it, so the crate itself never needs nvcc.
#
# Why the header is rewritten: nvcc from CUDA 13 can target compute_75 at the oldest and
# stamps its own PTX ISA version (9.x). The driver refuses PTX whose .version is newer than
# it knows, and a .target of sm_75 would keep Volta out. The kernel uses nothing newer than
# PTX ISA 7.0 and sm_70 (integer arithmetic, loads, shuffles, one barrier), so the header is
# lowered to `.version 7.0` / `.target sm_70`: drivers from CUDA 11.0 on and GPUs from Volta
# on load it. That is only sound while the body really is PTX 7.0 / sm_70, hence the check
# below, which refuses anything it does not know to be.
set -u

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
src="$root/src/adapters/cuda/fingerprint.cu"
dst="$root/src/adapters/cuda/fingerprint.ptx"

# die MESSAGE [STATUS]: one line on stderr, exit STATUS (1 unless given).
die() {
  echo "gen-ptx.sh: $1" >&2
  exit "${2:-1}"
}

# Refuses PTX that uses an instruction or directive outside PTX ISA 7.0 on sm_70.
#
# An allow-list of opcodes (the part before the first '.') rather than a full parser: every
# instruction added after PTX 7.0 (redux, cp.async, mma shapes beyond sm_70, bmsk, szext,
# elect, tanh, the fp8 conversions' new opcodes...) arrives under a new opcode or carries a
# '::' qualifier (the cache-hint and eviction qualifiers of 7.4 and later: L1::no_allocate,
# L2::cache_hint, L2::128B), so refusing unknown opcodes and every '::' catches what a newer
# nvcc could emit for this kernel. The list holds what PTX 7.0 offers on sm_70 for this kind
# of code, not every instruction of 7.0: a new opcode in the kernel means looking it up in
# the PTX ISA manual and extending the list. The GPU check (scripts/gpu-suites) loads the
# result too, and the driver's JIT rejects an instruction newer than the file's .version.
check_isa() {
  awk '
    BEGIN {
      n = split("abs activemask add addc and atom bar barrier bfe bfi bfind bra brev brx call " \
                "clz cnot cvt cvta div exit fence fma isspacep ld ldu mad mad24 madc match " \
                "max membar min mov mul mul24 nanosleep neg not or popc prefetch prmt red rem " \
                "ret sad selp set setp shf shfl shl shr slct st sub subc vote xor", ops, " ")
      for (i = 1; i <= n; i++) ok[ops[i]] = 1
      n = split(".version .target .address_size .visible .extern .weak .entry .func .param " \
                ".reg .shared .local .global .const .align .maxntid .reqntid .minnctapersm " \
                ".maxnreg .pragma .file .loc", dirs, " ")
      for (i = 1; i <= n; i++) okdir[dirs[i]] = 1
      bad = 0
    }
    {
      line = $0
      sub(/\/\/.*/, "", line)
      gsub(/^[ \t]+|[ \t]+$/, "", line)
      if (line == "" || line ~ /^[{}()]/ || line ~ /^[$A-Za-z_][$A-Za-z0-9_]*:$/) next
      if (line ~ /^\./) {
        split(line, tok, /[ \t(]+/)
        if (!(tok[1] in okdir)) { printf "line %d: directive %s is not on the PTX 7.0 list\n", NR, tok[1]; bad = 1 }
        if (tok[1] == ".version" && line != ".version 7.0") { printf "line %d: %s (want .version 7.0)\n", NR, line; bad = 1 }
        if (tok[1] == ".target" && line != ".target sm_70") { printf "line %d: %s (want .target sm_70)\n", NR, line; bad = 1 }
        next
      }
      sub(/^@!?%[A-Za-z0-9_]+[ \t]+/, "", line)
      split(line, tok, /[ \t]+/)
      op = tok[1]; sub(/;$/, "", op)
      base = op; sub(/\..*/, "", base)
      if (!(base in ok)) { printf "line %d: instruction %s is not on the PTX 7.0 / sm_70 list\n", NR, op; bad = 1 }
      else if (op ~ /::/) { printf "line %d: instruction %s has a qualifier newer than PTX 7.0\n", NR, op; bad = 1 }
    }
    END { exit bad }
  ' "$1"
}

# Writes the normalised PTX to $1.
generate() {
  local out=$1 raw release
  [ -f "$src" ] || die "missing $src"
  raw=$(mktemp) || die "mktemp failed"
  # Compiled from the source's own folder with a relative name, so that no path of this
  # machine can reach the output. No -G / -lineinfo: they would add .file/.loc lines.
  if ! (cd "$(dirname "$src")" && nvcc -ptx -arch=compute_75 -o "$raw" "$(basename "$src")"); then
    rm -f "$raw"
    die "nvcc -ptx failed"
  fi
  release=$(nvcc --version | sed -n 's/.*release \([0-9][0-9.]*\).*/\1/p' | head -n 1)
  grep -q '^\.target sm_75$' "$raw" || { rm -f "$raw"; die "nvcc wrote an unexpected .target line: $(grep -m1 '^\.target' "$raw")"; }
  {
    echo "// Fingerprint v1 kernel (vram_monitor_fingerprint_v1). Generated from fingerprint.cu by"
    echo "// scripts/gen-ptx.sh with nvcc ${release:-unknown} (-ptx -arch=compute_75), header lowered to PTX 7.0 /"
    echo "// sm_70. Do not edit: change fingerprint.cu and run the script."
    echo "//"
    # nvcc's own leading comments name the compiler build (and could name paths): dropped, with
    # any other comment line naming a path. .file directives would carry paths too.
    awk '
      !started && /^\/\// { next }
      { started = 1 }
      /^[ \t]*\/\/.*(Compiler Build ID|Cuda compilation tools|Based on NVVM)/ { next }
      /^[ \t]*\/\/.*\/[A-Za-z0-9_.-]+\// { next }
      /^[ \t]*\.file[ \t]/ { next }
      /^\.version / { print ".version 7.0"; next }
      /^\.target / { print ".target sm_70"; next }
      { print }
    ' "$raw" | sed -e '/./,$!d'
  } >"$out"
  rm -f "$raw"
  grep -q '^\.visible \.entry vram_monitor_fingerprint_v1(' "$out" || die "the PTX has no entry vram_monitor_fingerprint_v1"
  local problems
  if ! problems=$(check_isa "$out"); then
    die "refused: the PTX uses what PTX ISA 7.0 / sm_70 lacks: $(echo "$problems" | head -n 1)"
  fi
}

case "${1:-}" in
  "" | --check) ;;
  *) die "usage: scripts/gen-ptx.sh [--check]" ;;
esac
command -v nvcc >/dev/null 2>&1 || die "nvcc not found: install the CUDA toolkit (12 or 13) or put it on PATH" 2

case "${1:-}" in
  "")
    tmp=$(mktemp) || die "mktemp failed"
    generate "$tmp"
    mv "$tmp" "$dst" || die "cannot write $dst"
    chmod 644 "$dst"
    echo "wrote src/adapters/cuda/fingerprint.ptx ($(grep -m1 '^\.version' "$dst"), $(grep -m1 '^\.target' "$dst"), $(wc -l <"$dst") lines)"
    ;;
  --check)
    [ -f "$dst" ] || die "no committed src/adapters/cuda/fingerprint.ptx to check"
    tmp=$(mktemp) || die "mktemp failed"
    trap 'rm -f "$tmp"' EXIT
    generate "$tmp"
    if ! cmp -s "$dst" "$tmp"; then
      diff -u "$dst" "$tmp" | sed "1s|.*|--- src/adapters/cuda/fingerprint.ptx (committed)|; 2s|.*|+++ regenerated from fingerprint.cu|"
      echo "gen-ptx.sh --check: src/adapters/cuda/fingerprint.ptx differs from what fingerprint.cu gives (a different nvcc release changes it too; the header names the committed one): run scripts/gen-ptx.sh" >&2
      exit 1
    fi
    echo "gen-ptx.sh --check: src/adapters/cuda/fingerprint.ptx matches fingerprint.cu"
    ;;
esac
