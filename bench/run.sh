#!/usr/bin/env bash
# Streamgate benchmark suite (issue 5, docs/BENCHMARKS.md). One command:
#
#   bench/run.sh            full run (~9-10 min on 2 cores, plus the build the first time)
#   bench/run.sh --quick    smoke run with small N and short durations (~2 min)
#
# Installs its tools if missing (iperf3, stunnel4, socat, python3, openssl, openssh-server and
# -client, iproute2; the build packages through scripts/install-deps.sh), builds a Release tree
# in build-bench/, starts everything on 127.0.0.1 (a fresh temporary data directory, free ports,
# a fresh relay and proxies per row; beside them the two peers: a stunnel/socat TLS chain and an
# OpenSSH reverse tunnel through a private sshd), prints a table and writes
# bench/results/latest.json. Every process it starts is stopped on exit; every step has a time
# bound.
#
# Options:
#   --quick              small sizes, short durations
#   --rows LIST          rows to run, e.g. 1,2 (default 1,2,3,4,5,6)
#   --duration S         seconds per iperf3 measurement (default 5; quick 2)
#   --repeat N           iperf3 measurements per path and direction, median reported (default 3; quick 1)
#   --streams LIST       concurrent stream counts for row 4 (default 1000,5000,10000; quick 200)
#   --devices N          idle devices for row 5 (default 10000; quick 300)
#   --pingpongs N        round trips for row 2 (default 20000; quick 2000)
#   --setups N           sequential stream setups for row 3 (default 500; quick 50)
#   --rate-seconds S     duration of the streams/s measurement (default 10; quick 3)
#   --backpressure-seconds S  (default 20; quick 5)
#   --threads N          --threads for the relay (default: the relay's own default, one per core)
#   --proxy-threads N    --threads for both proxies (default: theirs: one thread each)
#   --relay-arg ARG      one more relay option (repeatable), e.g. --relay-arg --keep-stream-connections=false
#                        to measure old against new in the same minutes
#   --default-limits     keep the relay's stream admission limits (by default the run lifts them,
#                        where the relay has them, so they do not cap what is measured: one device
#                        carries every stream here)
#   --out FILE           JSON output (default bench/results/latest.json)
#   --build-dir DIR      (default build-bench)
#   --no-build           use the binaries already in the build dir
#   --keep-workdir       keep the temporary directory (logs of every process) after the run
#   --time-limit S       stop everything after S seconds (default 2400; quick 600)
#   --perf               sample the relay and both proxies with perf record while the tunnel carries the
#                        bulk (row 1), the round trips (row 2), the new streams (row 3) and the 100
#                        active streams (row 4);
#                        flat profiles land in profiles/ beside the --out file
#   --heaptrack          run the relays of rows 4 and 5 under heaptrack; the peak allocations by call
#                        site land in profiles/relay-heap-*.txt beside the --out file (RSS figures of that run
#                        include heaptrack's own overhead: use it for the breakdown, not the figure)
set -euo pipefail

BENCH_DIR=$(cd "$(dirname "$0")" && pwd)
REPO=$(cd "$BENCH_DIR/.." && pwd)
COMMAND_LINE="bench/run.sh $*"

QUICK=0 ROWS="1,2,3,4,5,6" DURATION="" REPEAT="" STREAMS="" DEVICES="" PINGPONGS="" SETUPS="" RATE_SECONDS=""
BP_SECONDS="" RELAY_THREADS="" PROXY_THREADS="" EXTRA_RELAY_ARGS=() OUT="$BENCH_DIR/results/latest.json" BUILD_DIR="$REPO/build-bench" DO_BUILD=1
KEEP=0 TIME_LIMIT="" PERF=0 HEAPTRACK=0 DEFAULT_LIMITS=0
while [ $# -gt 0 ]; do
  case "$1" in
    --quick) QUICK=1 ;;
    --rows) ROWS=$2; shift ;;
    --duration) DURATION=$2; shift ;;
    --repeat) REPEAT=$2; shift ;;
    --streams) STREAMS=$2; shift ;;
    --devices) DEVICES=$2; shift ;;
    --pingpongs) PINGPONGS=$2; shift ;;
    --setups) SETUPS=$2; shift ;;
    --rate-seconds) RATE_SECONDS=$2; shift ;;
    --backpressure-seconds) BP_SECONDS=$2; shift ;;
    --threads) RELAY_THREADS=$2; shift ;;
    --proxy-threads) PROXY_THREADS=$2; shift ;;
    --relay-arg) EXTRA_RELAY_ARGS+=("$2"); shift ;;
    --out) OUT=$2; shift ;;
    --build-dir) BUILD_DIR=$2; shift ;;
    --no-build) DO_BUILD=0 ;;
    --keep-workdir) KEEP=1 ;;
    --time-limit) TIME_LIMIT=$2; shift ;;
    --perf) PERF=1 ;;
    --heaptrack) HEAPTRACK=1 ;;
    --default-limits) DEFAULT_LIMITS=1 ;;
    -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) echo "unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
  shift
done
if [ "$QUICK" = 1 ]; then
  : "${DURATION:=2}" "${REPEAT:=1}" "${STREAMS:=200}" "${DEVICES:=300}" "${PINGPONGS:=2000}" "${SETUPS:=50}"
  : "${RATE_SECONDS:=3}" "${BP_SECONDS:=5}" "${TIME_LIMIT:=600}"
else
  : "${DURATION:=5}" "${REPEAT:=3}" "${STREAMS:=1000,5000,10000}" "${DEVICES:=10000}" "${PINGPONGS:=20000}"
  : "${SETUPS:=500}" "${RATE_SECONDS:=10}" "${BP_SECONDS:=20}" "${TIME_LIMIT:=2400}"
fi
OUT=$(realpath -m "$OUT")
BUILD_DIR=$(realpath -m "$BUILD_DIR")
row_enabled() { [[ ",$ROWS," == *",$1,"* ]]; }
log() { printf '[%s] %s\n' "$(date +%T)" "$*" >&2; }

