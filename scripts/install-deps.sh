#!/usr/bin/env bash
# Installs the Debian 12 packages Streamgate needs to build, run and test.
# Boost comes from the versioned 1.81 packages: the unversioned ones pull 1.74 and conflict.
set -euo pipefail
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"
packages=(
  g++ cmake ninja-build ccache pkg-config git
  libboost1.81-dev libboost-json1.81-dev
  libssl-dev openssl libspdlog-dev libsqlite3-dev sqlite3 libcli11-dev libtomlplusplus-dev
  libpq-dev                          # the PostgreSQL registry backend (--registry postgresql://), on libpq
  postgresql-15                      # tests: a private PostgreSQL 15 server (initdb, postgres, psql, pg_isready)
  catch2 libssh2-1-dev openssh-server openssh-client python3
  curl                               # integration: the plain HTTP client of test_registry_rest
  iproute2 nftables
  chromium
  libcrypt-dev                       # streamgate-web: yescrypt password hashes (crypt_r, crypt_gensalt_rn)
  libjs-xterm node-xterm             # streamgate-web: xterm.js (node-xterm has the code, libjs-xterm the CSS and fit addon)
  clang libclang-rt-14-dev
  tinyproxy                          # integration: the HTTP proxy of test_http_proxy
  xrdp freerdp2-x11 xvfb xauth       # integration: RDP through a tunnel (test_rdp)
  dpkg-dev file systemd              # package-check: dpkg-shlibdeps for CPack, systemd-analyze verify
  python3-paho-mqtt mosquitto-clients  # integration: IoT Hub-style MQTT devices nobody here wrote (test_mqtt)
)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "installing: ${missing[*]}" >&2
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
