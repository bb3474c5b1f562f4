#!/usr/bin/env bash
# Where a local test broker keeps its data (scripts/kafka.sh, scripts/rabbitmq.sh).
#
#   scripts/data-dir.sh DIR    print the directory to use for DIR
#
# On a tmpfs (/dev/shm) when there is one with at least 2 GiB free: the
# brokers fsync as they work (Kafka its KRaft metadata log and each new
# partition's files, RabbitMQ its quorum queues' write-ahead log), and on a
# busy or throttled disk one fsync can stall for seconds; a topic created then
# takes as long to get a leader. On a tmpfs an fsync costs nothing, and the
# data still outlives a broker restart.
#
# DIR becomes a symbolic link to a new directory on the tmpfs, so the data
# belongs to this checkout: a new clone (or a removed .cache) starts with none,
# as on disk. A link whose target is gone (a reboot) is made again. Directories
# left on the tmpfs by checkouts that no longer link to them are removed.
# FLEET_BROKER_DATA=disk keeps new data in DIR itself; a DIR that already is a
# directory stays one.
set -euo pipefail

[[ $# -eq 1 ]] || {
    echo "usage: scripts/data-dir.sh DIR" >&2
    exit 2
}
dir=$1
shm=/dev/shm
min_free_kib=$((2 * 1024 * 1024))

on_tmpfs() {
    [[ ${FLEET_BROKER_DATA:-tmpfs} != disk && -d $shm && -w $shm ]] &&
        [[ $(stat -f -c %T "$shm" 2>/dev/null) == tmpfs ]] &&
        (($(df -Pk "$shm" | awk 'NR == 2 { print $4 }') >= min_free_kib))
}

# Remove tmpfs data whose checkout no longer links to it.
sweep() {
    local data owner
    for data in "$shm"/fleet-data.*; do
        [[ -d $data && -f $data/.owner ]] || continue
        owner=$(<"$data/.owner")
        if [[ ! -L $owner || $(readlink "$owner") != "$data" ]]; then
            rm -rf "$data"
        fi
    done
}

if [[ -L $dir && -d $dir ]]; then # linked before, still there
    readlink "$dir"
    exit 0
fi
if [[ -d $dir && ! -L $dir ]] || ! on_tmpfs; then
    [[ -L $dir ]] && rm -f "$dir"
    mkdir -p "$dir"
    printf '%s\n' "$dir"
    exit 0
fi
rm -f "$dir" # a link to data gone with a reboot
mkdir -p "$(dirname "$dir")"
absolute="$(cd "$(dirname "$dir")" && pwd)/$(basename "$dir")"
sweep
data=$(mktemp -d "$shm/fleet-data.XXXXXXXX")
printf '%s\n' "$absolute" >"$data/.owner"
ln -s "$data" "$absolute"
printf '%s\n' "$data"
