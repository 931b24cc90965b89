#!/usr/bin/env bash
# Streamgate cluster benchmark (issue 10, docs/BENCHMARKS.md "Cluster (issue 10)"). One command:
#
#   bench/cluster.sh            full run (~1 min on 2 cores, plus the build the first time)
#   bench/cluster.sh --quick    smoke run with small N (~40 s)
#
# Everything on 127.0.0.1: a private PostgreSQL 15 in a temporary directory (as the postgres user
# when run as root, like tests/support/pg_server.cpp), three relays n1 n2 n3 on it in cluster mode
# (--registry, --node-id, --cluster-listen, --public-url, --admin-listen; n2 and n3 get n1's CA
# copied into their data directories), then:
#   1. stream set-up, same node against cross node: one device proxy on n1 in front of an echo
#      server; a service proxy on n1 (same node: n1 holds the device) and one on n2 (cross node:
#      n2 asks n1 over the cluster listener, both sides join n1). sg_bench_latency setup, N one at a
#      time on each, in two alternating passes (same, cross, same, cross);
#   2. new streams per second through the 3 nodes: a service proxy on each node, 3 clients each
#      (sg_bench_tcp rate), all at once; beside it the same 9 clients on 3 service proxies all on
#      n1 (every stream same-node);
#   3. failover: D idle devices (sg_device_swarm connect --relay n1 --relay n2 --relay n3
#      --reconnect 1, the device proxy's jittered backoff) all on n1, then kill -9 n1: how long
#      until every device is connected to n2/n3 again (the swarm's view and the database's view,
#      its presence rows), a per-second histogram of the reconnections, and the presence writes
#      per second the database took meanwhile (claims from the presence_claims sequence, sampled
#      every 0.25 s, and the rows' own `since` times). Not pg_stat_database's xact_commit: backends
#      flush it lazily (at most once a second, an idle one 10 s later, a killed node's backends
#      when they exit): in a 300-device run it put 1.7 times the statements the relays ran
#      (counted with log_statement=all) into the failover's window.
# Writes bench/results/cluster-latest.json and prints a table. Every process it starts is
# stopped on exit; every wait has a bound.
#
# Options:
#   --quick              small sizes (setups 50, devices 300, rate 3 s, time limit 120 s)
#   --setups N           sequential set-ups per path and pass (default 300)
#   --devices N          idle devices for the failover (default 3000)
#   --rate-seconds S     duration of each streams/s measurement (default 10)
#   --lease S            --cluster-lease of the relays (default: theirs, 10)
#   --out FILE           JSON output (default bench/results/cluster-latest.json)
#   --build-dir DIR      (default build-bench, shared with bench/run.sh)
#   --no-build           use the binaries already in the build dir
#   --keep-workdir       keep the temporary directory (every process's log) after the run
#   --time-limit S       stop everything after S seconds (default 360; quick 120)
set -euo pipefail

BENCH_DIR=$(cd "$(dirname "$0")" && pwd)
REPO=$(cd "$BENCH_DIR/.." && pwd)
COMMAND_LINE="bench/cluster.sh $*"

QUICK=0 SETUPS="" DEVICES="" RATE_SECONDS="" LEASE="" OUT="$BENCH_DIR/results/cluster-latest.json"
BUILD_DIR="$REPO/build-bench" DO_BUILD=1 KEEP=0 TIME_LIMIT=""
while [ $# -gt 0 ]; do
  case "$1" in
    --quick) QUICK=1 ;;
    --setups) SETUPS=$2; shift ;;
    --devices) DEVICES=$2; shift ;;
    --rate-seconds) RATE_SECONDS=$2; shift ;;
    --lease) LEASE=$2; shift ;;
    --out) OUT=$2; shift ;;
    --build-dir) BUILD_DIR=$2; shift ;;
    --no-build) DO_BUILD=0 ;;
    --keep-workdir) KEEP=1 ;;
    --time-limit) TIME_LIMIT=$2; shift ;;
    -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) echo "unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
  shift
