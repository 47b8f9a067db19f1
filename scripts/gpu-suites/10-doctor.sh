#!/usr/bin/env bash
# GPU suite: vram-monitor-doctor on the GPU machine (what an operator would run first).
#   bash 10-doctor.sh CARRY MARKDOWN_FILE
# Runs CARRY/bin/vram-monitor-doctor (it creates GPU 0's primary context and allocates each
# kind of memory from the facts table), puts its whole output in the Markdown section, and
# fails unless it exits 0 (driver found, every kind of memory judged as expected). Then
# `--no-alloc`, which must report the same driver and exit 0 without allocating.
set -u
carry=${1:?usage: 10-doctor.sh CARRY MARKDOWN_FILE}
md=${2:?usage: 10-doctor.sh CARRY MARKDOWN_FILE}
doctor="$carry/bin/vram-monitor-doctor"
out=$(mktemp)
trap 'rm -f "$out"' EXIT

{
  printf '## vram-monitor-doctor on the GPU machine\n\n'
  printf -- '- date: %s\n' "$(date -u '+%Y-%m-%d %H:%M:%S UTC')"
  if command -v nvidia-smi >/dev/null 2>&1; then
    printf -- '- GPU: %s\n' "$(nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>&1 | head -n 1)"
  fi
} >"$md"

if [ ! -x "$doctor" ]; then
  [ -f "$doctor" ] && chmod u+x "$doctor"
fi
if [ ! -x "$doctor" ]; then
  echo "FAIL: $doctor is missing (was the carry prepared with the doctor built?)"
  printf -- '- **FAIL**: `bin/vram-monitor-doctor` is not in the carry\n' >>"$md"
  exit 1
fi

echo "== $doctor"
timeout 180 "$doctor" >"$out" 2>&1
rc=$?
cat "$out"
echo "exit status: $rc"

echo "== $doctor --no-alloc"
noalloc=$(timeout 60 "$doctor" --no-alloc 2>&1)
rc_noalloc=$?
echo "$noalloc"
echo "exit status: $rc_noalloc"

status=PASS
[ "$rc" = 0 ] || status="FAIL (exit status $rc)"
grep -q "the NVIDIA driver" "$out" || status="FAIL (did not report the NVIDIA driver)"
grep -q "^summary: .* 0 misjudged" "$out" || status="FAIL (no summary with 0 misjudged)"
[ "$rc_noalloc" = 0 ] && grep -q -- "--no-alloc: no memory allocated" <<<"$noalloc" || status="FAIL (--no-alloc: exit $rc_noalloc)"
{
  printf -- '- command: `bin/vram-monitor-doctor` (exit status %s); `--no-alloc` exit status %s\n' "$rc" "$rc_noalloc"
  printf -- '- **Result: %s**\n\n' "$status"
  printf '```text\n'
  cat "$out"
  printf '```\n'
} >>"$md"
[ "$status" = PASS ]
