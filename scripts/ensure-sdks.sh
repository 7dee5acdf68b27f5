#!/usr/bin/env bash
# Installs the official analytics SDKs that tests/sdk.rs drives against firehose-edge, at
# pinned versions, into ./.venv (created by scripts/ensure-moto.sh, which runs first).
# Idempotent: quick and offline when they are already there. Prints nothing on stdout.
set -euo pipefail

SEGMENT_PYTHON="2.4.0"   # segment-analytics-python
RUDDER_PYTHON="2.1.9"    # rudder-sdk-python

log() { printf 'ensure-sdks: %s\n' "$*" >&2; }
py=".venv/bin/python"
[ -x "$py" ] || { log "error: $py missing (scripts/ensure-moto.sh creates it)"; exit 1; }

if "$py" - "$SEGMENT_PYTHON" "$RUDDER_PYTHON" >/dev/null 2>&1 <<'PY'
import sys
from importlib.metadata import version
import segment.analytics, rudderstack.analytics  # noqa: F401
sys.exit(0 if (version("segment-analytics-python"), version("rudder-sdk-python")) == tuple(sys.argv[1:3]) else 1)
PY
then
    log "python SDKs already installed"
else
    log "installing segment-analytics-python $SEGMENT_PYTHON and rudder-sdk-python $RUDDER_PYTHON"
    "$py" -m pip install --quiet --disable-pip-version-check \
        "segment-analytics-python==$SEGMENT_PYTHON" "rudder-sdk-python==$RUDDER_PYTHON" >&2
fi
