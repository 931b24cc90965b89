#!/usr/bin/env bash
# One command from a fresh Debian 12: install what is needed, build, and run the relay on its
# embedded defaults (data in ./sg, TLS on 0.0.0.0:8443, certificates from the embedded CA).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
scripts/build.sh
cat >&2 <<TXT

Relay starting. In another terminal:
  DEV=\$(build/relay/streamgate-relay --data-dir ./sg device-identity create --device-id MyDevice)
  SVC=\$(build/relay/streamgate-relay --data-dir ./sg show-connection-string --policy-name service)
  build/examples/streamgate-echo-device --ca-file ./sg/ca.pem "\$DEV" &
  build/examples/streamgate-echo-service --ca-file ./sg/ca.pem "\$SVC" MyDevice "Streaming data over a stream..."

TXT
exec build/relay/streamgate-relay --data-dir ./sg --listen 0.0.0.0:8443 "$@"
