#!/usr/bin/env bash
# moto's AWS emulator for the `aws` test tier, on loopback only.
#
#   scripts/moto.sh start    start moto's server (scripts/moto_server.py) in the
#                            background (if not already answering); prints its
#                            endpoint URL as the last line
#   scripts/moto.sh stop     stop the server this script started (no other)
#   scripts/moto.sh status   say whether it answers (exit 0) or not (exit 1)
#
# State (pid file, log) lives under .cache/moto (git-ignored).
# Endpoint: http://127.0.0.1:${FLEET_MOTO_PORT:-5055}
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BASE="${FLEET_MOTO_DIR:-$ROOT/.cache/moto}"
PORT="${FLEET_MOTO_PORT:-5055}"
WAIT_S="${FLEET_MOTO_WAIT_S:-30}"
URL="http://127.0.0.1:${PORT}"
PIDFILE="$BASE/moto.pid"

log() { echo "moto.sh: $*" >&2; }
die() {
    log "$*"
    exit 1
}

# The Python that runs scripts/moto_server.py: moto's server with the MSK calls
# moto lacks filled in (see that file).
moto_python() {
    local py
    for py in "$ROOT/.venv/bin/python" python3; do
        if command -v "$py" >/dev/null && "$py" -c 'import moto.server, flask' 2>/dev/null; then
            echo "$py"
            return
        fi
    done
    die "moto's server is not installed: pip install 'moto[server]' (in .venv)"
}

answers() {
    # moto's dashboard-free health check: any HTTP answer on the port will do
    if command -v curl >/dev/null; then
        curl -fsS -o /dev/null --max-time 2 "$URL/moto-api/" 2>/dev/null
    else
        (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null
    fi
}

our_pid() {
    local pid
    [[ -f "$PIDFILE" ]] || return 1
    pid="$(tr -dc '0-9' <"$PIDFILE")"
    [[ -n "$pid" ]] && kill -0 "$pid" 2>/dev/null && echo "$pid"
}

start() {
    mkdir -p "$BASE"
    if our_pid >/dev/null && answers; then
        echo "$URL"
        return
    fi
    local pid
    if pid="$(our_pid)"; then
        log "server $pid is not answering; stopping it"
        kill "$pid" 2>/dev/null || true
        sleep 1
    fi
    rm -f "$PIDFILE"
    if (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null; then
        die "127.0.0.1:$PORT is taken by another process; stop it or set FLEET_MOTO_PORT"
    fi
    local py
    py="$(moto_python)"
    log "starting moto's server ($py) on 127.0.0.1:$PORT (log in $BASE/moto.log)"
    nohup "$py" "$ROOT/scripts/moto_server.py" -H 127.0.0.1 -p "$PORT" >"$BASE/moto.log" 2>&1 </dev/null &
    echo "$!" >"$PIDFILE"
    local deadline=$((SECONDS + WAIT_S))
    until answers; do
        if ! our_pid >/dev/null; then
            tail -n 20 "$BASE/moto.log" >&2 || true
            die "moto_server exited during start"
        fi
        if ((SECONDS >= deadline)); then
            tail -n 20 "$BASE/moto.log" >&2 || true
            die "moto_server did not answer within ${WAIT_S}s"
        fi
        sleep 0.2
    done
    echo "$URL"
}

stop() {
    local pid
    if pid="$(our_pid)"; then
        log "stopping moto_server $pid"
        kill "$pid" 2>/dev/null || true
        for _ in $(seq 1 50); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.1
        done
        kill -9 "$pid" 2>/dev/null || true
    fi
    rm -f "$PIDFILE"
}

status() {
    if our_pid >/dev/null && answers; then
        echo "running: $URL"
    else
        echo "stopped"
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
*)
    echo "usage: $0 start|stop|restart|status" >&2
    exit 2
    ;;
esac
