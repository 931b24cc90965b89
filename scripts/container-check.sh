#!/usr/bin/env bash
# Does with podman what deploy/compose.yaml describes, on a machine without Docker Hub and
# without bridge networks (see docs/CONTAINERS.md for a run and its timings):
#   1. base images from mmdebstrap (build: every package of install-deps.sh; runtime: only
#      the .deb's Depends; device: those + openssh-server), `podman import`ed;
#   2. `podman build --pull=never --network=none` of the build, runtime and device targets,
#      with the host's ccache mounted at /ccache;
#   3. relay, device (device proxy + sshd) and service proxy in three containers sharing one
#      network namespace made here (loopback only), then ssh through them (smoke);
#   4. the integration tests inside a container (its own loopback-only namespace; with
#      CAP_SYS_ADMIN and CAP_NET_ADMIN so the firewall test can make its own namespaces).
# Usage: scripts/container-check.sh [--rebuild-bases] [--tests CTEST_ARGS] [--keep]
#   --tests '-R integration' is the default; '--tests none' skips step 4.
# Needs root. Installs podman, runc and mmdebstrap if missing. Not part of CI (minutes, heavy).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
work=${SG_CONTAINER_WORK:-/var/tmp/sg-container}
rebuild_bases=0 keep=0 tests="-R integration"
while [ $# -gt 0 ]; do
    case "$1" in
        --rebuild-bases) rebuild_bases=1 ;;
        --keep) keep=1 ;;
        --tests) tests=$2; shift ;;
        *) echo "usage: $0 [--rebuild-bases] [--tests CTEST_ARGS|none] [--keep]" >&2; exit 2 ;;
    esac
    shift
done
[ "$(id -u)" -eq 0 ] || { echo "container-check: run as root (rootful podman, ip netns)" >&2; exit 2; }

step_start=$SECONDS
step() { echo "== [$((SECONDS - step_start)) s] $*"; }

missing=()
for p in podman runc mmdebstrap uidmap; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
    step "installing ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# A private containers.conf: runc, no network unless asked for, ulimits podman can set here.
mkdir -p "$work"
cat > "$work/containers.conf" <<'CONF'
[containers]
default_ulimits = ["nofile=1024:1024", "nproc=4096:4096"]
netns = "none"
[engine]
runtime = "runc"
CONF
export CONTAINERS_CONF=$work/containers.conf
ccache_dir=$(ccache -k cache_dir 2>/dev/null || echo "$HOME/.cache/ccache")
mkdir -p "$ccache_dir"

have_image() { podman image exists "$1"; }
build_target() { # target tag [build-args...]
    local target=$1 tag=$2
    shift 2
    nice -n 10 podman build --pull=never --network=none -v "$ccache_dir:/ccache" \
        --build-arg BUILD_BASE=localhost/streamgate-base-build:bookworm "$@" \
        --target "$target" -t "$tag" -f "$root/deploy/container/Dockerfile" "$root"
}

if [ $rebuild_bases = 1 ] || ! have_image localhost/streamgate-base-build:bookworm; then
    step "mmdebstrap: build base image"
    "$root/deploy/container/base-image.sh" build
fi
step "podman build --target build (ccache at $ccache_dir)"
build_target build localhost/streamgate-build:dev
depends=$(podman run --rm localhost/streamgate-build:dev cat /out/Depends)
runtime_pkgs=$(tr ',' '\n' <<<"$depends" | awk '{ print $1 }' | sort -u | tr '\n' ' ')
step "package Depends: $runtime_pkgs"
# The bases are remade when the Depends change (recorded beside them).
if [ $rebuild_bases = 1 ] || [ "$(cat "$work/runtime-packages" 2>/dev/null)" != "$runtime_pkgs" ] ||
   ! have_image localhost/streamgate-base-runtime:bookworm || ! have_image localhost/streamgate-base-device:bookworm; then
    step "mmdebstrap: runtime base image"
    # shellcheck disable=SC2086
    "$root/deploy/container/base-image.sh" runtime $runtime_pkgs
    step "mmdebstrap: device base image"
    # shellcheck disable=SC2086
    "$root/deploy/container/base-image.sh" device $runtime_pkgs openssh-server
    echo "$runtime_pkgs" > "$work/runtime-packages"
fi
step "podman build --target runtime, device"
build_target runtime localhost/streamgate-runtime:dev --build-arg RUNTIME_BASE=localhost/streamgate-base-runtime:bookworm
build_target device localhost/streamgate-device:dev --build-arg DEVICE_BASE=localhost/streamgate-base-device:bookworm
podman images --format '{{.Repository}}:{{.Tag}} {{.Size}}' | grep streamgate

netns=sg-check-$$
shared=$work/shared-$$
names=(sg-relay-$$ sg-device-$$ sg-service-$$)
cleanup() {
    if [ $keep = 0 ]; then
        podman rm -f -t 5 "${names[@]}" >/dev/null 2>&1 || true
        ip netns del "$netns" 2>/dev/null || true
        rm -rf "$shared"
    fi
}
trap cleanup EXIT
ip netns add "$netns"
ip -n "$netns" link set lo up
mkdir -p "$shared" && chmod 1777 "$shared"
run_in_ns() { # name image role [args]
    local name=$1 image=$2
    shift 2
    podman run -d --name "$name" --network "ns:/run/netns/$netns" --add-host relay:127.0.0.1 \
        -v "$shared:/shared" -e SG_DEVICE_ID=demo-device "$image" "$@" >/dev/null
}
step "relay, device, service proxy in netns $netns"
run_in_ns "${names[0]}" localhost/streamgate-runtime:dev relay
run_in_ns "${names[1]}" localhost/streamgate-device:dev device
run_in_ns "${names[2]}" localhost/streamgate-runtime:dev service
podman ps --filter "name=-$$" --format '{{.Names}} {{.Image}} {{.Status}} role={{.Command}}'
for n in "${names[@]}"; do
    echo "-- $n runs as: $(podman exec "$n" id -un)"
done
step "smoke: ssh through service proxy -> relay -> device proxy -> sshd"
if ! podman run --rm --network "ns:/run/netns/$netns" -v "$shared:/shared:ro" \
        -e SG_SERVICE_HOST=127.0.0.1 localhost/streamgate-device:dev smoke; then
    for n in "${names[@]}"; do echo "--- logs of $n"; podman logs "$n" 2>&1 | tail -20; done
    exit 1
fi
echo "-- the same from the host side of the namespace, with the host's ssh client:"
key=$(mktemp) && cp "$shared/demo_client_key" "$key" && chmod 600 "$key"
ip netns exec "$netns" ssh -i "$key" -p 2022 -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null \
    -o BatchMode=yes -o LogLevel=ERROR device@127.0.0.1 'echo "$(whoami)@$(hostname): $(uname -sr)"'
rm -f "$key"
echo "-- relay log (last lines):"
podman logs "${names[0]}" 2>&1 | tail -5

if [ "$tests" != none ]; then
    step "integration tests in a container: ctest $tests"
    podman run --rm --cap-add SYS_ADMIN,NET_ADMIN -e SG_TEST_ARGS="$tests" localhost/streamgate-build:dev
fi
step "container-check: OK"
