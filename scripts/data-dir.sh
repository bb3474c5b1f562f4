#!/usr/bin/env bash
# Where a local test broker keeps its data (scripts/kafka.sh, scripts/rabbitmq.sh).
#
#   scripts/data-dir.sh DIR    print the directory to use in place of DIR
#
# On a tmpfs (/dev/shm) when there is one with at least 2 GiB free: the
# brokers fsync as they work (Kafka its KRaft metadata log and each new
# partition's files, RabbitMQ its quorum queues' write-ahead log), and on a
# busy or throttled disk one fsync can stall for seconds; a topic created then
# takes as long to get a leader. On a tmpfs an fsync costs nothing, and the
# data still outlives a broker restart (not a reboot: the scripts then set a
# new directory up as on a first start). The directory is named after DIR, so
# every checkout and every node gets its own. FLEET_BROKER_DATA=disk keeps the
# data in DIR itself.
set -euo pipefail

[[ $# -eq 1 ]] || {
    echo "usage: scripts/data-dir.sh DIR" >&2
    exit 2
}
dir=$1
shm=/dev/shm
min_free_kib=$((2 * 1024 * 1024))
if [[ ${FLEET_BROKER_DATA:-tmpfs} != disk && -d $shm && -w $shm ]] &&
    [[ $(stat -f -c %T "$shm" 2>/dev/null) == tmpfs ]] &&
    (($(df -Pk "$shm" | awk 'NR == 2 { print $4 }') >= min_free_kib)); then
    mkdir -p "$(dirname "$dir")"
    key=$(printf '%s' "$(cd "$(dirname "$dir")" && pwd)/$(basename "$dir")" | sha256sum | cut -c1-12)
    dir="$shm/fleet-data/$key-$(basename "$dir")"
fi
mkdir -p "$dir"
printf '%s\n' "$dir"
