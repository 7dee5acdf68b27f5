#!/usr/bin/env bash
# Installs the official analytics SDKs that tests/sdk.rs drives against firehose-edge (and
# DuckDB for tests/lake.rs, kubernetes-validate for tests/deploy.rs), at pinned versions, into
# ./.venv (created by scripts/ensure-moto.sh, which runs first).
# Idempotent: quick and offline when they are already there. Prints nothing on stdout.
set -euo pipefail

SEGMENT_PYTHON="2.4.0"   # segment-analytics-python
RUDDER_PYTHON="2.1.9"    # rudder-sdk-python
DUCKDB="1.4.2"           # duckdb, for tests/lake.rs (not an SDK, but the same venv)
SCHEMATHESIS="4.32.5"    # schemathesis, for tests/openapi.rs
KUBERNETES_VALIDATE="1.37.0"  # kubernetes-validate, for tests/deploy.rs (bundles its schemas: offline)

log() { printf 'ensure-sdks: %s\n' "$*" >&2; }
py=".venv/bin/python"
[ -x "$py" ] || { log "error: $py missing (scripts/ensure-moto.sh creates it)"; exit 1; }

if "$py" - "$SEGMENT_PYTHON" "$RUDDER_PYTHON" "$DUCKDB" "$SCHEMATHESIS" "$KUBERNETES_VALIDATE" >/dev/null 2>&1 <<'PY'
import sys
from importlib.metadata import version
import segment.analytics, rudderstack.analytics, duckdb, schemathesis, kubernetes_validate  # noqa: F401
names = ("segment-analytics-python", "rudder-sdk-python", "duckdb", "schemathesis", "kubernetes-validate")
sys.exit(0 if tuple(version(n) for n in names) == tuple(sys.argv[1:6]) else 1)
PY
then
    log "python SDKs already installed"
else
    log "installing segment-analytics-python $SEGMENT_PYTHON, rudder-sdk-python $RUDDER_PYTHON, duckdb $DUCKDB, schemathesis $SCHEMATHESIS, kubernetes-validate $KUBERNETES_VALIDATE"
    "$py" -m pip install --quiet --disable-pip-version-check \
        "segment-analytics-python==$SEGMENT_PYTHON" "rudder-sdk-python==$RUDDER_PYTHON" \
        "duckdb==$DUCKDB" "schemathesis==$SCHEMATHESIS" \
        "kubernetes-validate==$KUBERNETES_VALIDATE" >&2
fi
