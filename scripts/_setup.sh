# Sourced by scripts/test.sh and scripts/demo.sh: makes .venv and installs what the project needs,
# from nothing but Python 3.11+ and pip. Safe to run again: it only adds what is missing.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

PYTHON="${PYTHON:-python3}"
if ! "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
    echo "asgimesh needs Python 3.11 or newer as '$PYTHON' (set PYTHON=...)" >&2
    exit 1
fi
if [ ! -x .venv/bin/python ]; then
    "$PYTHON" -m venv .venv
fi
stamp=.venv/.asgimesh-installed
shopt -s nullglob
plugins=(integrations/*/pyproject.toml)
inputs=$(cat pyproject.toml "${plugins[@]}" | sha256sum | cut -c1-16)
if [ "$(cat "$stamp" 2>/dev/null)" != "$inputs" ]; then
    .venv/bin/python -m pip install --quiet --disable-pip-version-check --upgrade pip
    extras=()
    for plugin in "${plugins[@]}"; do
        extras+=(-e "$(dirname "$plugin")")
    done
    .venv/bin/python -m pip install --quiet --disable-pip-version-check -e '.[dev]' "${extras[@]}"
    echo "$inputs" > "$stamp"
fi

# System packages the tests start for real (etcd, and chromium for the dashboard's browser
# test) and the benchmarks drive with (wrk).
need_apt() { ! command -v "$1" >/dev/null 2>&1; }
missing=()
need_apt etcd && missing+=(etcd-server)
need_apt wrk && missing+=(wrk)
[ -x /usr/bin/chromium ] || missing+=(chromium)
if [ ${#missing[@]} -gt 0 ]; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
        echo "installing ${missing[*]} with apt-get" >&2
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -qq >/dev/null
        apt-get install -y -qq "${missing[@]}" >/dev/null
    else
        echo "note: ${missing[*]} missing and apt-get unavailable; tests needing them are skipped" >&2
    fi
fi