# ---------------------------------------------------------------------------------------------
# Tools and build.
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"
install_missing() {
  local missing=() p
  for p in "$@"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  if [ ${#missing[@]} -gt 0 ]; then
    log "installing: ${missing[*]}"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  fi
}
install_missing iperf3 stunnel4 socat python3 openssl procps linux-perf openssh-server openssh-client iproute2
[ "$HEAPTRACK" = 1 ] && install_missing heaptrack
[ -x "$REPO/scripts/install-deps.sh" ] && "$REPO/scripts/install-deps.sh"

# The tools come from bench/CMakeLists.txt: through the top level when it adds bench/, else from
# bench/ configured on its own (which pulls in the repository).
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

# ---------------------------------------------------------------------------------------------
# Processes: each runs in its own process group (setsid), logs into the work dir, and is stopped
# by its group id on exit.
WORK=$(mktemp -d /tmp/streamgate-bench.XXXXXX)
RESULTS=$WORK/results.jsonl
PROFILE_DIR=$(dirname "$OUT")/profiles
: >"$RESULTS"
declare -A PID=()
start_bg() { # name command...
  local name=$1
  shift
  setsid "$@" >"$WORK/$name.out" 2>"$WORK/$name.err" </dev/null &
  PID[$name]=$!
}
stop_bg() { # name...
  local name pid i
  for name in "$@"; do
    pid=${PID[$name]:-}
    [ -n "$pid" ] || continue
    kill -TERM -- "-$pid" 2>/dev/null || true
    for i in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL -- "-$pid" 2>/dev/null || true
    report_exit "$name" "$pid"
    unset "PID[$name]"
    # Keep each run's log (a row restarts the same names).
    mv "$WORK/$name.err" "$WORK/$name.$pid.err" 2>/dev/null || true
    mv "$WORK/$name.out" "$WORK/$name.$pid.out" 2>/dev/null || true
  done
}
report_exit() { # name pid: say so when a process ended by a crash rather than by our signal
  local rc=0
  wait "$2" 2>/dev/null || rc=$?
  case $rc in
    0|130|137|143) ;;
    # 128+N is signal N (at most 64); an exit code above that is the process's own (ssh: 255).
    *) if [ "$rc" -gt 128 ] && [ "$rc" -le 192 ]; then log "NOTE: $1 (pid $2) died of signal $((rc - 128)): $(tail -n 1 "$WORK/$1.err" 2>/dev/null | cut -c1-200)"; fi ;;
  esac
}
cleanup() {
  local pid name
  trap - EXIT INT TERM
  for pid in "${PID[@]}"; do kill -TERM -- "-$pid" 2>/dev/null || true; done
  [ ${#PID[@]} -gt 0 ] && sleep 0.5
  for pid in "${PID[@]}"; do kill -KILL -- "-$pid" 2>/dev/null || true; done
  for name in "${!PID[@]}"; do report_exit "$name" "${PID[$name]}"; done
  if [ "$KEEP" = 1 ]; then log "work directory kept: $WORK"; else rm -rf "$WORK"; fi
}
trap cleanup EXIT
trap 'log "interrupted"; exit 130' INT TERM
start_bg watchdog bash -c "sleep $TIME_LIMIT; echo 'bench/run.sh: time limit of ${TIME_LIMIT}s reached, stopping' >&2; kill -TERM $$"

# The relay holds two sockets per paired stream; the proxies two each too. Raising the hard
# limit needs CAP_SYS_RESOURCE (root on a normal machine); where that fails, row 4 is capped.
if [ "$(ulimit -Hn)" != unlimited ] && [ "$(ulimit -Hn)" -lt 65536 ]; then ulimit -Hn 65536 2>/dev/null || true; fi
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
FD_LIMIT=$(ulimit -n)
[ "$FD_LIMIT" = unlimited ] && FD_LIMIT=1048576

free_ports() { # count -> that many free loopback ports, below the ephemeral range
  # Outside the kernel's ephemeral range: row 4 opens ~20,000 loopback connections, whose local
  # ports would otherwise sometimes take a server's port before it is (re)started.
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
wait_listening() { # port [seconds]: a LISTEN socket on 127.0.0.1:port (without connecting to it)
  local hex i
  hex=$(printf '%04X' "$1")
  for i in $(seq $((${2:-20} * 10))); do
    grep -q "0100007F:$hex 00000000:0000 0A" /proc/net/tcp && return 0
    sleep 0.1
  done
  echo "nothing listens on 127.0.0.1:$1" >&2
  return 1
}
wait_line() { # file pattern seconds: wait until a line of file matches
  local i
  for i in $(seq $(($3 * 10))); do
    grep -q "$2" "$1" 2>/dev/null && return 0
    sleep 0.1
  done
  return 1
}
status_kib() { awk -v k="$2:" '$1 == k { print $2 }' "/proc/$1/status" 2>/dev/null || echo 0; }
rss_kib() { status_kib "$1" VmRSS; }
hwm_kib() { status_kib "$1" VmHWM; }
reset_hwm() { echo 5 >"/proc/$1/clear_refs" 2>/dev/null || true; }
cpu_ticks() { awk '{ print $14 + $15 }' "/proc/$1/stat" 2>/dev/null || echo 0; }
CLK_TCK=$(getconf CLK_TCK)
emit() { # name json: one record of this run
  printf '{"name":"%s","data":%s}\n' "$1" "$2" >>"$RESULTS"
}
last_json() { grep '^{' "$1" | tail -n 1; }
json_get() { python3 -c 'import json,sys; print(json.loads(sys.argv[1]).get(sys.argv[2], ""))' "$1" "$2"; }

# ---------------------------------------------------------------------------------------------
# The Streamgate stack: a fresh relay, one device proxy to a target, one service proxy.
read -r RELAY_PORT SP_PORT IPERF_PORT ECHO_PORT SINK_PORT CHAIN_A CHAIN_B CHAIN_C SSH_PORT SSH_R_PORT SSH_L_PORT \
  <<<"$(free_ports 11)"
DATA=$WORK/data
DEVICE_ID=bench-device
RELAY_ARGS=(--data-dir "$DATA" --listen "127.0.0.1:$RELAY_PORT")
[ -n "$RELAY_THREADS" ] && RELAY_ARGS+=(--threads "$RELAY_THREADS")
RELAY_ARGS+=("${EXTRA_RELAY_ARGS[@]}")
# Stream admission limits (per device: 1,000 concurrent and 100 new/s by default) are policy, not
# capacity; this suite sends every stream to one device, so it lifts them where the relay has them.
# Read whole before grep: `grep -q` closing the pipe early made --help die of SIGPIPE and, with
# pipefail, the test fail now and then (the runs then kept the default limits).
RELAY_HELP=$("$RELAY" --help 2>/dev/null || true)
if [ "$DEFAULT_LIMITS" = 0 ] && grep -q -- '--max-streams-per-device' <<<"$RELAY_HELP"; then
  RELAY_ARGS+=(--max-streams 1000000 --max-streams-per-device 1000000 --stream-rate 1000000 --stream-burst 1000000
               --device-stream-rate 1000000 --device-stream-burst 1000000)
fi
admin() { "$RELAY" --data-dir "$DATA" "$@"; }

HEAP_PROFILE="" # set by row 4 with --heaptrack: the name of the relay's heap profile
relay_up() {
  if [ -n "$HEAP_PROFILE" ]; then
    start_bg relay_heaptrack heaptrack -o "$WORK/heap-$HEAP_PROFILE" "$RELAY" "${RELAY_ARGS[@]}"
    wait_listening "$RELAY_PORT" 60
    PID[relay]=$(pgrep -P "${PID[relay_heaptrack]}" -f streamgate-relay | head -n 1)
  else
    start_bg relay "$RELAY" "${RELAY_ARGS[@]}"
    wait_listening "$RELAY_PORT" 30
  fi
}
relay_down() {
  if [ -n "${PID[relay_heaptrack]:-}" ]; then
    # The relay alone gets the signal, so heaptrack can finish writing its data.
    local i
    kill -TERM "${PID[relay]}" 2>/dev/null || true
    for i in $(seq 600); do kill -0 "${PID[relay_heaptrack]}" 2>/dev/null || break; sleep 0.1; done
    unset "PID[relay]"
    stop_bg relay_heaptrack
    mkdir -p "$PROFILE_DIR"
    local full=$WORK/heap-$HEAP_PROFILE.txt
    heaptrack_print -f "$(ls "$WORK/heap-$HEAP_PROFILE"* | head -n 1)" --print-peaks 1 --print-allocators 0 \
      --print-temporary 0 --peak-limit 15 --sub-peak-limit 3 >"$full" 2>&1 || true
    { # the summary first (each peak consumer and where it was called), then heaptrack's whole report
      echo "# heaptrack of the relay, row ${HEAP_ROW:-4}, $HEAP_PROFILE ($(date -u +%FT%TZ))"
      grep -E '^(peak heap memory|peak RSS|calls to allocation)' "$full" || true
      echo "## peak consumers"
      grep -A1 'peak memory consumed over' "$full" | grep -v '^--' | paste - - | cut -c1-220 || true
      echo "## heaptrack_print --print-peaks"
      cat "$full"
    } >"$PROFILE_DIR/relay-heap-$HEAP_PROFILE.txt"
    log "  heap profile: $PROFILE_DIR/relay-heap-$HEAP_PROFILE.txt"
  else
    stop_bg relay
  fi
}
wait_device_connected() { # device-id seconds
  local i
  for i in $(seq $(($2 * 5))); do
    admin device-identity show --device-id "$1" 2>/dev/null | grep -q '"connectionState":"Connected"' && return 0
    sleep 0.2
  done
  echo "device $1 did not connect" >&2
  return 1
}
stack_up() { # target-port: relay, device proxy -> 127.0.0.1:target-port, service proxy on SP_PORT
  relay_up
  local extra=()
  [ -n "$PROXY_THREADS" ] && extra=(--threads "$PROXY_THREADS")
  start_bg device_proxy "$DEVICE_PROXY" --ca-file "$DATA/ca.pem" "$DEV_CS" 127.0.0.1 "$1" --stats-interval 0 "${extra[@]}"
  start_bg service_proxy "$SERVICE_PROXY" --ca-file "$DATA/ca.pem" "$SVC_CS" "$DEVICE_ID" "$SP_PORT" "${extra[@]}"
  wait_device_connected "$DEVICE_ID" 30
  wait_listening "$SP_PORT" 30
}
stack_down() {
  stop_bg service_proxy device_proxy
  relay_down
}

log "work directory $WORK; relay on 127.0.0.1:$RELAY_PORT; fd limit $FD_LIMIT"
relay_up
DEV_CS=$(admin device-identity create --device-id "$DEVICE_ID")
SVC_CS=$(admin show-connection-string --policy-name service)
REG_CS=$(admin show-connection-string --policy-name registryReadWrite)
RELAY_HOST=$(sed -n 's/.*HostName=\([^;]*\).*/\1/p' <<<"$SVC_CS")
stop_bg relay
log "connection strings name the relay as $RELAY_HOST"

# The reference chain: stunnel (plain -> TLS), socat -b 131072 (TLS -> TLS), stunnel (TLS -> plain),
# with a throwaway certificate and the TLS 1.3 suite the tunnel negotiates (AES-128-GCM).
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 -subj /CN=localhost \
  -keyout "$WORK/chain.key" -out "$WORK/chain.crt" 2>/dev/null
cat "$WORK/chain.key" "$WORK/chain.crt" >"$WORK/chain.pem"
chain_up() { # target-port -> the chain listens on CHAIN_A
  cat >"$WORK/stunnel-client.conf" <<EOF
foreground = yes
pid =
[client]
client = yes
accept = 127.0.0.1:$CHAIN_A
connect = 127.0.0.1:$CHAIN_B
ciphersuites = TLS_AES_128_GCM_SHA256
socket = l:TCP_NODELAY=1
socket = r:TCP_NODELAY=1
EOF
  cat >"$WORK/stunnel-server.conf" <<EOF
foreground = yes
pid =
[server]
accept = 127.0.0.1:$CHAIN_C
connect = 127.0.0.1:$1
cert = $WORK/chain.crt
key = $WORK/chain.key
ciphersuites = TLS_AES_128_GCM_SHA256
socket = l:TCP_NODELAY=1
socket = r:TCP_NODELAY=1
EOF
  start_bg stunnel_server stunnel4 "$WORK/stunnel-server.conf"
  start_bg socat socat -b 131072 \
    "OPENSSL-LISTEN:$CHAIN_B,bind=127.0.0.1,reuseaddr,fork,cert=$WORK/chain.pem,verify=0,nodelay" \
    "OPENSSL:127.0.0.1:$CHAIN_C,verify=0,nodelay"
  start_bg stunnel_client stunnel4 "$WORK/stunnel-client.conf"
  wait_listening "$CHAIN_C" && wait_listening "$CHAIN_B" && wait_listening "$CHAIN_A"
}
chain_down() { stop_bg stunnel_client socat stunnel_server; }

# The OpenSSH peer: the tunnel a user would set up instead of Streamgate. A bastion sshd (its own
# host key and config, key-only login), the device's reverse forward `ssh -R` to it and the
# user's local forward `ssh -L` through it, all on 127.0.0.1, ciphers as OpenSSH's defaults:
#   user TCP -> ssh -L (SSH_L) => sshd -> 127.0.0.1:SSH_R -> sshd => ssh -R -> target
SSH_DIR=$WORK/ssh
SSH_USER=$(id -un)
mkdir -p "$SSH_DIR"
ssh-keygen -q -t ed25519 -N '' -C streamgate-bench -f "$SSH_DIR/ssh_host_ed25519_key"
ssh-keygen -q -t ed25519 -N '' -C streamgate-bench -f "$SSH_DIR/id_ed25519"
cp "$SSH_DIR/id_ed25519.pub" "$SSH_DIR/authorized_keys"
cat >"$SSH_DIR/sshd_config" <<EOF
ListenAddress 127.0.0.1
Port $SSH_PORT
HostKey $SSH_DIR/ssh_host_ed25519_key
AuthorizedKeysFile $SSH_DIR/authorized_keys
PidFile none
UsePAM no
StrictModes no
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
PermitRootLogin prohibit-password
AllowTcpForwarding yes
GatewayPorts no
X11Forwarding no
UseDNS no
PrintMotd no
EOF
[ "$(id -u)" -eq 0 ] && mkdir -p /run/sshd # sshd's privilege separation directory
# -F /dev/null: no ssh_config of this machine or user changes what is measured.
SSH_OPTS=(-F /dev/null -i "$SSH_DIR/id_ed25519" -o IdentitiesOnly=yes -o BatchMode=yes -o StrictHostKeyChecking=no
          -o "UserKnownHostsFile=$SSH_DIR/known_hosts" -o ExitOnForwardFailure=yes -p "$SSH_PORT")
sshd_session_of() { # ssh client pid -> the sshd process serving its connection
  local port pids i
  for i in $(seq 50); do
    port=$(ss -Htnp state established "( dport = :$SSH_PORT )" |
      awk -v p="pid=$1," 'index($0, p) { n = split($3, a, ":"); print a[n]; exit }')
    if [ -n "$port" ]; then
      pids=$(ss -Htnp state established "( sport = :$SSH_PORT and dport = :$port )" |
        grep -o 'pid=[0-9]*' | cut -d= -f2 | sort -un)
      # Right after authentication sshd's pre-authentication child may still hold the socket.
      if [ -n "$pids" ] && [ "$(wc -w <<<"$pids")" = 1 ]; then echo "$pids"; return 0; fi
    fi
    sleep 0.1
  done
  echo "no sshd session found for ssh pid $1" >&2
  return 1
}
OPENSSH_PROCS=(ssh_user sshd_user sshd_device ssh_device)
openssh_up() { # target-port -> the user's end of the OpenSSH path listens on SSH_L_PORT
  start_bg sshd /usr/sbin/sshd -D -e -f "$SSH_DIR/sshd_config"
  wait_listening "$SSH_PORT"
  start_bg ssh_device ssh "${SSH_OPTS[@]}" -N -R "$SSH_R_PORT:127.0.0.1:$1" "$SSH_USER@127.0.0.1"
  wait_listening "$SSH_R_PORT" 30
  start_bg ssh_user ssh "${SSH_OPTS[@]}" -N -L "$SSH_L_PORT:127.0.0.1:$SSH_R_PORT" "$SSH_USER@127.0.0.1"
  wait_listening "$SSH_L_PORT" 30
  # sshd's per-connection children call setsid: each leads its own process group, outside
  # sshd's, so they are tracked (CPU) and stopped (stop_bg, the EXIT trap) by their own ids.
  PID[sshd_device]=$(sshd_session_of "${PID[ssh_device]}")
  PID[sshd_user]=$(sshd_session_of "${PID[ssh_user]}")
  if [ -z "${OPENSSH_NEGOTIATED:-}" ]; then
    # What the peer negotiates with nothing set (OpenSSH's defaults): one verbose login, once.
    OPENSSH_NEGOTIATED=$(timeout 20 ssh -v "${SSH_OPTS[@]}" "$SSH_USER@127.0.0.1" true 2>&1 |
      python3 -c 'import json, re, sys
t = sys.stdin.read()
g = lambda p: (re.search(p, t) or [None, None])[1]
print(json.dumps({"version": g(r"(OpenSSH_\S+)"), "kex": g(r"kex: algorithm: (\S+)"),
                  "host_key": g(r"kex: host key algorithm: (\S+)"),
                  "cipher": g(r"kex: client->server cipher: (\S+)"), "mac": g(r"kex: client->server cipher: \S+ MAC: (\S+)")}))') ||
      OPENSSH_NEGOTIATED='{"error":"the verbose ssh login failed"}'
    emit openssh.negotiated "$OPENSSH_NEGOTIATED"
    log "  OpenSSH peer: $OPENSSH_NEGOTIATED"
  fi
}
openssh_down() { stop_bg ssh_user ssh_device sshd_user sshd_device sshd; }

# With --perf: a flat profile (cpu-clock samples, no call graphs: the Release build keeps no frame
# pointers) of the relay and both proxies while a measurement runs.
perf_start() { # name
  [ "$PERF" = 1 ] || return 0
  mkdir -p "$PROFILE_DIR"
  start_bg "perf_$1" perf record -F 999 -o "$WORK/perf-$1.data" \
    -p "${PID[relay]},${PID[service_proxy]},${PID[device_proxy]}"
  sleep 0.5
}
perf_stop() { # name
  [ "$PERF" = 1 ] || return 0
  kill -INT "${PID[perf_$1]}" 2>/dev/null || true
  wait "${PID[perf_$1]}" 2>/dev/null || true
  unset "PID[perf_$1]"
  {
    echo "# perf record -F 999 of relay, service proxy, device proxy during: $1 ($(date -u +%FT%TZ))"
    perf report -i "$WORK/perf-$1.data" --stdio --sort comm 2>/dev/null | grep -m1 '^# Samples' || true
    echo "## by process and library (>= 1%)"
    perf report -i "$WORK/perf-$1.data" --stdio --no-children --sort comm,dso --percent-limit 1 2>/dev/null |
      grep -v '^#' | grep -v '^$' || true
    echo "## top 40 symbols"
    perf report -i "$WORK/perf-$1.data" --stdio --no-children --sort comm,dso,sym 2>/dev/null |
      grep -v '^#' | grep -v '^$' | head -n 40 || true
  } >"$PROFILE_DIR/$1.txt"
  log "  profile: $PROFILE_DIR/$1.txt"
}

# CPU time the relay and both proxies used while a measurement ran, in % of one core (the
# machine has $(nproc) cores; what they did not get went to the load generators and to whatever
# else runs on the machine).
declare -A CPU0=()
# System calls are counted with perf stat's raw_syscalls tracepoint where perf can (/proc/PID/io
# does not see sendmsg/recvmsg); context switches come from /proc/PID/status.
# The tracepoint slows every system call of a traced process (the tunnel's bulk by ~4 %, its
# new streams by ~5 %, measured 2026-12-04), so timed runs are never traced: row 1 counts in one
# extra run per path and direction (COUNT_SYSCALLS=1), whose figures are not the timed ones.
PERF_STAT=0
perf stat -e raw_syscalls:sys_enter -o /dev/null true >/dev/null 2>&1 && PERF_STAT=1
COUNT_SYSCALLS=0
proc_counters() { # pid -> "cpu-ticks context-switches" (ticks include reaped children: socat forks)
  local ctx ticks
  ticks=$(awk '{ print $14 + $15 + $16 + $17 }' "/proc/$1/stat" 2>/dev/null || echo 0)
  ctx=$(awk '$1 ~ /ctxt_switches:$/ { n += $2 } END { print n + 0 }' "/proc/$1/status" 2>/dev/null || echo 0)
  echo "$ticks $ctx"
}
CPU_NAMES=()
cpu_begin() { # process names (keys of PID), default the relay and both proxies
  local name
  CPU_NAMES=("$@")
  [ ${#CPU_NAMES[@]} -gt 0 ] || CPU_NAMES=(relay service_proxy device_proxy)
  for name in "${CPU_NAMES[@]}"; do
    CPU0[$name]=$(proc_counters "${PID[$name]}")
    if [ "$PERF_STAT" = 1 ] && [ "$COUNT_SYSCALLS" = 1 ]; then
      start_bg "stat_$name" perf stat -x, -e raw_syscalls:sys_enter -o "$WORK/stat-$name.txt" -p "${PID[$name]}"
    fi
  done
  CPU0[t]=$(date +%s.%N)
}
cpu_end() { # record-name: CPU %, system calls and context switches of each process of cpu_begin
  local name json="{" t1 a b sys
  t1=$(date +%s.%N)
  for name in "${CPU_NAMES[@]}"; do
    read -r -a a <<<"${CPU0[$name]}"
    read -r -a b <<<"$(proc_counters "${PID[$name]}")"
    json+="\"${name}_pct\":$(python3 -c "print(round(100*(${b[0]}-${a[0]})/$CLK_TCK/($t1-${CPU0[t]}),1))"),"
    json+="\"${name}_context_switches\":$((b[1] - a[1])),"
    if [ -n "${PID[stat_$name]:-}" ]; then
      kill -INT "${PID[stat_$name]}" 2>/dev/null || true
      wait "${PID[stat_$name]}" 2>/dev/null || true
      unset "PID[stat_$name]"
      sys=$(awk -F, '/raw_syscalls:sys_enter/ { print $1 + 0 }' "$WORK/stat-$name.txt" 2>/dev/null)
      json+="\"${name}_syscalls\":${sys:-null},"
    fi
  done
  json+="\"seconds\":$(python3 -c "print(round($t1-${CPU0[t]},3))"),\"loadavg\":\"$(cut -d' ' -f1-3 /proc/loadavg)\"}"
  emit "cpu.$1" "$json"
}

# ---------------------------------------------------------------------------------------------
# The port a client connects to for each path of rows 1-3.
path_port() { # path direct-port
  case $1 in direct) echo "$2" ;; reference) echo "$CHAIN_A" ;; openssh) echo "$SSH_L_PORT" ;; tunnel) echo "$SP_PORT" ;; esac
}

# Row 1: bulk throughput, one stream each way.
iperf_once() { # name port direction(up|down) [extra iperf3 args]
  local name=$1 port=$2 dir=$3 out
  shift 3
  out=$WORK/iperf-$name.json
  # The first second is left out (-O 1): TCP slow start and, through the tunnel, stream set-up.
  local args=(-c 127.0.0.1 -p "$port" -t "$DURATION" -O 1 -J)
  [ "$dir" = down ] && args+=(-R)
  timeout $((DURATION + 60)) iperf3 "${args[@]}" "$@" >"$out" 2>&1 || true
  python3 "$BENCH_DIR/report.py" iperf3 "$out"
}
row1() {
  log "row 1: bulk throughput, one stream, ${REPEAT}x ${DURATION}s per path and direction"
  start_bg iperf_server iperf3 -s -B 127.0.0.1 -p "$IPERF_PORT"
  wait_listening "$IPERF_PORT"
  stack_up "$IPERF_PORT"
  chain_up "$IPERF_PORT"
  openssh_up "$IPERF_PORT"
  local dir r path port result
  for dir in up down; do
    for r in $(seq "$REPEAT"); do
      for path in direct reference openssh tunnel; do
        port=$(path_port "$path" "$IPERF_PORT")
        [ "$path" = tunnel ] && [ "$r" = 1 ] && perf_start "bulk-$dir"
        [ "$path" = tunnel ] && cpu_begin
        [ "$path" = reference ] && cpu_begin stunnel_client socat stunnel_server
        [ "$path" = openssh ] && cpu_begin "${OPENSSH_PROCS[@]}"
        result=$(iperf_once "$path-$dir-$r" "$port" "$dir")
        [ "$path" = reference ] && sleep 0.5 # socat reaps the children that served the connections
        [ "$path" != direct ] && cpu_end "bulk-$dir-$path"
        [ "$path" = tunnel ] && [ "$r" = 1 ] && perf_stop "bulk-$dir"
        emit "bulk.$dir.$path" "$result"
        log "  $dir $path: $result"
      done
    done
    # System calls per MiB, from one more run per path with the processes traced (not timed).
    if [ "$PERF_STAT" = 1 ]; then
      COUNT_SYSCALLS=1
      for path in reference openssh tunnel; do
        port=$(path_port "$path" "$IPERF_PORT")
        [ "$path" = tunnel ] && cpu_begin
        [ "$path" = reference ] && cpu_begin stunnel_client socat stunnel_server
        [ "$path" = openssh ] && cpu_begin "${OPENSSH_PROCS[@]}"
        result=$(iperf_once "$path-$dir-counted" "$port" "$dir")
        [ "$path" = reference ] && sleep 0.5
        cpu_end "bulk-counted-$dir-$path"
        emit "bulk-counted.$dir.$path" "$result"
        log "  $dir $path, system calls counted: $result"
      done
      COUNT_SYSCALLS=0
    fi
  done
  openssh_down
  chain_down
  stack_down
  stop_bg iperf_server
}

# Row 2: latency of 64-byte round trips.
row2() {
  log "row 2: 64-byte round trips, $PINGPONGS per path"
  start_bg echo_server "$TCPTOOL" echo --port "$ECHO_PORT"
  wait_listening "$ECHO_PORT"
  stack_up "$ECHO_PORT"
  chain_up "$ECHO_PORT"
  openssh_up "$ECHO_PORT"
  local path port result
  for path in direct reference openssh tunnel; do
    port=$(path_port "$path" "$ECHO_PORT")
    [ "$path" = tunnel ] && perf_start latency
    result=$(timeout 300 "$LATENCY" pingpong --port "$port" --count "$PINGPONGS" --size 64) || result='{"error":"failed"}'
    [ "$path" = tunnel ] && perf_stop latency
    emit "latency.$path" "$result"
    log "  $path: $result"
  done
  openssh_down
  chain_down
  stack_down
  stop_bg echo_server
}

# Row 3: stream setup latency and sustained new streams per second.
row3() {
  log "row 3: stream setup ($SETUPS sequential), then ${RATE_SECONDS}s of new streams from 8 clients"
  start_bg echo_server "$TCPTOOL" echo --port "$ECHO_PORT"
  wait_listening "$ECHO_PORT"
  stack_up "$ECHO_PORT"
  local result
  result=$(timeout 600 "$LATENCY" setup --port "$SP_PORT" --count "$SETUPS") || true
  [ -n "$result" ] || result='{"error":"failed"}'
  emit setup.sequential "$result"
  log "  sequential: $result"
  # The relay's own view of the same streams: its log's setupMs (stream request to both sides joined).
  emit setup.relay_view "$(grep -o 'event=StreamEstablished.*setupMs=[0-9.]*' "$WORK/relay.err" | sed 's/.*setupMs=//' |
    python3 -c 'import json,statistics,sys; v=sorted(float(x) for x in sys.stdin if x.strip()); print(json.dumps({"count": len(v), "setup_ms_p50": statistics.median(v) if v else None}))')"
  perf_start setup-rate
  cpu_begin
  result=$(timeout $((RATE_SECONDS + 120)) "$TCPTOOL" rate --port "$SP_PORT" --clients 8 --duration "$RATE_SECONDS") ||
    result='{"error":"failed"}'
  cpu_end setup-rate
  perf_stop setup-rate
  emit setup.rate "$result"
  log "  rate: $result"
  # Issue 13's measure, as a user's clients see it: 8 clients, 600 connections in all, each TCP
  # connect to the service proxy -> first byte echoed by the device's target.
  result=$(timeout 300 "$TCPTOOL" rate --port "$SP_PORT" --clients 8 --streams 600) || result='{"error":"failed"}'
  emit setup.user_view "$result"
  log "  user view: $result"
  # The same set-up loops through the peers (and the sequential one straight to the echo server):
  # per stream a TLS connection on each hop of the chain, a channel over the two SSH connections.
  chain_up "$ECHO_PORT"
  openssh_up "$ECHO_PORT"
  local path port
  for path in direct reference openssh; do
    port=$(path_port "$path" "$ECHO_PORT")
    result=$(timeout 600 "$LATENCY" setup --port "$port" --count "$SETUPS") || true
    [ -n "$result" ] || result='{"error":"failed"}'
    emit "setup.sequential.$path" "$result"
    log "  sequential, $path: $result"
  done
  for path in reference openssh; do
    port=$(path_port "$path" "$ECHO_PORT")
    [ "$path" = reference ] && cpu_begin stunnel_client socat stunnel_server
    [ "$path" = openssh ] && cpu_begin "${OPENSSH_PROCS[@]}"
    result=$(timeout $((RATE_SECONDS + 120)) "$TCPTOOL" rate --port "$port" --clients 8 --duration "$RATE_SECONDS") ||
      result='{"error":"failed"}'
    [ "$path" = reference ] && sleep 0.5 # socat reaps the children that served the connections
    cpu_end "setup-rate-$path"
    emit "setup.rate.$path" "$result"
    log "  rate, $path: $result"
  done
  openssh_down
  chain_down
  stack_down
  stop_bg echo_server
}

# Row 4: concurrent open streams (RSS per stream), and 100 active streams.
row4() {
  local cap=$(((FD_LIMIT - 100) / 2)) n ran reason
  start_bg echo_server "$TCPTOOL" echo --port "$ECHO_PORT"
  wait_listening "$ECHO_PORT"
  for n in ${STREAMS//,/ }; do
    ran=$n reason=""
    if [ "$n" -gt "$cap" ]; then
      ran=$cap
      reason="RLIMIT_NOFILE hard limit $FD_LIMIT allows $cap paired streams (2 sockets each) in one relay"
    fi
    log "row 4: $ran concurrent streams${reason:+ ($reason)}"
    [ "$HEAPTRACK" = 1 ] && HEAP_PROFILE=streams-$ran HEAP_ROW=4
    stack_up "$ECHO_PORT"
    sleep 1
    local r0 s0 d0 r1 s1 d1 est
    r0=$(rss_kib "${PID[relay]}") s0=$(rss_kib "${PID[service_proxy]}") d0=$(rss_kib "${PID[device_proxy]}")
    start_bg hold "$TCPTOOL" hold --port "$SP_PORT" --count "$ran" --parallel 64 --timeout 600
    if ! wait_line "$WORK/hold.out" '"event":"established"' 660; then
      log "  hold did not report; see $WORK/hold.err"
    fi
    sleep 3 # let the last handshakes' buffers settle
    r1=$(rss_kib "${PID[relay]}") s1=$(rss_kib "${PID[service_proxy]}") d1=$(rss_kib "${PID[device_proxy]}")
    est=$(last_json "$WORK/hold.out")
    local released hold_pid=${PID[hold]}
    stop_bg hold
    released=$(last_json "$WORK/hold.$hold_pid.out")
    emit "concurrency.$ran" "$(python3 - "$est" "$released" "$n" "$ran" "$reason" "$r0" "$r1" "$s0" "$s1" "$d0" "$d1" "$HEAPTRACK" <<'PY'
import json, sys
est = json.loads(sys.argv[1] or "{}")
rel = json.loads(sys.argv[2] or "{}")
n, ran, reason = int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
r0, r1, s0, s1, d0, d1 = map(int, sys.argv[6:12])
e = est.get("established", 0)
per = lambda a, b: round((b - a) / e, 1) if e else None
print(json.dumps({"requested": n, "ran": ran, "cap_reason": reason, "established": e,
                  "failed": est.get("failed"), "seconds": est.get("seconds"),
                  "setup_p50_us": est.get("setup_p50_us"), "setup_p99_us": est.get("setup_p99_us"),
                  "still_open": rel.get("still_open"), "dropped": rel.get("dropped"),
                  "relay_rss_before_kib": r0, "relay_rss_after_kib": r1, "relay_kib_per_stream": per(r0, r1),
                  "service_proxy_kib_per_stream": per(s0, s1), "device_proxy_kib_per_stream": per(d0, d1),
                  "relay_under_heaptrack": sys.argv[12] == "1"}))
PY
)"
    log "  $(tail -n 1 "$RESULTS")"
    stack_down
    HEAP_PROFILE=""
  done
  stop_bg echo_server

  log "row 4: 100 active streams (iperf3 -P 100), ${DURATION}s each way, beside direct and the reference chain"
  start_bg iperf_server iperf3 -s -B 127.0.0.1 -p "$IPERF_PORT"
  wait_listening "$IPERF_PORT"
  stack_up "$IPERF_PORT"
  chain_up "$IPERF_PORT"
  local dir result path port
  for dir in up down; do
    for path in direct reference tunnel; do
      case $path in direct) port=$IPERF_PORT ;; reference) port=$CHAIN_A ;; tunnel) port=$SP_PORT ;; esac
      [ "$path" = tunnel ] && perf_start "aggregate100-$dir"
      [ "$path" = tunnel ] && cpu_begin
      [ "$path" = reference ] && cpu_begin stunnel_client socat stunnel_server
      # 101 streams (iperf3's control connection is one) are set up while the clock runs: the
      # first 3 seconds are left out.
      result=$(iperf_once "p100-$path-$dir" "$port" "$dir" -P 100 -O 3)
      [ "$path" = reference ] && sleep 0.5
      [ "$path" != direct ] && cpu_end "aggregate100-$dir-$path"
      [ "$path" = tunnel ] && perf_stop "aggregate100-$dir"
      emit "aggregate100.$dir.$path" "$result"
      log "  $dir $path: $result"
    done
  done
  chain_down
  stack_down
  stop_bg iperf_server
}

