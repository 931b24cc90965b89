#!/bin/sh
# Entry point of the streamgate images. One role per container:
#   relay    first run: creates device $SG_DEVICE_ID, writes the device and service connection
#            strings and the relay's CA to $SG_SHARED, then runs the relay (extra args appended)
#   device   sshd (non-root, 127.0.0.1:2222) + the device proxy serving stream "ssh" from it
#   service  the service proxy: port $SG_SERVICE_PORT opens a stream "ssh" to $SG_DEVICE_ID
#   smoke    ssh through the service proxy: runs a command and moves 4 MiB each way, checksummed
#   node     a cluster node (compose.cluster.yaml): $SG_NODE_ID on the PostgreSQL registry in
#            $STREAMGATE_REGISTRY; the node named $SG_FIRST_NODE creates the device and shares its
#            CA (ca.pem + ca.key, in $SG_SHARED/cluster-ca, never in argv) and the connection
#            strings; the others start from that CA so clients trust every node
#   db       PostgreSQL 15 (image target postgres, for compose.cluster.yaml): on the first start
#            (no $PGDATA/PG_VERSION) initdb as the postgres user with superuser $POSTGRES_USER
#            (default postgres) and password $POSTGRES_PASSWORD (scram-sha-256, read from a 0600
#            temporary file, never argv), creates database $POSTGRES_DB (default: the user's
#            name); then runs postgres in the foreground, listening on every address of the
#            container (password logins only; the local socket: the postgres account only)
# The connection strings travel through $SG_SHARED (a volume) and the environment, never argv.
# The demo client key the device authorizes is for this demo and the checks only.
set -eu
role=${1:-relay}
[ $# -gt 0 ] && shift
shared=${SG_SHARED:-/shared}
device_id=${SG_DEVICE_ID:-demo-device}
relay_host=${SG_RELAY_HOST:-relay:8443}   # host[:port] connection strings name (node: the cluster's shared name)
service_host=${SG_SERVICE_HOST:-service-proxy}
service_port=${SG_SERVICE_PORT:-2022}

wait_for_file() { # path seconds
    i=0
    while [ ! -s "$1" ]; do
        i=$((i + 1))
        [ "$i" -le $(($2 * 10)) ] || { echo "streamgate-entrypoint: $1 did not appear within $2 s" >&2; exit 1; }
        sleep 0.1
    done
}

case "$role" in
relay)
    data=/var/lib/streamgate
    admin() { streamgate-relay --data-dir "$data" --host-name "$relay_host" "$@"; }
    admin device-identity show --device-id "$device_id" >/dev/null 2>&1 ||
        admin device-identity create --device-id "$device_id" >/dev/null
    umask 022
    admin device-identity show-connection-string --device-id "$device_id" > "$shared/.device.cs"
    admin show-connection-string --policy-name service > "$shared/.service.cs"
    cp "$data/ca.pem" "$shared/ca.pem"
    mv "$shared/.device.cs" "$shared/device.cs"
    mv "$shared/.service.cs" "$shared/service.cs"
    exec streamgate-relay --data-dir "$data" --host-name "$relay_host" --listen 0.0.0.0:8443 "$@"
    ;;