done
if [ "$QUICK" = 1 ]; then
  : "${SETUPS:=50}" "${DEVICES:=300}" "${RATE_SECONDS:=3}" "${TIME_LIMIT:=120}"
else
  : "${SETUPS:=300}" "${DEVICES:=3000}" "${RATE_SECONDS:=10}" "${TIME_LIMIT:=360}"
fi
OUT=$(realpath -m "$OUT")
BUILD_DIR=$(realpath -m "$BUILD_DIR")
log() { printf '[%s] %s\n' "$(date +%T)" "$*" >&2; }
START_EPOCH=$(date +%s)
LOAD_START=$(cut -d' ' -f1-3 /proc/loadavg)

# ---------------------------------------------------------------------------------------------
# Build (the same Release tree and targets as bench/run.sh) and binaries.
PG_BIN=${SG_PG_BIN:-/usr/lib/postgresql/15/bin}
[ -x "$PG_BIN/postgres" ] || { echo "no $PG_BIN/postgres (scripts/install-deps.sh installs postgresql-15)" >&2; exit 1; }
if grep -Eq '^[[:space:]]*add_subdirectory\([[:space:]]*bench[[:space:]]*\)' "$REPO/CMakeLists.txt"; then
  SOURCE_DIR=$REPO
else
  SOURCE_DIR=$BENCH_DIR
fi
if [ "$DO_BUILD" = 1 ]; then
  if [ -f "$BUILD_DIR/CMakeCache.txt" ] && ! grep -qx "CMAKE_HOME_DIRECTORY:INTERNAL=$SOURCE_DIR" "$BUILD_DIR/CMakeCache.txt"; then
    log "$BUILD_DIR was configured from another source directory; starting it afresh"
    rm -rf "$BUILD_DIR"
  fi
  log "building (Release) in $BUILD_DIR"
  cmake -S "$SOURCE_DIR" -B "$BUILD_DIR" -G Ninja -DCMAKE_BUILD_TYPE=Release -DSTREAMGATE_BUILD_TESTS=OFF >/dev/null
  ninja -C "$BUILD_DIR" streamgate-relay streamgate-device-proxy streamgate-service-proxy \
    sg_device_swarm sg_bench_latency sg_bench_tcp >"$BUILD_DIR/bench-build.log" 2>&1 ||
    { tail -n 40 "$BUILD_DIR/bench-build.log" >&2; exit 1; }
fi
find_binary() {
  local f
  f=$(find "$BUILD_DIR" -type f -name "$1" -perm -u+x -not -path '*/CMakeFiles/*' | head -n 1)
  [ -n "$f" ] || { echo "no $1 under $BUILD_DIR (run without --no-build)" >&2; exit 1; }
  echo "$f"
}
RELAY=$(find_binary streamgate-relay)
DEVICE_PROXY=$(find_binary streamgate-device-proxy)
SERVICE_PROXY=$(find_binary streamgate-service-proxy)
SWARM=$(find_binary sg_device_swarm)
LATENCY=$(find_binary sg_bench_latency)
TCPTOOL=$(find_binary sg_bench_tcp)
grep -q -- '--reconnect' "$BENCH_DIR/device_swarm.cpp" || { echo "sg_device_swarm has no --reconnect" >&2; exit 1; }

