#!/usr/bin/env bash
# A local 3-node RabbitMQ cluster for the cluster tier, on loopback only.
#
#   scripts/rabbitmq-cluster.sh start         make a fresh cluster (unless all three nodes
#                                             already run, clustered): start the nodes in
#                                             parallel, join nodes 2 then 3 to node 1; prints
#                                             the AMQP URL as the last line of stdout
#   scripts/rabbitmq-cluster.sh stop          stop every node of it (idempotent)
#   scripts/rabbitmq-cluster.sh status        say which nodes run (exit 0 when all three do)
#   scripts/rabbitmq-cluster.sh env           while all three run (else exit 1), print the
#                                             tests' settings as VAR=value lines:
#                                             FLEET_TEST_AMQP_CLUSTER_URL (every node's
#                                             address, tried in turn) and
#                                             FLEET_TEST_AMQP_CLUSTER_CTL (this script)
#   scripts/rabbitmq-cluster.sh stop-node N   a clean stop of node N (1, 2 or 3)
#   scripts/rabbitmq-cluster.sh start-node N  start node N again; returns once it has
#                                             booted and rejoined the cluster
#   scripts/rabbitmq-cluster.sh kill-node N   SIGKILL node N's Erlang VM (no clean stop)
#   scripts/rabbitmq-cluster.sh leader QUEUE  the index of the node leading quorum queue
#                                             QUEUE (of vhost /)
#   scripts/rabbitmq-cluster.sh members QUEUE four lines on queue QUEUE: "type T",
#                                             "leader N", "members N N N" and
#                                             "online N N N" (the members whose Raft
#                                             server runs)
# leader and members ask the management API of the first node that answers.
#
# Node N (1..3) is fleet-cN@localhost with AMQP on 127.0.0.1:$((BASE_PORT + N)),
# management HTTP on 127.0.0.1:$((BASE_PORT + 10000 + N)) and Erlang distribution
# on $((BASE_PORT + 20000 + N)), where BASE_PORT is ${FLEET_RABBITMQ_CLUSTER_PORT:-5680}:
# 5681-5683, 15681-15683, 25681-25683 by default. The nodes share an Erlang cookie of
# their own (made once, mode 0400, in the state directory, which is their HOME), so
# they neither see nor are seen by any other node on the machine. State (databases,
# logs, config, pid files) lives under .cache/rabbitmq-cluster/n1, n2, n3 (git-ignored);
# `start` wipes it when it makes a fresh cluster. RabbitMQ comes from apt
# (scripts/rabbitmq.sh start installs it). Works as root without systemd.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BASE="${FLEET_RABBITMQ_CLUSTER_DIR:-$ROOT/.cache/rabbitmq-cluster}"
BASE_PORT="${FLEET_RABBITMQ_CLUSTER_PORT:-5680}"
WAIT_S="${FLEET_RABBITMQ_WAIT_S:-120}"
NODES=(1 2 3)
RMQ_BIN=/usr/lib/rabbitmq/bin
SELF="$ROOT/scripts/rabbitmq-cluster.sh"

log() { echo "rabbitmq-cluster.sh: $(date +%T) $*" >&2; }
die() {
    log "$*"
    exit 1
}

node_name() { echo "fleet-c$1@localhost"; }
amqp_port() { echo $((BASE_PORT + $1)); }
mgmt_port() { echo $((BASE_PORT + 10000 + $1)); }
dist_port() { echo $((BASE_PORT + 20000 + $1)); }
dir_of() { echo "$BASE/n$1"; }

url() {
    local hosts=() n
    for n in "${NODES[@]}"; do
        hosts+=("127.0.0.1:$(amqp_port "$n")")
    done
    local joined
    joined="$(
        IFS=,
        echo "${hosts[*]}"
    )"
    echo "amqp://guest:guest@${joined}/?management_url=http://127.0.0.1:$(mgmt_port 1)"
}

