#!/usr/bin/env bash
# A single-node Apache Kafka broker (KRaft, no ZooKeeper) on the loopback
# interface, for the kafka test tier and local runs.
#
#   scripts/kafka.sh start     fetch the pinned jars (once), format storage (once),
#                              start the broker, wait until it answers, print its URL
#   scripts/kafka.sh stop      stop the broker this script started, wait for it to exit
#   scripts/kafka.sh restart   stop + start; the data directory (topics, committed
#                              offsets) survives
#   scripts/kafka.sh reset     stop, empty the data directory (every topic and
#                              offset gone), start: a broker as new, for benchmarks
#   scripts/kafka.sh status    say whether it runs; exit 1 when it does not
#
# Everything lives under .cache/kafka (git-ignored): libs/ (jars from Maven
# Central, pinned in scripts/kafka/pom.xml), data/ (the log; on a tmpfs where
# there is one, see scripts/data-dir.sh), server.properties, kafka.pid and
# kafka.log. Ports: FLEET_KAFKA_PORT (9092) for clients,
# FLEET_KAFKA_CONTROLLER_PORT (9093) for the KRaft controller, and a second
# client listener on FLEET_KAFKA_PROXIED_PORT (9094) that advertises
# FLEET_KAFKA_PROXY_PORT (9095) instead of its own port: a TCP proxy on that
# port (the chaos tier's fault proxy) then carries every connection a client
# makes, not only the first.
#
# Secured listeners for the tls tier, with certificates from scripts/tls.sh
# under .cache/kafka/tls: TLS on FLEET_KAFKA_SSL_PORT (9096; a client
# certificate is required: mutual TLS), SASL over TLS on
# FLEET_KAFKA_SASL_SSL_PORT (9097) and SASL without TLS on
# FLEET_KAFKA_SASL_PORT (9098); SASL takes PLAIN, SCRAM-SHA-256 and
# SCRAM-SHA-512 for the user "fleet", whose password is made once into
# .cache/kafka/sasl-password.
#   scripts/kafka.sh fetch     fetch the pinned jars into .cache/kafka/libs (once)
#   scripts/kafka.sh tls-env   print those listeners' URLs, the password and the
#                              certificate directory as FLEET_TEST_*=value lines
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CACHE="$ROOT/.cache/kafka"
LIBS="$CACHE/libs"
DATA="$(bash "$ROOT/scripts/data-dir.sh" "$CACHE/data")" # a tmpfs where there is one
CONFIG="$CACHE/server.properties"
LOG4J="$CACHE/log4j.properties"
PIDFILE="$CACHE/kafka.pid"
LOGFILE="$CACHE/kafka.log"
CLUSTER_ID_FILE="$CACHE/cluster-id"
POM="$ROOT/scripts/kafka/pom.xml"
PORT="${FLEET_KAFKA_PORT:-9092}"
CONTROLLER_PORT="${FLEET_KAFKA_CONTROLLER_PORT:-9093}"
PROXIED_PORT="${FLEET_KAFKA_PROXIED_PORT:-9094}"
PROXY_PORT="${FLEET_KAFKA_PROXY_PORT:-9095}"
SSL_PORT="${FLEET_KAFKA_SSL_PORT:-9096}"
SASL_SSL_PORT="${FLEET_KAFKA_SASL_SSL_PORT:-9097}"
SASL_PORT="${FLEET_KAFKA_SASL_PORT:-9098}"
TLS_DIR="$CACHE/tls"
SASL_USER=fleet
ACL_USERS="fleet_worker fleet_client fleet_autoscaler fleet_nobody" # PLAIN users with ACLs only
SASL_PASSWORD_FILE="$CACHE/sasl-password"
SCRAM_MARK="$DATA/fleet-scram-users"
HEAP="${FLEET_KAFKA_HEAP:-512m}"
START_TIMEOUT=90
STOP_TIMEOUT=60

say() { printf 'kafka.sh: %s\n' "$*" >&2; }
die() {
    say "$*"
    exit 1
}

classpath() { printf '%s/*' "$LIBS"; }

