#!/usr/bin/env bash
# A local RabbitMQ node for development and tests, on loopback only.
#
#   scripts/rabbitmq.sh start     start the node (installs rabbitmq-server if absent);
#                                 prints the AMQP URL as the last line of stdout
#   scripts/rabbitmq.sh stop      stop the node this script started (no other)
#   scripts/rabbitmq.sh restart   a full node restart: stop the Erlang node, start it
#                                 again; every client connection is dropped
#   scripts/rabbitmq.sh status    say whether the node is up (exit 0) or not (exit 1)
#   scripts/rabbitmq.sh tls-env   while the node runs (else exit 1), print the TLS
#                                 listener's test settings as VAR=value lines:
#                                 FLEET_TEST_AMQP_TLS_DIR, FLEET_TEST_AMQPS_URL (guest),
#                                 FLEET_TEST_AMQPS_APP_URL (the least-privilege user)
#                                 and FLEET_TEST_AMQPS_APP_URL_PASSWORD
#
# State (database, logs, config, pid file) lives under .cache/rabbitmq (git-ignored);
# the database on a tmpfs where there is one (see scripts/data-dir.sh).
# Ports: AMQP 127.0.0.1:${FLEET_RABBITMQ_PORT:-5672}, management HTTP
# 127.0.0.1:${FLEET_RABBITMQ_MGMT_PORT:-15672} (named in the URL's query when not
# 15672), Erlang distribution ${FLEET_RABBITMQ_DIST_PORT:-25672}; the node name is
# ${FLEET_RABBITMQ_NODENAME:-fleet@localhost}, so several nodes can run side by side.
# TLS: AMQPS 127.0.0.1:${FLEET_RABBITMQ_TLS_PORT:-5671} and management HTTPS
# 127.0.0.1:${FLEET_RABBITMQ_MGMT_TLS_PORT:-15671}, with the throw-away CA that
# scripts/tls.sh makes in .cache/rabbitmq/tls. The AMQPS listener asks for a client
# certificate and does not require one; one signed by that CA logs in with
# auth=EXTERNAL as the user its CN names (client.pem: CN=fleet, a user with no
# password). The user fleet-app (password made once into
# .cache/rabbitmq/fleet-app.password, mode 0600) may touch only the names the fleet
# uses (FLEET_NAMES and FLEET_WRITE below; docs/security.md says why each).
# Works as root without systemd.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BASE="${FLEET_RABBITMQ_DIR:-$ROOT/.cache/rabbitmq}"
PORT="${FLEET_RABBITMQ_PORT:-5672}"
MGMT_PORT="${FLEET_RABBITMQ_MGMT_PORT:-15672}"
DIST_PORT="${FLEET_RABBITMQ_DIST_PORT:-25672}"
NODE="${FLEET_RABBITMQ_NODENAME:-fleet@localhost}"
WAIT_S="${FLEET_RABBITMQ_WAIT_S:-90}"
TLS_PORT="${FLEET_RABBITMQ_TLS_PORT:-5671}"
MGMT_TLS_PORT="${FLEET_RABBITMQ_MGMT_TLS_PORT:-15671}"
TLS_DIR="$BASE/tls"
MNESIA="$(bash "$ROOT/scripts/data-dir.sh" "$BASE/mnesia")" # a tmpfs where there is one
APP_USER=fleet-app
APP_PASSWORD_FILE="$BASE/$APP_USER.password"
CERT_USER=fleet # the CN of scripts/tls.sh's client certificate
# The least-privilege permissions (configure, write, read), the fleet's names only
# (fleet/transport/base.py, amqp.py): work queues fleet.<model>.<online|batch>, the
# dead letters and their exchange fleet.dlx, the heartbeats exchange and its
# per-subscriber queues, the reply inboxes. Writing is publishing (to the default
# exchange, amq.default, and to the heartbeats), binding a queue (the dead
# letters, a heartbeat queue) and naming fleet.dlx as a work queue's dead-letter
# exchange.
FLEET_NAMES='^fleet\.([A-Za-z0-9][A-Za-z0-9_.-]{0,127}\.(online|batch)|dlx|dead-letter|dead-letter\.jobs|heartbeats|heartbeats\.[0-9a-f]{32}|inbox\.[0-9a-f]{32})$'
FLEET_WRITE='^(amq\.default|fleet\.(dlx|dead-letter|dead-letter\.jobs|heartbeats|heartbeats\.[0-9a-f]{32}))$'
URL="amqp://guest:guest@127.0.0.1:${PORT}/"
if [[ "$MGMT_PORT" != 15672 ]]; then # the transport looks for it on 15672 otherwise
    URL="${URL}?management_url=http://127.0.0.1:${MGMT_PORT}"
fi
RMQ_BIN=/usr/lib/rabbitmq/bin

