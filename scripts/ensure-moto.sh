#!/usr/bin/env bash
# Make sure ./.venv (relative to the current directory, i.e. the repo root)
# holds a Python virtualenv with moto's standalone server installed at the
# pinned version. The end-to-end tests (tests/common/moto.rs) look for
# ./.venv/bin/python unless MOTO_PYTHON points elsewhere.
#
# Usage (from the repo root):
#     scripts/ensure-moto.sh
#
# Idempotent: when the venv already has the pinned moto importable it does no
# network access and returns in well under a second. The only output on
# stdout is the absolute path of the venv's python (progress goes to stderr),
# so `MOTO_PYTHON="$(scripts/ensure-moto.sh)"` works.
#
# Needs only python3 (with the venv and ensurepip modules) and access to PyPI.
set -euo pipefail

# Pinned so every machine (and CI) tests against the same moto behaviour;
# moto's Firehose emulation changes between releases. Bump deliberately.
MOTO_VERSION="5.2.5"
VENV_DIR=".venv"

log() { printf 'ensure-moto: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

command -v python3 >/dev/null 2>&1 || die "python3 not found on PATH; install Python 3.9 or newer."

venv_python="$VENV_DIR/bin/python"

# True when the venv's interpreter can start moto's server at exactly the
# pinned version. Checking the version (not just the import) means bumping
# MOTO_VERSION above upgrades existing venvs on the next run.
moto_ready() {
    "$venv_python" - "$MOTO_VERSION" >/dev/null 2>&1 <<'PY'
import sys
from importlib.metadata import version
import moto.server  # noqa: F401  (fails if the [server] extra's flask etc. are missing)
sys.exit(0 if version("moto") == sys.argv[1] else 1)
PY
}

if [ -x "$venv_python" ] && moto_ready; then
    log "moto $MOTO_VERSION already installed in $VENV_DIR"
else
    # Not all distributions ship venv/ensurepip with python3 (Debian and
    # Ubuntu split them into python3-venv); fail with a clear message instead
    # of venv's half-created directory and a confusing traceback.
    if ! python3 -c 'import venv, ensurepip' >/dev/null 2>&1; then
        die "python3 lacks the venv/ensurepip modules; install them (e.g. 'apt-get install python3-venv') and re-run."
    fi

    if [ ! -x "$venv_python" ] || ! "$venv_python" -c 'pass' >/dev/null 2>&1; then
        # Missing or broken (e.g. the system python it pointed at was
        # removed): --clear rebuilds it from scratch.
        log "creating virtualenv in $VENV_DIR"
        python3 -m venv --clear "$VENV_DIR" || die "'python3 -m venv $VENV_DIR' failed"
    fi

    # A venv created with --without-pip, or by a python whose ensurepip
    # failed, has no pip; bootstrap it from the wheel bundled with Python.
    if ! "$venv_python" -m pip --version >/dev/null 2>&1; then
        log "bootstrapping pip in $VENV_DIR"
        "$venv_python" -m ensurepip --upgrade >&2 || die "could not bootstrap pip in $VENV_DIR"
    fi

    log "installing moto[server]==$MOTO_VERSION into $VENV_DIR"
    # pip's stdout goes to stderr so this script's stdout stays just the path.
    # PIP_USER=0: a global `user = true` pip config would make pip refuse to
    # install into a venv.
    PIP_USER=0 "$venv_python" -m pip install --disable-pip-version-check --quiet \
        "moto[server]==$MOTO_VERSION" >&2 \
        || die "pip install of moto[server]==$MOTO_VERSION failed (is PyPI reachable?)"

    moto_ready || die "moto $MOTO_VERSION installed but 'import moto.server' still fails in $VENV_DIR"
    log "moto $MOTO_VERSION installed"
fi

# Absolute path, so the printed value is usable as MOTO_PYTHON from anywhere.
# Not resolved through symlinks: the venv's bin/python must be invoked via
# its own path for the venv's site-packages to be used.
printf '%s\n' "$(cd "$VENV_DIR/bin" && pwd)/python"
