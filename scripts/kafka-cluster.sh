#!/usr/bin/env bash
# A 3-broker Apache Kafka cluster (KRaft, no ZooKeeper) on the loopback
# interface, for the cluster tier: three nodes that are each broker and
# controller (node.id 1..3, one controller quorum of all three), with the
# jars scripts/kafka.sh uses (pinned in scripts/kafka/pom.xml, shared in
# .cache/kafka/libs).
#
#   scripts/kafka-cluster.sh start          fetch the jars (once), format each node's
#                                           storage (once), start the nodes that do not
#                                           run, wait until all three serve, print the URL
#   scripts/kafka-cluster.sh stop           stop every node this script started (idempotent)
#   scripts/kafka-cluster.sh status         say which nodes run; exit 1 unless all three do
#   scripts/kafka-cluster.sh env            FLEET_TEST_KAFKA_CLUSTER_URL and _CTL lines
#   scripts/kafka-cluster.sh stop-node N    stop node N cleanly (SIGTERM: controlled shutdown)
#   scripts/kafka-cluster.sh kill-node N    kill node N (SIGKILL: no shutdown at all)
#   scripts/kafka-cluster.sh start-node N   start node N again, wait until the cluster
#                                           serves with all three brokers
#   scripts/kafka-cluster.sh leader T P     print the node id leading partition P of topic T
#
# Node N listens for clients on 127.0.0.1:FLEET_KAFKA_CLUSTER_PORT+N-1 (19092,
# 19093, 19094) and for the controller quorum on
# FLEET_KAFKA_CLUSTER_CONTROLLER_PORT+N-1 (19192, 19193, 19194). Everything
# lives under .cache/kafka-cluster (git-ignored): nN/ holds node N's log
# directory (data/), server.properties, kafka.pid and kafka.log; classes.jsa
# is the class data sharing archive the nodes start with (see build_archive).
# Each node's heap is FLEET_KAFKA_CLUSTER_HEAP (256m).
#
# Topics get 3 replicas and need 2 in sync (min.insync.replicas) by default,
# the group offsets and transaction state too. A broker that stops
# heartbeating is fenced, and drops out of every in-sync replica set, after
# broker.session.timeout.ms (4 s): how long a killed node's partitions stay
# without a leader.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
SELF="$ROOT/scripts/kafka-cluster.sh"
CACHE="$ROOT/.cache/kafka-cluster"
LIBS="$ROOT/.cache/kafka/libs" # shared with scripts/kafka.sh
LOG4J="$CACHE/log4j.properties"
CLUSTER_ID_FILE="$CACHE/cluster-id"
ARCHIVE="$CACHE/classes.jsa"
CLASSLIST="$CACHE/classes.lst"
PY="$ROOT/.venv/bin/python"
PORT="${FLEET_KAFKA_CLUSTER_PORT:-19092}"
CONTROLLER_PORT="${FLEET_KAFKA_CLUSTER_CONTROLLER_PORT:-19192}"
HEAP="${FLEET_KAFKA_CLUSTER_HEAP:-256m}"
NODES=(1 2 3)
START_TIMEOUT=120
STOP_TIMEOUT=60

say() { printf 'kafka-cluster.sh: %s\n' "$*" >&2; }
die() {
    say "$*"
    exit 1
}

classpath() { printf '%s/*' "$LIBS"; }
node_dir() { printf '%s/n%s' "$CACHE" "$1"; }
client_port() { printf '%s' $((PORT + $1 - 1)); }
controller_port() { printf '%s' $((CONTROLLER_PORT + $1 - 1)); }

hosts() {
    local n out=()
    for n in "${NODES[@]}"; do
        out+=("127.0.0.1:$(client_port "$n")")
    done
    (
        IFS=,
        printf '%s' "${out[*]}"
    )
}

url() { printf 'kafka://%s\n' "$(hosts)"; }

java_opts() {
    printf '%s\n' \
        "-Xms64m" "-Xmx$HEAP" "-XX:+UseG1GC" "-XX:MaxGCPauseMillis=20" \
        "-XX:ActiveProcessorCount=2" "-XX:TieredStopAtLevel=1" "-Djava.awt.headless=true" \
        "-Dlog4j.configuration=file:$LOG4J" "-Dkafka.logs.dir=$(node_dir "$1")"
}

