#!/usr/bin/env bash
# The operations artefacts in deploy/, tested against real programs on the fake CUDA driver:
#   - `promtool check rules` and `promtool test rules` on deploy/prometheus/ (each alert
#     firing and not firing);
#   - a real Prometheus scraping two jobs: the endpoint (examples/observability.rs, its device
#     health from a fixture with a known UUID) and a static file in dcgm-exporter's format
#     (served by python3 -m http.server), with the rules loaded;
#   - every panel's query in deploy/grafana/vram-monitor-dashboard.json run against it: an
#     error or an empty answer fails;
#   - the documented dcgm join (`... * on(UUID) group_left ... DCGM_FI_DEV_FB_USED`)
#     returning the joined series;
#   - /readyz and /livez with curl: 200 while healthy; a driver query held in the fake driver
#     stalls the monitor: /livez and /readyz 503, vram_monitor_stalled 1, VramMonitorStalled
#     firing; both 200 again once released;
#   - no alert firing while healthy, VramMonitorResidencyViolation firing after a buffer is
#     freed behind the monitor's back.
# Called by scripts/observability-test.sh (which installs prometheus, curl and python3 as
# root); takes about 20 seconds.
set -euo pipefail
cd "$(dirname "$0")/.."

for tool in promtool prometheus curl python3; do
  command -v "$tool" >/dev/null 2>&1 ||
    { echo "error: $tool is missing: run 'sudo apt-get install -y prometheus curl python3' and run this again." >&2; exit 1; }
done

