#!/bin/sh
# Installs the Debian packages the tests need, only when something is missing.
set -eu
need=""
command -v ip >/dev/null 2>&1 || need="$need iproute2"
if [ -n "$need" ]; then
    if [ "$(id -u)" != 0 ]; then
        echo "missing Debian packages:$need (run as root or install them)" >&2
        exit 1
    fi
    echo "installing Debian packages:$need"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $need
fi
