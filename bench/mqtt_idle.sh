#!/usr/bin/env bash
# Idle devices, MQTT beside the control WebSocket (issue 14): one fresh relay with --mqtt-listen,
# N devices registered through REST (sg_device_swarm create), then held idle twice, one protocol at
# a time: N MQTT connections (bench/mqtt_swarm.py: CONNECT + SUBSCRIBE as the Azure IoT SDKs do),
# then N control WebSockets (sg_device_swarm connect). For each: the relay's RSS before and 3 s
# after all are up, KiB per device, connect rate, and how many a sample shows Connected.
# Prints one JSON object per protocol on stdout.
#
#   bench/mqtt_idle.sh [--devices N] [--build-dir build-bench]     (default 2000)
# build-bench: cmake -S bench -B build-bench -G Ninja && ninja -C build-bench streamgate-relay sg_device_swarm
set -euo pipefail
cd "$(dirname "$0")/.."
DEVICES=2000
BUILD_DIR=build-bench
while [ $# -gt 0 ]; do
  case $1 in
  --devices) DEVICES=$2; shift 2 ;;
  --build-dir) BUILD_DIR=$2; shift 2 ;;
  -h | --help) sed -n '2,10p' "$0"; exit 0 ;;
  *) echo "unknown option $1" >&2; exit 2 ;;
  esac
done
find_binary() { find "$BUILD_DIR" -type f -name "$1" -perm -u+x -not -path '*/CMakeFiles/*' | head -n 1; }
RELAY=$(find_binary streamgate-relay)
SWARM=$(find_binary sg_device_swarm)
PY=/usr/bin/python3
[ -x "$PY" ] || PY=python3
[ -n "$RELAY" ] && [ -n "$SWARM" ] || {
  echo "no streamgate-relay / sg_device_swarm under $BUILD_DIR: cmake -S bench -B build-bench && ninja -C build-bench streamgate-relay sg_device_swarm" >&2
  exit 1
}
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

WORK=$(mktemp -d)
RELAY_PID=""
cleanup() {
  [ -n "$RELAY_PID" ] && kill "$RELAY_PID" 2>/dev/null || true
  wait 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT
rss_kib() { awk '$1 == "VmRSS:" { print $2 }' "/proc/$1/status"; }
wait_line() { local i; for i in $(seq $(($3 * 10))); do grep -q "$2" "$1" 2>/dev/null && return 0; sleep 0.1; done; return 1; }

KEY=$(openssl rand -base64 32)
# A fresh relay (and data dir) per protocol, so neither inherits the other's freed memory.
relay_up() {
  rm -rf "$WORK/sg"
  "$RELAY" --data-dir "$WORK/sg" --listen 127.0.0.1:0 --mqtt-listen 127.0.0.1:0 --admin-listen off \
    --max-devices $((DEVICES + 100)) >"$WORK/relay.out" 2>"$WORK/relay.err" &
  RELAY_PID=$!
  wait_line "$WORK/relay.err" "event=Listening address=" 30
  MQTT=$(sed -n 's/.*event=Listening endpoint=mqtt address=\([^ ]*\).*/\1/p' "$WORK/relay.err" | head -n 1)
  REG_CS=$("$RELAY" --data-dir "$WORK/sg" show-connection-string --policy-name registryReadWrite)
  HOST=$(sed -n 's/.*HostName=\([^;]*\).*/\1/p' <<<"$REG_CS")
  "$SWARM" create --connection-string "$REG_CS" --ca-file "$WORK/sg/ca.pem" --count "$DEVICES" --prefix swarm- \
    --key "$KEY" --parallel 8 >"$WORK/create.out"
}
relay_down() {
  kill "$RELAY_PID" 2>/dev/null || true
  wait "$RELAY_PID" 2>/dev/null || true
  RELAY_PID=""
}

sample_connected() {
  local shown=0 i step=$(((DEVICES + 9) / 10))
  for i in $(seq 0 "$step" $((DEVICES - 1))); do
    "$RELAY" --data-dir "$WORK/sg" device-identity show --device-id "swarm-$i" | grep -q '"connectionState":"Connected"' &&
      shown=$((shown + 1))
  done
  echo "$shown"
}

measure() { # protocol command...
  local protocol=$1 r0 r1 pid shown
  shift
  sleep 2
  r0=$(rss_kib "$RELAY_PID")
  setsid "$@" >"$WORK/$protocol.out" 2>"$WORK/$protocol.err" </dev/null &
  pid=$!
  wait_line "$WORK/$protocol.out" '"event":"connected"' 900 || echo "$protocol: no report; $(tail -3 "$WORK/$protocol.err")" >&2
  sleep 3
  r1=$(rss_kib "$RELAY_PID")
  shown=$(sample_connected)
  kill -TERM -- "-$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
  "$PY" - "$protocol" "$(grep '^{' "$WORK/$protocol.out" | head -n 1)" "$r0" "$r1" "$shown" <<'PY'
import json, sys
protocol, line, r0, r1, shown = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
d = json.loads(line or "{}")
c = d.get("connected", 0)
print(json.dumps({"protocol": protocol, "connected": c, "failed": d.get("failed"), "seconds": d.get("seconds"),
                  "per_second": d.get("per_second"), "connect_p50_ms": d.get("connect_p50_ms"),
                  "relay_rss_before_kib": r0, "relay_rss_after_kib": r1,
                  "relay_kib_per_device": round((r1 - r0) / c, 1) if c else None, "shown_connected_of_10": shown}))
PY
}

relay_up
measure mqtt "$PY" bench/mqtt_swarm.py --port "${MQTT##*:}" --host-name "$HOST" --ca "$WORK/sg/ca.pem" \
  --count "$DEVICES" --prefix swarm- --key "$KEY" --parallel 64
relay_down
relay_up
measure websocket "$SWARM" connect --host-name "$HOST" --ca-file "$WORK/sg/ca.pem" --count "$DEVICES" \
  --prefix swarm- --key "$KEY" --parallel 256 --timeout 900
relay_down