check_index() {
    [[ "${1:-}" =~ ^[123]$ ]] || die "a node index is 1, 2 or 3, not '${1:-}'"
}

cookie() {
    # one cookie for the three nodes and the command-line tools, none other's
    mkdir -p "$BASE"
    if [[ ! -s "$BASE/.erlang.cookie" ]]; then
        (
            umask 077
            openssl rand -hex 20 | tr 'a-f' 'A-F' >"$BASE/.erlang.cookie"
        )
        chmod 0400 "$BASE/.erlang.cookie"
    fi
}

# The environment of node $1 for rabbitmq-server and the command-line tools.
node_env() {
    local dir
    dir="$(dir_of "$1")"
    export HOME="$BASE" # where Erlang finds the shared cookie
    export RABBITMQ_NODENAME
    RABBITMQ_NODENAME="$(node_name "$1")"
    export RABBITMQ_NODE_IP_ADDRESS=127.0.0.1
    export RABBITMQ_NODE_PORT
    RABBITMQ_NODE_PORT="$(amqp_port "$1")"
    export RABBITMQ_DIST_PORT
    RABBITMQ_DIST_PORT="$(dist_port "$1")"
    # the tools' own distribution ports, apart from those of other nodes' tools
    export RABBITMQ_CTL_DIST_PORT_MIN=$((BASE_PORT + 30040))
    export RABBITMQ_CTL_DIST_PORT_MAX=$((BASE_PORT + 30079))
    export RABBITMQ_CONFIG_FILE="$dir/rabbitmq.conf"
    export RABBITMQ_MNESIA_BASE="$dir/mnesia"
    export RABBITMQ_LOG_BASE="$dir/log"
    export RABBITMQ_PID_FILE="$dir/node.pid"
    export RABBITMQ_ENABLED_PLUGINS_FILE="$dir/enabled_plugins"
    export RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS="-kernel inet_dist_use_interface {127,0,0,1}"
    export ERL_EPMD_ADDRESS=127.0.0.1
    # a config file of our own: never the system one's /etc/rabbitmq/rabbitmq-env.conf
    export RABBITMQ_CONF_ENV_FILE="$dir/rabbitmq-env.conf"
}

write_config() {
    local dir
    dir="$(dir_of "$1")"
    mkdir -p "$dir/mnesia" "$dir/log"
    touch "$dir/rabbitmq-env.conf"
    cat >"$dir/rabbitmq.conf" <<EOF
listeners.tcp.default = 127.0.0.1:$(amqp_port "$1")
management.tcp.ip = 127.0.0.1
management.tcp.port = $(mgmt_port "$1")
loopback_users.guest = true
collect_statistics_interval = 1000
EOF
    echo "[rabbitmq_management]." >"$dir/enabled_plugins"
}

ctl() { # node, args...
    local n="$1"
    shift
    (
        node_env "$n"
        "$RMQ_BIN/rabbitmqctl" -q -n "$(node_name "$n")" "$@"
    )
}

node_pid() {
    local file pid
    file="$(dir_of "$1")/node.pid"
    [[ -f "$file" ]] || return 1
    pid="$(tr -dc '0-9' <"$file")"
    if [[ -z "$pid" ]] || ! kill -0 "$pid" 2>/dev/null; then
        return 1
    fi
    # a pid reused by another process since is not ours
    tr '\0' '\n' <"/proc/$pid/environ" 2>/dev/null |
        grep -qxF "RABBITMQ_NODENAME=$(node_name "$1")" && echo "$pid"
}

gone() { # no such process, or a zombie its parent has not reaped yet
    local state
    state="$(awk '{print $3}' "/proc/$1/stat" 2>/dev/null)" || return 0
    [[ -z "$state" || "$state" == Z ]]
}

wait_gone() { # pid, half-seconds
    local _
    for _ in $(seq 1 "$2"); do
        gone "$1" && return 0
        sleep 0.5
    done
    return 1
}

