#!/usr/bin/env bash
# Sets everything up from a fresh machine, then runs lint, type checks and the whole test suite.
set -euo pipefail
source "$(dirname "$0")/_setup.sh"
echo "== ruff" && .venv/bin/ruff check .
echo "== mypy" && .venv/bin/mypy
echo "== pytest" && exec .venv/bin/python -m pytest "$@"
