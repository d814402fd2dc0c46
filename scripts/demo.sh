#!/usr/bin/env bash
# Sets up what the demo needs (a venv with asgimesh, its plugins, fastapi, flask, django and
# gunicorn; no system packages), then runs the example shop on this machine.
set -euo pipefail
ASGIMESH_EXTRA=demo source "$(dirname "$0")/_setup_python.sh"
exec .venv/bin/asgimesh demo "$@"
