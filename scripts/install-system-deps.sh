#!/bin/sh
# Installs the Debian packages the tests need, only when something is missing:
# real peers (Prometheus, blackbox_exporter, Alertmanager + amtool, promtool),
# headless Chromium for the status page, iproute2 for test network namespaces,
# docker-compose to validate docker-compose.yml (no Docker engine runs here),
# curl as a real TLS client of the exporter's --web.config.file, nginx, tinyproxy.
set -eu
need=""
have() { command -v "$1" >/dev/null 2>&1; }
have ip || need="$need iproute2"
have prometheus || need="$need prometheus"
have promtool || need="$need prometheus"
have prometheus-blackbox-exporter || need="$need prometheus-blackbox-exporter"
have prometheus-alertmanager || need="$need prometheus-alertmanager"
have chromium || need="$need chromium"
have docker-compose || need="$need docker-compose"
have curl || need="$need curl"
# npm (with nodejs): the Prometheus Operator's resource schemas for the Kubernetes manifests' test (Makefile node-deps).
have npm || need="$need npm"
# nginx: a real server for the keep-alive idle timeout and TLS session resumption tests.
[ -x /usr/sbin/nginx ] || have nginx || need="$need nginx-light"
# tinyproxy: a real forward proxy (plain and CONNECT) for the http prober's proxy_url tests.
have tinyproxy || need="$need tinyproxy-bin"
if [ -n "$need" ]; then
    if [ "$(id -u)" != 0 ]; then
        echo "missing Debian packages:$need (run as root or install them)" >&2
        exit 1
    fi
    echo "installing Debian packages:$need"
    apt-get update -qq
    # policy-rc.d: packages must not try to start their daemons here.
    made_policy=""
    if [ ! -e /usr/sbin/policy-rc.d ]; then
        printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d
        made_policy=1
    fi
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $need >/dev/null
    [ -z "$made_policy" ] || rm -f /usr/sbin/policy-rc.d
fi
