#!/usr/bin/env bash
# Runs every benchmark (or those named: bash bench/run.sh inbound outbound) side by side and
# writes the figures, with this command, into BENCHMARKS.md.
set -euo pipefail
source "$(dirname "$0")/../scripts/_setup.sh"
names=("$@")
if [ ${#names[@]} -eq 0 ]; then
    for f in bench/bench_*.py; do n=${f#bench/bench_}; names+=("${n%.py}"); done
fi
for name in "${names[@]}"; do
    echo "== bench $name"
    .venv/bin/python "bench/bench_$name.py"
done
