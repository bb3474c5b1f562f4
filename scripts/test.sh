#!/usr/bin/env bash
# The one test command: installs everything, starts the services it needs,
# runs lint, types and every test tier, then stops what it started.
#
#   scripts/test.sh                 everything
#   scripts/test.sh -m unit         extra arguments go to pytest
#
# Services: a URL in the environment wins (FLEET_TEST_AMQP_URL,
# FLEET_TEST_KAFKA_URL, FLEET_TEST_AWS_URL, FLEET_TEST_REDIS_URL; a service you
# bring yourself, for example a container). Otherwise, when a Docker engine
# answers, testcontainers starts each in a container (tests/services.py); else
# local servers are started on loopback by scripts/rabbitmq.sh (RabbitMQ from
# apt), scripts/kafka.sh (Apache Kafka jars from Maven Central, KRaft mode),
# scripts/moto.sh (moto's AWS server) and scripts/redis.sh (Redis from apt).
# Under CI=true a tier whose service is missing fails; it is never skipped.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
PYTHON="${PYTHON:-python3}"
started=()
containers=()

say() { printf '\n==> [%ds] %s\n' "$SECONDS" "$*" >&2; }

side_pid=
cleanup() {
    local rc=$?
    if [[ -n $side_pid ]] && kill -0 "$side_pid" 2>/dev/null; then
        kill "$side_pid" 2>/dev/null || true
        wait "$side_pid" 2>/dev/null || true
    fi
    for svc in "${started[@]}"; do
        bash "scripts/${svc}.sh" stop >/dev/null 2>&1 || echo "could not stop ${svc}" >&2
    done
    for svc in "${containers[@]}"; do
        .venv/bin/python -m tests.services stop "$svc" >/dev/null 2>&1 ||
            echo "could not remove the ${svc} container" >&2
    done
    exit "$rc"
}
trap cleanup EXIT

say "python environment (.venv)"
[[ -x .venv/bin/python ]] || "$PYTHON" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -e '.[dev,aws]'

start_service() { # name env-var restart-env-var
    local name=$1 var=$2 restart_var=${3:-}
    if [[ -n "${!var:-}" ]]; then
        say "$name: using $var from the environment"
        return
    fi
    local from
    from=$(.venv/bin/python -m tests.services choose "$name")
    if [[ $from == container ]]; then
        say "$name: starting a container (a Docker engine answers)"
        local url
        url=$(.venv/bin/python -m tests.services start "$name" | tail -n 1)
        containers+=("$name")
        export "$var=$url"
        if [[ -n "$restart_var" ]]; then
            export "$restart_var=cd $ROOT && .venv/bin/python -m tests.services restart $name"
        fi
        return
    fi
    say "$name: starting a local server"
    local url
    url=$(bash "scripts/${name}.sh" start | tail -n 1 | grep -Eo '(amqps?|kafka|https?|redis)://[^[:space:]]+' || true)
    [[ -n "$url" ]] || { echo "scripts/${name}.sh start printed no URL" >&2; exit 1; }
    started+=("$name")
    export "$var=$url"
    if [[ -n "$restart_var" ]]; then
        export "$restart_var=bash $ROOT/scripts/${name}.sh restart"
    fi
}
start_service rabbitmq FLEET_TEST_AMQP_URL FLEET_TEST_AMQP_RESTART
start_service kafka FLEET_TEST_KAFKA_URL FLEET_TEST_KAFKA_RESTART
start_service moto FLEET_TEST_AWS_URL
start_service redis FLEET_TEST_REDIS_URL FLEET_TEST_REDIS_RESTART

# The TLS and SASL listeners of the brokers started here (the tls tier): each
# script's tls-env prints VAR=value lines; a variable already set wins.
for svc in "${started[@]}"; do
    [[ $svc == moto || $svc == redis ]] && continue
    while IFS= read -r line; do
        [[ $line == FLEET_TEST_*=* ]] || continue
        var=${line%%=*}
        [[ -n "${!var:-}" ]] && continue
        export "${line?}"
    done < <(bash "scripts/${svc}.sh" tls-env)
done