java_opts() {
    printf '%s\n' \
        "-Xms128m" "-Xmx$HEAP" "-XX:+UseG1GC" "-XX:MaxGCPauseMillis=20" \
        "-XX:ActiveProcessorCount=2" "-Djava.awt.headless=true" \
        "-Dlog4j.configuration=file:$LOG4J" "-Dkafka.logs.dir=$CACHE"
}

# -------------------------------------------------------------------- setup

fetch_jars() {
    if compgen -G "$LIBS/kafka_2.13-*.jar" >/dev/null; then
        return
    fi
    command -v mvn >/dev/null || die "mvn not found: Maven fetches the Kafka jars"
    say "fetching Apache Kafka jars from Maven Central into $LIBS"
    mkdir -p "$LIBS.partial"
    # batch mode (no colours) and to stderr: stdout carries only the URL
    mvn -q -B -Dstyle.color=never -f "$POM" dependency:copy-dependencies \
        -DincludeScope=runtime -DoutputDirectory="$LIBS.partial" >&2
    rm -rf "$LIBS"
    mv "$LIBS.partial" "$LIBS"
}

sasl_password() {
    if [[ ! -s "$SASL_PASSWORD_FILE" ]]; then
        (
            umask 077
            od -An -N18 -tx1 /dev/urandom | tr -d ' \n' >"$SASL_PASSWORD_FILE"
        )
    fi
    cat "$SASL_PASSWORD_FILE"
}

