#!/usr/bin/env bash
# Installs the JavaScript analytics SDKs that tests/sdk.rs drives (tests/js/package.json,
# locked by tests/js/package-lock.json) into tests/js/node_modules. Needs node and npm.
# Idempotent: quick and offline when the locked packages are already there.
set -euo pipefail
log() { printf 'ensure-node-sdks: %s\n' "$*" >&2; }
command -v npm >/dev/null 2>&1 || { log "error: npm not found; install Node.js 18 or newer"; exit 1; }
cd tests/js
if [ -f node_modules/.package-lock.json ] && cmp -s package-lock.json node_modules/.package-lock.json 2>/dev/null; then
    log "JavaScript SDKs already installed"
elif [ -d node_modules/@segment/analytics-node ] && npm ls --silent >/dev/null 2>&1; then
    log "JavaScript SDKs already installed"
else
    log "installing the JavaScript SDKs (npm ci)"
    npm ci --no-audit --no-fund --loglevel=error >&2
fi