# ---------------------------------------------------------------------------------------------
# Processes: each in its own process group (setsid), logging into the work dir, stopped by group.
WORK=$(mktemp -d /tmp/streamgate-cbench.XXXXXX)
RESULTS=$WORK/results.jsonl
: >"$RESULTS"
declare -A PID=()
start_bg() { # name command...
  local name=$1
  shift
  setsid "$@" >"$WORK/$name.out" 2>"$WORK/$name.err" </dev/null &
  PID[$name]=$!
}
stop_bg() { # name...: SIGTERM to the group, SIGKILL after 5 s
  local name pid i
  for name in "$@"; do
    pid=${PID[$name]:-}
    [ -n "$pid" ] || continue
    kill -TERM -- "-$pid" 2>/dev/null || true
    for i in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL -- "-$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
    unset "PID[$name]"
  done
}
PG_PID=""
cleanup() {
  local pid
  trap - EXIT INT TERM
  for pid in "${PID[@]}"; do kill -TERM -- "-$pid" 2>/dev/null || true; done
  [ ${#PID[@]} -gt 0 ] && sleep 1
  for pid in "${PID[@]}"; do kill -KILL -- "-$pid" 2>/dev/null || true; done
  pg_down
  if [ "$KEEP" = 1 ]; then log "work directory kept: $WORK (database: $PG_DIR)"; else rm -rf "$WORK" "$PG_DIR"; fi
}
trap cleanup EXIT
trap 'log "interrupted"; exit 130' INT TERM
start_bg watchdog bash -c "sleep $TIME_LIMIT; echo 'bench/cluster.sh: time limit of ${TIME_LIMIT}s reached, stopping' >&2; kill -TERM $$"

if [ "$(ulimit -Hn)" != unlimited ] && [ "$(ulimit -Hn)" -lt 65536 ]; then ulimit -Hn 65536 2>/dev/null || true; fi
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

free_ports() { # count -> that many free loopback ports, below the ephemeral range
  python3 - "$1" <<'PY'
import random, socket, sys
low = int(open("/proc/sys/net/ipv4/ip_local_port_range").read().split()[0])
socks = []
while len(socks) < int(sys.argv[1]):
    s = socket.socket()
    try:
        s.bind(("127.0.0.1", random.randrange(10000, max(10001, low))))
        socks.append(s)
    except OSError:
        s.close()
print(" ".join(str(s.getsockname()[1]) for s in socks))
PY
}
wait_listening() { # port [seconds]
  local hex i
  hex=$(printf '%04X' "$1")
  for i in $(seq $((${2:-20} * 10))); do
    grep -q "0100007F:$hex 00000000:0000 0A" /proc/net/tcp && return 0
    sleep 0.1
  done
  echo "nothing listens on 127.0.0.1:$1" >&2
  return 1
}
wait_line() { # file pattern seconds
  local i
  for i in $(seq $(($3 * 10))); do
    grep -q "$2" "$1" 2>/dev/null && return 0
    sleep 0.1
  done
  return 1
}
emit() { printf '{"name":"%s","data":%s}\n' "$1" "$2" >>"$RESULTS"; }
last_json() { grep '^{' "$1" | tail -n 1; }

read -r PG_PORT N1 N2 N3 C1 C2 C3 A1 A2 A3 ECHO_PORT SP1 SP2 SP3 SP1B SP1C <<<"$(free_ports 16)"
declare -A LISTEN=([n1]=$N1 [n2]=$N2 [n3]=$N3) CLUSTER=([n1]=$C1 [n2]=$C2 [n3]=$C3) ADMIN=([n1]=$A1 [n2]=$A2 [n3]=$A3)

# ---------------------------------------------------------------------------------------------
# PostgreSQL 15, private: initdb in a temp dir, postgres on 127.0.0.1:PG_PORT and a socket in the
# dir, as the postgres user when we are root (initdb and postgres refuse root).
PG_DIR=$(mktemp -d /tmp/sg-cbench-pg.XXXXXX)
AS_PG=()
if [ "$(id -u)" -eq 0 ]; then
  id postgres >/dev/null 2>&1 || { echo "running as root needs the postgres user (apt-get install postgresql-15)" >&2; exit 1; }
  chown postgres: "$PG_DIR"
  AS_PG=(runuser -u postgres --)
fi
pg_run() { (cd / && timeout 60 "${AS_PG[@]}" "$@"); }
psql_q() { # sql [database]: one statement, unaligned, tuples only
  pg_run "$PG_BIN/psql" -X -A -t -q -v ON_ERROR_STOP=1 -h "$PG_DIR" -p "$PG_PORT" -U postgres -d "${2:-cluster}" -c "$1"
}
pg_down() {
  [ -n "$PG_PID" ] || return 0
  kill -INT -- "-$PG_PID" 2>/dev/null || true # fast shutdown
  local i
  for i in $(seq 100); do kill -0 "$PG_PID" 2>/dev/null || break; sleep 0.1; done
  kill -KILL -- "-$PG_PID" 2>/dev/null || true
  for i in $(seq 50); do kill -0 "$PG_PID" 2>/dev/null || break; sleep 0.1; done
  wait "$PG_PID" 2>/dev/null || true
  PG_PID=""
}
log "work directory $WORK; PostgreSQL in $PG_DIR on 127.0.0.1:$PG_PORT; relays n1 n2 n3 on $N1 $N2 $N3"
pg_run "$PG_BIN/initdb" -D "$PG_DIR/data" -U postgres --auth-local=trust --auth-host=scram-sha-256 --no-sync -E UTF8 \
  --locale=C >"$WORK/initdb.log" 2>&1 || { tail -n 20 "$WORK/initdb.log" >&2; exit 1; }
# As the test server (fsync off: nothing here survives the run); 200 connections for 3 relays.
# Its own process group (PG_PID leads it), so pg_down reaches postgres and its children.
setsid "${AS_PG[@]}" "$PG_BIN/postgres" -D "$PG_DIR/data" -p "$PG_PORT" -c listen_addresses=127.0.0.1 \
  -c "unix_socket_directories=$PG_DIR" -c fsync=off -c full_page_writes=off -c shared_buffers=64MB \
  -c max_connections=200 >"$WORK/postgres.log" 2>&1 </dev/null &
PG_PID=$!
for i in $(seq 300); do
  pg_run "$PG_BIN/pg_isready" -q -h "$PG_DIR" -p "$PG_PORT" && break
  kill -0 "$PG_PID" 2>/dev/null || { tail -n 20 "$WORK/postgres.log" >&2; exit 1; }
  sleep 0.1
done
PG_PASSWORD=$(openssl rand -hex 16)
psql_q "CREATE ROLE sg LOGIN PASSWORD '$PG_PASSWORD'" postgres
psql_q "CREATE DATABASE cluster OWNER sg" postgres
REGISTRY="postgresql://sg:$PG_PASSWORD@127.0.0.1:$PG_PORT/cluster"

# ---------------------------------------------------------------------------------------------
# Three relays. Stream admission limits lifted (as bench/run.sh does: one device carries every
# stream here; the limits are policy, not capacity).
LIMITS=(--max-streams 1000000 --max-streams-per-device 1000000 --stream-rate 1000000 --stream-burst 1000000
        --device-stream-rate 1000000 --device-stream-burst 1000000)
relay_up() { # node
  local n=$1 data=$WORK/data-$1
  local args=(--data-dir "$data" --listen "127.0.0.1:${LISTEN[$n]}" --registry "$REGISTRY" --node-id "$n"
              --cluster-listen "127.0.0.1:${CLUSTER[$n]}" --public-url "wss://127.0.0.1:${LISTEN[$n]}"
              --admin-listen "127.0.0.1:${ADMIN[$n]}" "${LIMITS[@]}")
  [ -n "$LEASE" ] && args+=(--cluster-lease "$LEASE")
  if [ "$n" != n1 ]; then # the cluster's CA: n1's, so every node's certificate verifies with one ca.pem
    mkdir -p "$data" && chmod 700 "$data"
    cp "$WORK/data-n1/ca.pem" "$WORK/data-n1/ca.key" "$data/"
    chmod 600 "$data/ca.key"
  fi
  start_bg "relay_$n" "$RELAY" "${args[@]}"
  wait_listening "${LISTEN[$n]}" 30
  wait_line "$WORK/relay_$n.err" 'event=ClusterJoined' 30 || { log "$n did not join the cluster"; tail -n 5 "$WORK/relay_$n.err" >&2; exit 1; }
}
relay_up n1
for i in $(seq 100); do [ -f "$WORK/data-n1/ca.key" ] && break; sleep 0.1; done
relay_up n2
relay_up n3
CA=$WORK/data-n1/ca.pem
admin() { timeout 60 "$RELAY" --data-dir "$WORK/data-n1" --registry "$REGISTRY" "$@"; }
DEVICE_ID=bench-device
DEV_CS=$(admin device-identity create --device-id "$DEVICE_ID")
SVC_KEY=$(admin show-connection-string --policy-name service | sed -n 's/.*SharedAccessKey=\([^;]*\).*/\1/p')
REG_CS=$(admin show-connection-string --policy-name registryReadWrite)
svc_cs() { echo "HostName=127.0.0.1:${LISTEN[$1]};SharedAccessKeyName=service;SharedAccessKey=$SVC_KEY"; }
DEV_CS_N1=$(sed "s/HostName=[^;]*/HostName=127.0.0.1:$N1/" <<<"$DEV_CS")
REG_CS_N1=$(sed "s/HostName=[^;]*/HostName=127.0.0.1:$N1/" <<<"$REG_CS")
home_of() { psql_q "SELECT p.node_id FROM presence p JOIN cluster_nodes n USING (node_id, epoch) WHERE n.lease_until > now() AND p.device_id = '$1'"; }

# ---------------------------------------------------------------------------------------------
# 1 and 2: stream set-up, same node and cross node; streams per second through the 3 nodes.
start_bg echo_server "$TCPTOOL" echo --port "$ECHO_PORT"
wait_listening "$ECHO_PORT"
start_bg device_proxy "$DEVICE_PROXY" --ca-file "$CA" --stats-interval 0 "$DEV_CS_N1" 127.0.0.1 "$ECHO_PORT"
for i in $(seq 100); do [ "$(home_of "$DEVICE_ID")" = n1 ] && break; sleep 0.2; done
[ "$(home_of "$DEVICE_ID")" = n1 ] || { log "the device proxy did not connect to n1"; tail -n 5 "$WORK/device_proxy.err" >&2; exit 1; }
start_bg sp_n1 "$SERVICE_PROXY" --ca-file "$CA" "$(svc_cs n1)" "$DEVICE_ID" "$SP1"
start_bg sp_n2 "$SERVICE_PROXY" --ca-file "$CA" "$(svc_cs n2)" "$DEVICE_ID" "$SP2"
start_bg sp_n3 "$SERVICE_PROXY" --ca-file "$CA" "$(svc_cs n3)" "$DEVICE_ID" "$SP3"
start_bg sp_n1b "$SERVICE_PROXY" --ca-file "$CA" "$(svc_cs n1)" "$DEVICE_ID" "$SP1B"
start_bg sp_n1c "$SERVICE_PROXY" --ca-file "$CA" "$(svc_cs n1)" "$DEVICE_ID" "$SP1C"
for p in "$SP1" "$SP2" "$SP3" "$SP1B" "$SP1C"; do wait_listening "$p" 30; done

log "stream set-up: $SETUPS one at a time per path, two alternating passes (same node: via n1; cross node: via n2)"
for pass in 1 2; do
  for path in same cross; do
    port=$SP1
    [ "$path" = cross ] && port=$SP2
    result=$(timeout 300 "$LATENCY" setup --port "$port" --count "$SETUPS") || true
    [ -n "$result" ] || result='{"error":"failed"}'
    emit "setup.$path.pass$pass" "$result"
    log "  pass $pass, $path node: $result"
  done
done
# The home's own view of the same streams (n1's log: stream request to both sides joined).
emit setup.home_view "$(grep -o 'event=StreamEstablished.*setupMs=[0-9.]*' "$WORK/relay_n1.err" | sed 's/.*setupMs=//' |
  python3 -c 'import json,statistics,sys; v=sorted(float(x) for x in sys.stdin if x.strip()); print(json.dumps({"count": len(v), "setup_ms_p50": statistics.median(v) if v else None}))')"

rate_run() { # name port... : 3 clients per port, all at once
  local name=$1 p outs=() i=0
  shift
  for p in "$@"; do
    timeout $((RATE_SECONDS + 60)) "$TCPTOOL" rate --port "$p" --clients 3 --duration "$RATE_SECONDS" >"$WORK/rate-$name-$i.json" 2>"$WORK/rate-$name-$i.err" &
    outs+=($!)
    i=$((i + 1))
  done
  for p in "${outs[@]}"; do wait "$p" || true; done
  emit "rate.$name" "$(python3 - "$WORK" "$name" "$#" <<'PY'
import json, sys
work, name, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
parts = []
for i in range(n):
    try:
        parts.append(json.loads(open(f"{work}/rate-{name}-{i}.json").read().strip().splitlines()[-1]))
    except (OSError, ValueError, IndexError):
        parts.append({"error": "failed"})
total = sum(p.get("streams_per_s", 0) or 0 for p in parts)
print(json.dumps({"clients": 3 * n, "streams_per_s": round(total, 1),
                  "failures": sum(p.get("failures", 0) or 0 for p in parts), "per_proxy": parts}))
PY
)"
  log "  $(tail -n 1 "$RESULTS" | cut -c1-200)"
}
log "new streams per second, ${RATE_SECONDS}s each: 9 clients spread over n1 n2 n3, then 9 clients all on n1"
rate_run spread "$SP1" "$SP2" "$SP3"
rate_run same_node "$SP1" "$SP1B" "$SP1C"
stop_bg sp_n1 sp_n2 sp_n3 sp_n1b sp_n1c device_proxy echo_server