node)
    data=/var/lib/streamgate
    node_id=${SG_NODE_ID:?SG_NODE_ID is required}
    first=${SG_FIRST_NODE:-n1}
    public=${SG_PUBLIC_URL:-wss://$node_id:8443}
    : "${STREAMGATE_REGISTRY:?STREAMGATE_REGISTRY (postgresql://...) is required}"
    mkdir -p "$data"
    if [ "$node_id" != "$first" ] && [ ! -f "$data/ca.key" ]; then
        wait_for_file "$shared/cluster-ca/ca.key" 120
        (umask 077 && cp "$shared/cluster-ca/ca.pem" "$shared/cluster-ca/ca.key" "$data/")
    fi
    admin() { streamgate-relay --data-dir "$data" --host-name "$relay_host" "$@"; }
    # The database may still be starting: admin commands say 503002 until it answers.
    i=0
    until admin device-identity list >/dev/null 2>&1; do
        i=$((i + 1)); [ "$i" -le 120 ] || { echo "streamgate-entrypoint: registry never answered" >&2; exit 1; }
        sleep 1
    done
    if [ "$node_id" = "$first" ]; then
        admin device-identity show --device-id "$device_id" >/dev/null 2>&1 ||
            admin device-identity create --device-id "$device_id" >/dev/null
        umask 022
        admin device-identity show-connection-string --device-id "$device_id" > "$shared/.device.cs"
        admin show-connection-string --policy-name service > "$shared/.service.cs"
        mv "$shared/.device.cs" "$shared/device.cs"
        mv "$shared/.service.cs" "$shared/service.cs"
        # The CA is made by the first start of the relay: publish it once it exists.
        ( wait_for_file "$data/ca.key" 60 && mkdir -p "$shared/cluster-ca" && chmod 700 "$shared/cluster-ca" &&
          cp "$data/ca.pem" "$shared/ca.pem" &&
          (umask 077 && cp "$data/ca.pem" "$data/ca.key" "$shared/cluster-ca/") ) &
    fi
    exec streamgate-relay --data-dir "$data" --host-name "$relay_host" --listen 0.0.0.0:8443 \
        --node-id "$node_id" --cluster-listen 0.0.0.0:9443 --public-url "$public" --admin-listen 0.0.0.0:9464 "$@"
    ;;
db)
    data=${PGDATA:-/var/lib/postgresql/data}
    bin=/usr/lib/postgresql/15/bin
    pg_user=${POSTGRES_USER:-postgres}
    pg_db=${POSTGRES_DB:-$pg_user}
    for name in "$pg_user" "$pg_db"; do
        case "$name" in
        *[!A-Za-z0-9_]* | '') echo "streamgate-entrypoint: db: POSTGRES_USER / POSTGRES_DB must be [A-Za-z0-9_]+" >&2; exit 2 ;;
        esac
    done
    if [ ! -s "$data/PG_VERSION" ]; then
        [ -n "${POSTGRES_PASSWORD:-}" ] || { echo "streamgate-entrypoint: db: POSTGRES_PASSWORD is required on the first start" >&2; exit 2; }
        echo "streamgate-entrypoint: db: first start, initdb in $data (superuser $pg_user, database $pg_db)"
        pwfile=$(umask 077 && mktemp)
        printf '%s\n' "$POSTGRES_PASSWORD" > "$pwfile"
        "$bin/initdb" -D "$data" -U "$pg_user" --pwfile="$pwfile" --auth-host=scram-sha-256 --auth-local=peer \
            --encoding=UTF8 --locale=C.UTF-8 >/dev/null || { rm -f "$pwfile"; exit 1; }
        rm -f "$pwfile"
        # Password logins (scram-sha-256) from anywhere on the container network; on the local
        # socket only this container's postgres account, as any role (peer + map).
        cat > "$data/pg_hba.conf" <<HBA
# written by streamgate-entrypoint db on the first start
local all all               peer map=container
host  all all 0.0.0.0/0     scram-sha-256
host  all all ::/0          scram-sha-256
HBA
        printf 'container postgres %s\n' "$pg_user" > "$data/pg_ident.conf"
        [ "$pg_user" = postgres ] || echo 'container postgres postgres' >> "$data/pg_ident.conf"
        cat >> "$data/postgresql.conf" <<CONF
# streamgate-entrypoint db
listen_addresses = '*'
password_encryption = scram-sha-256
unix_socket_directories = '/var/run/postgresql'
CONF
        if [ "$pg_db" != postgres ]; then
            # Single-user mode: no server listening yet, nothing to stop afterwards.
            echo "CREATE DATABASE \"$pg_db\" OWNER \"$pg_user\";" |
                "$bin/postgres" --single -D "$data" -c listen_addresses='' postgres >/dev/null
        fi
        echo "streamgate-entrypoint: db: initialized"
    fi
    unset POSTGRES_PASSWORD
    exec "$bin/postgres" -D "$data" "$@"
    ;;
