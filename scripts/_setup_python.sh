# Sourced by scripts/_setup.sh (tests) and scripts/demo.sh: makes .venv and installs asgimesh, its
# plugins and the extra named by ASGIMESH_EXTRA ("dev" for the tests, "demo" for the demo), from
# nothing but Python 3.11+ and pip. Says what it does, since a first install takes a minute or
# two. Safe to run again: it only installs when pyproject files or the extra changed.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

PYTHON="${PYTHON:-python3}"
extra="${ASGIMESH_EXTRA:-dev}"
if ! "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
    echo "asgimesh needs Python 3.11 or newer as '$PYTHON' (set PYTHON=...)" >&2
    exit 1
fi
if [ ! -x .venv/bin/python ]; then
    echo "== making .venv with $("$PYTHON" --version)" >&2
    "$PYTHON" -m venv .venv
fi
stamp=.venv/.asgimesh-installed
shopt -s nullglob
plugins=(integrations/*/pyproject.toml)
digest() { (cat pyproject.toml "${plugins[@]}"; echo "$1") | sha256sum | cut -c1-16; }
inputs=$(digest "$extra")
installed=$(cat "$stamp" 2>/dev/null || true)
# A venv set up for the tests ("dev") has everything the demo needs too.
if [ "$installed" != "$inputs" ] && ! { [ "$extra" = demo ] && [ "$installed" = "$(digest dev)" ]; }; then
    echo "== installing asgimesh[$extra] and the plugins into .venv (a minute or two the first time)" >&2
    .venv/bin/python -m pip install --quiet --disable-pip-version-check --upgrade pip
    editable=()
    for plugin in "${plugins[@]}"; do
        editable+=(-e "$(dirname "$plugin")")
    done
    # One line per package as pip gets to it, so a slow network does not look like a hang.
    .venv/bin/python -m pip install --disable-pip-version-check --progress-bar off \
        -e ".[$extra]" "${editable[@]}" \
        | awk '/^(Collecting|Successfully installed)/ { print "   " substr($0, 1, 100); fflush() }'
    echo "$inputs" > "$stamp"
fi