# ---------------------------------------------------------------------------------------------
# 3: failover of D idle devices from n1.
log "failover: $DEVICES idle devices on n1, then kill -9 n1"
KEY=$(openssl rand -base64 32)
result=$(timeout 300 "$SWARM" create --connection-string "$REG_CS_N1" --ca-file "$CA" --count "$DEVICES" \
  --prefix swarm- --key "$KEY" --parallel 8) || true
[ -n "$result" ] || result='{"error":"create failed"}'
emit devices.create "$result"
log "  created: $result"
start_bg swarm "$SWARM" connect --host-name "127.0.0.1:$N1" --ca-file "$CA" --count "$DEVICES" --prefix swarm- \
  --key "$KEY" --parallel 256 --timeout 120 --relay "127.0.0.1:$N1" --relay "127.0.0.1:$N2" --relay "127.0.0.1:$N3" \
  --reconnect 1 --events "$WORK/reconnects.txt"
wait_line "$WORK/swarm.out" '"event":"connected"' 150 || { log "the swarm did not report; see $WORK/swarm.err"; exit 1; }
emit devices.connect "$(last_json "$WORK/swarm.out")"
log "  connected: $(last_json "$WORK/swarm.out")"
live_on() { # node -> live presence rows held by it
  psql_q "SELECT count(*) FROM presence p JOIN cluster_nodes n USING (node_id, epoch) WHERE n.lease_until > now() AND p.node_id = '$1'"
}
on_n1=0
for i in $(seq 150); do
  on_n1=$(live_on n1)
  [ "$on_n1" -ge "$DEVICES" ] && break
  sleep 0.2
