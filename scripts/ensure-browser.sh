#!/usr/bin/env bash
# Installs what tests/browser.rs needs: Debian's chromium and chromium-driver (apt-get, as
# root, which CI is), selenium (pinned) into ./.venv. analytics-next itself comes with
# tests/js (scripts/ensure-node-sdks.sh). Idempotent and quick when present.
set -euo pipefail
log() { printf 'ensure-browser: %s\n' "$*" >&2; }
SELENIUM="4.38.0"

if [ -x /usr/bin/chromium ] && [ -x /usr/bin/chromedriver ]; then
    log "chromium and chromedriver already installed"
else
    command -v apt-get >/dev/null 2>&1 || { log "error: no apt-get to install chromium and chromium-driver"; exit 1; }
    [ "$(id -u)" = 0 ] || { log "error: installing chromium needs root (apt-get install chromium chromium-driver)"; exit 1; }
    log "installing chromium and chromium-driver with apt-get"
    apt-get update -qq >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >&2
fi

py=".venv/bin/python"
if "$py" - "$SELENIUM" >/dev/null 2>&1 <<'PY'
import sys
from importlib.metadata import version
sys.exit(0 if version("selenium") == sys.argv[1] else 1)
PY
then
    log "selenium $SELENIUM already installed"
else
    log "installing selenium $SELENIUM"
    "$py" -m pip install --quiet --disable-pip-version-check "selenium==$SELENIUM" >&2
fi
