#!/usr/bin/env bash
# Installs the official analytics SDKs that tests/sdk.rs, tests/posthog.rs and tests/snowplow.rs
# drive against firehose-edge (and
# DuckDB for tests/lake.rs, kubernetes-validate for tests/deploy.rs), at pinned versions, into
# ./.venv (created by scripts/ensure-moto.sh, which runs first).
# Idempotent: quick and offline when they are already there. Prints nothing on stdout.
set -euo pipefail

SEGMENT_PYTHON="2.4.0"   # segment-analytics-python
RUDDER_PYTHON="2.1.9"    # rudder-sdk-python
ANALYTICS_PYTHON="1.4.post1"  # analytics-python: segment-analytics-python's old name (see below)
POSTHOG_PYTHON="7.91.1"  # posthog (posthog-python), for tests/posthog.rs
SNOWPLOW_PYTHON="1.1.0"  # snowplow-tracker, for tests/snowplow.rs
DUCKDB="1.4.2"           # duckdb, for tests/lake.rs (not an SDK, but the same venv)
SCHEMATHESIS="4.32.5"    # schemathesis, for tests/openapi.rs
KUBERNETES_VALIDATE="1.37.0"  # kubernetes-validate, for tests/deploy.rs (bundles its schemas: offline)
# analytics-python's own pins, which cannot share the venv's site-packages: it requires
# backoff==1.10.0 where rudder-sdk-python requires backoff>=2.2.1 (pip refuses the pair), and
# its wheel also carries a copy of segment-analytics-python 2.2.2's `segment/analytics/`,
# which would overwrite the 2.4.0 files in place. So it goes, with exactly these, into a
# directory of its own, appended to the venv's path by a .pth file (`import analytics`
# works; `segment`, `backoff` still resolve to site-packages first), and
# tests/py/sdk_client.py puts that directory first when it drives analytics-python.
ANALYTICS_PYTHON_DEPS=("backoff==1.10.0" "monotonic==1.6")
ANALYTICS_PYTHON_DIR=".venv/analytics-python"

log() { printf 'ensure-sdks: %s\n' "$*" >&2; }
py=".venv/bin/python"
[ -x "$py" ] || { log "error: $py missing (scripts/ensure-moto.sh creates it)"; exit 1; }

if "$py" - "$SEGMENT_PYTHON" "$RUDDER_PYTHON" "$ANALYTICS_PYTHON" "$DUCKDB" "$SCHEMATHESIS" "$KUBERNETES_VALIDATE" "$POSTHOG_PYTHON" "$SNOWPLOW_PYTHON" >/dev/null 2>&1 <<'PY'
import sys
from importlib.metadata import version
import segment.analytics, rudderstack.analytics, analytics, duckdb, schemathesis, kubernetes_validate  # noqa: F401
import posthog, snowplow_tracker  # noqa: F401
from segment.analytics.version import VERSION
names = ("segment-analytics-python", "rudder-sdk-python", "analytics-python", "duckdb", "schemathesis", "kubernetes-validate", "posthog", "snowplow-tracker")
ok = tuple(version(n) for n in names) == tuple(sys.argv[1:9])
# The files themselves, not only the metadata: segment-analytics-python's are not the
# copy analytics-python carries.
sys.exit(0 if ok and VERSION == sys.argv[1] else 1)
PY
then
    log "python SDKs already installed"
else
    log "installing segment-analytics-python $SEGMENT_PYTHON, rudder-sdk-python $RUDDER_PYTHON, posthog $POSTHOG_PYTHON, snowplow-tracker $SNOWPLOW_PYTHON, duckdb $DUCKDB, schemathesis $SCHEMATHESIS, kubernetes-validate $KUBERNETES_VALIDATE"
    "$py" -m pip install --quiet --disable-pip-version-check \
        "segment-analytics-python==$SEGMENT_PYTHON" "rudder-sdk-python==$RUDDER_PYTHON" \
        "posthog==$POSTHOG_PYTHON" "snowplow-tracker==$SNOWPLOW_PYTHON" \
        "duckdb==$DUCKDB" "schemathesis==$SCHEMATHESIS" \
        "kubernetes-validate==$KUBERNETES_VALIDATE" >&2
    log "installing analytics-python $ANALYTICS_PYTHON (${ANALYTICS_PYTHON_DEPS[*]}) into $ANALYTICS_PYTHON_DIR"
    rm -rf "$ANALYTICS_PYTHON_DIR"
    # Its other requirements (requests, six, python-dateutil) are the venv's.
    "$py" -m pip install --quiet --disable-pip-version-check --no-deps \
        --target "$ANALYTICS_PYTHON_DIR" \
        "analytics-python==$ANALYTICS_PYTHON" "${ANALYTICS_PYTHON_DEPS[@]}" >&2
    "$py" - "$ANALYTICS_PYTHON_DIR" <<'PY'
import os, sys, sysconfig
site = sysconfig.get_paths()["purelib"]
with open(os.path.join(site, "analytics-python.pth"), "w") as f:
    f.write(os.path.relpath(os.path.abspath(sys.argv[1]), site) + "\n")
PY
fi
