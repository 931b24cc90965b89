#!/usr/bin/env bash
# Runs deploy/compose.cluster.yaml for real, end to end, with rootful podman + podman-compose on
# a bridge network with DNS (netavark + aardvark-dns), as docs/CONTAINERS.md ("Cluster compose")
# records:
#   1. base images from mmdebstrap when missing (deploy/container/base-image.sh: build, runtime,
#      device, postgres), the build stage once by hand with the host's ccache mounted (to learn
#      the .deb's Depends for the runtime bases), then `podman-compose build` (db, n1, device);
#   2. `podman-compose up --exit-code-from smoke smoke`: PostgreSQL, n1-n3, the device, the
#      service proxy (asking n2) and the ssh smoke test, which must pass;
#   3. the node holding the device (from n2's /api/status) is stopped; the device must show up
#      on another node, and the smoke test (`run --rm --no-deps smoke`) must pass again;
#   4. `podman-compose down -v`; no container or volume of the project may be left.
# Usage: scripts/compose-cluster-check.sh [--rebuild-bases] [--keep]
#   --keep leaves the stack running at the end (and on failure) instead of `down -v`.
# Needs root and a few minutes; not part of CI. Installs podman, podman-compose, netavark,
# aardvark-dns, iptables, runc, mmdebstrap, uidmap if missing (Debian 12 packages).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
work=${SG_CONTAINER_WORK:-/var/tmp/sg-container}
project=${SG_COMPOSE_PROJECT:-streamgate-cluster}
file=$root/deploy/compose.cluster.yaml
rebuild_bases=0 keep=0
while [ $# -gt 0 ]; do
    case "$1" in
        --rebuild-bases) rebuild_bases=1 ;;
        --keep) keep=1 ;;
        *) echo "usage: $0 [--rebuild-bases] [--keep]" >&2; exit 2 ;;
    esac
    shift
done
[ "$(id -u)" -eq 0 ] || { echo "compose-cluster-check: run as root (rootful podman, bridge networks)" >&2; exit 2; }

t0=$SECONDS
step() { echo "== [$((SECONDS - t0)) s] $*"; }
fail() { echo "compose-cluster-check: FAILED: $*" >&2; exit 1; }

missing=()
for p in podman podman-compose netavark aardvark-dns iptables runc mmdebstrap uidmap; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
    step "installing ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# A private containers.conf: runc (crun refuses this machine's hybrid cgroup v1 set-up), ulimits
# podman may set here (its default nofile is above this VM's hard limit), logs in files.
mkdir -p "$work"
cat > "$work/compose-containers.conf" <<'CONF'
[containers]
default_ulimits = ["nofile=1024:1024", "nproc=4096:4096"]
log_driver = "k8s-file"
[engine]
runtime = "runc"
events_logger = "file"
CONF
export CONTAINERS_CONF=$work/compose-containers.conf
ccache_dir=$(ccache -k cache_dir 2>/dev/null || echo "$HOME/.cache/ccache")
mkdir -p "$ccache_dir"

# The compose file's build arguments (x-build) name these bases: local ones, no Docker Hub.
export SG_BUILD_BASE=localhost/streamgate-base-build:bookworm
export SG_RUNTIME_BASE=localhost/streamgate-base-runtime:bookworm
export SG_DEVICE_BASE=localhost/streamgate-base-device:bookworm
export SG_POSTGRES_BASE=localhost/streamgate-base-postgres:bookworm
compose() { podman-compose -p "$project" -f "$file" "$@"; }
have_image() { podman image exists "$1"; }

if [ $rebuild_bases = 1 ] || ! have_image "$SG_BUILD_BASE"; then
    step "mmdebstrap: build base image"
    "$root/deploy/container/base-image.sh" build
fi
step "podman build --target build (host ccache at $ccache_dir), for the package's Depends"
nice -n 10 podman build --pull=never -v "$ccache_dir:/ccache" \
    --build-arg BUILD_BASE="$SG_BUILD_BASE" --build-arg RUNTIME_BASE="$SG_RUNTIME_BASE" \
    --build-arg DEVICE_BASE="$SG_DEVICE_BASE" --build-arg POSTGRES_BASE="$SG_POSTGRES_BASE" \
    --target build -t localhost/streamgate-build:dev -f "$root/deploy/container/Dockerfile" "$root"
depends=$(podman run --rm localhost/streamgate-build:dev cat /out/Depends)
runtime_pkgs=$(tr ',' '\n' <<<"$depends" | awk '{ print $1 }' | sort -u | tr '\n' ' ')
step "package Depends: $runtime_pkgs"
if [ $rebuild_bases = 1 ] || [ "$(cat "$work/runtime-packages" 2>/dev/null)" != "$runtime_pkgs" ] ||
   ! have_image "$SG_RUNTIME_BASE" || ! have_image "$SG_DEVICE_BASE"; then
    step "mmdebstrap: runtime and device base images"
    # shellcheck disable=SC2086
    "$root/deploy/container/base-image.sh" runtime $runtime_pkgs
    # shellcheck disable=SC2086
    "$root/deploy/container/base-image.sh" device $runtime_pkgs openssh-server
    echo "$runtime_pkgs" > "$work/runtime-packages"
