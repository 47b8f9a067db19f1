#!/usr/bin/env bash
# GPU suite: observability on a real GPU. Runs examples/observability.rs (carried as
# CARRY/bin/observability): it allocates two 64 MiB buffers with the CUDA driver API (through
# cudarc, as an engine would), registers them, and starts the built-in HTTP endpoint on
# 127.0.0.1. This suite fetches /health and /metrics (curl, else python3 urllib), frees a
# buffer behind the monitor's back and expects 503, restores it, prints the NVML device-health
# figures the library read from the real GPU (ECC, retired pages, remapped rows, XID support)
# next to what nvidia-smi says, and checks the port closes when the monitor is freed.
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

# fetch PATH OUTFILE -> prints the HTTP status code ("000" when no connection)
if command -v curl >/dev/null 2>&1; then
  client=curl
  fetch() { curl -s -m 20 -o "$2" -w '%{http_code}' "http://127.0.0.1:$port$1" || true; }
else
  client="python3 urllib (no curl here)"
  fetch() {
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
fi
echo "HTTP client: $client"

bin="$carry/bin/observability"
if [ ! -x "$bin" ]; then
  note_failure "missing $bin (scripts/gpu-test.sh prepare builds the examples)"
  printf '## Observability (HTTP endpoint, Prometheus metrics, NVML device health)\n\n**Not run**: %s is missing.\n' "$bin" >"$md"
  exit 1
fi

mkfifo "$work/in" "$work/out"
"$bin" --address 127.0.0.1:0 <"$work/in" >"$work/out" 2>"$work/example.log" &
example_pid=$!
exec 7>"$work/in"
exec 8<"$work/out"
if ! IFS= read -r -t 120 first <&8; then
  echo "the example did not start:"
  cat "$work/example.log"
  note_failure "the example did not start"
  printf '## Observability (HTTP endpoint, Prometheus metrics, NVML device health)\n\n**FAILED**: the example did not start.\n\n```text\n%s\n```\n' "$(cat "$work/example.log")" >"$md"
  exit 1
fi
port=${first#listening }
echo "endpoint: http://127.0.0.1:$port ($(cat "$work/example.log"))"

cmd() { # COMMAND OUTFILE
  local line
  echo "$1" >&7
  : >"$2"
  while IFS= read -r -t 60 line <&8; do
    [ "$line" = "done $1" ] && return 0
    printf '%s\n' "$line" >>"$2"
  done
  note_failure "no answer to '$1'"
  return 1
}

results=()
expect_code() { # WHAT PATH WANT OUTFILE
  local got
  got=$(fetch "$2" "$4")
  echo "$1: GET $2 -> $got (want $3)"
  results+=("| $1 | \`GET $2\` | $got | $3 |")
  [ "$got" = "$3" ] || note_failure "$1: GET $2 answered $got, not $3"
}

expect_code "healthy" /health 200 "$work/health.json"
expect_code "healthy" /metrics 200 "$work/metrics.txt"
expect_code "healthy" /readyz 200 "$work/readyz.json"
expect_code "healthy" /livez 200 "$work/livez.txt"
grep -qx 'vram_monitor_registrations 2' "$work/metrics.txt" || note_failure "/metrics lacks 'vram_monitor_registrations 2'"
cmd devices "$work/devices.json"
cmd free "$work/free.txt"
grep -qx 'healthy=false' "$work/free.txt" || note_failure "freeing a registered buffer did not make the check unhealthy: $(cat "$work/free.txt")"
expect_code "after cuMemFree of a registered buffer" /health 503 "$work/health503.json"
expect_code "after cuMemFree of a registered buffer" /metrics 200 "$work/metrics503.txt"
expect_code "after cuMemFree of a registered buffer" /readyz 503 "$work/readyz503.json"
expect_code "after cuMemFree (the monitor still checks)" /livez 200 "$work/livez-unhealthy.txt"
grep -qx 'vram_monitor_current_violations{verdict="NOT_MAPPED"} 1' "$work/metrics503.txt" ||
  note_failure "/metrics does not show the NOT_MAPPED violation"
cmd restore "$work/restore.txt"
expect_code "after the buffer is reloaded" /health 200 "$work/health-again.json"
echo quit >&7
IFS= read -r -t 60 last <&8 || last=
wait "$example_pid"
example_rc=$?
example_pid=
[ "$last" = stopped ] && [ "$example_rc" = 0 ] || note_failure "the example did not stop cleanly (last line '$last', exit $example_rc)"
after=$(fetch /health "$work/after.txt")
results+=("| after \`vram_monitor_free\` | \`GET /health\` | $after (no connection) | 000 |")
[ "$after" = 000 ] || note_failure "the endpoint still answered ($after) after the monitor was freed"

echo "== device health as the library read it (NVML):"
cat "$work/devices.json"

gpu=$(nvidia-smi --query-gpu=name,driver_version --format=csv,noheader 2>/dev/null | head -n 1)
python3 - "$work/devices.json" "$work/health.json" "$work/metrics.txt" "$gpu" "$client" "$md.body" <<'PY' || failures+=("device health check (see the log)")
import json, subprocess, sys, datetime
devices_path, health_path, metrics_path, gpu, client, out_path = sys.argv[1:7]
devices = json.loads(open(devices_path).read().strip() or "[]")
health = json.load(open(health_path))
metrics = open(metrics_path).read()
out = []
problems = []

def smi(uuid, field):
    try:
        r = subprocess.run(["nvidia-smi", "--id=" + uuid, "--query-gpu=" + field, "--format=csv,noheader,nounits"],
                           capture_output=True, text=True, timeout=30)
    except Exception as e:
        return "(nvidia-smi: %s)" % e
    text = (r.stdout.strip() or r.stderr.strip()).splitlines()
    return text[0].strip() if text else "(nothing)"

def show(v):
    if isinstance(v, bool):
        return "yes" if v else "no"
    return str(v)

if not devices:
    problems.append("no device-health entry for the GPU that holds the registrations")
for d in devices:
    out.append("### GPU%d: %s (%s)\n" % (d["device"], d.get("name"), d.get("uuid")))
    if d["nvml"] != "available":
        problems.append("GPU%d: NVML unavailable: %s" % (d["device"], d["detail"]))
        out.append("**NVML unavailable**: %s\n" % d["detail"])
        continue
    rows = [
        ("volatile uncorrectable ECC errors", "ecc_uncorrected_volatile", "ecc.errors.uncorrected.volatile.total"),
        ("retired pages pending", "retired_pages_pending", "retired_pages.pending"),
        ("remapped rows pending", "remapped_rows_pending", "remapped_rows.pending"),
        ("remapped rows failed", "remapped_rows_failed", "remapped_rows.failure"),
        ("rows remapped (correctable)", "remapped_rows_correctable", "remapped_rows.correctable"),
        ("rows remapped (uncorrectable)", "remapped_rows_uncorrectable", "remapped_rows.uncorrectable"),
        ("critical XID events seen", "critical_xid_events", None),
        ("last critical XID", "last_critical_xid", None),
    ]
    out.append("| figure | vram-monitor (NVML) | nvidia-smi `--query-gpu` | agree |")
    out.append("|---|---|---|---|")
    for label, key, field in rows:
        ours = d.get(key)
        theirs = smi(d["uuid"], field) if field and d.get("uuid") else "—"
        agree = "—"
        if field:
            t = theirs.lower()
            if isinstance(ours, bool) and t in ("yes", "no", "1", "0", "true", "false"):
                agree = "yes" if (t in ("yes", "1", "true")) == ours else "NO"
            elif isinstance(ours, int) and not isinstance(ours, bool) and t.isdigit():
                agree = "yes" if int(t) == ours else "NO"
            elif ours == "unsupported" and ("not supported" in t or "n/a" in t):
                agree = "yes"
            else:
                agree = "not comparable"
            if agree == "NO":
                problems.append("GPU%d %s: vram-monitor says %s, nvidia-smi says %s" % (d["device"], label, show(ours), theirs))
        out.append("| %s | %s | %s | %s |" % (label, show(ours) if ours is not None else "none", theirs, agree))
    out.append("")
    out.append("- memory fault: %s%s" % (show(d["memory_fault"]), (" — " + "; ".join(d["fault_reasons"])) if d["fault_reasons"] else ""))
    supported = [k for k in ("ecc_uncorrected_volatile", "retired_pages_pending", "remapped_rows_pending", "critical_xid_events") if d[k] not in ("unsupported", "unavailable")]
    out.append("- signals read (not unsupported/unavailable): %s" % (", ".join(supported) or "none"))
    xid = d["critical_xid_events"]
    out.append("- critical XID events: %s" % ("watched through an NVML event set (%d seen while the program ran)" % xid if isinstance(xid, int) else xid))
    if d["ecc_uncorrected_volatile"] == "unavailable":
        problems.append("GPU%d: the ECC counter could not be read" % d["device"])
    out.append("")

dev_lines = [l for l in metrics.splitlines() if l.startswith("vram_monitor_device_") or l.startswith("vram_monitor_faulty")]
open(out_path, "w").write("\n".join(out) + "\n\n**`/metrics`, the device families:**\n\n```text\n" + "\n".join(dev_lines) + "\n```\n\n**`/health` (healthy):**\n\n```json\n" + json.dumps(health, indent=1) + "\n```\n")
for p in problems:
    print("PROBLEM:", p)
sys.exit(1 if problems else 0)
PY

{
  echo "## Observability (HTTP endpoint, Prometheus metrics, NVML device health)"
  echo
  echo "- Date (UTC): $(date -u '+%Y-%m-%d %H:%M'); GPU, driver: $gpu"
  echo "- Program: \`examples/observability.rs\` (carried as \`bin/observability\`): two 64 MiB \`cuMemAlloc\` buffers registered, endpoint on 127.0.0.1:$port; client: $client"
  echo "- **Result: $([ ${#failures[@]} -eq 0 ] && echo PASS || echo "FAIL: ${failures[*]}")**"
  echo
  echo "| state | request | status | expected |"
  echo "|---|---|---|---|"
  printf '%s\n' "${results[@]}"
  echo
  echo "NVML device health read by the library from the real GPU, next to \`nvidia-smi\`:"
  echo
  cat "$md.body" 2>/dev/null || echo "(no device-health table: see the log)"
  rm -f "$md.body"
} >"$md"

if [ ${#failures[@]} -gt 0 ]; then
  printf 'FAILED: %s\n' "${failures[@]}"
  exit 1
fi
echo "observability suite: pass"
