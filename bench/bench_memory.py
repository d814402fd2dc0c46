"""What the mesh costs in memory: resident set size, with and without it, under the same load.

The chain of ``bench_chain`` (wrk's place taken by a small driver in this process): gateway →
payments, Starlette under one uvicorn worker each, ``direct`` (no mesh) and ``mesh``
(``MeshMiddleware`` on both, ``AsyncMeshTransport`` on the gateway's client; metrics and W3C
tracing on, access log off). Both chains get the very same requests, block by block,
alternating:

1. ``--warm`` requests (10,000) on one path: the RSS of each process then, mesh minus direct, is
   what the mesh adds to a service (imports, runtime, metric families, connection pools);
2. ``--distinct`` more (100,000), every one with a path, ``Host``, ``x-request-id`` and
   ``traceparent`` of its own (the gateway forwards the path, the request id and the trace to
   payments), RSS sampled every ``--step`` (10,000) requests: anything the mesh kept per
   distinct value (a metric label, a cache entry) would show as growth here that the direct
   chain does not have.

Then, in this process (no server, no sockets), ``tracemalloc`` over distinct requests to the
meshed payments app says where any growth would come from, by allocating line.

Every answer is checked: status 200 and payments' body naming the request's own path.

    python bench/bench_memory.py [--warm 10000] [--distinct 100000] [--step 10000]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import sys
import tempfile
import tracemalloc
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _chain import LOAD_CPU, Chain, rss_kib
from _report import ROOT, write_section

CONNECTIONS = 8

ISTIO = "https://istio.io/zh/docs/ops/deployment/performance-and-scalability"
LINKERD = "https://linkerd.io/2021/11/29/linkerd-vs-istio-benchmarks-2021/"
#: Published memory of one proxy, from the sources above (not measured here).
PROXIES = "\n".join(
    [
        "| proxy | memory per instance | source |",
        "| --- | ---: | --- |",
        "| Envoy (Istio sidecar, 2 worker threads, 1,000 req/s of 1 KB) | ~60 MB "
        f"| Istio 1.24's performance page, [{ISTIO}]({ISTIO}) |",
        "| ztunnel (Istio ambient mode, one per node, same load) | ~12 MB | the same page |",
        "| linkerd2-proxy (Linkerd 2.11.1, highest memory of a proxy at 2,000 req/s) | 26.3 MB "
        f"(Envoy in the same test: 156.2 MB) | Linkerd's 2021 benchmark, [{LINKERD}]({LINKERD}) |",
    ]
)


def request_for(i: int, distinct: bool) -> tuple[bytes, bytes]:
    """The request bytes and the path payments must echo for request ``i``."""
    if not distinct:
        return b"GET /checkout/same HTTP/1.1\r\nhost: 127.0.0.1\r\n\r\n", b'"/pay/checkout/same"'
    head = (
        f"GET /checkout/p{i} HTTP/1.1\r\nhost: h{i}.example\r\nx-request-id: bench-{i}\r\n"
        f"traceparent: 00-{i:032x}-{i:016x}-01\r\n\r\n"
    )
    return head.encode(), f'"/pay/checkout/p{i}"'.encode()


async def drive(port: int, first: int, count: int, distinct: bool) -> None:
    """``count`` requests over ``CONNECTIONS`` keep-alive connections, each answer checked."""
    numbers = iter(range(first, first + count))

    async def connection() -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            for i in numbers:
                data, path = request_for(i, distinct)
                writer.write(data)
                head = await reader.readuntil(b"\r\n\r\n")
                if not head.startswith(b"HTTP/1.1 200 "):
                    raise SystemExit(f"request {i}: {head.decode(errors='replace')}")
                length = next(
                    int(line.split(b":", 1)[1])
                    for line in head.lower().split(b"\r\n")
                    if line.startswith(b"content-length:")
                )
                body = await reader.readexactly(length)
                if path not in body:
                    raise SystemExit(f"request {i}: payments answered {body!r}, not {path!r}")
        finally:
            writer.close()

    await asyncio.gather(*(connection() for _ in range(CONNECTIONS)))


#: Run in a fresh interpreter: the RSS each import adds, in order, on top of the bare app's own
#: stack, then what the mesh's runtime adds when its first request is answered.
_IMPORTS = r"""
import asyncio, importlib, json, re, sys
def rss():
    return int(re.search(r"VmRSS:\s+(\d+)", open("/proc/self/status").read()).group(1))
