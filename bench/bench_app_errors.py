"""App errors: requests per second of an endpoint that always raises, bare vs behind the mesh.

With ``rich`` installed (as FastAPI's CLI, typer and many dev setups install it), structlog's
default renderer would draw each exception with the locals of every frame; the mesh logs one
JSON line instead, so an app error must cost it microseconds. Three variants, one uvicorn worker
each (pinned to its own core, wrk to the other), output to /dev/null, rounds alternating:

* ``bare``: the Starlette app alone (uvicorn logs each exception's traceback);
* ``mesh``: behind ``MeshMiddleware``, structlog left unconfigured by the host;
* ``mesh, host console logging``: the host configured structlog's console renderer (rich).

Checked before any figure: every answer is a 500 from the app, the mesh's variants count them
in ``mesh_inbound_requests_total``; each wrk run must see only non-2xx answers.

    python bench/bench_app_errors.py [--rounds 7] [--duration 3]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _report import median, write_section
from bench_inbound import Server, wrk

VARIANTS = {
    "bare": ("bench._errors_app:bare", {}),
    "mesh": ("bench._errors_app:app", {}),
    "mesh, host console logging": ("bench._errors_app:app", {"HOST_LOGGING": "console"}),
}


def check(server: Server) -> None:
    response = httpx.get(server.url + "fail", headers={"authorization": "Bearer x"})
    assert response.status_code == 500, (server.name, response.status_code)
    meshed = server.name != "bare"
    assert ("x-request-id" in response.headers) is meshed, (server.name, response.headers)
    if meshed:
        metrics = httpx.get(server.url + "_mesh/metrics").text
        assert 'method="GET",service="bench",status="500"' in metrics, metrics


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--duration", type=int, default=3, help="seconds per wrk run")
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    try:
        import rich  # noqa: F401
    except ImportError:
        raise SystemExit("this benchmark needs rich installed (pip install rich)") from None

    servers = [Server(name, app, env=env, quiet=True) for name, (app, env) in VARIANTS.items()]
    rps: dict[str, list[float]] = {s.name: [] for s in servers}
    try:
        for server in servers:
            server.start()
            check(server)
            wrk(server.url + "fail", 8, 1, all_non_2xx=True)  # warm up
        for round_ in range(1, args.rounds + 1):
            for server in servers if round_ % 2 else servers[::-1]:
                r, _, _ = wrk(server.url + "fail", 8, args.duration, all_non_2xx=True)
                rps[server.name].append(r)
                print(f"round {round_} {server.name:28} {r:8.0f} req/s", flush=True)
        for server in servers:
            check(server)
    finally:
        for server in servers:
            server.stop()

    rows = []
    for name in VARIANTS:
        ratios = [m / b for m, b in zip(rps[name], rps["bare"], strict=True)]
        runs = ", ".join(f"{v:.0f}" for v in rps[name])
        rows.append(f"| {name} | {median(rps[name]):,.0f} | {median(ratios):.1%} | {runs} |")
    ratio = median([m / b for m, b in zip(rps["mesh"], rps["bare"], strict=True)])
    body = f"""## App errors: an endpoint that always raises, bare vs mesh (rich installed)

**Result: behind the mesh the failing endpoint keeps {ratio:.1%} of the bare app's requests per
second (target ≥ 90%).** Each failure costs the mesh one JSON `app_error` line (type, bounded
message, method, route, status, request and trace ids): no traceback and no locals; uvicorn
prints the re-raised exception's plain traceback once, as it does for the bare app.

| variant | req/s (median, wrk -c8) | vs bare (median of per-round ratios) | req/s per round |
| --- | --- | --- | --- |
{chr(10).join(rows)}

- App: `bench/_errors_app.py`, a Starlette route that raises `RuntimeError` holding the request's
  `Authorization` header in a local; one uvicorn worker per variant, output to /dev/null.
- {args.rounds} rounds of `wrk -t1 -c8 -d{args.duration}s`, the order of the variants alternating
  per round; every answer checked to be a 500 (wrk: all non-2xx, no socket errors).
- Before this change the mesh logged each error with `exc_info` through structlog's default
  renderer, which with rich installed drew the traceback with every frame's locals on stdout.
"""
    print(body)
    if not args.no_write:
        write_section("app-errors", body, "bash bench/run.sh app_errors")


if __name__ == "__main__":
    main()