done
log "  presence rows on n1: $on_n1"
# The database, sampled every 0.25 s by one psql (\watch): time, claims taken so far (the
# sequence), live presence rows on n2 and n3, and pg_stat_database's xact_commit (kept in the
# samples for reference only, see the header).
SAMPLE_SQL="SELECT extract(epoch FROM clock_timestamp()), (SELECT last_value FROM presence_claims),
 (SELECT count(*) FROM presence p JOIN cluster_nodes n USING (node_id, epoch) WHERE n.lease_until > now() AND p.node_id IN ('n2', 'n3')),
 (SELECT xact_commit FROM pg_stat_database WHERE datname = 'cluster')"
start_bg sampler bash -c "cd / && printf '%s\n\\\\watch 0.25\n' \"\$1\" | ${AS_PG[*]} $PG_BIN/psql -X -A -t -q -h $PG_DIR -p $PG_PORT -U postgres -d cluster" \
  sampler "$SAMPLE_SQL"
sleep 2 # a baseline
CLAIMS_BEFORE=$(psql_q "SELECT last_value FROM presence_claims")
KILL_MS=$(date +%s%3N)
{ kill -KILL "${PID[relay_n1]}"; wait "${PID[relay_n1]}"; } 2>/dev/null || true
unset "PID[relay_n1]"
log "  n1 killed at $KILL_MS; waiting (at most 90 s) for $on_n1 devices to be back"
back=0
for i in $(seq 900); do
  back=$(wc -l <"$WORK/reconnects.txt")
  [ "$back" -ge "$on_n1" ] && break
  sleep 0.1