# Row 5: idle devices from the swarm.
row5() {
  log "row 5: $DEVICES idle devices"
  [ "$HEAPTRACK" = 1 ] && HEAP_PROFILE=devices-$DEVICES HEAP_ROW=5
  relay_up
  local key sample=20 i t0 t1 result r0 r1
  key=$(openssl rand -base64 32)
  # The admin CLI, as an operator would use it: a sample, two at a time, to report its rate.
  t0=$(date +%s.%N)
  for i in $(seq 0 $((sample - 1))); do echo "admin-sample-$i"; done |
    xargs -P 2 -I{} "$RELAY" --data-dir "$DATA" device-identity create --device-id {} >/dev/null
  t1=$(date +%s.%N)
  emit devices.admin_cli "$(python3 -c "print('{\"count\":$sample,\"parallel\":2,\"per_second\":%.2f}' % ($sample/($t1-$t0)))")"
  # The swarm's devices, through the registry REST API (PUT /devices/{id}, 8 keep-alive connections).
  result=$(timeout 1200 "$SWARM" create --connection-string "$REG_CS" --ca-file "$DATA/ca.pem" --count "$DEVICES" \
    --prefix swarm- --key "$key" --parallel 8) || true
  [ -n "$result" ] || result='{"error":"create failed"}'
  emit devices.create "$(python3 -c 'import json,sys; d=json.loads(sys.argv[1]); d["parallel"]=8; print(json.dumps(d))' "$result")"
  log "  created: $result"
  sleep 1
  r0=$(rss_kib "${PID[relay]}")
  start_bg swarm "$SWARM" connect --host-name "$RELAY_HOST" --ca-file "$DATA/ca.pem" --count "$DEVICES" \
    --prefix swarm- --key "$key" --parallel 256 --timeout 900
  wait_line "$WORK/swarm.out" '"event":"connected"' 960 || log "  swarm did not report; see $WORK/swarm.err"
  sleep 3
  r1=$(rss_kib "${PID[relay]}")
  # The registry's view of a sample of them.
  local shown=0 sampled=0 step=$(((DEVICES + 9) / 10))
  for i in $(seq 0 "$step" $((DEVICES - 1))); do
    sampled=$((sampled + 1))
    admin device-identity show --device-id "swarm-$i" 2>/dev/null | grep -q '"connectionState":"Connected"' && shown=$((shown + 1))
  done
  result=$(last_json "$WORK/swarm.out")
  stop_bg swarm
  emit devices.connect "$(python3 - "$result" "$r0" "$r1" "$shown" "$sampled" <<'PY'
import json, sys
d = json.loads(sys.argv[1] or "{}")
r0, r1 = int(sys.argv[2]), int(sys.argv[3])
c = d.get("connected", 0)
d.update({"relay_rss_before_kib": r0, "relay_rss_after_kib": r1,
          "relay_kib_per_device": round((r1 - r0) / c, 1) if c else None,
          "shown_connected": int(sys.argv[4]), "shown_sampled": int(sys.argv[5])})
d.setdefault("requested", 0); d.setdefault("failed", None); d.setdefault("seconds", None)
d.setdefault("per_second", None); d.setdefault("connect_p50_ms", None)
print(json.dumps(d))
PY
)"
  log "  $(tail -n 1 "$RESULTS")"
  relay_down
  HEAP_PROFILE=""
}