log() { echo "rabbitmq.sh: $*" >&2; }
die() {
    log "$*"
    exit 1
}

install_server() {
    [[ -x "$RMQ_BIN/rabbitmq-server" ]] || bash "$ROOT/scripts/apt-package.sh" rabbitmq-server
}

export_env() {
    mkdir -p "$BASE/log"
    cat >"$BASE/rabbitmq.conf" <<EOF
listeners.tcp.default = 127.0.0.1:${PORT}
management.tcp.ip = 127.0.0.1
management.tcp.port = ${MGMT_PORT}
loopback_users.guest = true
# queue figures in the management API (unacked counts) refresh every second
collect_statistics_interval = 1000
listeners.ssl.default = 127.0.0.1:${TLS_PORT}
ssl_options.cacertfile = ${TLS_DIR}/ca.pem
ssl_options.certfile = ${TLS_DIR}/server.pem
ssl_options.keyfile = ${TLS_DIR}/server.key
ssl_options.verify = verify_peer
ssl_options.fail_if_no_peer_cert = false
auth_mechanisms.1 = PLAIN
auth_mechanisms.2 = AMQPLAIN
auth_mechanisms.3 = EXTERNAL
ssl_cert_login_from = common_name
management.ssl.ip = 127.0.0.1
management.ssl.port = ${MGMT_TLS_PORT}
management.ssl.cacertfile = ${TLS_DIR}/ca.pem
management.ssl.certfile = ${TLS_DIR}/server.pem
management.ssl.keyfile = ${TLS_DIR}/server.key
EOF
    export RABBITMQ_NODENAME="$NODE"
    export RABBITMQ_NODE_IP_ADDRESS=127.0.0.1
    export RABBITMQ_NODE_PORT="$PORT"
    export RABBITMQ_DIST_PORT="$DIST_PORT"
    export RABBITMQ_CONFIG_FILE="$BASE/rabbitmq.conf"
    export RABBITMQ_MNESIA_BASE="$MNESIA"
    export RABBITMQ_LOG_BASE="$BASE/log"
    export RABBITMQ_PID_FILE="$BASE/node.pid"
    export RABBITMQ_ENABLED_PLUGINS_FILE="$BASE/enabled_plugins"
    export RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS="-kernel inet_dist_use_interface {127,0,0,1}"
    export ERL_EPMD_ADDRESS=127.0.0.1
    # a config file of our own: never the system one's /etc/rabbitmq/rabbitmq-env.conf
    export RABBITMQ_CONF_ENV_FILE="$BASE/rabbitmq-env.conf"
    touch "$RABBITMQ_CONF_ENV_FILE"
}

ctl() { "$RMQ_BIN/rabbitmqctl" -n "$NODE" "$@"; }

is_up() { "$RMQ_BIN/rabbitmq-diagnostics" -q -n "$NODE" --timeout 10 ping >/dev/null 2>&1; }

node_pid() {
    local pid
    [[ -f "$BASE/node.pid" ]] || return 1
    pid="$(tr -dc '0-9' <"$BASE/node.pid")"
    [[ -n "$pid" ]] && kill -0 "$pid" 2>/dev/null && echo "$pid"
}

wait_gone() { # pid, half-seconds
    local _
    for _ in $(seq 1 "$2"); do
        kill -0 "$1" 2>/dev/null || return 0
        sleep 0.5
    done
    return 1
}

clear_stale() {
    # a node of ours from an earlier run that is gone, or alive but not answering
    local pid
    if pid="$(node_pid)"; then
        log "node process $pid is not answering; stopping it"
        kill -CONT "$pid" 2>/dev/null || true
        kill "$pid" 2>/dev/null || true
        wait_gone "$pid" 20 || kill -KILL "$pid" 2>/dev/null || true
        wait_gone "$pid" 20 || die "cannot stop node process $pid"
    fi
    rm -f "$BASE/node.pid"
}

