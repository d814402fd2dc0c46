#!/usr/bin/env bash
# Sets everything up from a fresh machine, then runs the example mesh on this machine.
set -euo pipefail
source "$(dirname "$0")/_setup.sh"
exec .venv/bin/asgimesh demo "$@"
