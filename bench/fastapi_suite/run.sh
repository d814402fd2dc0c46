#!/usr/bin/env bash
# FastAPI's own test suite, bare and with every app wrapped in asgimesh.MeshMiddleware
# (mesh_wrap.py), each run timed (wall and CPU) and counted; then a probe of what the mesh writes
# when an app raises on a host that has not configured structlog.
#
#   bash run.sh                       # venv, FastAPI source, installs, both runs, probe
#   RUNS=wrapped bash run.sh          # only the wrapped run (after a fix, say)
#   RUNS= bash run.sh                 # only the probe
#   PYTEST_ARGS="tests/test_exception_handlers.py" bash run.sh   # a part of the suite
#
# Everything comes from the package registries: FastAPI's source is its PyPI sdist (which ships
# tests/ and docs_src/), its test dependencies its `tests` dependency group, plus rich, plus
# asgimesh installed editable from $ASGIMESH so that a re-run picks up the work tree as it is.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ASGIMESH=${ASGIMESH:-$(cd "$HERE/../.." && pwd)}   # the asgimesh checkout to test (editable install)
PYTHON=${PYTHON:-python3}                     # Python 3.11+
VENV=${VENV:-$HERE/.venv}
SRC_DIR=${SRC_DIR:-$HERE/src}                 # where FastAPI's sdist is unpacked
RESULTS=${RESULTS:-$HERE/results}
FASTAPI_VERSION=${FASTAPI_VERSION:-}          # default: the newest fastapi that installs here
RUNS=${RUNS-bare wrapped}
PYTEST_ARGS=${PYTEST_ARGS:-tests}
PROBE_TEST=${PROBE_TEST:-tests/test_exception_handlers.py::test_override_server_error_exception_response}

py=$VENV/bin/python
pip() { "$py" -m pip --disable-pip-version-check "$@"; }

# (a) the venv, with a pip that knows --group (25.1+)
if [ ! -x "$py" ]; then
    "$PYTHON" -m venv "$VENV"
fi
"$py" -c 'import sys; sys.exit(sys.version_info < (3, 11))' || { echo "need Python 3.11+" >&2; exit 1; }
pip install --quiet --upgrade 'pip>=25.1'