# What node N starts with besides java_opts: the class archive once there is
# one; until then node 1 lists the classes it loads, to build it from.
broker_opts() {
    if [[ -s "$ARCHIVE" ]]; then
        printf '%s\n' "-XX:SharedArchiveFile=$ARCHIVE"
    elif (($1 == 1)); then
        printf '%s\n' "-XX:DumpLoadedClassList=$CLASSLIST"
    fi
}

check_node() {
    [[ "${1:-}" =~ ^[1-3]$ ]] || die "a node is 1, 2 or 3, not '${1:-}'"
}

# -------------------------------------------------------------------- setup

# The same pinned jars, in the same place, as scripts/kafka.sh uses.
fetch_jars() {
    bash "$ROOT/scripts/kafka.sh" fetch
}

write_config() {
    local n="$1" dir voters="" m
    dir="$(node_dir "$n")"
    mkdir -p "$dir/data"
    for m in "${NODES[@]}"; do
        voters+="${voters:+,}$m@127.0.0.1:$(controller_port "$m")"
    done
    cat >"$dir/server.properties" <<EOF
# written by scripts/kafka-cluster.sh; edits are overwritten on start
process.roles=broker,controller
node.id=$n
controller.quorum.voters=$voters
listeners=PLAINTEXT://127.0.0.1:$(client_port "$n"),CONTROLLER://127.0.0.1:$(controller_port "$n")
advertised.listeners=PLAINTEXT://127.0.0.1:$(client_port "$n")
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT
log.dirs=$dir/data
num.network.threads=2
num.io.threads=2
num.replica.fetchers=1
background.threads=2
num.partitions=1
default.replication.factor=3
min.insync.replicas=2
auto.create.topics.enable=false
delete.topic.enable=true
offsets.topic.replication.factor=3
offsets.topic.num.partitions=8
transaction.state.log.replication.factor=3
transaction.state.log.min.isr=2
transaction.state.log.num.partitions=4
group.initial.rebalance.delay.ms=0
group.min.session.timeout.ms=1000
broker.heartbeat.interval.ms=1000
broker.session.timeout.ms=4000
log.segment.bytes=16777216
log.retention.hours=24
log.retention.check.interval.ms=300000
offsets.retention.minutes=60
EOF
}

write_log4j() {
    mkdir -p "$CACHE"
    cat >"$LOG4J" <<'EOF'
log4j.rootLogger=INFO, stdout
log4j.appender.stdout=org.apache.log4j.ConsoleAppender
log4j.appender.stdout.layout=org.apache.log4j.PatternLayout
log4j.appender.stdout.layout.ConversionPattern=[%d] %p %m (%c)%n
log4j.logger.kafka=INFO
log4j.logger.org.apache.kafka=INFO
log4j.logger.state.change.logger=WARN
log4j.logger.kafka.request.logger=WARN
EOF
}

cluster_id() {
    if [[ ! -s "$CLUSTER_ID_FILE" ]]; then
        local opts
        mapfile -t opts < <(java_opts 1)
        java "${opts[@]}" -cp "$(classpath)" kafka.tools.StorageTool random-uuid |
            tail -n 1 >"$CLUSTER_ID_FILE"
    fi
    cat "$CLUSTER_ID_FILE"
}

format_storage() {
    local n="$1" dir id opts
    dir="$(node_dir "$n")"
    [[ -f "$dir/data/meta.properties" ]] && return
    id="$(cluster_id)"
    mapfile -t opts < <(java_opts "$n")
    say "formatting node $n (cluster $id)"
    java "${opts[@]}" -cp "$(classpath)" kafka.tools.StorageTool format \
        -t "$id" -c "$dir/server.properties" --ignore-formatted >/dev/null
}

# -------------------------------------------------------------------- process

# The pid of node N, if this script started it and it still runs.
node_pid() {
    local dir pid
    dir="$(node_dir "$1")"
    [[ -f "$dir/kafka.pid" ]] || return 1
    pid="$(<"$dir/kafka.pid")"
    [[ "$pid" =~ ^[0-9]+$ ]] || return 1
    [[ -r "/proc/$pid/cmdline" ]] || return 1
    # the pid must still be that node's java, not a recycled number
    tr '\0' ' ' <"/proc/$pid/cmdline" | grep -q -- "kafka.Kafka $dir/server.properties" || return 1
    printf '%s\n' "$pid"
}