done
CLIENT_DONE_MS=$(date +%s%3N)
log "  the swarm: $back reconnected after $(((CLIENT_DONE_MS - KILL_MS) / 1000)) s; waiting (at most 30 s) for their presence rows"
for i in $(seq 120); do
  [ "$(($(live_on n2) + $(live_on n3)))" -ge "$back" ] && break
  sleep 0.25
done
sleep 2 # the sampler's last samples
stop_bg sampler
psql_q "SELECT node_id, count(*), (extract(epoch FROM min(since)) * 1000)::bigint, (extract(epoch FROM max(since)) * 1000)::bigint FROM presence p JOIN cluster_nodes n USING (node_id, epoch) WHERE n.lease_until > now() GROUP BY node_id ORDER BY node_id" >"$WORK/presence-by-node.txt"
psql_q "SELECT (extract(epoch FROM since) * 1000)::bigint FROM presence p JOIN cluster_nodes n USING (node_id, epoch) WHERE n.lease_until > now() AND p.node_id IN ('n2', 'n3')" >"$WORK/presence-since.txt"
CLAIMS_AFTER=$(psql_q "SELECT last_value FROM presence_claims")
emit failover "$(python3 - "$WORK" "$KILL_MS" "$on_n1" "$DEVICES" "$CLAIMS_BEFORE" "$CLAIMS_AFTER" <<'PY'
import collections, json, sys
work, kill_ms, on_n1, devices = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
claims_before, claims_after = int(sys.argv[5]), int(sys.argv[6])
rows = [l.split() for l in open(f"{work}/reconnects.txt") if l.strip()]
back = sorted(int(r[2]) - kill_ms for r in rows)
lost = sorted(int(r[1]) - kill_ms for r in rows)
relays = collections.Counter(int(r[3]) for r in rows)
attempts = collections.Counter(int(r[4]) for r in rows)
def pct(v, p):
    return v[min(len(v) - 1, int(p / 100 * (len(v) - 1) + 0.5))] if v else None