# (b) FastAPI's source, from its sdist
if [ -z "$FASTAPI_VERSION" ]; then
    FASTAPI_VERSION=$(pip install --dry-run --ignore-installed --quiet --report - fastapi |
        "$py" -c 'import json, sys
print(next(i["metadata"]["version"] for i in json.load(sys.stdin)["install"]
           if i["metadata"]["name"].lower() == "fastapi"))')
fi
SRC=$SRC_DIR/fastapi-$FASTAPI_VERSION
if [ ! -d "$SRC/tests" ]; then
    mkdir -p "$SRC_DIR"
    pip download --quiet --no-binary :all: --no-deps "fastapi==$FASTAPI_VERSION" -d "$SRC_DIR"
    tar -xzf "$SRC_DIR/fastapi-$FASTAPI_VERSION.tar.gz" -C "$SRC_DIR"
    if [ ! -d "$SRC/tests" ]; then
        echo "the fastapi $FASTAPI_VERSION sdist has no tests/: unpack the matching git tag" \
             "of fastapi/fastapi at $SRC instead" >&2
        exit 1
    fi
fi

# (c) FastAPI (editable, with its extras), its `tests` group, rich, and asgimesh (editable)
stamp=$VENV/.harness-installed
inputs=$(printf '%s\n' "$FASTAPI_VERSION" "$ASGIMESH" | cat - "$ASGIMESH/pyproject.toml" | sha256sum)
if [ "$(cat "$stamp" 2>/dev/null)" != "$inputs" ]; then
    pip install --quiet -e "$SRC[all]" --group "$SRC/pyproject.toml:tests" rich -e "$ASGIMESH"
    echo "$inputs" > "$stamp"
fi

mkdir -p "$RESULTS"
pip freeze --exclude-editable > "$RESULTS/freeze.txt"
{
    echo "fastapi $FASTAPI_VERSION (sdist), python $("$py" -c 'import platform; print(platform.python_version())')," \
         "$(nproc) cores"
    if git -C "$ASGIMESH" rev-parse --git-dir >/dev/null 2>&1; then
        dirty=$(git -C "$ASGIMESH" status --porcelain -- asgimesh | wc -l)
        echo "asgimesh $ASGIMESH at $(git -C "$ASGIMESH" rev-parse --short HEAD)" \
             "($dirty files under asgimesh/ changed or added since that commit)"
    else
        echo "asgimesh $ASGIMESH"
    fi
} | tee "$RESULTS/versions.txt"

# (d) the suite, bare and wrapped. Serial (no xdist), unordered plugins off, pytest-sugar off so
# the summary lines are pytest's own; -rfE lists each failure and error for the comparison.
suite() {
    local mode=$1 rc=0 plugin=()
    [ "$mode" = wrapped ] && plugin=(-p mesh_wrap)
    local TIMEFORMAT='%R %U %S'
    echo "== $mode: pytest -q -rfE -p no:cacheprovider -p no:sugar -p no:randomly ${plugin[*]} $PYTEST_ARGS"
    # shellcheck disable=SC2086  # PYTEST_ARGS is a list of words
    { time (cd "$SRC" && env -u MESH_CONFIG MESH_SERVICE=fastapi-suite \
        PYTHONPATH="$SRC/docs_src:$HERE" \
        "$py" -m pytest -q -rfE -p no:cacheprovider -p no:sugar -p no:randomly \
        "${plugin[@]}" $PYTEST_ARGS >"$RESULTS/$mode.log" 2>&1) || rc=$?; } 2>"$RESULTS/$mode.time"
    read -r wall user sys <"$RESULTS/$mode.time" || true
    summary=$(grep -E '^[0-9]+ [a-z]+.* in [0-9.]+s' "$RESULTS/$mode.log" | tail -1 || true)
    printf '%-8s wall %7.1f s   cpu %7.1f s (user %.1f + sys %.1f)   exit %s\n' \
        "$mode" "$wall" "$(awk "BEGIN{print $user + $sys}")" "$user" "$sys" "$rc" | tee "$RESULTS/$mode.summary"
    echo "         ${summary:-no pytest summary line: see $RESULTS/$mode.log}" | tee -a "$RESULTS/$mode.summary"
    grep -E '^(FAILED|ERROR) ' "$RESULTS/$mode.log" | sed -E 's/^(FAILED|ERROR) ([^ ]+).*/\1 \2/' |
        sort -u >"$RESULTS/$mode.failed" || true
}
for mode in $RUNS; do suite "$mode"; done

if [ -f "$RESULTS/bare.failed" ] && [ -f "$RESULTS/wrapped.failed" ]; then
    comm -13 "$RESULTS/bare.failed" "$RESULTS/wrapped.failed" >"$RESULTS/wrapped-only.txt"
    comm -23 "$RESULTS/bare.failed" "$RESULTS/wrapped.failed" >"$RESULTS/bare-only.txt"
    echo "== failing wrapped but not bare: $(wc -l <"$RESULTS/wrapped-only.txt")" \
         "($RESULTS/wrapped-only.txt); bare but not wrapped: $(wc -l <"$RESULTS/bare-only.txt")"
    sed 's/^/   /' "$RESULTS/wrapped-only.txt"
fi

# The probe: one failing endpoint with -s from FastAPI's suite, and a small app of our own whose
# failing request carries an Authorization header (time per failing request, and what is written).
echo "== probe: pytest -s -p mesh_wrap $PROBE_TEST  ($RESULTS/probe-test.log)"
(cd "$SRC" && env -u MESH_CONFIG MESH_SERVICE=fastapi-suite PYTHONPATH="$SRC/docs_src:$HERE" \
    "$py" -m pytest -q -s -p no:cacheprovider -p no:sugar -p mesh_wrap "$PROBE_TEST") \
    >"$RESULTS/probe-test.log" 2>&1 || true
echo "   $(wc -l <"$RESULTS/probe-test.log") lines;" \
     "lines naming 'scope': $(grep -c "scope" "$RESULTS/probe-test.log" || true);" \
     "rich 'locals' panels: $(grep -c "locals ─" "$RESULTS/probe-test.log" || true)"
echo "== probe: python probe_app_error.py  ($RESULTS/probe-app-error.log)"
env -u MESH_CONFIG MESH_SERVICE=fastapi-suite PYTHONPATH="$HERE" "$py" "$HERE/probe_app_error.py" \
    >"$RESULTS/probe-app-error.log" 2>&1 || true
grep -E '^(failing request|--- written|rich locals|.scope. shown|Authorization)' "$RESULTS/probe-app-error.log" |
    sed 's/^/   /'