device)
    wait_for_file "$shared/device.cs" 60
    wait_for_file "$shared/ca.pem" 60
    ssh_dir=$HOME/sshd
    mkdir -p "$ssh_dir"
    [ -f "$ssh_dir/host_key" ] || ssh-keygen -q -t ed25519 -N '' -C device-host -f "$ssh_dir/host_key"
    if [ ! -f "$shared/demo_client_key" ]; then
        ssh-keygen -q -t ed25519 -N '' -C demo-client -f "$ssh_dir/demo_client_key"
        cp "$ssh_dir/demo_client_key.pub" "$shared/demo_client_key.pub"
        cp "$ssh_dir/demo_client_key" "$shared/.demo_client_key" && mv "$shared/.demo_client_key" "$shared/demo_client_key"
    fi
    cp "$shared/demo_client_key.pub" "$ssh_dir/authorized_keys"
    cat > "$ssh_dir/sshd_config" <<CONF
ListenAddress 127.0.0.1
Port 2222
HostKey $ssh_dir/host_key
AuthorizedKeysFile $ssh_dir/authorized_keys
PidFile $ssh_dir/sshd.pid
UsePAM no
StrictModes no
PasswordAuthentication no
KbdInteractiveAuthentication no
PubkeyAuthentication yes
UseDNS no
PrintMotd no
CONF
    /usr/sbin/sshd -D -e -f "$ssh_dir/sshd_config" &
    IOTHUB_DEVICE_CONN_STRING=$(cat "$shared/device.cs")
    export IOTHUB_DEVICE_CONN_STRING
    exec streamgate-device-proxy --ca-file "$shared/ca.pem" --service ssh=127.0.0.1:2222 "$@"
    ;;
service)
    wait_for_file "$shared/service.cs" 60
    wait_for_file "$shared/ca.pem" 60
    IOTHUB_CONNECTION_STRING=$(cat "$shared/service.cs")
    # Cluster: ask another node than the one the connection string names.
    [ -n "${SG_SERVICE_RELAY:-}" ] &&
        IOTHUB_CONNECTION_STRING=$(printf '%s' "$IOTHUB_CONNECTION_STRING" | sed "s/HostName=[^;]*/HostName=$SG_SERVICE_RELAY/")
    STREAMING_TARGET_DEVICE=$device_id
    PROXY_PORT=$service_port
    export IOTHUB_CONNECTION_STRING STREAMING_TARGET_DEVICE PROXY_PORT
    exec streamgate-service-proxy --ca-file "$shared/ca.pem" --bind 0.0.0.0 --stream-name ssh "$@"
    ;;
smoke)
    wait_for_file "$shared/demo_client_key" 60
    key=$(mktemp) && cp "$shared/demo_client_key" "$key" && chmod 600 "$key"
    ssh_opts="-i $key -p $service_port -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o BatchMode=yes -o ConnectTimeout=10 -o LogLevel=ERROR"
    # The device proxy reconnects with backoff (up to ~30 s): retry the first login for 120 s.
    i=0
    until out=$(ssh $ssh_opts "device@$service_host" 'echo "hello from $(hostname) as $(id -un)"' 2>/dev/null); do
        i=$((i + 1)); [ "$i" -le 120 ] || { echo "smoke: ssh never succeeded" >&2; exit 1; }
        sleep 1
    done
    echo "smoke: $out"
    head -c 4194304 /dev/urandom > /tmp/up
    up=$(sha256sum < /tmp/up | cut -d' ' -f1)
    remote=$(ssh $ssh_opts "device@$service_host" 'sha256sum | cut -d" " -f1' < /tmp/up)
    down=$(ssh $ssh_opts "device@$service_host" 'head -c 4194304 /dev/zero' | sha256sum | cut -d' ' -f1)
    zero=$(head -c 4194304 /dev/zero | sha256sum | cut -d' ' -f1)
    [ "$up" = "$remote" ] || { echo "smoke: upload checksum mismatch" >&2; exit 1; }
    [ "$down" = "$zero" ] || { echo "smoke: download checksum mismatch" >&2; exit 1; }
    echo "smoke: 4 MiB up and 4 MiB down through relay + proxies, checksums match"
    ;;
*)
    echo "usage: streamgate-entrypoint relay|node|db|device|service|smoke [ARGS...]" >&2
    exit 2
    ;;
esac
