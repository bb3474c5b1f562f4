#!/usr/bin/env bash
# Build the worker's CPU image without a Docker engine or an image registry:
# a Debian base made by debootstrap, then deploy/docker/Dockerfile.cpu built on
# it by podman with chroot isolation (no daemon, no OCI runtime needed).
#
#   scripts/container.sh base     the base image (localhost/fleet-base:bookworm),
#                                 from the cache when its recipe is unchanged
#   scripts/container.sh build    the base, then the worker image; prints the
#                                 image name as the last line of stdout
#   scripts/container.sh size     the worker image's size in bytes
#   scripts/container.sh clean    remove both images and the cached base
#
# Installs debootstrap, podman and buildah from the distribution's packages when
# they are absent (as root, on Debian or Ubuntu).
#
# The base is the distribution's minimal variant with python3, its venv module,
# CA certificates and tini. Its root file system is kept as a tar file in
# FLEET_CONTAINER_CACHE (default ~/.cache/fleet/container), named after a hash
# of its recipe, so a second build on the same machine skips debootstrap.
# Environment:
#   FLEET_DEBIAN_SUITE     the release (default bookworm)
#   FLEET_DEBIAN_MIRROR    the package mirror (default http://deb.debian.org/debian)
#   FLEET_IMAGE            the worker image's name (default localhost/fleet-worker:cpu)
#   FLEET_IMAGE_EXTRAS     the package extras to install (default: the Dockerfile's)
#   PIP_CERT               a CA bundle pip must trust (a proxy's; default: this
#                          host's bundle, where there is one); mounted into the
#                          build read-only, never kept in the image
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
SUITE="${FLEET_DEBIAN_SUITE:-bookworm}"
MIRROR="${FLEET_DEBIAN_MIRROR:-http://deb.debian.org/debian}"
PACKAGES="python3,python3-venv,ca-certificates,tini"
CACHE="${FLEET_CONTAINER_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/fleet/container}"
BASE_IMAGE="localhost/fleet-base:${SUITE}"
IMAGE="${FLEET_IMAGE:-localhost/fleet-worker:cpu}"

say() { printf '==> %s\n' "$*" >&2; }

need_tools() {
    local missing=() tool
    for tool in debootstrap podman buildah; do
        command -v "$tool" >/dev/null || missing+=("$tool")
    done
    ((${#missing[@]} == 0)) && return
    if [[ $(id -u) != 0 ]] || ! command -v apt-get >/dev/null; then
        echo "missing: ${missing[*]}; install them (apt-get install ${missing[*]})" >&2
        exit 1
    fi
    say "installing ${missing[*]}"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${missing[@]}" >/dev/null ||
        { apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${missing[@]}" >/dev/null; }
}

recipe() { printf '%s\n' "minbase" "$SUITE" "$MIRROR" "$PACKAGES" | sha256sum | cut -c1-16; }

base() {
    need_tools
    local key tarball
    key=$(recipe)
    if [[ $(podman image inspect --format '{{index .Labels "fleet.base.recipe"}}' "$BASE_IMAGE" 2>/dev/null) == "$key" ]]; then
        say "base image $BASE_IMAGE is current (recipe $key)"
        return
    fi
    tarball="$CACHE/base-${SUITE}-${key}.tar"
    if [[ ! -s $tarball ]]; then
        mkdir -p "$CACHE"
        local dir
        dir=$(mktemp -d "$CACHE/rootfs.XXXXXX")
        # shellcheck disable=SC2064  # the directory is fixed now
        trap "rm -rf '$dir'" EXIT
        say "debootstrap --variant=minbase $SUITE (about a minute)"
        debootstrap --variant=minbase --include="$PACKAGES" "$SUITE" "$dir" "$MIRROR" >"$CACHE/debootstrap.log" 2>&1 ||
            { tail -n 20 "$CACHE/debootstrap.log" >&2; exit 1; }
        # What a container never needs: downloaded packages, package lists, docs.
        rm -rf "$dir"/var/cache/apt/archives/*.deb "$dir"/var/lib/apt/lists/* \
            "$dir"/usr/share/doc/* "$dir"/usr/share/man/* "$dir"/usr/share/info/*
        tar -C "$dir" --numeric-owner -cf "$tarball.part" .
        mv "$tarball.part" "$tarball"
        rm -rf "$dir"
        trap - EXIT
    else
        say "base file system from the cache: $tarball"
    fi
    podman import --change "LABEL fleet.base.recipe=$key" --change 'CMD ["/bin/bash"]' \
        "$tarball" "$BASE_IMAGE" >/dev/null
    say "base image $BASE_IMAGE imported"
}

build() {
    base
    local args=(--isolation chroot --format docker -f deploy/docker/Dockerfile.cpu
        --build-arg "BASE=$BASE_IMAGE" -t "$IMAGE")
    if [[ -n ${FLEET_IMAGE_EXTRAS:-} ]]; then
        args+=(--build-arg "EXTRAS=$FLEET_IMAGE_EXTRAS")
    fi
    local ca="${PIP_CERT:-${SSL_CERT_FILE:-/etc/ssl/certs/ca-certificates.crt}}"
    if [[ -f $ca ]]; then
        args+=(--build-arg PIP_CA_BUNDLE=/etc/pip-ca.crt -v "$ca:/etc/pip-ca.crt:ro")
    fi
    say "podman build $IMAGE"
    (cd "$ROOT" && podman build "${args[@]}" . >&2)
    podman image prune -f --filter label=fleet.stage=build >/dev/null
    echo "$IMAGE"
}

case "${1:-}" in
base) base ;;
build) build ;;
size) podman image inspect --format '{{.Size}}' "$IMAGE" ;;
clean)
    podman rmi -f "$IMAGE" "$BASE_IMAGE" >/dev/null 2>&1 || true
    rm -rf "$CACHE"
    ;;
*)
    echo "usage: $0 base|build|size|clean" >&2
    exit 2
    ;;
esac
