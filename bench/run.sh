#!/usr/bin/env bash
# Runs every benchmark (or those named: bash bench/run.sh inbound outbound) side by side and
# writes the figures, with this command, into BENCHMARKS.md.
set -euo pipefail
source "$(dirname "$0")/../scripts/_setup.sh"
# The charts (bench/chain.png) need matplotlib: the "bench" extra, installed here once.
if ! .venv/bin/python -c "import matplotlib" 2>/dev/null; then
    echo "== installing the bench extra (matplotlib) for the charts" >&2
    .venv/bin/python -m pip install --quiet --disable-pip-version-check -e ".[bench]"
fi
names=("$@")
if [ ${#names[@]} -eq 0 ]; then
    for f in bench/bench_*.py; do n=${f#bench/bench_}; names+=("${n%.py}"); done
fi
for name in "${names[@]}"; do
    echo "== bench $name"
    .venv/bin/python "bench/bench_$name.py"
done
