#!/usr/bin/env bash
# The observability checks that need real programs, against the fake CUDA driver:
#   - curl against the built-in HTTP endpoint (examples/observability.rs): /health 200 and
#     503, /metrics, HEAD, 405 for other methods, 404 for other paths;
#   - malformed, oversized and slow requests over raw TCP (400, 431, 408; others still served);
#   - /livez and /readyz as Kubernetes probes them; an absolute-form request target;
#   - curl probes answered 200 while 8, then 100 idle connections crowd the endpoint (held
#     and re-opened); a second endpoint run under `ulimit -n 48` with 100 idle connections:
#     still answers, stops cleanly, and its port can be bound again;
#   - `promtool check metrics` on the exposition (Debian's prometheus package);
#   - a real Prometheus server (same package) scraping the endpoint on loopback every second,
#     queried through its HTTP API for the scraped values, healthy and then unhealthy;
#   - the port is closed once the monitor is freed;
#   - deploy/'s rules, dashboard and the dcgm join (scripts/operations-test.sh).
# Installs curl, python3 and prometheus with apt-get when run as root; otherwise names them.
# Where Debian's prometheus package cannot be installed, the exposition is validated with the
# Python prometheus_client parser instead and the scrape is reported skipped.
# Called by scripts/test.sh; takes about 30 seconds.
set -euo pipefail
cd "$(dirname "$0")/.."