# 3-node RabbitMQ and 3-broker Kafka clusters for the cluster tier; variables
# already set (clusters you bring yourself) win.
start_clusters() {
    local name var line
    for name in rabbitmq-cluster kafka-cluster; do
        var=FLEET_TEST_AMQP_CLUSTER_URL
        [[ $name == kafka-cluster ]] && var=FLEET_TEST_KAFKA_CLUSTER_URL
        if [[ -n "${!var:-}" ]]; then
            say "$name: using $var from the environment"
            continue
        fi
        say "$name: starting a local 3-node cluster"
        started+=("$name") # stopped at exit even when its start fails half way
        bash "scripts/${name}.sh" start >/dev/null
        while IFS= read -r line; do
            [[ $line == FLEET_TEST_*=* ]] && export "${line?}"
        done < <(bash "scripts/${name}.sh" env)
    done
}

# The last warnings and errors of the local brokers' logs: what a failed run
# needs to tell a broker's trouble from the code's.
broker_warnings() {
    local file
    for file in .cache/kafka/kafka.log .cache/rabbitmq/log/*.log; do
        [[ -f $file ]] || continue
        say "the last warnings and errors in $file"
        grep -E ' (WARN|ERROR)|\[(warning|error)\]' "$file" | tail -n 40 | cut -c1-400 || true
    done
}

lint() {
    .venv/bin/ruff check .
    .venv/bin/ruff format --check .
    .venv/bin/mypy
}

# The cluster tier runs last, on 3-node clusters started for it once the other
# tiers are done and the single-node servers stopped: on a small machine the
# clusters would otherwise compete with every other tier for the CPUs. With
# arguments, the clusters start only when they name the tier ("-m cluster").
clusters=0
if [[ $# -eq 0 || "$*" == *cluster* ]]; then
    clusters=1
fi

if [[ $# -gt 0 ]]; then
    say "lint and types"
    lint
    say "tests: pytest $*"
    [[ $clusters == 1 ]] && start_clusters
    .venv/bin/pytest "$@"
    exit
fi

# Lint and types, then the tests that use no broker server (the deploy and
# apply tiers: terraform against moto's server, checkov; the simulator and the
# policies; the command line, the docs and the README; the batch runs, on the
# embedded broker) run beside the broker tiers, in a second pytest with its
# own temporary directory, and their report follows the main one.
#
# The broker tiers run in WORKERS pytest processes (pytest-xdist) sharing the
# servers: a test that restarts, pauses or alarms a server holds them alone
# (tests/sharing.py). Most of their time is spent waiting on the servers, so
# three processes finish sooner than one even on two cores.
WORKERS="${FLEET_TEST_WORKERS:-3}"
side=(
    tests/deploy tests/autoscaler/test_simulator.py tests/autoscaler/test_policy.py
    tests/autoscaler/test_baselines.py tests/fleetctl/test_cli.py
    tests/fleetctl/test_simulate_cmd.py tests/test_structure.py tests/test_docs.py
    tests/test_readme.py tests/jobs/test_batch.py
)
side_log=.cache/side-tests.log
mkdir -p .cache
say "lint and types, then tests: ${side[*]} (beside the others; report in $side_log)"
{
    lint && .venv/bin/pytest -p no:cacheprovider --basetemp=.cache/pytest-side --durations=10 \
        "${side[@]}"
} >"$side_log" 2>&1 &
side_pid=$!
say "tests: every other tier, in $WORKERS processes"
main_log=.cache/main-tests.log
set +e
.venv/bin/pytest -n "$WORKERS" --durations=30 --ignore=tests/cluster "${side[@]/#/--ignore=}" 2>&1 |
    tee "$main_log"
main_rc=${PIPESTATUS[0]}
set -e
side_rc=0
wait "$side_pid" || side_rc=$?
say "lint and types, then tests: ${side[*]} (ran beside the others)"
cat "$side_log"
if ((main_rc != 0 || side_rc != 0)); then
    if ((main_rc != 0)); then
        broker_warnings
        # The side report above pushes the main tier's failures out of a
        # short tail: name them again, last.
        say "the failures of the other tiers (the whole report is in $main_log)"
        sed -n '/short test summary info/,$p' "$main_log" | cut -c1-600
    fi
    echo "tests failed: other tiers exit $main_rc, lint/deploy/apply/simulator exit $side_rc" >&2
    exit 1
fi
[[ $clusters == 1 ]] || exit 0
say "tests: the cluster tier"
for svc in "${started[@]}"; do # free the CPUs the single-node servers hold
    bash "scripts/${svc}.sh" stop >/dev/null 2>&1 || true
done
started=()
start_clusters
.venv/bin/pytest --durations=10 tests/cluster