port_busy() {
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

start() {
    install_server
    export_env
    if is_up; then
        add_users # a no-op unless the users or their permissions changed
        echo "$URL"
        return
    fi
    clear_stale
    if port_busy "$PORT"; then
        die "127.0.0.1:$PORT is taken by another process (a system RabbitMQ node?); stop it or set FLEET_RABBITMQ_PORT"
    fi
    local port
    for port in "$TLS_PORT" "$MGMT_TLS_PORT"; do
        if port_busy "$port"; then
            die "127.0.0.1:$port is taken by another process; stop it or set FLEET_RABBITMQ_TLS_PORT / FLEET_RABBITMQ_MGMT_TLS_PORT"
        fi
    done
    bash "$ROOT/scripts/tls.sh" "$TLS_DIR" >/dev/null
    enable_plugins
    log "starting node $NODE (logs in $BASE/log)"
    "$RMQ_BIN/rabbitmq-server" -detached >/dev/null 2>&1
    local deadline=$((SECONDS + WAIT_S))
    # once the node answers, one await_startup waits for its boot to finish
    until is_up && ctl await_startup --timeout $((deadline - SECONDS + 1)) >/dev/null 2>&1; do
        if ((SECONDS >= deadline)); then
            tail -n 30 "$BASE/log/$NODE.log" >&2 2>/dev/null || true
            die "node $NODE did not start within ${WAIT_S}s"
        fi
        sleep 0.5
    done
    add_users
    echo "$URL"
}

enable_plugins() {
    # each rabbitmq-plugins call boots an Erlang VM: skip it when already enabled
    local plugin
    for plugin in rabbitmq_management rabbitmq_auth_mechanism_ssl; do
        grep -qw "$plugin" "$RABBITMQ_ENABLED_PLUGINS_FILE" 2>/dev/null && continue
        "$RMQ_BIN/rabbitmq-plugins" --offline enable "$plugin" >/dev/null 2>&1 ||
            log "could not enable $plugin; continuing without it (management API / auth=EXTERNAL)"
    done
}

has_user() { ctl -q list_users | awk '{print $1}' | grep -qxF "$1"; }

add_users() {
    # the least-privilege user, with a password made once
    if [[ ! -s "$APP_PASSWORD_FILE" ]]; then
        (
            umask 077
            openssl rand -hex 24 >"$APP_PASSWORD_FILE"
        )
    fi
    local password stamp mark="$MNESIA/$NODE.users"
    password="$(<"$APP_PASSWORD_FILE")"
    # users live in the node's database: a restart keeps them, so the eight
    # rabbitmqctl calls below (an Erlang VM each) run only when something changed
    stamp="$(printf '%s\n' "$APP_USER" "$password" "$CERT_USER" "$FLEET_NAMES" "$FLEET_WRITE" | sha256sum)"
    if [[ -f "$mark" && "$(<"$mark")" == "$stamp" ]]; then
        return
    fi
    if has_user "$APP_USER"; then
        ctl -q change_password "$APP_USER" "$password" >/dev/null
    else
        ctl -q add_user "$APP_USER" "$password" >/dev/null
    fi
    # the management tag: its queues' figures (depth) from the management API
    ctl -q set_user_tags "$APP_USER" management >/dev/null
    ctl -q set_permissions -p / "$APP_USER" "$FLEET_NAMES" "$FLEET_WRITE" "$FLEET_NAMES" >/dev/null
    # the client certificate's user: no password, so it logs in with auth=EXTERNAL only
    if ! has_user "$CERT_USER"; then
        ctl -q add_user "$CERT_USER" "$(openssl rand -hex 24)" >/dev/null
    fi
    ctl -q clear_password "$CERT_USER" >/dev/null
    ctl -q set_permissions -p / "$CERT_USER" "$FLEET_NAMES" "$FLEET_WRITE" "$FLEET_NAMES" >/dev/null
    printf '%s\n' "$stamp" >"$mark"
}

tls_env() {
    export_env
    if ! is_up || ! port_busy "$TLS_PORT" || [[ ! -s "$APP_PASSWORD_FILE" ]]; then
        die "node $NODE is not running with its TLS listener; start it with: $0 start"
    fi
    local query="cafile=$TLS_DIR/ca.pem&management_url=https://127.0.0.1:${MGMT_TLS_PORT}"
    echo "FLEET_TEST_AMQP_TLS_DIR=$TLS_DIR"
    echo "FLEET_TEST_AMQPS_URL=amqps://guest:guest@127.0.0.1:${TLS_PORT}/?$query"
    echo "FLEET_TEST_AMQPS_APP_URL=amqps://$APP_USER@127.0.0.1:${TLS_PORT}/?$query"
    echo "FLEET_TEST_AMQPS_APP_URL_PASSWORD=$(<"$APP_PASSWORD_FILE")"
}

stop() {
    export_env
    if is_up; then
        log "stopping node $NODE"
        ctl stop "$BASE/node.pid" >/dev/null 2>&1 || ctl stop >/dev/null 2>&1 || true
    fi
    clear_stale
}

status() {
    export_env
    if is_up; then
        echo "running: $NODE at $URL (management http://127.0.0.1:${MGMT_PORT}/;" \
            "TLS amqps://127.0.0.1:${TLS_PORT}/, https://127.0.0.1:${MGMT_TLS_PORT}/)"
    else
        echo "stopped: $NODE"
        return 1
    fi
}

case "${1:-}" in
start) start ;;
stop) stop ;;
restart)
    stop
    start
    ;;
status) status ;;
tls-env) tls_env ;;
*)
    echo "usage: $0 start|stop|restart|status|tls-env" >&2
    exit 2
    ;;
esac
