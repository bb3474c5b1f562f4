#!/usr/bin/env bash
# Install a Debian package for a local server script, and stop the system-wide
# service the package may have started (the scripts run servers of their own).
#
#   scripts/apt-package.sh PACKAGE    (as root, or with sudo)
set -euo pipefail

package="${1:?usage: $0 PACKAGE}"
command -v apt-get >/dev/null || {
    echo "$package is not installed and apt-get is not available" >&2
    exit 1
}
sudo=()
if [[ "$(id -u)" != 0 ]]; then
    command -v sudo >/dev/null || {
        echo "$package is not installed; run as root to install it" >&2
        exit 1
    }
    sudo=(sudo)
fi
echo "installing $package with apt-get" >&2
"${sudo[@]}" apt-get update -qq >&2
DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -qq "$package" >&2
if command -v service >/dev/null; then
    "${sudo[@]}" service "$package" stop >/dev/null 2>&1 || true
fi