# Row 6: a fast sender meets a 1 MiB/s reader, each way. A 1-second warm-up stream first, so the
# growth measured is what the stream holds, not the process's first-use allocations; then the
# peak (VmHWM, reset before the stream) minus the RSS before it, for each process.
row6() {
  local dir name p out client_mode target_mode
  for dir in up down; do
    log "row 6: backpressure $dir, ${BP_SECONDS}s"
    if [ "$dir" = up ]; then
      target_mode=(sink --rate 1048576) client_mode=(source)
    else
      target_mode=(source) client_mode=(sink --rate 1048576)
    fi
    start_bg bp_target "$TCPTOOL" "${target_mode[@]}" --listen "$SINK_PORT" --duration "$BP_SECONDS"
    wait_listening "$SINK_PORT"
    stack_up "$SINK_PORT"
    timeout 60 "$TCPTOOL" "${client_mode[@]}" --port "$SP_PORT" --duration 1 >/dev/null || true
    sleep 2
    declare -A base=()
    for name in relay service_proxy device_proxy; do
      p=${PID[$name]}
      base[$name]=$(rss_kib "$p")
      reset_hwm "$p"
    done
    out=$(timeout $((BP_SECONDS + 60)) "$TCPTOOL" "${client_mode[@]}" --port "$SP_PORT" --duration "$BP_SECONDS") || true
    for p in $(seq 100); do # the target's report of the measured stream (its second)
      [ "$(grep -c '"mode"' "$WORK/bp_target.out")" -ge 2 ] && break
      sleep 0.1
    done
    local peaks=""
    for name in relay service_proxy device_proxy; do
      peaks+="\"${name}_peak_growth_kib\":$(($(hwm_kib "${PID[$name]}") - ${base[$name]})),\"${name}_rss_before_kib\":${base[$name]},"
    done
    local target_json
    target_json=$(last_json "$WORK/bp_target.out")
    emit "backpressure.$dir" "$(python3 - "$dir" "$out" "$target_json" "{${peaks%,}}" "$BP_SECONDS" <<'PY'
import json, sys
up = sys.argv[1] == "up"
client = json.loads(sys.argv[2] or "{}")
target = json.loads(sys.argv[3] or "{}")
d = json.loads(sys.argv[4])
sender, reader = (client, target) if up else (target, client)
d.update({"bytes_sent": sender.get("bytes", 0), "bytes_read": reader.get("bytes", 0),
          "reader_bytes_per_s": reader.get("bytes_per_s"), "seconds": float(sys.argv[5])})
print(json.dumps(d))
PY
)"
    log "  $(tail -n 1 "$RESULTS")"
    stack_down
    stop_bg bp_target
  done
}