def hist(ms_values):
    h = collections.Counter(max(0, v) // 1000 for v in ms_values)
    return [h.get(s, 0) for s in range(max(h) + 1)] if h else []
# The database's view: the presence rows' claim times, and the sampler's series.
since = [int(l) - kill_ms for l in open(f"{work}/presence-since.txt") if l.strip()]
samples = []
for l in open(f"{work}/sampler.out"):
    f = l.strip().split("|")
    if len(f) == 4 and f[0]:
        samples.append((float(f[0]) * 1000 - kill_ms, int(f[1]), int(f[2]), int(f[3])))
db_all_back_ms = next((s[0] for s in samples if s[2] >= len(rows) and len(rows) > 0), None)
# Claims per 1 s bucket after the kill, from the samples (difference across each bucket).
def per_second(index):
    out = []
    if not samples:
        return out
    end = max(s[0] for s in samples)
    for b in range(0, int(end // 1000) + 1):
        inside = [s for s in samples if b * 1000 - 125 <= s[0] <= (b + 1) * 1000 + 125]
        if len(inside) >= 2:
            out.append(round((inside[-1][index] - inside[0][index]) * 1000 / (inside[-1][0] - inside[0][0]), 1))
        else:
            out.append(None)
    return out
claims_ps = per_second(1)
window = [s for s in samples if 0 <= s[0] <= (db_all_back_ms or 0) + 250]
mean_claims = None
if db_all_back_ms and len(window) >= 2:
    mean_claims = round((window[-1][1] - window[0][1]) / ((window[-1][0] - window[0][0]) / 1000), 1)
def hist100(ms_values):
    h = collections.Counter(max(0, v) // 100 for v in ms_values)
    return [h.get(s, 0) for s in range(max(h) + 1)] if h else []
by_node = {}
for l in open(f"{work}/presence-by-node.txt"):
    f = l.strip().split("|")
    if len(f) == 4:
        by_node[f[0]] = int(f[1])
print(json.dumps({
    "devices": devices, "on_n1_before": on_n1, "reconnected": len(rows),
    "all_back_s": round(back[-1] / 1000, 3) if back else None,
    "reconnect_p50_s": round(pct(back, 50) / 1000, 3) if back else None,
    "reconnect_p99_s": round(pct(back, 99) / 1000, 3) if back else None,
    "first_back_s": round(back[0] / 1000, 3) if back else None,
    "loss_seen_max_ms": lost[-1] if lost else None,
    "histogram_per_s": hist(back),
    "to_relay": {["n1", "n2", "n3"][k]: v for k, v in sorted(relays.items())},
    "attempts": {str(k): v for k, v in sorted(attempts.items())},
    "db_all_back_s": round(db_all_back_ms / 1000, 3) if db_all_back_ms is not None else None,
    "db_presence_rows_by_node": by_node,
    "db_claim_histogram_per_s": hist(since),
    "claims_during_failover": claims_after - claims_before,
    "claims_per_s_by_second": claims_ps,
    "claims_per_s_peak": max((v for v in claims_ps if v is not None), default=None),
    "claims_per_s_mean_to_all_back": mean_claims,
    "histogram_per_100ms": hist100(back),
    "db_claim_histogram_per_100ms": hist100(since),
}))
PY
)"
log "  $(tail -n 1 "$RESULTS" | cut -c1-400)"
stop_bg swarm relay_n2 relay_n3

# ---------------------------------------------------------------------------------------------
mkdir -p "$(dirname "$OUT")"
python3 - "$WORK/meta.json" <<PY
import json, os, platform, subprocess, sys
cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "unknown")
commit = subprocess.run(["git", "-C", "$REPO", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
dirty = bool(subprocess.run(["git", "-C", "$REPO", "status", "--porcelain", "--untracked-files=no"],
                            capture_output=True, text=True).stdout.strip())
pg = subprocess.run(["$PG_BIN/postgres", "--version"], capture_output=True, text=True).stdout.strip()
json.dump({"date": subprocess.run(["date", "-u", "+%Y-%m-%dT%H:%M:%SZ"], capture_output=True, text=True).stdout.strip(),
           "command": """$COMMAND_LINE""", "nproc": os.cpu_count(), "cpu_model": cpu, "kernel": platform.release(),
           "loadavg_start": "$LOAD_START", "loadavg_end": open("/proc/loadavg").read().split()[:3],
           "git_commit": commit, "worktree_modified": dirty, "postgres": pg, "seconds": $(date +%s) - $START_EPOCH,
           "setups": $SETUPS, "devices": $DEVICES, "rate_seconds": $RATE_SECONDS,
           "cluster_lease_s": "${LEASE:-default (10)}",
           "relay_limits": """${LIMITS[*]}"""}, open(sys.argv[1], "w"))
PY
python3 "$BENCH_DIR/cluster_report.py" "$RESULTS" "$WORK/meta.json" "$OUT"
log "results written to $OUT"
