#!/usr/bin/env bash
# Installs Debian's `prometheus` package (the server and promtool) for tests/prometheus.rs.
# Needs root for apt-get (CI runs as root). Idempotent and quick when present.
set -euo pipefail
log() { printf 'ensure-prometheus: %s\n' "$*" >&2; }
if [ -x /usr/bin/prometheus ] && [ -x /usr/bin/promtool ]; then
    log "prometheus and promtool already installed"
    exit 0
fi
command -v apt-get >/dev/null 2>&1 || { log "error: no apt-get to install the prometheus package"; exit 1; }
[ "$(id -u)" = 0 ] || { log "error: installing prometheus needs root (apt-get install prometheus)"; exit 1; }
log "installing prometheus with apt-get"
apt-get update -qq >&2
# The package's service is not wanted here: tests start their own server on loopback.
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus >&2
