"""The chain and memory benchmarks measure what they say: each variant's requests really cross
the hops it names (the mesh's ``traceparent``, each proxy's header), and the answers that would
make a figure wrong stop the benchmark instead of being counted.

No timing is asserted here: speed is for ``bash bench/run.sh chain`` to report.
"""

from __future__ import annotations

import asyncio
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import TypeVar

import pytest

BENCH = Path(__file__).resolve().parent.parent / "bench"
sys.path.insert(0, str(BENCH))

from _chain import Chain, cpu_ns, rss_kib, wrk  # noqa: E402
from bench_chain import Figures, added, verdict  # noqa: E402
from bench_memory import drive  # noqa: E402

_sidecars = pytest.mark.skipif(
    any(shutil.which(tool) is None for tool in ("nginx", "haproxy", "wrk")),
    reason="nginx, haproxy and wrk come from scripts/_setup.sh",
)

T = TypeVar("T")


def needs_chains(test: T) -> T:
    """A test that starts chains: real servers and proxies (a generous bound: a loaded machine
    takes a while to start a dozen processes)."""
    return pytest.mark.slow(pytest.mark.timeout(300)(_sidecars(test)))  # type: ignore[no-any-return]


@pytest.fixture(scope="module")
def chains(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Chain]]:
    """Every ASGI variant and the WSGI mesh and nginx ones, started once for the module (a
    dozen servers and proxies); always stopped."""
    tmp_path = tmp_path_factory.mktemp("chains")
    wanted = [("asgi", s) for s in ("direct", "mesh", "nginx", "haproxy")]
    wanted += [("wsgi", "mesh"), ("wsgi", "nginx")]
    started: dict[str, Chain] = {}
    try:
        for kind, shape in wanted:
            chain = Chain(f"{kind} {shape}", kind, shape, tmp_path)
            started[chain.name] = chain
            chain.start()
        yield started
    finally:
        for chain in started.values():
            chain.stop()


@needs_chains
def test_each_variant_crosses_the_hops_it_names_and_no_others(chains: dict[str, Chain]) -> None:
    for chain in chains.values():
        chain.check()
    # The check can fail: each variant's answer, read as another's, is refused.
    for name, pretend in [("asgi direct", "mesh"), ("asgi mesh", "nginx"),
                          ("asgi nginx", "haproxy"), ("asgi haproxy", "direct"),
                          ("wsgi nginx", "direct"), ("wsgi mesh", "direct")]:
        chain = chains[name]
        real, chain.shape = chain.shape, pretend
        try:
            with pytest.raises(AssertionError):
                chain.check()
        finally:
            chain.shape = real


@needs_chains
def test_a_sidecar_is_a_master_and_one_worker_and_its_cost_is_counted(
    chains: dict[str, Chain],
) -> None:
    """The figures count the whole chain: every process and its children (nginx's worker,
    gunicorn's), in memory and in CPU time."""
    chain = chains["asgi nginx"]
    sidecar = next(p for p in chain.procs if p.name == "nginx asgi-gateway")
    children = Path(f"/proc/{sidecar.pid}/task/{sidecar.pid}/children").read_text().split()
    assert len(children) == 1  # worker_processes 1
    own = int(Path(f"/proc/{sidecar.pid}/statm").read_text().split()[1]) * 4
    assert rss_kib(sidecar.pid) > own
    pids = [p.pid for p in chain.procs]
    before = cpu_ns(pids)
    run = wrk(chain.url, 2, 1)
    assert run.requests > 0
    assert cpu_ns(pids) > before


@needs_chains
def test_wrk_runs_with_wrong_answers_stop_the_benchmark(chains: dict[str, Chain]) -> None:
    payments = chains["asgi direct"].app("payments")
    port = payments.ready.split(":")[2].split("/")[0]
    with pytest.raises(SystemExit, match="wrong answers"):
        wrk(f"http://127.0.0.1:{port}/not-a-route", 1, 1)  # 404s


@needs_chains
def test_the_memory_driver_checks_every_answer(chains: dict[str, Chain]) -> None:
    mesh = chains["asgi mesh"]
    asyncio.run(drive(mesh.entry, 0, 50, distinct=True))
    asyncio.run(drive(mesh.entry, 0, 20, distinct=False))
    payments = mesh.app("payments")
    port = int(payments.ready.split(":")[2].split("/")[0])
    with pytest.raises(SystemExit, match="request"):
        asyncio.run(drive(port, 0, 5, distinct=True))  # payments has no /checkout: 404


def _figures(p50_us: list[float], rps: list[float]) -> Figures:
    return Figures(p50=[v / 1e6 for v in p50_us], p99=[0.0] * len(p50_us), rps=rps,
                   cpu=[0.0] * len(p50_us))


@pytest.mark.parametrize(
    ("mesh_p50", "mesh_rps", "meets", "more"),
    [(1025, 950, "meets", "more"), (1040, 850, "misses", "not more")],
)
def test_the_verdict_applies_the_issue_target(
    mesh_p50: float, mesh_rps: float, meets: str, more: str
) -> None:
    """Within-round differences, then the median: nginx adds 90 µs and keeps 90% of req/s."""
    results = {
        "direct": _figures([1000, 1010, 990], [1000, 1000, 1000]),
        "mesh": _figures([mesh_p50 + d for d in (0, 10, -10)], [mesh_rps] * 3),
        "nginx": _figures([1090, 1100, 1080], [900, 900, 900]),
    }
    assert added(results, "nginx", "p50") == pytest.approx(90)
    assert added(results, "mesh", "rps") == pytest.approx(mesh_rps / 1000)
    said = verdict("asgi", results)
    assert f"({meets} the target of a third)" in said
    assert f"({more})" in said
