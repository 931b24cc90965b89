#!/usr/bin/env bash
# Builds the Debian package from a build tree and checks what is in it:
#   scripts/package-check.sh [BUILD_DIR]        (default: build; configured if it is not yet)
# Checks the control fields (name, version, Depends computed by dpkg-shlibdeps, conffiles,
# maintainer scripts), the file list and modes, runs every extracted binary's --version and,
# when systemd-analyze is present, verifies the extracted units. Needs dpkg-dev and file.
# About 10 s on a built tree (cpack builds whatever is not built yet first).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
build=$(realpath -m "${1:-$root/build}")
if [ ! -f "$build/CMakeCache.txt" ]; then
    cmake -S "$root" -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
fi
version=$(sed -n 's/^CMAKE_PROJECT_VERSION:STATIC=//p' "$build/CMakeCache.txt")
arch=$(dpkg --print-architecture)
deb="$build/streamgate_${version}_${arch}.deb"
rm -f "$deb"
(cd "$build" && cpack -G DEB >/dev/null)
[ -f "$deb" ] || { echo "FAIL: cpack did not produce $deb" >&2; exit 1; }

failures=0
fail() { echo "FAIL: $*" >&2; failures=$((failures + 1)); }
field() { dpkg-deb -f "$deb" "$1"; }

[ "$(field Package)" = streamgate ] || fail "Package is '$(field Package)'"
[ "$(field Version)" = "$version" ] || fail "Version is '$(field Version)', project says $version"
[ -n "$(field Maintainer)" ] || fail "no Maintainer"
[ -n "$(field Description)" ] || fail "no Description"
depends=$(field Depends)
depend_names=$(tr ',' '\n' <<<"$depends" | awk '{ print $1 }')
for lib in libc6 libstdc++6 libssl3 libsqlite3-0 libpq5 libboost-json1.81.0 libspdlog1.10-fmt9 passwd; do
    grep -q -x -F "$lib" <<<"$depend_names" || fail "Depends lacks $lib: $depends"
done

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
dpkg-deb -e "$deb" "$tmp/DEBIAN"
diff <(sort "$tmp/DEBIAN/conffiles") <(printf '%s\n' /etc/streamgate/device-proxy.env /etc/streamgate/relay.env) >/dev/null ||
    fail "conffiles: $(tr '\n' ' ' < "$tmp/DEBIAN/conffiles")"
for script in postinst postrm; do
    [ -x "$tmp/DEBIAN/$script" ] || fail "$script missing or not executable"
    sh -n "$tmp/DEBIAN/$script" || fail "$script: syntax error"
done
grep -q 'useradd --system\|systemd-sysusers' "$tmp/DEBIAN/postinst" || fail "postinst creates no user"

listing=$(dpkg-deb -c "$deb")
mode_of() { awk -v p="./${1#/}" '$6 == p { print $1 }' <<<"$listing"; }
expected=(
    /usr/bin/streamgate-relay /usr/bin/streamgate-device-proxy /usr/bin/streamgate-service-proxy
    /usr/bin/streamgate-echo-device /usr/bin/streamgate-echo-service /usr/bin/streamgate-web
    /lib/systemd/system/streamgate-relay.service /lib/systemd/system/streamgate-device-proxy.service
    /lib/systemd/system/streamgate-device-proxy@.service /usr/lib/sysusers.d/streamgate.conf
    /etc/streamgate/relay.env /etc/streamgate/device-proxy.env
    /usr/share/doc/streamgate/README.md /usr/share/doc/streamgate/PACKAGING.md
)
for f in "${expected[@]}"; do
    [ -n "$(mode_of "$f")" ] || fail "missing $f"
done
[ "$(mode_of /etc/streamgate/device-proxy.env)" = "-rw-------" ] ||
    fail "device-proxy.env (a secret) is $(mode_of /etc/streamgate/device-proxy.env), not -rw-------"
if grep -q ' \./usr/local/' <<<"$listing"; then fail "files under /usr/local"; fi

dpkg-deb -x "$deb" "$tmp/root"
for bin in streamgate-relay streamgate-device-proxy streamgate-service-proxy streamgate-web; do
    out=$("$tmp/root/usr/bin/$bin" --version) || fail "$bin --version exited $?"
    [ "$out" = "$bin $version" ] || fail "$bin --version printed '$out', expected '$bin $version'"
done
if command -v systemd-analyze >/dev/null; then
    # The units as packaged, with ExecStart= pointing into the extracted tree (not installed here).
    mkdir "$tmp/units"
    for unit in "$tmp"/root/lib/systemd/system/*.service; do
        sed "s|/usr/bin/streamgate-|$tmp/root/usr/bin/streamgate-|" "$unit" > "$tmp/units/$(basename "$unit")"
    done
    out=$(systemd-analyze verify "$tmp"/units/*.service 2>&1) || fail "systemd-analyze verify: $out"
    [ -z "$out" ] || fail "systemd-analyze verify: $out"
else
    echo "note: systemd-analyze not installed, units not verified" >&2
fi

if [ "$failures" -gt 0 ]; then
    echo "package-check: $failures failure(s) in $deb" >&2
    exit 1
fi
echo "package-check: OK $deb ($(du -k "$deb" | cut -f1) KiB, Depends: $depends)"