have() { command -v "$1" >/dev/null 2>&1; }
need=()
have curl || need+=(curl)
have python3 || need+=(python3)
{ have promtool && have prometheus; } || need+=(prometheus)
if [ ${#need[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && have apt-get; then
    echo "== installing ${need[*]}"
    apt-get update -qq
    # The package's service is not started here (no init system; policy-rc.d may refuse it):
    # this script starts its own server on a free loopback port.
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null ||
      echo "note: apt-get could not install all of: ${need[*]}"
  else
    echo "error: missing ${need[*]}: run 'sudo apt-get install -y ${need[*]}' and run this again." >&2
    exit 1
  fi
fi
for tool in curl python3; do
  have "$tool" || { echo "error: $tool is required and could not be installed" >&2; exit 1; }
done
validator=promtool
if ! have promtool || ! have prometheus; then
  # The rules' unit tests, the dashboard's queries and the dcgm join need a real Prometheus:
  # without one this part would prove nothing, so it fails rather than skip. A developer
  # without the package may opt into the partial run (the exposition checked with the Python
  # prometheus_client parser, the operations tests not run).
  if [ "${VRAM_MONITOR_WITHOUT_PROMETHEUS:-0}" != 1 ]; then
    echo "error: promtool and prometheus are required: run 'sudo apt-get install -y prometheus' (or set VRAM_MONITOR_WITHOUT_PROMETHEUS=1 for a partial run) and run this again." >&2
    exit 1
  fi
  validator=python
  echo "note: VRAM_MONITOR_WITHOUT_PROMETHEUS=1: the exposition is validated with the Python"
  echo "      prometheus_client parser; the real Prometheus scrape and the operations tests are NOT run"
  python3 -c 'import prometheus_client' 2>/dev/null || python3 -m pip install -q prometheus_client ||
    { echo "error: neither promtool nor the Python prometheus_client parser could be installed" >&2; exit 1; }
fi

root=$PWD
work=$(mktemp -d)
example_pid=
prometheus_pid=
cleanup() {
  exec 7>&- 8<&- 5>&- 6<&- 2>/dev/null || true
  [ -n "$example_pid" ] && kill "$example_pid" 2>/dev/null || true
  [ -n "$prometheus_pid" ] && kill "$prometheus_pid" 2>/dev/null || true
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

echo "== building the example and the fake CUDA driver"
cargo build -q --example observability
fake="$root/target/fake-cuda/observability"
mkdir -p "$fake"
cc -std=c11 -O2 -shared -fPIC -pthread -Wl,-soname,libcuda.so.1 -o "$fake/libcuda.so.1" tests/fake_cuda/fake_cuda.c
ln -sf libcuda.so.1 "$fake/libcuda.so"

echo "== starting the endpoint (examples/observability.rs on the fake driver)"
mkfifo "$work/in" "$work/out"
LD_LIBRARY_PATH="$fake${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}" VRAM_MONITOR_LOG=warn \
  target/debug/examples/observability --address 127.0.0.1:0 --request-timeout-ms 1000 \
  <"$work/in" >"$work/out" 2>"$work/example.log" &
example_pid=$!
exec 7>"$work/in"
exec 8<"$work/out"
IFS= read -r -t 60 first <&8 || { echo "the example did not start:"; cat "$work/example.log"; exit 1; }
port=${first#listening }
url="http://127.0.0.1:$port"
echo "   $first ($url)"

# Sends a command to the example; its output goes to file $2.
cmd() {
  local line
  echo "$1" >&7
  : >"$2"
  while IFS= read -r -t 30 line <&8; do
    [ "$line" = "done $1" ] && return 0
    printf '%s\n' "$line" >>"$2"
  done
  echo "no answer to '$1'" >&2
  return 1
}

# Sends raw bytes (printf format) and prints the status code the server answered.
raw_status() {
  python3 - "$port" "$1" "${2:-0}" <<'PY'
import socket, sys, time
port, data, pause = int(sys.argv[1]), sys.argv[2].encode().decode("unicode_escape").encode("latin-1"), float(sys.argv[3])
s = socket.create_connection(("127.0.0.1", port), timeout=20)
s.sendall(data)
time.sleep(pause)
reply = b""
try:
    while True:
        chunk = s.recv(4096)
        if not chunk:
            break
        reply += chunk
except (ConnectionResetError, socket.timeout):
    pass
line = reply.split(b"\r\n", 1)[0].decode("latin-1")
print(line.split(" ")[1] if line.startswith("HTTP/1.1 ") else "none:" + line)
PY
}

http_code() { curl -s -o "${2:-/dev/null}" -w '%{http_code}' "${@:3}" "$url$1"; }

# Holds $2 connections to port $1 that send nothing, for $3 seconds, re-opening each one the
# server closes; with $4 = churn, also closes and re-opens them all continuously. Prints how
# many it opened.
crowd() {
  python3 - "$@" <<'PY'
import select, socket, sys, time
port, count, seconds, churn = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3]), len(sys.argv) > 4 and sys.argv[4] == "churn"
held, opened, end = [None] * count, 0, time.time() + seconds
while time.time() < end:
    for i, s in enumerate(held):
        if s is not None and not churn and not select.select([s], [], [], 0)[0]:
            continue
        if s is not None:
            s.close()
        try:
            held[i] = socket.create_connection(("127.0.0.1", port), timeout=5)
            opened += 1
        except OSError:
            held[i] = None
    time.sleep(0.005)
print(opened)
PY
}

# Probes $1 (a URL) $2 times while a crowd runs; prints how many probes got 200.
probes_ok() {
  local ok=0 i
  for i in $(seq "$2"); do
    [ "$(curl -s -o /dev/null --max-time 10 -w '%{http_code}' "$1/health")" = 200 ] && ok=$((ok + 1))
    sleep 0.02
  done
  echo "$ok"
}

json_is() { # FILE PYTHON-EXPRESSION-ON-d
  python3 -c 'import json,sys; d=json.load(open(sys.argv[1])); sys.exit(0 if eval(sys.argv[2]) else 1)' "$1" "$2"
}

validate_metrics() {
  if [ "$validator" = promtool ]; then
    promtool check metrics <"$1" >"$work/promtool.txt" 2>&1
    local rc=$?
    [ -s "$work/promtool.txt" ] && sed 's/^/     promtool: /' "$work/promtool.txt"
    [ "$rc" = 0 ] && [ ! -s "$work/promtool.txt" ]
  else
    python3 - "$1" <<'PY'
import sys
from prometheus_client.parser import text_string_to_metric_families
families = list(text_string_to_metric_families(open(sys.argv[1]).read()))
assert families, "no families"
PY
  fi
}

echo "== curl against the endpoint"
check "GET /health is 200 while healthy" [ "$(http_code /health "$work/health.json")" = 200 ]
check "/health is the documented JSON, healthy" json_is "$work/health.json" \
  'd["health"]["healthy"] is True and d["health"]["registrations"] == 2 and isinstance(d["devices"], list) and "registrations" not in d'
check "GET /metrics is 200" [ "$(http_code /metrics "$work/metrics.txt" -D "$work/metrics.headers")" = 200 ]
check "/metrics says text/plain; version=0.0.4" grep -qi '^content-type: text/plain; version=0.0.4' "$work/metrics.headers"
check "/metrics counts the registrations" grep -qx 'vram_monitor_registrations 2' "$work/metrics.txt"
check "$validator accepts the exposition (healthy)" validate_metrics "$work/metrics.txt"
check "HEAD /metrics is 200" [ "$(http_code /metrics /dev/null -I)" = 200 ]
check "POST /health is 405" [ "$(http_code /health "$work/post.txt" -X POST -D "$work/post.headers" -d x=1)" = 405 ]
check "405 names the allowed methods" grep -qi '^allow: GET, HEAD' "$work/post.headers"
check "DELETE /metrics is 405" [ "$(http_code /metrics /dev/null -X DELETE)" = 405 ]
check "GET /nope is 404" [ "$(http_code /nope)" = 404 ]
check "GET / is 200" [ "$(http_code /)" = 200 ]

echo "== malformed, oversized and slow requests"
check "a request line that is not HTTP is 400" [ "$(raw_status 'GARBAGE\r\n\r\n')" = 400 ]
check "a header name with a space is 400" [ "$(raw_status 'GET /health HTTP/1.1\r\nBad Header: x\r\n\r\n')" = 400 ]
check "a TLS client hello is 400" [ "$(raw_status '\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03\r\n\r\n')" = 400 ]
check "HTTP/2's preface is 505" [ "$(raw_status 'PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n')" = 505 ]
check "HTTP/1.0 without a Host header is served" [ "$(raw_status 'GET /health HTTP/1.0\r\n\r\n')" = 200 ]
big=$(head -c 10000 /dev/zero | tr '\0' a)
check "a 10 KB header is 431" [ "$(http_code /health /dev/null -H "X-Big: $big")" = 431 ]
# A slow client: half a request line, then nothing. Others are served meanwhile; it gets 408.
raw_status 'GET /hea' 0 >"$work/slow.txt" &
slow_pid=$!
sleep 0.2
check "a request is served while a slow client waits" [ "$(http_code /health)" = 200 ]
wait "$slow_pid" || true
check "the slow client gets 408 after the request time (1 s here)" [ "$(cat "$work/slow.txt")" = 408 ]
check "the endpoint still serves after all that" [ "$(http_code /health)" = 200 ]

echo "== probes as Kubernetes sends them; absolute-form targets"
check "GET /livez is 200 while the monitor checks" [ "$(http_code /livez)" = 200 ]
check "GET /readyz is 200 while healthy" [ "$(http_code /readyz "$work/readyz.json")" = 200 ]
check "/readyz is the /health JSON" json_is "$work/readyz.json" 'd["health"]["healthy"] is True'
check "HEAD /livez is 200" [ "$(http_code /livez /dev/null -I)" = 200 ]
check "an absolute-form target routes by its path" \
  [ "$(http_code /health /dev/null --request-target "http://127.0.0.1:$port/health")" = 200 ]
check "a query string is ignored for routing" [ "$(http_code '/readyz?verbose=1')" = 200 ]

echo "== idle connections crowding the endpoint (probes must all be answered 200)"
for spec in "8 hold" "100 hold" "100 churn"; do
  set -- $spec
  crowd "$port" "$1" 6 "$2" >"$work/crowd.txt" &
  crowd_pid=$!
  sleep 0.5
  ok=$(probes_ok "$url" 100)
  wait "$crowd_pid" || true
  check "$1 idle connections ($2, $(cat "$work/crowd.txt") opened): 100/100 probes answered 200 (got $ok)" [ "$ok" = 100 ]
done

echo "== unhealthy: a buffer freed behind the monitor's back"
cmd free "$work/free.txt"
check "the check sees it" grep -qx 'healthy=false' "$work/free.txt"
check "GET /health is 503 while unhealthy" [ "$(http_code /health "$work/health503.json")" = 503 ]
check "GET /readyz is 503 while unhealthy" [ "$(http_code /readyz)" = 503 ]
check "GET /livez stays 200 while unhealthy (the monitor is still checking)" [ "$(http_code /livez)" = 200 ]
check "the 503 body says why" json_is "$work/health503.json" 'd["health"]["healthy"] is False and d["health"]["current_violations"] == 1'
http_code /metrics "$work/metrics-bad.txt" >/dev/null
check "/metrics: vram_monitor_healthy 0" grep -qx 'vram_monitor_healthy 0' "$work/metrics-bad.txt"
check "/metrics: one NOT_MAPPED violation" grep -qx 'vram_monitor_current_violations{verdict="NOT_MAPPED"} 1' "$work/metrics-bad.txt"
check "$validator accepts the exposition (unhealthy)" validate_metrics "$work/metrics-bad.txt"
cmd restore "$work/restore.txt"
check "healthy again after the engine reloads the buffer" [ "$(http_code /health)" = 200 ]
cmd devices "$work/devices.txt"
if python3 -c 'import ctypes; ctypes.CDLL("libnvidia-ml.so.1")' 2>/dev/null; then
  echo "  skipped: device health without NVML (NVML is installed here)"
else
  check "device health without NVML says unavailable, not zero" grep -q '"ecc_uncorrected_volatile":"unavailable"' "$work/devices.txt"
fi

if [ "$validator" = promtool ]; then
  echo "== a real Prometheus scraping the endpoint"
  pport=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
  mkdir -p "$work/tsdb"
  cat >"$work/prometheus.yml" <<EOF
global:
  scrape_interval: 1s
  evaluation_interval: 1s
scrape_configs:
  - job_name: vram-monitor
    static_configs:
      - targets: ['127.0.0.1:$port']
EOF
  prometheus --config.file="$work/prometheus.yml" --storage.tsdb.path="$work/tsdb" \
    --web.listen-address="127.0.0.1:$pport" --log.level=warn >"$work/prometheus.log" 2>&1 &
  prometheus_pid=$!
  purl="http://127.0.0.1:$pport"
  # Polls the query until its single result has the value; prints the last answer.
  query_until() {
    local query=$1 want=$2 deadline=$((SECONDS + 30))
    while [ "$SECONDS" -lt "$deadline" ]; do
      if curl -s -G "$purl/api/v1/query" --data-urlencode "query=$query" -o "$work/q.json" 2>/dev/null &&
        python3 -c 'import json,sys; r=json.load(open(sys.argv[1]))["data"]["result"]; sys.exit(0 if len(r)==1 and r[0]["value"][1]==sys.argv[2] else 1)' \
          "$work/q.json" "$want" 2>/dev/null; then
        echo "     $query = $want"
        return 0
      fi
      sleep 0.5
    done
    echo "     $query: last answer: $(cat "$work/q.json" 2>/dev/null)"
    return 1
  }
  check "Prometheus is up" bash -c 'for i in $(seq 60); do curl -sf "$0/-/ready" >/dev/null && exit 0; sleep 0.5; done; exit 1' "$purl"
  check "Prometheus scrapes the endpoint (up = 1)" query_until 'up{job="vram-monitor"}' 1
  check "Prometheus has the scraped registrations (2)" query_until 'vram_monitor_registrations{job="vram-monitor"}' 2
  check "Prometheus has healthy = 1" query_until 'vram_monitor_healthy{job="vram-monitor"}' 1
  cmd free "$work/free2.txt"
  check "Prometheus sees the violation (healthy = 0)" query_until 'vram_monitor_healthy{job="vram-monitor"}' 0
  check "Prometheus sees it by verdict" query_until 'vram_monitor_current_violations{job="vram-monitor",verdict="NOT_MAPPED"}' 1
  curl -s "$purl/api/v1/targets" -o "$work/targets.json" || true
  check "Prometheus reports the target healthy, with no scrape error" json_is "$work/targets.json" \
    '[(t["health"], t["lastError"]) for t in d["data"]["activeTargets"]] == [("up", "")]'
  kill "$prometheus_pid" 2>/dev/null || true
  wait "$prometheus_pid" 2>/dev/null || true
  prometheus_pid=
else
  echo "== a real Prometheus scraping the endpoint: skipped (Debian's prometheus package is not installable here)"
fi

echo "== freeing the monitor stops the endpoint"
echo quit >&7
IFS= read -r -t 30 last <&8 || last=
check "the example freed its monitor" [ "$last" = stopped ]
set +e
wait "$example_pid" 2>/dev/null
example_rc=$?
set -e
example_pid=
check "the example exited cleanly" [ "$example_rc" = 0 ]
set +e
curl -s -o /dev/null "$url/health"
curl_rc=$?
set -e
check "the port is closed once the monitor is freed (curl: connection refused)" [ "$curl_rc" = 7 ]

echo "== out of file descriptors (ulimit -n 48, 100 idle connections): still answers, stops, frees the port"
mkfifo "$work/in2" "$work/out2"
( ulimit -n 48 && LD_LIBRARY_PATH="$fake${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}" VRAM_MONITOR_LOG=warn \
  exec target/debug/examples/observability --address 127.0.0.1:0 <"$work/in2" >"$work/out2" 2>"$work/example2.log" ) &
example_pid=$!
exec 5>"$work/in2"
exec 6<"$work/out2"
IFS= read -r -t 60 first2 <&6 || { echo "the second example did not start:"; cat "$work/example2.log"; exit 1; }
port2=${first2#listening }
crowd "$port2" 100 6 >"$work/crowd2.txt" &
crowd_pid=$!
sleep 0.5
in_use=$(ls "/proc/$example_pid/fd" | wc -l)
ok=$(probes_ok "http://127.0.0.1:$port2" 50)
wait "$crowd_pid" || true
check "the crowd used up the endpoint's descriptors ($in_use of 48 open)" [ "$in_use" -ge 46 ]
check "50/50 probes answered 200 with 100 idle connections and 48 descriptors (got $ok; $(cat "$work/crowd2.txt") opened)" [ "$ok" = 50 ]
echo quit >&5
IFS= read -r -t 30 last2 <&6 || last2=
exec 5>&- 6<&-
check "the second example freed its monitor" [ "$last2" = stopped ]
set +e
wait "$example_pid" 2>/dev/null
example_rc=$?
set -e
example_pid=
check "it exited cleanly" [ "$example_rc" = 0 ]
# SO_REUSEADDR as servers bind (std does): it tolerates the closed connections' TIME_WAIT but
# not a socket still listening there.
check "its port can be listened on again at once" python3 -c '
import socket, sys
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("127.0.0.1", int(sys.argv[1])))
s.listen()' "$port2"

# ---- operations: deploy/'s alert and recording rules (promtool), the Grafana dashboard's
# queries and the dcgm-exporter join against a real Prometheus: scripts/operations-test.sh.
if [ "$validator" = promtool ]; then
  echo "== operations (scripts/operations-test.sh)"
  check "operations: rules, dashboard queries and the dcgm join" bash scripts/operations-test.sh
else
  echo "== operations: skipped (needs Debian's prometheus package for promtool and a real Prometheus)"
fi

if [ "$failed" -gt 0 ]; then
  echo "--- example log:"
  cat "$work/example.log"
  [ -f "$work/example2.log" ] && { echo "--- second example log:"; cat "$work/example2.log"; }
fi
echo "observability: $passed passed, $failed failed"
[ "$failed" = 0 ]
