"""Hedged requests: p50/p99 of one service whose replicas have a latency tail, with and without.

Replicas of one service (``asgimesh.testing.FakeUpstream`` under real uvicorn processes on
loopback). First, one slow replica: two answer at once, one answers 10% of its requests after
200 ms (``lag:10:0.2``), the tail a GC pause or a noisy neighbour gives a replica; the GETs go
through ``AsyncMeshTransport`` with no hedge, ``hedge: {delay: 20ms}`` and ``hedge: {delay:
p95}``, each with the ``round_robin`` balancer (a caller that cannot tell the replicas apart, as
kube-proxy or a plain client) and with the default ``p2c_ewma`` (which learns the slow replica
and sends it less: what hedging adds on top of a latency-aware balancer). Second, every replica
slow now and then: three that each answer 3% of their requests after 200 ms (``lag:3:0.2``), a
tail no balancer can steer around (``p2c_ewma`` only). Each round runs every variant once (the
order rotates per round, so the machine's drift lands on all of them); p50 and p99 are taken per
round, then the median over rounds. Every answer must be a 200, the hedges the mesh counts must
account for every request the replicas received beyond one per call, the variants without
hedging must have sent none, and no try may be left outstanding.

Run: ``bash bench/run.sh hedge`` (or ``.venv/bin/python bench/bench_hedge.py --no-write`` to
print the section instead of writing it; ``BENCH_HEDGE_CALLS`` and ``BENCH_HEDGE_ROUNDS``
shorten it).
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from collections import Counter
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from _report import median, write_section
from bench_outbound import CONCURRENCY, Upstream, drive, pct

from asgimesh import AsyncMeshTransport, MeshRuntime, MeshSettings

CALLS = int(os.environ.get("BENCH_HEDGE_CALLS", "1000"))
ROUNDS = int(os.environ.get("BENCH_HEDGE_ROUNDS", "7"))
CONCURRENCY_HEDGE = int(os.environ.get("BENCH_HEDGE_CONCURRENCY", str(min(CONCURRENCY, 8))))
LAG = "lag:10:0.2"
#: The second scenario: every replica slow now and then, at random (no replica to avoid).
EVERY_LAG = "lag:3:0.2"
HEDGES: dict[str, dict[str, object] | None] = {
    "no hedge": None,
    "hedge: {delay: 20ms}": {"delay": "20ms"},
    "hedge: {delay: p95}": {"delay": "p95"},
}
BALANCERS = ("round_robin", "p2c_ewma")
#: A variant: ``(balancer, hedge)``.
Variant = tuple[str, str]


def runtime(urls: list[str], balancer: str, hedge: dict[str, object] | None) -> MeshRuntime:
    service: dict[str, object] = {"endpoints": urls, "load_balancer": balancer}
    if hedge is not None:
        service["hedge"] = hedge
    policy = {"services": {"pay": service}}
    return MeshRuntime(MeshSettings(service="bench", policy=json.dumps(policy)), start=False)


def hedges(rt: MeshRuntime, result: str) -> float:
    value = rt.metrics.registry.get_sample_value(
        "mesh_outbound_hedges_total", {"service": "bench", "upstream": "pay", "result": result}
    )
    return value or 0.0


async def scenario(behaviours: list[str], balancers: tuple[str, ...]) -> list[str]:
    """Every ``(balancer, hedge)`` variant against replicas with ``behaviours``, alternating;
    the table's lines and the verdict."""
    replicas = [Upstream(b, f"r{i}") for i, b in enumerate(behaviours)]
    urls = [r.url for r in replicas]
    names: list[Variant] = [(b, h) for b in balancers for h in HEDGES]
    p50s: dict[Variant, list[float]] = {n: [] for n in names}
    p99s: dict[Variant, list[float]] = {n: [] for n in names}
    sent: Counter[Variant] = Counter()
    won: Counter[Variant] = Counter()
    runtimes = {n: runtime(urls, n[0], HEDGES[n[1]]) for n in names}
    clients = {
        n: httpx.AsyncClient(transport=AsyncMeshTransport(runtime=rt), timeout=10)
        for n, rt in runtimes.items()
    }
    try:
        for name in names:  # warm up: connections, and the p95 window (20 samples at least)
            statuses, _, _ = await drive(_call(clients[name]), 200, CONCURRENCY_HEDGE)
            assert statuses == Counter({200: 200}), (name, statuses)
        for index in range(ROUNDS):
            order = names[index % len(names):] + names[: index % len(names)]
            for name in order:
                rt = runtimes[name]
                before_sent, before_won = hedges(rt, "sent"), hedges(rt, "won")
                received_before = sum(_received(r) for r in replicas)
                statuses, latencies, _ = await drive(_call(clients[name]), CALLS,
                                                     CONCURRENCY_HEDGE)
                assert statuses == Counter({200: CALLS}), (name, statuses)
                received = sum(_received(r) for r in replicas) - received_before
                round_sent = hedges(rt, "sent") - before_sent
                # Each call reached a replica once, plus each hedge that got out before the
                # race ended (a loser cancelled before connecting never arrives).
                assert CALLS <= received <= CALLS + round_sent, (name, received, round_sent)
                sent[name] += int(round_sent)
                won[name] += int(hedges(rt, "won") - before_won)
                p50s[name].append(pct(latencies, 0.50))
                p99s[name].append(pct(latencies, 0.99))
        assert all(sent[(b, "no hedge")] == 0 for b in balancers), sent
        for rt in runtimes.values():
            assert all(e.outstanding == 0 for e in _endpoints(clients, rt)), "a try leaked"
    finally:
        for client in clients.values():
            await client.aclose()
        for r in replicas:
            r.stop()
    total = CALLS * ROUNDS
    rows = [
        "| balancer | policy | p50 | p99 | p99 vs no hedge | extra requests | won "
        "| p99 per round (ms) |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    for name in names:
        base99 = median(p99s[(name[0], "no hedge")])
        rows.append(
            f"| `{name[0]}` | {name[1]} | {median(p50s[name]) * 1000:.1f} ms | "
            f"{median(p99s[name]) * 1000:.1f} ms | {median(p99s[name]) / base99:.2f}x | "
            f"{sent[name] / total * 100:.1f}% | "
            f"{(won[name] / sent[name] * 100) if sent[name] else 0:.0f}% | "
            f"{', '.join(f'{v * 1000:.0f}' for v in p99s[name])} |"
        )
    verdicts = []
    for balancer in balancers:
        base = (balancer, "no hedge")
        best = min((n for n in names if n[0] == balancer and n != base),
                   key=lambda n: median(p99s[n]))
        verdicts.append(
            f"with `{balancer}`, `{best[1]}` gives a p99 of {median(p99s[best]) * 1000:.1f} ms "
            f"against {median(p99s[base]) * 1000:.1f} ms without hedging, for "
            f"{sent[best] / total * 100:.1f}% more requests"
        )
    return [*rows, "", f"**{_sentence('; '.join(verdicts))}.**"]


async def run() -> str:
    load_before = os.getloadavg()[0]
    one = await scenario(["ok", "ok", LAG], BALANCERS)
    every = await scenario([EVERY_LAG] * 3, ("p2c_ewma",))
    load = (load_before, os.getloadavg()[0])
    return "\n".join([
        "## Hedged requests: one service, three replicas, one of them slow 10% of the time",
        "",
        f"{ROUNDS} rounds of {CALLS} GETs per variant at concurrency {CONCURRENCY_HEDGE} "
        "through `AsyncMeshTransport`, the order of the variants rotating per round; p50 and p99 "
        "per round, medians over the rounds. Extra requests: hedges sent, as % of calls; won: "
        "hedges whose answer was the call's. Every answer was a 200; each round's requests at "
        "the replicas were between one per call and one per call plus the hedges sent, and no "
        "try was left outstanding.",
        "",
        f"### One slow replica: two answer at once, the third answers 10% of its requests after "
        f"200 ms (`{LAG}`)",
        "",
        *one,
        "",
        f"### Every replica slow now and then: each answers 3% of its requests after 200 ms "
        f"(`{EVERY_LAG}`)",
        "",
        "No replica is worse than another, so the balancer has nothing to learn.",
        "",
        *every,
        "",
        f"Machine load average (1 minute) at the start and end of the run: {load[0]:.1f} and "
        f"{load[1]:.1f} on {os.cpu_count()} cores; the client, the three replicas and whatever "
        "else runs share them, so the hedges' own latency (a second request, on a busy core) "
        "moves with it: compare the rows of one run.",
    ])


def _sentence(text: str) -> str:
    return text[:1].upper() + text[1:]


def _call(client: httpx.AsyncClient):  # type: ignore[no-untyped-def]
    async def call() -> int:
        return (await client.get("http://pay/")).status_code

    return call


def _received(replica: Upstream) -> int:
    return int(replica.stats()["requests"])  # type: ignore[call-overload]


def _endpoints(clients: dict[str, httpx.AsyncClient], rt: MeshRuntime) -> list[object]:
    for client in clients.values():
        transport = client._transport
        if isinstance(transport, AsyncMeshTransport) and transport._planner.runtime is rt:
            return list(transport._planner.upstreams["pay"].endpoints)
    return []


def main() -> None:
    start = time.perf_counter()
    text = asyncio.run(run())
    print(text, flush=True)
    print(f"({time.perf_counter() - start:.0f}s)", flush=True)
    if "--no-write" not in sys.argv:
        write_section("hedge", text, "bash bench/run.sh hedge")


if __name__ == "__main__":
    main()