import httpx, uvicorn, starlette.applications, starlette.routing, starlette.responses
plain = httpx.AsyncClient()  # the bare gateway has one too (its TLS context, httpcore)
out, last = [], rss()
out.append(("the bare app's stack (uvicorn, Starlette, an httpx client)", last))
for name in sys.argv[1:]:
    if name == "first request":
        from starlette.applications import Starlette
        from starlette.responses import Response
        from starlette.routing import Route
        async def ok(request): return Response("ok")
        app = asgimesh.MeshMiddleware(Starlette(routes=[Route("/", ok)]))
        httpx.AsyncClient(transport=asgimesh.AsyncMeshTransport())
        scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1",
                 "method": "GET", "scheme": "http", "path": "/", "raw_path": b"/",
                 "query_string": b"", "root_path": "", "headers": [(b"host", b"a")],
                 "client": ("127.0.0.1", 1), "server": ("127.0.0.1", 2)}
        async def receive(): return {"type": "http.request", "body": b""}
        async def send(message): pass
        asyncio.run(app(scope, receive, send))
    else:
        module = importlib.import_module(name)
        if name == "asgimesh":
            asgimesh = module
    now = rss()
    out.append((name, now - last))
    last = now
print(json.dumps(out))
"""

#: What ``import asgimesh`` brings in, heaviest first as measured on this machine; imported one
#: by one (each figure counts only what the ones before it did not already load).
_DEPENDENCIES = (
    "pydantic",
    "pydantic_settings",
    "cryptography.x509",
    "jwt",
    "prometheus_client",
    "structlog",
    "yaml",
)


def import_costs() -> list[tuple[str, int]]:
    """(what, KiB of RSS it added) for the bare stack, each dependency, asgimesh's own
    modules, and the runtime answering its first request, in a fresh interpreter."""
    import json
    import subprocess

    steps = [*_DEPENDENCIES, "asgimesh", "first request"]
    env = {k: v for k, v in os.environ.items() if not k.startswith("MESH_")}
    out = subprocess.run(
        [sys.executable, "-c", _IMPORTS, *steps],
        capture_output=True, text=True, check=True, cwd=ROOT, env=env, timeout=120,
    ).stdout
    return [(name, int(kib)) for name, kib in json.loads(out)]


def sample(chain: Chain) -> dict[str, int]:
    return {role: rss_kib(chain.app(role).pid) for role in ("gateway", "payments")}


def traced_growth(warm: int, count: int) -> tuple[float, float, list[str]]:
    """Bytes per request still allocated after ``count`` distinct requests (after ``warm``
    warm-up ones) by the bare and the meshed payments app, called in-process, and the meshed
    app's top allocating lines by growth."""
    os.environ["MESH_SERVICE"] = "payments"
    sys.path.insert(0, str(ROOT))
    from bench._chain_app import payments

    os.environ.pop("CHAIN_MESH", None)
    bare = payments()
    os.environ["CHAIN_MESH"] = "1"
    meshed = payments()
    statuses: set[int] = set()

    async def receive() -> dict[str, object]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, object]) -> None:
        if message["type"] == "http.response.start":
            statuses.add(message["status"])  # type: ignore[arg-type]

    def scope(i: int) -> dict[str, object]:
        path = f"/pay/p{i}"
        return {
            "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1",
            "method": "GET", "scheme": "http", "path": path, "raw_path": path.encode(),
            "query_string": b"", "root_path": "",
            "headers": [
                (b"host", f"h{i}.example".encode()),
                (b"x-request-id", f"bench-{i}".encode()),
                (b"traceparent", f"00-{i:032x}-{i:016x}-01".encode()),
            ],
            "client": ("127.0.0.1", 50000), "server": ("127.0.0.1", 8000),
        }

    async def run(app: object, first: int, n: int) -> None:
        for i in range(first, first + n):
            await app(scope(i), receive, send)  # type: ignore[operator]

    async def measure(app: object) -> tuple[float, tracemalloc.Snapshot, tracemalloc.Snapshot]:
        await run(app, 0, warm)
        tracemalloc.start()
        before = tracemalloc.take_snapshot()
        start = tracemalloc.get_traced_memory()[0]
        await run(app, warm, count)
        grown = tracemalloc.get_traced_memory()[0] - start
        after = tracemalloc.take_snapshot()
        tracemalloc.stop()
        return grown / count, before, after

    bare_bytes, _, _ = asyncio.run(measure(bare))
    mesh_bytes, before, after = asyncio.run(measure(meshed))
    if statuses != {200}:
        raise SystemExit(f"in-process answers were wrong: {sorted(statuses)}")
    top = []
    for stat in after.compare_to(before, "lineno")[:5]:
        frame = stat.traceback[0]
        parts = Path(frame.filename).parts
        if "site-packages" in parts:  # a library: name it from its package down
            where = "/".join(parts[parts.index("site-packages") + 1 :])
        elif frame.filename.startswith(ROOT.as_posix()):
            where = os.path.relpath(frame.filename, ROOT)
        else:  # the standard library, or generated code (``<string>``)
            where = "/".join(parts[-2:])
        top.append(f"`{where}:{frame.lineno}` {stat.size_diff / 1024:+.1f} KiB")
    return bare_bytes, mesh_bytes, top


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--warm", type=int, default=10_000)
    parser.add_argument("--distinct", type=int, default=100_000)
    parser.add_argument("--step", type=int, default=10_000)
    parser.add_argument("--traced", type=int, default=20_000, help="in-process requests")
    parser.add_argument("--no-write", action="store_true", help="print, leave BENCHMARKS.md")
    args = parser.parse_args()
    if len(os.sched_getaffinity(0)) >= 2:
        os.sched_setaffinity(0, {LOAD_CPU})  # the driver on the load core, servers on the other

    work = Path(tempfile.mkdtemp(prefix="asgimesh-bench-memory-"))
    chains = [Chain(f"asgi {shape}", "asgi", shape, work) for shape in ("direct", "mesh")]
    start: dict[str, dict[str, int]] = {}
    warmed: dict[str, dict[str, int]] = {}
    series: dict[str, list[dict[str, int]]] = {c.shape: [] for c in chains}
    try:
        for chain in chains:
            chain.start()
            chain.check()
            start[chain.shape] = sample(chain)
        for chain in chains:
            asyncio.run(drive(chain.entry, 0, args.warm, distinct=False))
            warmed[chain.shape] = sample(chain)
        print(f"after {args.warm} requests: {warmed}", flush=True)
        done = 0
        while done < args.distinct:
            block = min(args.step, args.distinct - done)
            order = chains if (done // args.step) % 2 == 0 else chains[::-1]
            for chain in order:
                asyncio.run(drive(chain.entry, done, block, distinct=True))
                series[chain.shape].append(sample(chain))
            done += block
            print(f"after {done} distinct: " + ", ".join(
                f"{s} {v[-1]}" for s, v in series.items()), flush=True)
        for chain in chains:
            chain.check()  # still right after the load
    finally:
        for chain in chains:
            chain.stop()
        shutil.rmtree(work, ignore_errors=True)

    bare_bytes, mesh_bytes, top = traced_growth(2_000, args.traced)
    imports = import_costs()
    stack, *mesh_parts = imports
    import_total = sum(kib for _, kib in mesh_parts)
    breakdown = "; ".join(f"{name} {kib / 1024:+.1f} MiB" for name, kib in mesh_parts)

    def mib(kib: float) -> str:
        return f"{kib / 1024:.1f} MiB"

    rows, verdicts = [], []
    for role in ("gateway", "payments"):
        added_start = start["mesh"][role] - start["direct"][role]
        added = warmed["mesh"][role] - warmed["direct"][role]
        grow = {s: series[s][-1][role] - warmed[s][role] for s in series}
        tail = {s: series[s][-1][role] - series[s][0][role] for s in series}
        rows.append(
            f"| {role} | {mib(start['direct'][role])} | {mib(start['mesh'][role])} "
            f"| {mib(warmed['direct'][role])} | {mib(warmed['mesh'][role])} "
            f"| **{mib(added)}** ({mib(added_start)} at start) "
            f"| {grow['direct']:+,} KiB | {grow['mesh']:+,} KiB "
            f"| {tail['direct']:+,} KiB | {tail['mesh']:+,} KiB |"
        )
        verdicts.append((role, added, tail["mesh"] - tail["direct"]))
    samples = "; ".join(
        f"{s}: " + ", ".join(f"{v['gateway'] / 1024:.1f}/{v['payments'] / 1024:.1f}" for v in vals)
        for s, vals in series.items()
    )
    worst_added = max(added for _, added, _ in verdicts)
    worst_tail = max(tail for _, _, tail in verdicts)
    per_request = worst_tail * 1024 / max(1, args.distinct - args.step)
    verdict = (
        f"**Result: the mesh adds at most {mib(worst_added)} of RSS to a service after "
        f"{args.warm:,} requests (target ≤ 8 MB: {'met' if worst_added <= 8 * 1024 else 'missed'})"
        f"; over {args.distinct:,} requests with distinct paths, hosts, request ids and traces "
        f"it grows {worst_tail:+,} KiB more than the same service without it "
        f"({per_request:+.1f} bytes per request; in process, tracemalloc: "
        f"{mesh_bytes - bare_bytes:+.1f} bytes per request).**"
    )
    header = (
        f"| process | RSS at start, direct | at start, mesh "
        f"| after {args.warm:,} requests, direct | after, mesh | added by the mesh "
        f"| then {args.distinct:,} distinct, growth: direct | mesh "
        f"| growth after the first {args.step:,} distinct: direct | mesh |"
    )
    body = f"""## Memory: what the mesh adds to a service, and whether it grows (issue 10)

{verdict}

{header}
| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |
{chr(10).join(rows)}

- Same chain and servers as the chain benchmark (ASGI: Starlette, one uvicorn worker each);
  RSS is `VmRSS` from `/proc/<pid>/status`. Both chains got the same requests in the same
  order, {CONNECTIONS} keep-alive connections, blocks of {args.step:,} alternating between them;
  every answer was checked (200, payments' body naming the request's own path).
- Distinct requests: each with its own path (forwarded by the gateway to payments), `Host`,
  `x-request-id` (echoed, and carried to payments) and `traceparent` (continued to payments).
  RSS per sample, gateway/payments in MiB: {samples}.
- The last two columns leave out the first distinct block, where both chains still grow (the
  allocator's arenas and the interpreter's caches settle): what is left is growth per distinct
  value. CPython seldom hands freed memory back, so RSS is close to a high-water mark: a
  structure that grew per value would show here and not shrink.
- In process (no server, no sockets): {args.traced:,} distinct requests to payments after 2,000
  warm-up ones, `tracemalloc`'s traced memory still held afterwards, per request: bare
  {bare_bytes:+.1f} bytes, mesh {mesh_bytes:+.1f} bytes. The meshed app's top lines by growth:
  {"; ".join(top)}.
- Where the added RSS comes from, in a fresh interpreter that has the bare app's stack and an
  httpx client loaded ({stack[1] / 1024:.1f} MiB): importing asgimesh's dependencies one by
  one, then asgimesh, then its runtime answering a first request: {breakdown};
  {import_total / 1024:.1f} MiB in all. Nearly all of it is code loaded once per process (the
  libraries' modules and native extensions), not per request and not per connection. The
  largest part serves features a service may not use: `cryptography` and `jwt` are needed for
  identity (mTLS, `mesh-identity` tokens) and signed policies from a control plane, and could
  be imported only where one of those is on.
- Where the mesh keeps per-value state, it is bounded: inbound metric labels are the service,
  the method (one of the HTTP methods, else `_OTHER`) and the status; outbound labels the
  upstream service, with hosts outside the mesh capped in number; trace and request ids live
  only in the request's context.

For scale, the published memory of one sidecar proxy (one per instance, on top of the service;
the mesh's figure above replaces it):

{PROXIES}

Their setups differ from ours (Kubernetes, mTLS on, other apps, other load): read them as the
order of magnitude a proxy per instance costs, not as a like-for-like measurement.
"""
    print(body)
    if not args.no_write:
        write_section("memory", body, "bash bench/run.sh memory")


if __name__ == "__main__":
    main()
