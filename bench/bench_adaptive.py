"""Adaptive concurrency under overload: p99 of a service when the offered load doubles.

One service under uvicorn that can work on 4 requests at once, 20 ms each (200 requests a
second at most), is offered an open-loop load — requests start on a fixed schedule, whatever
the answers, as real callers' traffic does — first at 150 requests a second (under capacity),
then at twice that (1.5 times capacity). With a fixed queue (adaptive concurrency off) the
excess waits, the queue grows for as long as the overload lasts and every caller waits with
it. With ``adaptive_concurrency`` on, the limit settles near what the service can take and the
excess is refused at once (``503``, ``Retry-After``), so the requests it admits keep the
service's own latency. Both variants run in the same rounds, alternating; figures are medians
over rounds.

Each answer is checked: ``200 done``, or (adaptive on only) ``503`` with ``Retry-After``; the
run fails on anything else.

    python bench/bench_adaptive.py [--rounds 3] [--seconds 6]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from _report import median, write_section
from bench_inbound import LOAD_CPU, SERVER_CPU, free_port, pin

ROOT = Path(__file__).resolve().parent.parent
CAPACITY, WORK_MS = 4, 20
#: Requests a second the service can answer, and the two offered loads.
CAN_TAKE = CAPACITY * 1000 / WORK_MS
RATES = (150, 300)
VARIANTS: dict[str, dict[str, Any]] = {
    "fixed queue (adaptive off)": {},
    "adaptive concurrency": {"inbound": {"work": {"adaptive_concurrency": {"enabled": True}}}},
}


def start(policy: dict[str, Any]) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("MESH_")}
    env.update(
        PYTHONPATH=str(ROOT), MESH_SERVICE="work", MESH_POLICY=json.dumps(policy),
        CAPACITY=str(CAPACITY), WORK_MS=str(WORK_MS),
    )  # fmt: skip
    proc = subprocess.Popen(
        [*pin(SERVER_CPU), sys.executable, "-m", "uvicorn", "bench._capacity_app:app",
         "--port", str(port), "--log-level", "warning", "--no-access-log"],
        cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        start_new_session=True,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"the service stopped: {proc.stderr.read().decode()}")  # type: ignore[union-attr]
        try:
            if httpx.get(url + "/_mesh/health", timeout=1).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            time.sleep(0.1)
    raise SystemExit("the service did not start")


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)


async def offer(url: str, rate: float, seconds: float, adaptive: bool) -> dict[str, float]:
    """Start ``rate`` requests a second for ``seconds``, each on schedule; the figures of the
    answers (latency from each request's scheduled start, so a late client counts too)."""
    admitted: list[float] = []
    refused: list[float] = []
    limits = httpx.Limits(max_connections=2000, max_keepalive_connections=2000)
    async with httpx.AsyncClient(limits=limits, timeout=60) as client:

        async def one(due: float) -> None:
            response = await client.get(url + "/work")
            took = time.perf_counter() - due
            if response.status_code == 200 and response.text == "done":
                admitted.append(took)
            elif adaptive and response.status_code == 503 and "retry-after" in response.headers:
                refused.append(took)
            else:
                raise SystemExit(f"unexpected answer {response.status_code}: {response.text!r}")

        tasks = []
        began = time.perf_counter()
        count = int(rate * seconds)
        for n in range(count):
            due = began + n / rate
            delay = due - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(one(due)))
        await asyncio.gather(*tasks)
        ended = time.perf_counter()
    admitted.sort()
    total = len(admitted) + len(refused)
    assert total == count, (total, count)
    return {
        "p50": admitted[len(admitted) // 2] * 1000,
        "p99": admitted[min(len(admitted) - 1, int(len(admitted) * 0.99))] * 1000,
        "refused": len(refused) / total * 100,
        #: Answered 200 per second, until the last answer came (a backlog drains after).
        "served": len(admitted) / (ended - began),
        "drain": max(0.0, ended - began - seconds),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=6.0)
    args = parser.parse_args()
    if hasattr(os, "sched_setaffinity") and pin(LOAD_CPU):
        os.sched_setaffinity(0, {LOAD_CPU})
    figures: dict[tuple[str, int], list[dict[str, float]]] = {}
    for round_ in range(args.rounds):
        for name, policy in VARIANTS.items():
            proc, url = start(policy)
            try:
                # Warm-up: a second under capacity (and adaptive concurrency's calibration).
                asyncio.run(offer(url, RATES[0], 1.0, bool(policy)))
                for rate in RATES:
                    result = asyncio.run(offer(url, rate, args.seconds, bool(policy)))
                    figures.setdefault((name, rate), []).append(result)
                    said = ", ".join(f"{k} {v:.1f}" for k, v in result.items())
                    print(f"round {round_ + 1} {name} @ {rate}/s: {said}", flush=True)
            finally:
                stop(proc)

    def cell(name: str, rate: int, key: str) -> float:
        return median([f[key] for f in figures[(name, rate)]])

    rows = []
    for name in VARIANTS:
        for rate in RATES:
            rows.append(
                f"| {name} | {rate}/s ({rate / CAN_TAKE:.2f}x) | {cell(name, rate, 'p50'):.0f} ms "
                f"| {cell(name, rate, 'p99'):.0f} ms | {cell(name, rate, 'served'):.0f}/s "
                f"| {cell(name, rate, 'refused'):.1f}% | {cell(name, rate, 'drain'):.1f} s |"
            )
    off, on = list(VARIANTS)

    def c(name: str, load: int, key: str) -> str:
        return f"{cell(name, RATES[load], key):.0f}"

    body = f"""## Adaptive concurrency under overload (issue 13)

A service that works on {CAPACITY} requests at once, {WORK_MS} ms each (so {CAN_TAKE:.0f} requests a
second at most), under uvicorn, offered an open-loop load (requests start on schedule whatever
the answers) of {RATES[0]}/s for {args.seconds:g} s, then twice that. Latency is from each request's
scheduled start; "p50/p99" are of the requests the service answered `200`; medians of
{args.rounds} rounds, the variants alternating.

| variant | offered | p50 | p99 | answered 200 | refused (503) | backlog left at the end |
| --- | --- | ---: | ---: | ---: | ---: | ---: |
{chr(10).join(rows)}

When the offered load doubles past capacity, the fixed queue's p99 goes from
{c(off, 0, 'p99')} ms to {c(off, 1, 'p99')} ms and would keep growing for as long as the overload
lasts: every request waits behind the backlog, which takes {cell(off, RATES[1], 'drain'):.1f} s to
clear after the load stops, and the service even answers fewer requests a second
({c(off, 1, 'served')}/s against {c(on, 1, 'served')}/s), its worker busy with thousands of waiting
connections. With adaptive concurrency the p99 goes from {c(on, 0, 'p99')} ms to
{c(on, 1, 'p99')} ms and stays there: the limit sheds {c(on, 1, 'refused')}% of the calls at once
with `503` and `Retry-After` (which a mesh caller retries on another replica, within its
budget), and settles a little above the {CAPACITY} requests the service works on at once, so
the requests it admits wait behind a short queue only."""
    write_section("adaptive", body, "bash bench/run.sh adaptive")
    print(body)


if __name__ == "__main__":
    main()
