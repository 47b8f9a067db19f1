#!/usr/bin/env bash
# GPU suite: the operations signals on a real GPU. Runs examples/observability.rs (carried as
# CARRY/bin/observability: two 64 MiB cuMemAlloc buffers on CUDA device 0, registered, the
# built-in endpoint on 127.0.0.1) and checks:
#   - /livez 200 and /readyz 200 while healthy; after a buffer is freed behind the monitor's
#     back /readyz 503 (unhealthy) but /livez still 200 (not stalled); both 200 once restored;
#   - the per-GPU series' `gpu` and `UUID` labels equal what NVML calls that GPU: the pair is
#     one of `nvidia-smi --query-gpu=index,uuid` (the numbering dcgm-exporter uses), and the
#     UUID is the one vram_monitor_device_info's `uuid` label and the JSON health give;
#   - the JSON health has `stalled: false` and the stall fields.
#   bash suite.sh CARRY MARKDOWN_FILE
set -u
carry=$1
md=$2
work=$(mktemp -d)
failures=()
example_pid=
cleanup() {
  exec 7>&- 8<&- 2>/dev/null
  [ -n "$example_pid" ] && kill "$example_pid" 2>/dev/null
  rm -rf "$work"
}
trap cleanup EXIT
note_failure() {
  echo "FAILED: $*"
  failures+=("$*")
}
title="## Operations (probes, stall fields, gpu/UUID labels against NVML)"

fetch() { # PATH OUTFILE -> status code ("000": no connection)
  python3 - "http://127.0.0.1:$port$1" "$2" <<'PY'
import sys, urllib.request, urllib.error
url, out = sys.argv[1], sys.argv[2]
try:
    with urllib.request.urlopen(url, timeout=20) as r:
        body, code = r.read(), r.status
except urllib.error.HTTPError as e:
    body, code = e.read(), e.code
except Exception:
    body, code = b"", 0
open(out, "wb").write(body)
print("%03d" % code)
PY
}

bin="$carry/bin/observability"
if [ ! -x "$bin" ]; then
  note_failure "missing $bin (scripts/gpu-test.sh prepare builds the examples)"
  printf '%s\n\n**Not run**: %s is missing.\n' "$title" "$bin" >"$md"
  exit 1
fi
if ! nvidia-smi --query-gpu=index,uuid --format=csv,noheader >"$work/nvml.csv" 2>"$work/nvml.err"; then
  note_failure "nvidia-smi --query-gpu=index,uuid failed: $(cat "$work/nvml.err")"
fi

mkfifo "$work/in" "$work/out"
"$bin" --address 127.0.0.1:0 <"$work/in" >"$work/out" 2>"$work/example.log" &
example_pid=$!
exec 7>"$work/in"
exec 8<"$work/out"
if ! IFS= read -r -t 120 first <&8; then
  note_failure "the example did not start"
  printf '%s\n\n**FAILED**: the example did not start.\n\n```text\n%s\n```\n' "$title" "$(cat "$work/example.log")" >"$md"
  exit 1
fi
port=${first#listening }
cmd() {
  local line
  echo "$1" >&7
  while IFS= read -r -t 60 line <&8; do [ "$line" = "done $1" ] && return 0; done
  note_failure "no answer to '$1'"
  return 1
}

rows=()
expect() { # STATE PATH WANT
  local got
  got=$(fetch "$2" "$work/body")
  echo "$1: GET $2 -> $got (want $3)"
  rows+=("| $1 | \`GET $2\` | $got | $3 |")
  [ "$got" = "$3" ] || note_failure "$1: GET $2 answered $got, not $3"
}

expect healthy /livez 200
expect healthy /readyz 200
fetch /health "$work/health.json" >/dev/null
fetch /metrics "$work/metrics.txt" >/dev/null
cmd free
expect "buffer freed (violation)" /readyz 503
expect "buffer freed (violation)" /livez 200
cmd restore
expect restored /readyz 200
expect restored /livez 200

python3 - "$work/metrics.txt" "$work/health.json" "$work/nvml.csv" >"$work/labels.md" <<'PY' || note_failure "labels or stall fields (see the table)"
import json, re, sys
metrics, health, nvml = open(sys.argv[1]).read(), json.load(open(sys.argv[2])), open(sys.argv[3]).read()
nvml_pairs = {tuple(x.strip() for x in line.split(",")) for line in nvml.splitlines() if line.strip()}
problems = []
labels_of = lambda line: dict(re.findall(r'([A-Za-z_]+)="([^"]*)"', line))
per_gpu = [labels_of(l) for l in metrics.splitlines() if l.startswith("vram_monitor_device_") and "{" in l]
if not per_gpu:
    problems.append("no per-GPU series")
for l in per_gpu:
    if "gpu" not in l or "UUID" not in l:
        problems.append(f"a per-GPU series without gpu/UUID: {l}")
info = [labels_of(l) for l in metrics.splitlines() if l.startswith("vram_monitor_device_info{")]
print("| CUDA device | gpu | UUID | in `nvidia-smi --query-gpu=index,uuid` |")
print("|---|---|---|---|")
for l in info:
    pair = (l.get("gpu", ""), l.get("UUID", ""))
    found = pair in nvml_pairs
    print(f"| {l.get('device')} | {pair[0]} | {pair[1]} | {'yes' if found else 'NO'} |")
    if not found:
        problems.append(f"gpu={pair[0]} UUID={pair[1]} is not one of nvidia-smi's {sorted(nvml_pairs)}")
    if not pair[1].startswith("GPU-") or l.get("uuid") != pair[1]:
        problems.append(f"UUID {pair[1]!r} is not NVML's GPU-... UUID (uuid label {l.get('uuid')!r})")
    dev = [d for d in health["devices"] if str(d["device"]) == l.get("device")]
    if not dev or dev[0].get("uuid") != pair[1] or str(dev[0].get("nvml_index")) != pair[0]:
        problems.append(f"the JSON health's device disagrees with the labels: {dev}")
if not info:
    problems.append("no vram_monitor_device_info series")
h = health["health"]
for field in ["stalled", "last_check_started_unix_ms", "check_in_progress_ms", "stall_deadline_ms", "stall_grace_ms"]:
    if field not in h:
        problems.append(f"health has no {field}")
if h.get("stalled") is not False:
    problems.append(f"stalled is {h.get('stalled')!r} on a healthy monitor")
print()
print("Problems: " + ("; ".join(problems) if problems else "none"))
sys.exit(1 if problems else 0)
PY
cat "$work/labels.md"
echo quit >&7

gpu=$(nvidia-smi --query-gpu=name,driver_version --format=csv,noheader 2>/dev/null | head -1)
{
  echo "$title"
  echo
  echo "- Date (UTC): $(date -u '+%Y-%m-%d %H:%M'); GPU, driver: $gpu"
  echo "- **Result: $([ ${#failures[@]} -eq 0 ] && echo PASS || echo "FAIL: ${failures[*]}")**"
  echo
  echo "| state | request | status | expected |"
  echo "|---|---|---|---|"
  printf '%s\n' "${rows[@]}"
  echo
  cat "$work/labels.md"
} >"$md"
if [ ${#failures[@]} -gt 0 ]; then
  printf 'FAILED: %s\n' "${failures[@]}"
  exit 1
fi
echo "operations suite: pass"