write_config() {
    mkdir -p "$DATA"
    bash "$ROOT/scripts/tls.sh" "$TLS_DIR" >/dev/null
    local password jaas_plain scram
    password="$(sasl_password)"
    # PLAIN users: the tls tier's, and one per fleet role for the ACL test
    # (tests/tls/test_kafka_acls.py), which grants them what docs/security.md lists.
    jaas_plain="org.apache.kafka.common.security.plain.PlainLoginModule required user_$SASL_USER=\"$password\""
    for role in $ACL_USERS; do
        jaas_plain+=" user_$role=\"$password\""
    done
    jaas_plain+=";"
    scram="org.apache.kafka.common.security.scram.ScramLoginModule required;"
    (umask 077 && : >"$CONFIG") # it holds the PLAIN password
    cat >"$CONFIG" <<EOF
# written by scripts/kafka.sh; edits are overwritten on start
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@127.0.0.1:$CONTROLLER_PORT
listeners=PLAINTEXT://127.0.0.1:$PORT,PROXIED://127.0.0.1:$PROXIED_PORT,CONTROLLER://127.0.0.1:$CONTROLLER_PORT,SSL://127.0.0.1:$SSL_PORT,SASL_SSL://127.0.0.1:$SASL_SSL_PORT,SASL_PLAINTEXT://127.0.0.1:$SASL_PORT
advertised.listeners=PLAINTEXT://127.0.0.1:$PORT,PROXIED://127.0.0.1:$PROXY_PORT,SSL://127.0.0.1:$SSL_PORT,SASL_SSL://127.0.0.1:$SASL_SSL_PORT,SASL_PLAINTEXT://127.0.0.1:$SASL_PORT
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT,PROXIED:PLAINTEXT,SSL:SSL,SASL_SSL:SASL_SSL,SASL_PLAINTEXT:SASL_PLAINTEXT
ssl.keystore.type=PEM
ssl.keystore.location=$TLS_DIR/server-bundle.pem
ssl.truststore.type=PEM
ssl.truststore.location=$TLS_DIR/ca.pem
ssl.client.auth=none
listener.name.ssl.ssl.client.auth=required
sasl.enabled.mechanisms=PLAIN,SCRAM-SHA-256,SCRAM-SHA-512
# ACLs are enforced; the plaintext listeners' ANONYMOUS, the SASL user and the
# mutual-TLS client (CN=fleet) may do anything, the role users what ACLs grant.
authorizer.class.name=org.apache.kafka.metadata.authorizer.StandardAuthorizer
super.users=User:ANONYMOUS;User:$SASL_USER;User:CN=fleet
listener.name.sasl_ssl.plain.sasl.jaas.config=$jaas_plain
listener.name.sasl_ssl.scram-sha-256.sasl.jaas.config=$scram
listener.name.sasl_ssl.scram-sha-512.sasl.jaas.config=$scram
listener.name.sasl_plaintext.plain.sasl.jaas.config=$jaas_plain
listener.name.sasl_plaintext.scram-sha-256.sasl.jaas.config=$scram
listener.name.sasl_plaintext.scram-sha-512.sasl.jaas.config=$scram
log.dirs=$DATA
num.network.threads=2
num.io.threads=4
num.partitions=1
default.replication.factor=1
min.insync.replicas=1
auto.create.topics.enable=false
delete.topic.enable=true
offsets.topic.replication.factor=1
offsets.topic.num.partitions=8
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
transaction.state.log.num.partitions=4
group.initial.rebalance.delay.ms=0
group.min.session.timeout.ms=1000
log.segment.bytes=16777216
log.retention.hours=24
log.retention.check.interval.ms=300000
EOF
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

format_storage() {
    if [[ -f "$DATA/meta.properties" ]]; then
        return
    fi
    local cluster_id opts
    mapfile -t opts < <(java_opts)
    if [[ -s "$CLUSTER_ID_FILE" ]]; then
        cluster_id="$(<"$CLUSTER_ID_FILE")"
    else
        cluster_id="$(java "${opts[@]}" -cp "$(classpath)" kafka.tools.StorageTool random-uuid | tail -n 1)"
        printf '%s\n' "$cluster_id" >"$CLUSTER_ID_FILE"
    fi
    say "formatting $DATA (cluster $cluster_id)"
    local password mechanism scram=()
    password="$(sasl_password)"
    for mechanism in SCRAM-SHA-256 SCRAM-SHA-512; do
        scram+=(--add-scram "$mechanism=[name=$SASL_USER,password=$password]")
    done
    java "${opts[@]}" -cp "$(classpath)" kafka.tools.StorageTool format \
        -t "$cluster_id" -c "$CONFIG" --ignore-formatted "${scram[@]}" >/dev/null
    touch "$SCRAM_MARK"
}

# -------------------------------------------------------------------- process

# The pid of the broker this script started, if it still runs.
broker_pid() {
    [[ -f "$PIDFILE" ]] || return 1
    local pid
    pid="$(<"$PIDFILE")"
    [[ "$pid" =~ ^[0-9]+$ ]] || return 1
    [[ -r "/proc/$pid/cmdline" ]] || return 1
    # the pid must still be our java, not a recycled number
    tr '\0' ' ' <"/proc/$pid/cmdline" | grep -q -- "kafka.Kafka $CONFIG" || return 1
    printf '%s\n' "$pid"
}

port_open() {
    (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null
}

# The broker answers metadata requests (not just an open socket).
answers() {
    local py="$ROOT/.venv/bin/python"
    port_open || return 1
    if [[ -x "$py" ]]; then
        "$py" - "$PORT" <<'EOF' >/dev/null 2>&1
import asyncio, sys
from aiokafka.admin import AIOKafkaAdminClient

async def main() -> None:
    admin = AIOKafkaAdminClient(
        bootstrap_servers=f"127.0.0.1:{sys.argv[1]}", request_timeout_ms=3000
    )
    await admin.start()
    try:
        await asyncio.wait_for(admin.list_topics(), 5)
    finally:
        await admin.close()

asyncio.run(main())
EOF
    else
        grep -q "Kafka Server started" "$LOGFILE" 2>/dev/null
    fi
}

start() {
    local pid
    if pid="$(broker_pid)"; then
        say "already running (pid $pid)"
    else
        command -v java >/dev/null || die "java not found: the broker needs Java 17"
        if port_open; then
            die "127.0.0.1:$PORT is taken by a process this script did not start"
        fi
        fetch_jars
        write_config
        format_storage
        local opts
        mapfile -t opts < <(java_opts)
        say "starting broker on 127.0.0.1:$PORT (log: $LOGFILE)"
        # own session, so the broker outlives the shell that started it; the
        # inner shell writes its pid and becomes the JVM
        # shellcheck disable=SC2016  # expanded by the inner shell
        setsid bash -c 'printf "%s\n" "$$" >"$1"; shift; exec "$@"' _ "$PIDFILE" \
            java "${opts[@]}" -cp "$(classpath)" kafka.Kafka "$CONFIG" \
            >>"$LOGFILE" 2>&1 </dev/null &
        local waited=0
        until [[ -s "$PIDFILE" ]] && broker_pid >/dev/null; do
            ((waited < 50)) || die "broker did not start; see $LOGFILE"
            sleep 0.1
            waited=$((waited + 1))
        done
    fi
    local deadline=$((SECONDS + START_TIMEOUT))
    until answers; do
        broker_pid >/dev/null || die "broker exited; see $LOGFILE"
        ((SECONDS < deadline)) || die "broker did not answer within ${START_TIMEOUT}s; see $LOGFILE"
        sleep 0.5
    done
    add_scram_users
    say "ready"
    printf 'kafka://127.0.0.1:%s\n' "$PORT"
}

# SCRAM credentials live in the cluster's metadata: a new data directory gets
# them when it is formatted; one formatted before has them added once here.
add_scram_users() {
    [[ -f "$SCRAM_MARK" ]] && return
    local password opts mechanism
    password="$(sasl_password)"
    mapfile -t opts < <(java_opts)
    say "adding SCRAM credentials for user $SASL_USER"
    for mechanism in SCRAM-SHA-256 SCRAM-SHA-512; do # one per request
        java "${opts[@]}" -cp "$(classpath)" kafka.admin.ConfigCommand \
            --bootstrap-server "127.0.0.1:$PORT" --alter --entity-type users \
            --entity-name "$SASL_USER" --add-config "$mechanism=[password=$password]" \
            >/dev/null || die "could not add SCRAM credentials; see $LOGFILE"
    done
    touch "$SCRAM_MARK"
}

tls_env() {
    broker_pid >/dev/null || die "not running"
    local password ca="$TLS_DIR/ca.pem"
    password="$(sasl_password)"
    printf '%s\n' \
        "FLEET_TEST_TLS_DIR=$TLS_DIR" \
        "FLEET_TEST_KAFKA_SSL_URL=kafka+ssl://127.0.0.1:$SSL_PORT/?cafile=$ca&certfile=$TLS_DIR/client.pem&keyfile=$TLS_DIR/client.key" \
        "FLEET_TEST_KAFKA_SASL_SSL_URL=kafka+sasl+ssl://$SASL_USER@127.0.0.1:$SASL_SSL_PORT/?cafile=$ca&sasl_mechanism=SCRAM-SHA-512" \
        "FLEET_TEST_KAFKA_SASL_SSL_URL_PASSWORD=$password" \
        "FLEET_TEST_KAFKA_SASL_URL=kafka+sasl://$SASL_USER@127.0.0.1:$SASL_PORT/?sasl_mechanism=PLAIN" \
        "FLEET_TEST_KAFKA_SASL_URL_PASSWORD=$password"
}

stop() {
    local pid
    if ! pid="$(broker_pid)"; then
        say "not running"
        rm -f "$PIDFILE"
        return 0
    fi
    say "stopping broker (pid $pid)"
    kill -TERM "$pid" 2>/dev/null || true
    local deadline=$((SECONDS + STOP_TIMEOUT))
    while kill -0 "$pid" 2>/dev/null; do
        if ((SECONDS >= deadline)); then
            say "broker ignored SIGTERM for ${STOP_TIMEOUT}s; killing it"
            kill -KILL "$pid" 2>/dev/null || true
        fi
        sleep 0.2
    done
    rm -f "$PIDFILE"
    say "stopped"
}

status() {
    local pid
    if pid="$(broker_pid)"; then
        if answers; then
            say "running (pid $pid), answering on 127.0.0.1:$PORT"
        else
            say "running (pid $pid), not answering yet on 127.0.0.1:$PORT"
        fi
        printf 'kafka://127.0.0.1:%s\n' "$PORT"
        return 0
    fi
    say "not running"
    return 1
}

case "${1:-}" in
    start) start ;;
    stop) stop ;;
    restart)
        stop
        start
        ;;
    reset)
        stop
        say "emptying $DATA"
        find "$DATA" -mindepth 1 -delete
        start
        ;;
    status) status ;;
    tls-env) tls_env ;;
    fetch) fetch_jars ;;
    *) die "usage: $0 start|stop|restart|reset|status|tls-env|fetch" ;;
esac
