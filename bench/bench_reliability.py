"""Reliability figures: the inbound fuzz suite and the soak of the example shop, run as the
tests they are, their figures written into BENCHMARKS.md's Reliability section.

    bash bench/run.sh reliability       # 2 x 100,000 fuzzed requests, then the 10-minute soak

These are not speed figures: the fuzz suite's duration is how long 100,000 requests take on
this machine, and the soak's are its calls, success rate and each service's memory. The runs
check their own answers (they are the tests ``tests/inbound/test_fuzz.py`` and
``tests/test_soak.py``); a failing run writes no figures. ``SOAK_SECONDS`` shortens the soak,
``FUZZ_REQUESTS`` the fuzzing (the section then says what was run).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from _report import ROOT, write_section

COMMAND = "bash bench/run.sh reliability"


def _mib(value: object) -> str:
    return f"{int(value) / 2**20:.1f} MiB" if isinstance(value, int) else "-"  # type: ignore[call-overload]


def main() -> int:
    with tempfile.TemporaryDirectory(prefix="asgimesh-reliability-") as out:
        env = {**os.environ, "ASGIMESH_RELIABILITY_OUT": out}
        for args in (["tests/inbound/test_fuzz.py", "-k", "randomised"],
                     ["tests/test_soak.py", "-m", "soak"]):  # fmt: skip
            done = subprocess.run(
                [sys.executable, "-m", "pytest", "-q", "-x", "-s", *args],
                cwd=ROOT,
                env=env,
            )
            if done.returncode != 0:
                print(f"{' '.join(args)} failed: no figures written", file=sys.stderr)
                return done.returncode
        results = {path.stem: json.loads(path.read_text()) for path in Path(out).glob("*.json")}
    write_section("reliability", report(results), COMMAND)
    return 0


def report(results: dict[str, dict[str, Any]]) -> str:
    """The section's text from the runs' figures (``fuzz-uvicorn``, ``fuzz-gunicorn``,
    ``soak``: what the tests write into ``ASGIMESH_RELIABILITY_OUT``)."""
    fuzz = [results[name] for name in ("fuzz-uvicorn", "fuzz-gunicorn") if name in results]
    soak = results["soak"]
    lines = [
        "## Reliability",
        "",
        "Randomised inbound requests (methods with odd tokens, percent-encoded and non-UTF-8 "
        "paths, `..`, huge and duplicated headers, forged `mesh-identity` tokens and forwarded "
        "certificates, deadlines, bodies with honest and lying framing, `/_mesh/*`), "
        "`tests/inbound/test_fuzz.py`, over raw loopback sockets, pipelined where the framing "
        "allows. *Answered by the server* are requests its own HTTP parser refused before the "
        "mesh saw them (or whose refusal was lost to the connection's reset).",
        "",
        "| server | requests | reached the mesh | answered by the server | mesh 500s | "
        "wrong answers (500s included) | tracebacks | duration |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for run in fuzz:
        lines.append(
            f"| {run['server']} | {run['requests']:,} | {run['mesh']:,} | {run['server_only']:,} "
            f"| {run['mesh_500s']} | {run['wrong']} | {run['tracebacks']} "
            f"| {run['seconds']:.1f} s |"
        )
    lines += [
        "",
        f"Soak (`tests/test_soak.py -m soak`): the example shop (frontend on uvicorn, orders and "
        f"two payments replicas on gunicorn, `mesh-identity` tokens between them) on a control "
        f"plane kept in etcd, {soak['seconds']:.0f} s at 20 calls a second to the frontend, "
        f"with: {'; '.join(soak['events'])}.",
        "",
        f"- calls: {soak['calls']:,}, answered 200: {soak['ok']:,}, success rate "
        f"**{soak['success_rate'] * 100:.3f}%** (bound: 99.9%)",
        f"- after the chaos, a new policy version reached every service in "
        f"{max(soak['policy_reached'].values()):.2f} s (all {len(soak['policy_reached'])}); "
        f"the restarted payments-1 had answered {soak['charges_after_restart']:,.0f} charges",
        "",
        "| service | restarts | RSS at start | RSS after warm-up | RSS at the end "
        "| allowed growth |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for service, figures in soak["memory"].items():
        lines.append(
            f"| {service} | {figures['restarts']} | {_mib(figures['first_rss'])} "
            f"| {_mib(figures['steady_start'])} | {_mib(figures['end'])} "
            f"| {_mib(figures['allowed_growth'])} |"
        )
    lines += [
        "",
        "RSS is each service's processes together (gunicorn's master and worker), sampled "
        "every 2 s; *after warm-up* and *at the end* are medians of the first and last fifth of "
        "the samples after the first fifth (for payments-1, of the process started after the "
        "kill).",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