fi
if [ $rebuild_bases = 1 ] || ! have_image "$SG_POSTGRES_BASE"; then
    step "mmdebstrap: postgres base image"
    "$root/deploy/container/base-image.sh" postgres
fi

log=$work/compose-up-$project.log
# podman-compose 1.0.3's down -v removes the named volumes but neither the network nor the
# anonymous volumes (the runtime image's VOLUME in service-proxy): those go by name here.
project_down() {
    local anon
    anon=$(podman ps -a -q --filter "label=io.podman.compose.project=$project" |
        xargs -r podman inspect -f '{{range .Mounts}}{{if eq .Type "volume"}}{{.Name}} {{end}}{{end}}' 2>/dev/null |
        tr ' ' '\n' | grep -E '^[0-9a-f]{64}$' | sort -u || true)
    compose down -v >/dev/null 2>&1 || true
    podman network rm "${project}_default" >/dev/null 2>&1 || true
    # shellcheck disable=SC2086
    [ -z "$anon" ] || podman volume rm $anon >/dev/null 2>&1 || true
}
cleanup() {
    local rc=$?
    if [ $rc -ne 0 ]; then
        for c in $(podman ps -a --filter "label=io.podman.compose.project=$project" --format '{{.Names}}'); do
            echo "--- last lines of $c"; podman logs --tail 15 "$c" 2>&1 || true
        done
    fi
    [ $keep = 1 ] || project_down
}
trap cleanup EXIT

step "podman-compose build (db, n1 = runtime, device; the build stage from the cache)"
nice -n 10 podman-compose --podman-build-args="-v $ccache_dir:/ccache" -p "$project" -f "$file" build >"$work/compose-build.log" 2>&1 ||
    { tail -30 "$work/compose-build.log"; fail "podman-compose build"; }
grep -E 'Successfully tagged|Hits|Misses' "$work/compose-build.log" || true
podman images --format '{{.Repository}}:{{.Tag}} {{.Size}}' | grep -E 'streamgate-(runtime|device|postgres):dev'

step "podman-compose up --exit-code-from smoke smoke (log: $log)"
# Not a pipe: podman-compose 1.0.3 leaves its `podman start -a` children writing after it exits.
up_start=$SECONDS
rc=0
compose up --exit-code-from smoke smoke >"$log" 2>&1 || rc=$?
grep -E '^smoke: |^exit code' "$log" || true
[ $rc -eq 0 ] || fail "up --exit-code-from smoke: exit $rc"
grep -q '^smoke: 4 MiB up and 4 MiB down' "$log" || fail "no smoke success line in $log"
step "smoke passed ($((SECONDS - up_start)) s from up)"
compose ps 2>/dev/null | grep -v '^\[' || true

ip_of() { podman inspect -f '{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}' "${project}_$1_1"; }
home_of_device() { # node: the device's node as that node's /api/status says
    curl -fsS --max-time 3 "http://$(ip_of "$1"):9464/api/status" 2>/dev/null |
        python3 -c 'import json,sys
d = json.load(sys.stdin)
print(next((x.get("node") or "" for x in d.get("devices", []) if x.get("id") == "demo-device"), ""))' 2>/dev/null || true
}
home=$(home_of_device n2)
[ -n "$home" ] || fail "n2's /api/status names no node for demo-device"
step "demo-device is held by $home (n2's /api/status); stopping $home"
compose stop "$home" >/dev/null 2>&1
stop_at=$SECONDS
others=()
for n in n1 n2 n3; do [ "$n" = "$home" ] || others+=("$n"); done
new=""
while [ $((SECONDS - stop_at)) -lt 120 ]; do
    new=$(home_of_device "${others[0]}")
    [ -n "$new" ] && [ "$new" != "$home" ] && break
    new=""
    sleep 1
done
[ -n "$new" ] || fail "the device did not show up on another node within 120 s"
step "demo-device now held by $new ($((SECONDS - stop_at)) s after stopping $home, per ${others[0]}'s /api/status)"
echo "-- device proxy log since the stop:"
podman logs "${project}_device_1" 2>&1 | grep -E 'lost connection|reconnecting in|connecting to relay|connected to relay' | tail -6 || true
step "smoke again, $home stopped: podman-compose run --rm --no-deps -T smoke"
compose run --rm --no-deps -T smoke >"$work/compose-run-smoke.log" 2>&1 || { cat "$work/compose-run-smoke.log"; fail "smoke after stopping $home"; }
grep -E '^smoke: ' "$work/compose-run-smoke.log"
grep -q '^smoke: 4 MiB up and 4 MiB down' "$work/compose-run-smoke.log" || fail "no smoke success line after stopping $home"

if [ $keep = 0 ]; then
    step "podman-compose down -v"
    project_down
    left=$(podman ps -a --filter "label=io.podman.compose.project=$project" --format '{{.Names}}')
    vols=$(podman volume ls --filter "label=io.podman.compose.project=$project" --format '{{.Name}}')
    nets=$(podman network ls --format '{{.Name}}' | grep -x "${project}_default" || true)
    [ -z "$left$vols$nets" ] || fail "left after down: $left $vols $nets"
    echo "no container, volume or network of project $project left"
fi
step "compose-cluster-check: OK"
