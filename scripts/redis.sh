#!/usr/bin/env bash
# A local Redis server (the jobs' result store) for development and tests, on
# loopback only, with a password.
#
#   scripts/redis.sh start     start it (installs redis-server with apt if absent);
#                              prints the URL as the last line of stdout
#   scripts/redis.sh stop      stop the server this script started (no other)
#   scripts/redis.sh restart   stop, then start (the append-only file keeps the data)
#   scripts/redis.sh status    say whether it answers (exit 0) or not (exit 1)
#
# State (append-only file, log, pid file, the password made once, mode 0600)
# lives under .cache/redis (git-ignored). Port: ${FLEET_REDIS_PORT:-6390}.
# valkey-server is used where redis-server is not installed.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BASE="${FLEET_REDIS_DIR:-$ROOT/.cache/redis}"
PORT="${FLEET_REDIS_PORT:-6390}"
PASSWORD_FILE="$BASE/password"
PIDFILE="$BASE/redis.pid"
WAIT_S=30

log() { echo "redis.sh: $*" >&2; }
die() {
    log "$*"
    exit 1
}

server_bin() {
    command -v redis-server || command -v valkey-server || return 1
}

cli_bin() {
    command -v redis-cli || command -v valkey-cli || return 1
}

install_server() {
    server_bin >/dev/null || bash "$ROOT/scripts/apt-package.sh" redis-server
}

password() {
    if [[ ! -s "$PASSWORD_FILE" ]]; then
        mkdir -p "$BASE"
        (
            umask 077
            openssl rand -hex 24 >"$PASSWORD_FILE"
        )
    fi
    cat "$PASSWORD_FILE"
}

url() { echo "redis://:$(password)@127.0.0.1:${PORT}/0"; }

answers() {
    local cli
    cli="$(cli_bin)" || return 1
    REDISCLI_AUTH="$(password)" "$cli" -h 127.0.0.1 -p "$PORT" ping 2>/dev/null | grep -q PONG
}

server_pid() {
    local pid
    [[ -s "$PIDFILE" ]] || return 1
    pid="$(tr -dc '0-9' <"$PIDFILE")"
    [[ -n "$pid" ]] && kill -0 "$pid" 2>/dev/null && echo "$pid"
}

start() {
    install_server
    if answers; then
        url
        return
    fi
    if (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null; then
        die "127.0.0.1:$PORT is taken by another process; stop it or set FLEET_REDIS_PORT"
    fi
    mkdir -p "$BASE"
    local config="$BASE/redis.conf"
    # the password goes in a config file (mode 0600), never on a command line
    (
        umask 077
        cat >"$config" <<EOF
bind 127.0.0.1
port $PORT
protected-mode yes
requirepass $(password)
daemonize yes
pidfile $PIDFILE
dir $BASE
logfile $BASE/redis.log
appendonly yes
appendfsync everysec
save ""
EOF
    )
    log "starting $(basename "$(server_bin)") on 127.0.0.1:$PORT (log: $BASE/redis.log)"
    "$(server_bin)" "$config" >/dev/null
    local deadline=$((SECONDS + WAIT_S))
    until answers; do
        ((SECONDS < deadline)) || die "the server did not answer within ${WAIT_S}s; see $BASE/redis.log"
        sleep 0.2
    done
    url
}

stop() {
    local pid
    if ! pid="$(server_pid)"; then
        rm -f "$PIDFILE"
        return 0
    fi
    log "stopping the server (pid $pid)"
    kill -TERM "$pid" 2>/dev/null || true
    local _
    for _ in $(seq 1 100); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    kill -KILL "$pid" 2>/dev/null || true
    rm -f "$PIDFILE"
}

case "${1:-}" in
start) start ;;
stop) stop ;;
restart)
    stop
    start
    ;;
status)
    if answers; then echo "running: 127.0.0.1:$PORT"; else
        echo "stopped"
        exit 1
    fi
    ;;
*)
    echo "usage: $0 start|stop|restart|status" >&2
    exit 2
    ;;
esac
