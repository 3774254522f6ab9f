#!/usr/bin/env bash
# Validates everything under deploy/ (Envoy, Kubernetes, Istio, Docker files, Prometheus
# rules and the Grafana dashboard).
#
#   bash deploy/check.sh            # from anywhere; paths resolve from the repo root
#
# Creates a Python virtual environment at ${VERIFYIAM_VENV:-target/deploy-venv}
# (relative to the repository root unless absolute) the first time, installs the
# pinned packages of deploy/requirements.txt into it, and runs the tests in
# deploy/tests. Later runs reuse the environment and reinstall only when
# requirements.txt changed, so they need no network at all. Needs Python >= 3.11
# (set PYTHON to choose the interpreter). Prometheus's promtool checks and unit-tests the
# alerting rules: when it is missing and this runs as root with apt-get, Debian's
# `prometheus` package is installed for it; otherwise the rule tests are skipped, loudly (and
# fail under CI=true).
set -euo pipefail

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo_root"

python="${PYTHON:-python3}"
venv="${VERIFYIAM_VENV:-target/deploy-venv}"
requirements="deploy/requirements.txt"
stamp="$venv/.requirements.sha256"

if ! command -v "$python" >/dev/null 2>&1; then
    echo "deploy/check.sh: $python not found; install Python 3.11 or newer, or set PYTHON" >&2
    exit 1
fi
if ! "$python" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else 1)'; then
    echo "deploy/check.sh: $python is $("$python" -V 2>&1); Python 3.11 or newer is needed (tomllib)" >&2
    exit 1
fi

# A venv whose interpreter no longer runs (moved, Python upgraded) is rebuilt.
if [[ -d "$venv" ]] && ! "$venv/bin/python" -c '' >/dev/null 2>&1; then
    echo "deploy/check.sh: $venv is broken; recreating it" >&2
    rm -rf "$venv"
fi
if [[ ! -x "$venv/bin/python" ]]; then
    mkdir -p "$(dirname "$venv")"
    "$python" -m venv "$venv"
    rm -f "$stamp"
fi

want="$(sha256sum "$requirements" | cut -d' ' -f1)"
have="$(cat "$stamp" 2>/dev/null || true)"
if [[ "$want" != "$have" ]]; then
    export PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_INPUT=1
    "$venv/bin/python" -m pip install --quiet --requirement "$requirements"
    echo "$want" > "$stamp"
fi

if ! command -v promtool >/dev/null 2>&1 && [[ "$(id -u)" == 0 ]] && command -v apt-get >/dev/null 2>&1; then
    echo "deploy/check.sh: installing promtool (Debian package prometheus)" >&2
    export DEBIAN_FRONTEND=noninteractive
    if ! { apt-get update -qq && apt-get install -y -qq --no-install-recommends prometheus; } >&2; then
        echo "deploy/check.sh: could not install promtool; the Prometheus rule tests will not run" >&2
    fi
fi

# No bytecode or pytest cache left in the work tree.
export PYTHONDONTWRITEBYTECODE=1
exec "$venv/bin/python" -m pytest -q -p no:cacheprovider deploy/tests "$@"
