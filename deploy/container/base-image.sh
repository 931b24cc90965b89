#!/usr/bin/env bash
# Makes the local base images the Dockerfile builds FROM when Docker Hub is out of reach:
#   deploy/container/base-image.sh build   -> localhost/streamgate-base-build:bookworm
#       Debian 12 minbase + every package scripts/install-deps.sh lists, so the build stage's
#       install-deps.sh finds nothing missing and needs no network at all.
#   deploy/container/base-image.sh runtime PKG...  -> localhost/streamgate-base-runtime:bookworm
#       Debian 12 minbase + only the given packages (the .deb's Depends), nothing to compile with.
#   deploy/container/base-image.sh device PKG...   -> localhost/streamgate-base-device:bookworm
#       the same for the device image (the Depends + openssh-server).
#   deploy/container/base-image.sh postgres   -> localhost/streamgate-base-postgres:bookworm
#       Debian 12 minbase + postgresql-15, for the Dockerfile's postgres target (the db service
#       of compose.cluster.yaml) when docker.io/library/debian:bookworm-slim is out of reach.
# Both come from `mmdebstrap --variant=minbase` (packages through apt from the Debian mirror)
# and `podman import`.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
kind=${1:?usage: base-image.sh build|runtime|device|postgres [PKG...]}
shift
work=${SG_CONTAINER_WORK:-/var/tmp/sg-container}
mkdir -p "$work"
mirrors=(
  "deb http://deb.debian.org/debian bookworm main"
  "deb http://deb.debian.org/debian bookworm-updates main"
  "deb http://deb.debian.org/debian-security bookworm-security main"
)

# The packages array of install-deps.sh (its # comments dropped), so the image follows it when it changes.
install_deps_packages() {
  sed -n '/^packages=(/,/^)/p' "$root/scripts/install-deps.sh" | sed '1d;$d' | sed 's/#.*//' | tr -s ' \t' '\n' | sed '/^$/d'
}

case "$kind" in
  build)
    mapfile -t pkgs < <(install_deps_packages)
    pkgs+=(ca-certificates)
    image=localhost/streamgate-base-build:bookworm ;;
  runtime|device)
    pkgs=("$@" ca-certificates)
    image=localhost/streamgate-base-$kind:bookworm ;;
  postgres)
    pkgs=(postgresql-15 "$@")
    image=localhost/streamgate-base-postgres:bookworm ;;
  *) echo "usage: base-image.sh build|runtime|device|postgres [PKG...]" >&2; exit 2 ;;
esac

include=$(IFS=,; echo "${pkgs[*]}")
echo "mmdebstrap $kind: $include" >&2
tarball="$work/base-$kind.tar"
mmdebstrap --variant=minbase --include="$include" --aptopt='Acquire::Retries "3"' \
  bookworm "$tarball" "${mirrors[@]}" </dev/null
podman import --change 'CMD ["/bin/bash"]' "$tarball" "$image"
rm -f "$tarball"