port_busy() {
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

# Launch node $1's VM in the background; `wait_booted` waits for it.
launch() {
    local n="$1" pid
    if pid="$(node_pid "$n")"; then
        log "node $n already has a process ($pid)"
        return
    fi
    rm -f "$(dir_of "$n")/node.pid"
    local port
    for port in "$(amqp_port "$n")" "$(mgmt_port "$n")" "$(dist_port "$n")"; do
        if port_busy "$port"; then
            die "127.0.0.1:$port is taken by another process; stop it or set FLEET_RABBITMQ_CLUSTER_PORT"
        fi
    done
    write_config "$n"
    (
        node_env "$n"
        "$RMQ_BIN/rabbitmq-server" -detached >/dev/null 2>&1
    )
}

# Wait for node $1 to boot: its AMQP port open and its management API saying
# that its virtual hosts run (the plugins start last), cheaper to poll than
# `rabbitmqctl await_startup` and its tools' start-up time.
wait_booted() {
    local n="$1" deadline=$((SECONDS + WAIT_S))
    until port_busy "$(amqp_port "$n")" && curl -sf --max-time 5 -u guest:guest -o /dev/null \
        "http://127.0.0.1:$(mgmt_port "$n")/api/health/checks/virtual-hosts"; do
        if ((SECONDS >= deadline)); then
            tail -n 30 "$(dir_of "$n")/log/$(node_name "$n").log" >&2 2>/dev/null || true
            die "node $(node_name "$n") did not start within ${WAIT_S}s"
        fi
        sleep 0.25
    done
}

running_nodes() { # as node $1 sees them, one index a line
    ctl "$1" cluster_status --formatter json 2>/dev/null |
        grep -o '"running_nodes":\[[^]]*\]' | grep -o 'fleet-c[0-9]' | tr -dc '0-9\n' | sort
}

clustered() {
    [[ "$(running_nodes 1 | tr '\n' ' ')" == "1 2 3 " ]]
}

join() {
    local n="$1"
    ctl "$n" stop_app >/dev/null &&
        ctl "$n" join_cluster "$(node_name 1)" >/dev/null &&
        ctl "$n" start_app >/dev/null &&
        wait_booted "$n"
}

join_or_retry() { # a node whose join failed is reset and tries once more
    local n="$1"
    join "$n" && return 0
    log "node $n could not join $(node_name 1); resetting it and trying again"
    ctl "$n" stop_app >/dev/null 2>&1 || true
    ctl "$n" reset >/dev/null 2>&1 || true
    join "$n"
}

all_up() {
    local n
    for n in "${NODES[@]}"; do
        running "$n" || return 1
    done
}

start() {
    [[ -x "$RMQ_BIN/rabbitmq-server" ]] ||
        die "rabbitmq-server is not installed: scripts/rabbitmq.sh start installs it"
    if all_up && clustered; then
        url
        return
    fi
    stop
    log "making a fresh cluster in $BASE"
    rm -rf "$BASE/n1" "$BASE/n2" "$BASE/n3"
    cookie
    local n
    for n in "${NODES[@]}"; do
        launch "$n"
    done
    for n in "${NODES[@]}"; do
        wait_booted "$n"
        log "node $n booted"
    done
    # one at a time: two nodes joining at once can clash in the schema
    # database (seen: one of them failing to start mnesia)
    for n in 2 3; do
        join_or_retry "$n" || die "node $n could not join $(node_name 1)"
    done
    clustered || die "the nodes are not one cluster: $(running_nodes 1 | tr '\n' ' ')"
    url
}

# A clean stop of node $1: SIGTERM, which RabbitMQ takes as `rabbitmqctl stop`
# (the boot's own signal handler), without the tools' start-up time.
stop_node() {
    local n="$1" pid
    if ! pid="$(node_pid "$n")"; then
        if port_busy "$(dist_port "$n")"; then # started, pid file not yet written
            ctl "$n" stop >/dev/null 2>&1 || true
        fi
        rm -f "$(dir_of "$n")/node.pid"
        return
    fi
    log "stopping node $(node_name "$n") (pid $pid)"
    kill -TERM "$pid" 2>/dev/null || true
    if ! wait_gone "$pid" 120; then
        log "node process $pid did not stop within 60s; killing it"
        kill -KILL "$pid" 2>/dev/null || true
        wait_gone "$pid" 20 || die "cannot stop node process $pid"
    fi
    rm -f "$(dir_of "$n")/node.pid"
}

stop() {
    local n pids=()
    for n in "${NODES[@]}"; do
        stop_node "$n" &
        pids+=("$!")
    done
    local failed=0
    for n in "${pids[@]}"; do
        wait "$n" || failed=1
    done
    return "$failed"
}

start_node() {
    [[ -d "$(dir_of "$1")/mnesia" ]] || die "node $1 has no state: make the cluster with: $0 start"
    if ! running "$1"; then
        launch "$1"
    fi
    wait_booted "$1"
}

kill_node() {
    local pid
    pid="$(node_pid "$1")" || die "node $(node_name "$1") has no process to kill"
    log "killing node $(node_name "$1") (pid $pid)"
    kill -KILL "$pid"
    wait_gone "$pid" 20 || die "node process $pid outlived SIGKILL"
}

# The management API's view of queue $1 (vhost /), from the first node that answers.
queue_info() {
    local n
    for n in "${NODES[@]}"; do
        if curl -sf --max-time 5 -u guest:guest \
            "http://127.0.0.1:$(mgmt_port "$n")/api/queues/%2F/$1?columns=type,leader,members,online"; then
            return
        fi
    done
    die "no node knows queue '$1'"
}

indices() { # the node indices in the JSON list or string named $1, from stdin
    grep -o "\"$1\":\(\"[^\"]*\"\|\[[^]]*\]\)" | grep -o 'fleet-c[0-9]@' | tr -dc '0-9\n' | sort | xargs
}

members() {
    local info
    info="$(queue_info "$1")"
    echo "type $(echo "$info" | grep -o '"type":"[a-z]*"' | cut -d'"' -f4)"
    echo "leader $(echo "$info" | indices leader)"
    echo "members $(echo "$info" | indices members)"
    echo "online $(echo "$info" | indices online)"
}

leader() {
    local index
    index="$(queue_info "$1" | indices leader)"
    [[ -n "$index" ]] || die "queue '$1' has no leader now"
    echo "$index"
}

running() { # node $1's process alive and its AMQP port open
    node_pid "$1" >/dev/null && port_busy "$(amqp_port "$1")"
}

status() {
    local n down=0
    for n in "${NODES[@]}"; do
        if running "$n"; then
            echo "running: node $n $(node_name "$n") amqp://127.0.0.1:$(amqp_port "$n")/" \
                "(management http://127.0.0.1:$(mgmt_port "$n")/)"
        else
            echo "stopped: node $n $(node_name "$n")"
            down=1
        fi
    done
    return "$down"
}

print_env() {
    all_up || die "the cluster is not running (all three nodes); start it with: $0 start"
    echo "FLEET_TEST_AMQP_CLUSTER_URL=$(url)"
    echo "FLEET_TEST_AMQP_CLUSTER_CTL=bash $SELF"
}

case "${1:-}" in
start) start ;;
stop) stop ;;
status) status ;;
env) print_env ;;
stop-node | start-node | kill-node)
    check_index "${2:-}"
    "${1//-/_}" "$2"
    ;;
leader | members)
    [[ -n "${2:-}" ]] || die "usage: $0 $1 QUEUE"
    "$1" "$2"
    ;;
*)
    echo "usage: $0 start|stop|status|env|stop-node N|start-node N|kill-node N|leader QUEUE|members QUEUE" >&2
    exit 2
    ;;
esac