# ---------------------------------------------------------------------------------------------
LOAD_START=$(cut -d' ' -f1-3 /proc/loadavg)
START_EPOCH=$(date +%s)
for row in 1 2 3 4 5 6; do
  if row_enabled "$row"; then "row$row"; fi
done

mkdir -p "$(dirname "$OUT")"
python3 - "$WORK/meta.json" <<PY
import json, os, platform, subprocess, sys
cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "unknown")
try:
    commit = subprocess.run(["git", "-C", "$REPO", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    dirty = bool(subprocess.run(["git", "-C", "$REPO", "status", "--porcelain", "--untracked-files=no"],
                                capture_output=True, text=True).stdout.strip())
except OSError:
    commit, dirty = "", False
json.dump({"date": subprocess.run(["date", "-u", "+%Y-%m-%dT%H:%M:%SZ"], capture_output=True, text=True).stdout.strip(),
           "command": """$COMMAND_LINE""", "nproc": os.cpu_count(), "cpu_model": cpu, "kernel": platform.release(),
           "mem_total_kib": int(next(l.split()[1] for l in open("/proc/meminfo") if l.startswith("MemTotal"))),
           "loadavg_start": "$LOAD_START", "loadavg_end": open("/proc/loadavg").read().split()[:3],
           "fd_limit": $FD_LIMIT, "git_commit": commit, "worktree_modified": dirty,
           "relay_threads": "${RELAY_THREADS:-default}", "proxy_threads": "${PROXY_THREADS:-default}", "seconds": $(date +%s) - $START_EPOCH,
           "relay_args": """${RELAY_ARGS[*]}""".replace("$WORK", "TMP"),
           "iperf3_seconds": $DURATION, "iperf3_repeat": $REPEAT}, open(sys.argv[1], "w"))
PY
python3 "$BENCH_DIR/report.py" table "$RESULTS" "$WORK/meta.json" "$OUT"
log "results written to $OUT"