port_open() {
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

# Launch node N in the background (own session, so it outlives this shell).
launch() {
    local n="$1" dir opts
    dir="$(node_dir "$n")"
    if node_pid "$n" >/dev/null; then
        return
    fi
    if port_open "$(client_port "$n")" || port_open "$(controller_port "$n")"; then
        die "a port of node $n is taken by a process this script did not start"
    fi
    write_config "$n"
    format_storage "$n"
    mapfile -t opts < <(java_opts "$n"; broker_opts "$n")
    say "starting node $n on 127.0.0.1:$(client_port "$n") (log: $dir/kafka.log)"
    rm -f "$dir/kafka.pid"
    # the inner shell writes its pid and becomes the JVM
    # shellcheck disable=SC2016  # expanded by the inner shell
    setsid bash -c 'printf "%s\n" "$$" >"$1"; shift; exec "$@"' _ "$dir/kafka.pid" \
        java "${opts[@]}" -cp "$(classpath)" kafka.Kafka "$dir/server.properties" \
        >>"$dir/kafka.log" 2>&1 </dev/null &
    local waited=0
    until node_pid "$n" >/dev/null; do
        ((waited < 50)) || die "node $n did not start; see $dir/kafka.log"
        sleep 0.1
        waited=$((waited + 1))
    done
}

# Wait until every node answers a metadata request on its own port and names
# all three brokers (registered and not fenced), within START_TIMEOUT seconds.
wait_serving() {
    local n deadline=$((SECONDS + START_TIMEOUT))
    for n in "${NODES[@]}"; do # cheap first: every node listens
        until port_open "$(client_port "$n")"; do
            node_pid "$n" >/dev/null || die "node $n exited; see $(node_dir "$n")/kafka.log"
            ((SECONDS < deadline)) || die "node $n did not listen within ${START_TIMEOUT}s"
            sleep 0.2
        done
    done
    [[ -x "$PY" ]] || return 0 # no client library: open ports are all we can see
    until "$PY" - "$PORT" "${#NODES[@]}" 2>/dev/null <<'EOF'; do
import asyncio, sys
from aiokafka.admin import AIOKafkaAdminClient

PORT, COUNT = int(sys.argv[1]), int(sys.argv[2])


async def names_all(port: int) -> bool:
    admin = AIOKafkaAdminClient(
        bootstrap_servers=f"127.0.0.1:{port}", request_timeout_ms=3000
    )
    try:
        await asyncio.wait_for(admin.start(), 5)
        meta = await asyncio.wait_for(admin._client.fetch_all_metadata(), 5)
        return len(meta.brokers()) == COUNT
    except Exception:
        return False
    finally:
        await admin.close()


async def main() -> None:
    # polls inside one process: a Python start per poll costs a core-second
    loop = asyncio.get_running_loop()
    end = loop.time() + 20
    while loop.time() < end:
        if all([await names_all(PORT + i) for i in range(COUNT)]):
            return
        await asyncio.sleep(0.5)
    sys.exit(1)


asyncio.run(main())
EOF
        for n in "${NODES[@]}"; do
            node_pid "$n" >/dev/null || die "node $n exited; see $(node_dir "$n")/kafka.log"
        done
        ((SECONDS < deadline)) || die "the cluster did not serve within ${START_TIMEOUT}s"
    done
}

start() {
    command -v java >/dev/null || die "java not found: the brokers need Java 17"
    fetch_jars
    write_log4j
    local n
    for n in "${NODES[@]}"; do
        write_config "$n"
    done
    for n in "${NODES[@]}"; do
        launch "$n"
    done
    wait_serving
    build_archive
    say "ready"
    url
}

# A class data sharing archive of the classes a broker loads (listed by node 1
# on its first start), built once: a node then maps them instead of loading
# and verifying each, which with the client compiler only (TieredStopAtLevel=1:
# a test broker needs no peak performance) cuts the CPU a start costs about
# threefold, on a small machine the difference between a restart of seconds
# and one of half a minute. A JVM that cannot use the archive ignores it.
build_archive() {
    [[ -s "$ARCHIVE" || ! -s "$CLASSLIST" ]] && return
    local opts
    mapfile -t opts < <(java_opts 1)
    say "building the class archive $ARCHIVE"
    if java "${opts[@]}" -Xshare:dump -XX:SharedClassListFile="$CLASSLIST" \
        -XX:SharedArchiveFile="$ARCHIVE.partial" -cp "$(classpath)" >"$CACHE/archive.log" 2>&1; then
        mv "$ARCHIVE.partial" "$ARCHIVE"
    else
        say "no class archive (see $CACHE/archive.log); nodes start without one"
        rm -f "$ARCHIVE.partial"
    fi
}

# Stop node N: SIGTERM (a controlled shutdown hands its leaderships over) or
# SIGKILL; wait until the process is gone either way.
# Signal the nodes given (SIGTERM: a controlled shutdown that hands their
# leaderships over; SIGKILL: none at all), then wait until each is gone; one
# that outlives STOP_TIMEOUT seconds is killed.
halt() {
    local sig="$1" n pid pids=()
    shift
    for n in "$@"; do
        if pid="$(node_pid "$n")"; then
            say "stopping node $n (pid $pid, SIG$sig)"
            kill "-$sig" "$pid" 2>/dev/null || true
            pids+=("$pid")
        else
            say "node $n not running"
        fi
    done
    local deadline=$((SECONDS + STOP_TIMEOUT))
    for pid in "${pids[@]}"; do
        while kill -0 "$pid" 2>/dev/null; do
            if ((SECONDS >= deadline)); then
                say "pid $pid ignored SIG$sig for ${STOP_TIMEOUT}s; killing it"
                kill -KILL "$pid" 2>/dev/null || true
                deadline=$((SECONDS + STOP_TIMEOUT))
            fi
            sleep 0.1
        done
    done
    for n in "$@"; do
        rm -f "$(node_dir "$n")/kafka.pid"
    done
}

stop() {
    # all at once: one by one, the last would wait for a controller quorum
    # that is gone (its controlled shutdown never ends)
    halt TERM "${NODES[@]}"
    say "stopped"
}

status() {
    local n pid up=0
    for n in "${NODES[@]}"; do
        if pid="$(node_pid "$n")"; then
            say "node $n running (pid $pid) on 127.0.0.1:$(client_port "$n")"
            up=$((up + 1))
        else
            say "node $n not running"
        fi
    done
    url
    ((up == ${#NODES[@]}))
}

env_lines() {
    printf '%s\n' \
        "FLEET_TEST_KAFKA_CLUSTER_URL=$(url)" \
        "FLEET_TEST_KAFKA_CLUSTER_CTL=bash $SELF"
}

leader() {
    local topic="${1:-}" partition="${2:-}"
    [[ -n "$topic" && "$partition" =~ ^[0-9]+$ ]] || die "usage: $0 leader TOPIC PARTITION"
    [[ -x "$PY" ]] || die "no $PY: the leader is read with aiokafka"
    "$PY" - "$(hosts)" "$topic" "$partition" <<'EOF'
import asyncio, sys
from aiokafka.admin import AIOKafkaAdminClient

HOSTS, TOPIC, PARTITION = sys.argv[1].split(","), sys.argv[2], int(sys.argv[3])


async def main() -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=HOSTS, request_timeout_ms=3000)
    await asyncio.wait_for(admin.start(), 10)
    try:
        topics = await asyncio.wait_for(admin.describe_topics([TOPIC]), 10)
    finally:
        await admin.close()
    for t in topics:
        for p in t.get("partitions") or []:
            if t.get("topic") == TOPIC and p["partition"] == PARTITION and p["leader"] >= 0:
                print(p["leader"])
                return
    sys.exit(f"no leader for {TOPIC}[{PARTITION}]")


asyncio.run(main())
EOF
}

case "${1:-}" in
    start) start ;;
    stop) stop ;;
    status) status ;;
    env) env_lines ;;
    stop-node | kill-node | start-node)
        check_node "${2:-}"
        case "$1" in
            stop-node) halt TERM "$2" ;;
            kill-node) halt KILL "$2" ;;
            start-node)
                fetch_jars
                write_log4j
                launch "$2"
                wait_serving
                say "node $2 serving"
                ;;
        esac
        ;;
    leader) leader "${2:-}" "${3:-}" ;;
    *) die "usage: $0 start|stop|status|env|stop-node N|start-node N|kill-node N|leader TOPIC PARTITION" ;;
esac
