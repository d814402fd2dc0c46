# Sourced by scripts/test.sh: everything the tests need. Python packages come from
# _setup_python.sh (the "dev" extra); the system tools only the tests and benchmarks use
# (etcd, chromium, wrk, nginx, haproxy) are installed here with apt-get, never by the demo.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
ASGIMESH_EXTRA=dev source scripts/_setup_python.sh

# System packages the tests start for real (etcd, prometheus, and chromium for the dashboard's
# browser test) and the benchmarks drive with (wrk) or measure the mesh against (nginx and
# haproxy as sidecar proxies in bench/bench_chain.py).
need_apt() { ! command -v "$1" >/dev/null 2>&1; }
missing=()
need_apt etcd && missing+=(etcd-server)
need_apt wrk && missing+=(wrk)
need_apt prometheus && missing+=(prometheus)
need_apt nginx && missing+=(nginx)
need_apt haproxy && missing+=(haproxy)
[ -x /usr/bin/chromium ] || missing+=(chromium)
if [ ${#missing[@]} -gt 0 ]; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
        echo "== installing ${missing[*]} with apt-get (for the tests)" >&2
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -qq >/dev/null
        apt-get install -y -qq "${missing[@]}" >/dev/null
    else
        echo "note: ${missing[*]} missing and apt-get unavailable; tests needing them are skipped" >&2
    fi
fi
