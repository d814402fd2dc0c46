"""The mesh against what it replaces: a two-hop chain with asgimesh, or with sidecar proxies.

wrk → gateway → payments, each a small app (``bench/_chain_app.py``: Starlette under one
uvicorn worker; ``bench/_chain_wsgi.py``: Flask under one gunicorn sync worker). The gateway
forwards every request to payments with one shared httpx client (keep-alive) and answers
payments' body. Variants, all started at once and measured in the same run:

* ``direct``: plain httpx, no mesh, no proxy — the floor;
* ``mesh``: ``MeshMiddleware`` / ``MeshWSGIMiddleware`` on both apps, ``AsyncMeshTransport`` /
  ``MeshTransport`` on the gateway's client, which asks for ``http://payments/...``: the mesh
  resolves it from ``MESH_UPSTREAMS`` (static endpoints). Metrics and W3C tracing on (the
  defaults), access log off;
* ``nginx``: one nginx beside each app (Istio's shape): the gateway's sidecar takes the gateway's
  inbound and, on a second listener, its outbound calls, which it sends to payments' sidecar,
  which takes payments' inbound. So a request crosses three proxy hops. Keep-alive upstreams
  (``keepalive 32``, ``proxy_http_version 1.1``, ``proxy_set_header Connection ""``), one worker
  process each, access log off;
* ``haproxy``: the same with HAProxy (one thread each, ``http-reuse always``).

Per round and variant, in an order that rotates round by round: ``wrk -t1 -c1`` (latency: p50
and p99 of one request at a time) and ``wrk -t1 -c8`` (req/s), plus the CPU time every
process of the chain (apps, proxies, their workers) used during the ``-c8`` run per request.
Added latency and the req/s ratio are taken against ``direct`` within each round, then the
median over rounds. Before and after the load, every variant's answer is checked: payments'
body arrived, in the mesh variant with the ``traceparent`` the gateway's mesh sent, in the
sidecar variants with the headers each proxy adds (``x-chain-front``, ``-out``, ``-in``), and in
no other variant with either.

wrk runs on one core and every server process (apps and proxies) on the other (``taskset``), as
the apps and their sidecars would share a node's cores: a proxy's CPU comes out of the same
budget as the app's.

    python bench/bench_chain.py [--rounds 7] [--duration 3] [--no-write]
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _chain import Chain, cpu_ns, rss_kib, wrk
from _report import ROOT, median, write_section

CHART = ROOT / "bench" / "chain.png"
LABELS = {
    "direct": "direct (plain httpx)",
    "mesh": "asgimesh on both apps",
    "nginx": "nginx sidecar beside each app",
    "haproxy": "HAProxy sidecar beside each app",
}


@dataclass
class Figures:
    p50: list[float] = field(default_factory=list)
    p99: list[float] = field(default_factory=list)
    rps: list[float] = field(default_factory=list)
    cpu: list[float] = field(default_factory=list)  # µs of the chain's CPU per request


def measure(chain: Chain, duration: int, into: Figures) -> None:
    latency = wrk(chain.url, 1, duration, chain.wrk_headers)
    pids = [proc.pid for proc in chain.procs]
    before = cpu_ns(pids)
    load = wrk(chain.url, 8, duration, chain.wrk_headers)
    into.cpu.append((cpu_ns(pids) - before) / load.requests / 1000)
    into.p50.append(latency.p50)
    into.p99.append(latency.p99)
    into.rps.append(load.rps)


def paired(results: dict[str, Figures], name: str, key: str) -> list[float]:
    """(variant - direct) within each round, in µs, or the req/s ratio for ``rps``."""
    base, mine = getattr(results["direct"], key), getattr(results[name], key)
    if key == "rps":
        return [m / b for m, b in zip(mine, base, strict=True)]
    scale = 1.0 if key == "cpu" else 1e6
    return [(m - b) * scale for m, b in zip(mine, base, strict=True)]


def added(results: dict[str, Figures], name: str, key: str) -> float:
    """Median over rounds of the within-round difference (or ratio) against direct."""
    return median(paired(results, name, key))


def spread(results: dict[str, Figures], name: str, key: str) -> str:
    """The rounds' lowest and highest within-round difference: how far one round's figure
    can be trusted on this machine."""
    values = paired(results, name, key)
    return f"{min(values):+,.0f} … {max(values):+,.0f}"


def table(kind: str, results: dict[str, Figures]) -> str:
    rows = [
        "| variant | p50 (-c1) | added p50 | rounds' range | p99 (-c1) | added p99 "
        "| req/s (-c8) | vs direct | chain CPU per request | added CPU | rounds' range |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for name, figures in results.items():
        rows.append(
            f"| {LABELS[name]} | {median(figures.p50) * 1e6:,.0f} µs "
            f"| {added(results, name, 'p50'):+,.0f} µs | {spread(results, name, 'p50')} "
            f"| {median(figures.p99) * 1e6:,.0f} µs "
            f"| {added(results, name, 'p99'):+,.0f} µs | {median(figures.rps):,.0f} "
            f"| {added(results, name, 'rps'):.1%} | {median(figures.cpu):,.0f} µs "
            f"| {added(results, name, 'cpu'):+,.0f} µs | {spread(results, name, 'cpu')} |"
        )
    return "\n".join(rows)


def verdict(kind: str, results: dict[str, Figures]) -> str:
    """The issue's target, said plainly: the mesh adds at most a third of a sidecar's added
    p50 and keeps more req/s than the sidecars; and, steadier under load, the CPU each adds."""
    mesh_p50, mesh_rps = added(results, "mesh", "p50"), added(results, "mesh", "rps")
    mesh_cpu = added(results, "mesh", "cpu")
    parts = []
    for proxy in (name for name in results if name in ("nginx", "haproxy")):
        proxy_p50, proxy_rps = added(results, proxy, "p50"), added(results, proxy, "rps")
        third = proxy_p50 > 0 and mesh_p50 <= proxy_p50 / 3
        share = f"{mesh_p50 / proxy_p50:.0%} of" if proxy_p50 > 0 else "against"
        parts.append(
            f"against {proxy}: the mesh adds {mesh_p50:+,.0f} µs p50, {share} {proxy}'s "
            f"{proxy_p50:+,.0f} µs ({'meets' if third else 'misses'} the target of a third), and "
            f"keeps {mesh_rps:.1%} of direct's req/s against {proxy}'s {proxy_rps:.1%} "
            f"({'more' if mesh_rps > proxy_rps else 'not more'}); CPU per request through the "
            f"chain: mesh {mesh_cpu:+,.0f} µs, {proxy} {added(results, proxy, 'cpu'):+,.0f} µs"
        )
    return f"**{kind.upper()}: " + "; ".join(parts) + ".**"


def memory_lines(shapes: dict[str, list[str]], memory: dict[str, dict[str, int]]) -> str:
    """RSS after the load: what the mesh added to the two apps, against what the sidecars
    themselves took (each a master and one worker for nginx, one process for HAProxy)."""
    lines = []
    for kind, names in shapes.items():
        direct = memory[f"{kind} direct"]
        apps = sum(direct[f"{kind} {role}"] for role in ("gateway", "payments"))
        for shape in names[1:]:
            procs = memory[f"{kind} {shape}"]
            mine = sum(procs[f"{kind} {role}"] for role in ("gateway", "payments"))
            proxies = sum(kib for name, kib in procs.items() if name.startswith(shape))
            if shape == "mesh":
                lines.append(f"{kind.upper()}: the mesh added {(mine - apps) / 1024:+.1f} MiB "
                             f"to the two apps ({apps / 1024:.1f} MiB without it)")
            else:
                lines.append(f"the two {shape} sidecars took {proxies / 1024:.1f} MiB "
                             f"(the apps behind them {(mine - apps) / 1024:+.1f} MiB)")
    return "; ".join(lines)


def chart(results: dict[str, dict[str, Figures]]) -> bool:
    """``bench/chain.png``: added p50, req/s and added CPU per request for each variant, ASGI
    and WSGI side by side; only where matplotlib is installed (the ``bench`` extra)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    colours = {"direct": "#9e9e9e", "mesh": "#1b7f3b", "nginx": "#b5452b", "haproxy": "#d08a2b"}
    panels = (
        ("p50", "added p50 vs direct at -c1 (µs)"),
        ("rps", "requests/s at -c8"),
        ("cpu", "added CPU per request vs direct (µs)"),
    )
    figure, axes = plt.subplots(1, len(panels), figsize=(13, 4.4))
    kinds = list(results)
    names = [n for n in LABELS if any(n in results[k] for k in kinds)]
    width = 0.8 / len(names)
    for i, name in enumerate(names):
        xs = [k + (i - (len(names) - 1) / 2) * width for k in range(len(kinds))]
        for axis, (key, _) in zip(axes, panels, strict=True):
            values = [
                (median(results[k][name].rps) if key == "rps" else added(results[k], name, key))
                if name in results[k]
                else 0
                for k in kinds
            ]
            axis.bar(xs, values, width, label=LABELS[name], color=colours[name])
    for axis, (_, title) in zip(axes, panels, strict=True):
        axis.set_xticks(range(len(kinds)))
        axis.set_xticklabels([f"{k.upper()} chain" for k in kinds])
        axis.set_title(title, fontsize=10)
        axis.grid(axis="y", alpha=0.3)
        axis.set_axisbelow(True)
        axis.axhline(0, color="black", linewidth=0.6)
    handles, labels = axes[0].get_legend_handles_labels()
    figure.legend(handles, labels, loc="lower center", ncol=len(names), fontsize=9, frameon=False)
    figure.suptitle("wrk → gateway → payments: asgimesh against sidecar proxies", fontsize=11)
    figure.tight_layout(rect=(0, 0.08, 1, 1))
    figure.savefig(CHART, dpi=100)
    plt.close(figure)
    return True


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--duration", type=int, default=3, help="seconds per wrk run")
    parser.add_argument("--no-write", action="store_true", help="print, leave BENCHMARKS.md")
    args = parser.parse_args()
    missing = [tool for tool in ("wrk", "nginx", "haproxy") if shutil.which(tool) is None]
    if missing:
        needed = ", ".join(missing)
        raise SystemExit(f"bench_chain needs {needed}: scripts/_setup.sh installs them")

    shapes = {"asgi": ["direct", "mesh", "nginx", "haproxy"], "wsgi": ["direct", "mesh", "nginx"]}
    load_before = os.getloadavg()[0]
    work = Path(tempfile.mkdtemp(prefix="asgimesh-bench-chain-"))
    chains = [Chain(f"{k} {s}", k, s, work) for k, names in shapes.items() for s in names]
    results = {k: {s: Figures() for s in names} for k, names in shapes.items()}
    memory: dict[str, dict[str, int]] = {}  # chain → process → RSS KiB after the load
    try:
        for chain in chains:
            chain.start()
            chain.check()
            wrk(chain.url, 8, 1, chain.wrk_headers)  # warm up: connections, caches, interpreter
        for round_ in range(args.rounds):
            order = chains[round_ % len(chains) :] + chains[: round_ % len(chains)]
            for chain in order:
                figures = results[chain.kind][chain.shape]
                measure(chain, args.duration, figures)
                print(
                    f"round {round_ + 1} {chain.name:13} p50 {figures.p50[-1] * 1e6:7.0f} µs  "
                    f"p99 {figures.p99[-1] * 1e6:7.0f} µs  {figures.rps[-1]:6.0f} req/s  "
                    f"CPU {figures.cpu[-1]:5.0f} µs/request",
                    flush=True,
                )
        for chain in chains:
            chain.check()  # still right after the load
            memory[chain.name] = {proc.name: rss_kib(proc.pid) for proc in chain.procs}
    finally:
        for chain in chains:
            chain.stop()
        shutil.rmtree(work, ignore_errors=True)

    load = (load_before, os.getloadavg()[0])
    cores = os.cpu_count() or 1
    busy = max(load) > cores * 0.75
    caveat = (
        f"**This run's machine was busy (load average {load[0]:.1f} at the start, "
        f"{load[1]:.1f} at the end, on {cores} cores, from other work): the latency and "
        "req/s differences are within its noise (see the rounds' ranges); re-run on a quiet "
        "machine before reading them.**\n\n"
        if busy
        else ""
    )
    charted = not args.no_write and chart(results)
    image = "![the chain: added p50, req/s, added CPU per variant](bench/chain.png)\n\n"
    image = image if charted else ""
    body = f"""## The mesh against sidecar proxies: a two-hop chain (issue 10)

{caveat}wrk → gateway → payments. {verdict("asgi", results["asgi"])}
{verdict("wsgi", results["wsgi"])}

{image}### ASGI: Starlette under uvicorn (one worker each)

{table("asgi", results["asgi"])}

### WSGI: Flask under gunicorn (one sync worker each)

{table("wsgi", results["wsgi"])}

- The gateway forwards each request to payments with one shared httpx client (keep-alive) and
  answers payments' small JSON body. `direct` is plain httpx to payments' address; `mesh` is
  `MeshMiddleware` (WSGI: `MeshWSGIMiddleware`) on both apps and `AsyncMeshTransport` (WSGI:
  `MeshTransport`) on the gateway's client, which asks for `http://payments/...` and the mesh
  resolves from `MESH_UPSTREAMS`; metrics and W3C tracing on, access log off.
- Sidecars in Istio's shape: the gateway's proxy takes its inbound and (a second listener) its
  outbound, and sends the latter to payments' proxy, which takes payments' inbound: three proxy
  hops per request. nginx: one worker process each, `keepalive 32` upstreams with
  `proxy_http_version 1.1` and `Connection ""`, access log off. HAProxy: one thread each,
  `http-reuse always`, no log. gunicorn's sync worker closes every connection after its answer,
  so in the WSGI chain no hop into an app is kept alive, whoever the caller is; and wrk sends
  `Connection: close` to every WSGI variant (a new connection per request at the front, as a
  load balancer before sync workers has), or the sidecar variant alone would keep its front
  connection alive (to its proxy) where the others reconnect per request.
- What a sidecar does for a WSGI chain: gunicorn's sync worker closes every connection, so the
  gateway's httpx client opens a new connection to payments for every call in `direct` and
  `mesh` (in Python, in the gateway's one worker), while in `nginx` it keeps one alive to its
  own sidecar and nginx opens the new connections to the app, in C. That work moves off the
  app's worker, which is why the sidecar chain can carry more req/s there; the mesh cannot do
  it for a callee that closes its connections (a gunicorn with threads or gevent workers, or
  any ASGI server, keeps them).
- {args.rounds} rounds; each runs every variant in turn, the order rotating by one each round.
  Latency: `wrk -t1 -c1 -d{args.duration}s` (one request at a time, so the added p50 is the
  added work per request, not queueing). Throughput: `wrk -t1 -c8 -d{args.duration}s`. Added
  figures and ratios are taken against `direct` within each round, then the median over
  rounds; the other columns are medians over rounds.
- Machine load average (1 minute) at the start and end of the run: {load[0]:.1f} and
  {load[1]:.1f}, on {cores} cores. The rounds' range is the lowest and highest within-round
  difference: where it spans zero, the median's sign is not to be trusted.
- Chain CPU per request: the CPU time all the chain's processes (both apps, both proxies and
  their workers; `/proc/<pid>/task/*/schedstat`) used during the `-c8` run, divided by the
  requests wrk completed. It counts time on a core, not time waiting for one, so it moves less
  with the machine's load than the latency and req/s columns.
- Memory (RSS of every process and its children, after the load): {memory_lines(shapes, memory)}.
  The memory benchmark (`bench/bench_memory.py`) breaks the mesh's part down.
- Pinning (`taskset`): wrk on core 0; every server process, apps and proxies alike, on core 1,
  as an app and its sidecar share a node's cores: a proxy's CPU comes out of the same budget.
- Checked before and after the load: 200 and payments' body through the gateway; in `mesh`, the
  `traceparent` payments received (sent by the gateway's mesh) and the `x-request-id` echoed;
  in the sidecar variants, the header each of the three proxy hops adds (`x-chain-front`,
  `x-chain-out`, `x-chain-in`), and in no other variant either. Every wrk run had no non-2xx
  answer and no socket error.
"""
    print(body)
    if not args.no_write:
        write_section("chain", body, "bash bench/run.sh chain")


if __name__ == "__main__":
    main()