root=$PWD
work=$(mktemp -d)
example_pid=
prometheus_pid=
dcgm_pid=
cleanup() {
  exec 7>&- 8<&- 2>/dev/null || true
  for pid in "$example_pid" "$prometheus_pid" "$dcgm_pid"; do
    [ -n "$pid" ] && kill "$pid" 2>/dev/null || true
  done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

passed=0
failed=0
pass() { echo "  ok: $*"; passed=$((passed + 1)); }
fail() { echo "  FAILED: $*"; failed=$((failed + 1)); }
check() {
  local what=$1
  shift
  if "$@"; then pass "$what"; else fail "$what"; fi
}
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

echo "== promtool on deploy/prometheus"
check "promtool check rules" promtool check rules deploy/prometheus/vram-monitor-rules.yml
check "promtool test rules (each alert firing and not firing)" \
  bash -c 'cd deploy/prometheus && promtool test rules vram-monitor-rules.test.yml'

echo "== the endpoint, a dcgm-exporter file and a Prometheus scraping both"
cargo build -q --example observability
fake="$root/target/fake-cuda/operations"
mkdir -p "$fake"
cc -std=c11 -O2 -shared -fPIC -pthread -Wl,-soname,libcuda.so.1 -o "$fake/libcuda.so.1" tests/fake_cuda/fake_cuda.c
ln -sf libcuda.so.1 "$fake/libcuda.so"
uuid=GPU-0d3f1e2a-7c4b-4e9a-9b1d-2f6a8c0e4b71
mkfifo "$work/in" "$work/out"
LD_LIBRARY_PATH="$fake${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}" VRAM_MONITOR_LOG=warn \
  target/debug/examples/observability --address 127.0.0.1:0 --device-health-fixture "$uuid" \
  <"$work/in" >"$work/out" 2>"$work/example.log" &
example_pid=$!
exec 7>"$work/in"
exec 8<"$work/out"
IFS= read -r -t 60 first <&8 || { echo "the example did not start:"; cat "$work/example.log"; exit 1; }
port=${first#listening }
cmd() {
  local line
  echo "$1" >&7
  while IFS= read -r -t 30 line <&8; do [ "$line" = "done $1" ] && return 0; done
  return 1
}

# dcgm-exporter's format (labels as it writes them; FB in MiB): our GPU and another one.
mkdir -p "$work/dcgm"
cat >"$work/dcgm/metrics" <<DCGM
# HELP DCGM_FI_DEV_FB_USED Framebuffer memory used (in MiB).
# TYPE DCGM_FI_DEV_FB_USED gauge
DCGM_FI_DEV_FB_USED{gpu="0",UUID="$uuid",pci_bus_id="00000000:07:00.0",device="nvidia0",modelName="NVIDIA H100 80GB HBM3",Hostname="node-1",DCGM_FI_DRIVER_VERSION="580.95.05"} 1024
DCGM_FI_DEV_FB_USED{gpu="1",UUID="GPU-99999999-8888-7777-6666-555555555555",pci_bus_id="00000000:08:00.0",device="nvidia1",modelName="NVIDIA H100 80GB HBM3",Hostname="node-1",DCGM_FI_DRIVER_VERSION="580.95.05"} 0
# HELP DCGM_FI_DEV_FB_FREE Framebuffer memory free (in MiB).
# TYPE DCGM_FI_DEV_FB_FREE gauge
DCGM_FI_DEV_FB_FREE{gpu="0",UUID="$uuid",pci_bus_id="00000000:07:00.0",device="nvidia0",modelName="NVIDIA H100 80GB HBM3",Hostname="node-1",DCGM_FI_DRIVER_VERSION="580.95.05"} 80000
DCGM
dport=$(free_port)
python3 -m http.server "$dport" --bind 127.0.0.1 --directory "$work/dcgm" >"$work/dcgm.log" 2>&1 &
dcgm_pid=$!

pport=$(free_port)
cp deploy/prometheus/vram-monitor-rules.yml "$work/"
cat >"$work/prometheus.yml" <<YML
global:
  scrape_interval: 1s
  evaluation_interval: 1s
rule_files: [vram-monitor-rules.yml]
scrape_configs:
  - job_name: vram-monitor
    static_configs: [{targets: ['127.0.0.1:$port']}]
  - job_name: dcgm
    static_configs: [{targets: ['127.0.0.1:$dport']}]
YML
prometheus --config.file="$work/prometheus.yml" --storage.tsdb.path="$work/tsdb" \
  --web.listen-address="127.0.0.1:$pport" --log.level=warn >"$work/prometheus.log" 2>&1 &
prometheus_pid=$!
purl="http://127.0.0.1:$pport"

# query_check QUERY PYTHON-CONDITION-ON-r (the result list): polls up to 30 s; prints the
# last answer when it never holds. An error answer fails at once.
query_check() {
  local query=$1 condition=$2 deadline=$((SECONDS + 30)) verdict
  while [ "$SECONDS" -lt "$deadline" ]; do
    curl -s -G "$purl/api/v1/query" --data-urlencode "query=$query" -o "$work/q.json" 2>/dev/null || { sleep 0.5; continue; }
    verdict=$(python3 -c '
import json, sys
d = json.load(open(sys.argv[1]))
if d.get("status") != "success":
    print("error"); sys.exit()
r = d["data"]["result"]
print("yes" if eval(sys.argv[2]) else "no")' "$work/q.json" "$condition" 2>/dev/null || echo no)
    case $verdict in
      yes) return 0 ;;
      error) echo "     $query: $(cat "$work/q.json")"; return 1 ;;
    esac
    sleep 0.5
  done
  echo "     $query: last answer: $(cat "$work/q.json" 2>/dev/null)"
  return 1
}
check "Prometheus is up" bash -c 'for i in $(seq 60); do curl -sf "$0/-/ready" >/dev/null && exit 0; sleep 0.5; done; exit 1' "$purl"
check "both jobs are scraped" query_check 'sum(up{job=~"vram-monitor|dcgm"})' 'len(r) == 1 and r[0]["value"][1] == "2"'
check "the per-GPU series carry gpu and UUID as dcgm-exporter does" query_check \
  "vram_monitor_device_tracked_bytes{job=\"vram-monitor\",gpu=\"0\",UUID=\"$uuid\"}" 'len(r) == 1'
check "the recording rules have data" query_check 'vram_monitor:current_violations:sum' 'len(r) == 1 and r[0]["value"][1] == "0"'

echo "== every dashboard panel's query"
python3 - deploy/grafana/vram-monitor-dashboard.json >"$work/exprs.txt" <<'PY'
import json, sys
d = json.load(open(sys.argv[1]))
assert d["panels"], "no panels"
for p in d["panels"]:
    targets = p.get("targets") or []
    assert targets, f"panel {p['title']!r} has no query"
    for t in targets:
        # Grafana's variables, as the dashboard's defaults set them.
        print(t["expr"].replace("$job", "vram-monitor").replace("$__rate_interval", "1m"))
PY
while IFS= read -r expr; do
  check "panel query returns data: $expr" query_check "$expr" 'len(r) > 0'
done <"$work/exprs.txt"

echo "== the dcgm-exporter join"
check "vram_monitor_device_info * on(UUID) group_left(modelName, Hostname) DCGM_FI_DEV_FB_USED joins one series" \
  query_check 'vram_monitor_device_info{job="vram-monitor"} * on(UUID) group_left(modelName, Hostname) DCGM_FI_DEV_FB_USED' \
  "len(r) == 1 and r[0][\"metric\"][\"UUID\"] == \"$uuid\" and r[0][\"metric\"][\"modelName\"] == \"NVIDIA H100 80GB HBM3\" and r[0][\"metric\"][\"device\"] == \"0\" and r[0][\"value\"][1] == \"1024\""
check "the share of used memory (registered bytes / FB used) is the registered 128 MiB over 1024 MiB" \
  query_check 'vram_monitor_device_tracked_bytes{job="vram-monitor"} / on(UUID) group_left(modelName, Hostname) (DCGM_FI_DEV_FB_USED * 1024 * 1024)' \
  'len(r) == 1 and r[0]["value"][1] == "0.125" and r[0]["metric"]["Hostname"] == "node-1"'

echo "== the probes with curl: /readyz (= healthy) and /livez (503 only when stalled)"
code() { curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$port$1"; }
code_until() { # PATH WANT: polls up to 30 s
  local deadline=$((SECONDS + 30)) got
  while [ "$SECONDS" -lt "$deadline" ]; do
    got=$(code "$1")
    [ "$got" = "$2" ] && return 0
    sleep 0.2
  done
  echo "     GET $1: $got, not $2"
  return 1
}
check "GET /readyz is 200 while healthy" [ "$(code /readyz)" = 200 ]
check "GET /livez is 200 while checking" [ "$(code /livez)" = 200 ]
cmd hang
check "GET /livez turns 503 once a held driver query stalls the monitor" code_until /livez 503
check "GET /readyz is 503 while stalled" [ "$(code /readyz)" = 503 ]
check "Prometheus sees vram_monitor_stalled 1" query_check 'vram_monitor_stalled{job="vram-monitor"}' 'len(r) == 1 and r[0]["value"][1] == "1"'
check "VramMonitorStalled fires" query_check 'ALERTS{alertname="VramMonitorStalled",alertstate="firing"}' 'len(r) == 1'
cmd unhang
check "GET /livez is 200 again once the query returns" code_until /livez 200
check "GET /readyz is 200 again" code_until /readyz 200

echo "== the alerts on live data"
check "no alert fires while healthy" query_check 'count(ALERTS{alertstate="firing"}) or vector(0)' 'r[0]["value"][1] == "0"'
cmd free
check "VramMonitorResidencyViolation fires once a buffer is freed behind the monitor's back" \
  query_check 'ALERTS{alertname="VramMonitorResidencyViolation",alertstate="firing"}' 'len(r) == 1'
echo quit >&7

if [ "$failed" -gt 0 ]; then
  echo "--- example log:"; cat "$work/example.log"
  echo "--- prometheus log:"; cat "$work/prometheus.log"
fi
echo "operations: $passed passed, $failed failed"
[ "$failed" = 0 ]
