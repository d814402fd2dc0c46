"""Issue 12.3: unauthenticated long polls must not exhaust the control plane.

Real servers on loopback. Several client addresses come from binding 127.0.0.2, 127.0.0.3, ...
(Linux routes all of 127/8 to the loopback). Counts stay in the hundreds, and every client and
task is closed on the way out, failed or not.
"""

import asyncio
import contextlib
import sys
import time
from collections.abc import AsyncIterator, Callable

import httpx
import pytest

from asgimesh.controlplane._server import ControlPlane
from asgimesh.testing import ControlPlaneHandle, control_plane
from tests.conftest import ControlPlaneStarter

POLL = "/v1/policy?after=1&wait=30"


def plane_of(cp: ControlPlaneHandle) -> ControlPlane:
    plane = cp.server.config.app.state.control_plane
    assert isinstance(plane, ControlPlane)
    return plane


async def until(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + 10.0
    while not condition():
        assert time.monotonic() < deadline, f"not reached in 10 s: {what}"
        await asyncio.sleep(0.01)


@contextlib.asynccontextmanager
async def clients(cp: ControlPlaneHandle) -> AsyncIterator[Callable[[str], httpx.AsyncClient]]:
    """``make(address)``: a client whose connections come from ``address``; all closed at exit,
    and every task started meanwhile cancelled first."""
    made: list[httpx.AsyncClient] = []

    def make(address: str) -> httpx.AsyncClient:
        transport = httpx.AsyncHTTPTransport(
            local_address=address, limits=httpx.Limits(max_connections=None)
        )
        client = httpx.AsyncClient(base_url=cp.url, transport=transport, timeout=40)
        made.append(client)
        return client

    try:
        yield make
    finally:
        current = asyncio.current_task()
        pending = [t for t in asyncio.all_tasks() if t is not current and not t.done()]
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        for client in made:
            await client.aclose()


def polls(client: httpx.AsyncClient, count: int) -> list[asyncio.Task[httpx.Response]]:
    return [asyncio.ensure_future(client.get(POLL)) for _ in range(count)]


def assert_busy(response: httpx.Response) -> None:
    assert response.status_code == 503, response.text
    assert response.headers["retry-after"] == "5"
    body = response.json()
    assert body["error"] == "busy" and "at most 40, 10 per client" in body["detail"]


async def capped(cp: ControlPlaneHandle) -> None:
    plane = plane_of(cp)
    async with clients(cp) as make:
        greedy = make("127.0.0.2")
        # A few hundred polls from one address: 10 park, the rest are told to come back later.
        flood = polls(greedy, 300)
        await until(lambda: sum(t.done() for t in flood) == 290, "290 polls refused")
        for task in [t for t in flood if t.done()]:
            assert_busy(task.result())
        assert plane.polls.parked == 10
        parked_greedy = [t for t in flood if not t.done()]

        # Other addresses still get their share, up to the total.
        others = [poll for n in (3, 4, 5) for poll in polls(make(f"127.0.0.{n}"), 10)]
        await until(lambda: plane.polls.parked == 40, "40 polls parked")
        late = make("127.0.0.6")
        assert_busy(await late.get(POLL))
        assert plane.polls.parked == 40

        # Everything else is answered meanwhile.
        assert (await late.get("/v1/trust-bundle")).status_code == 200
        assert (await late.get("/v1/policy")).status_code == 200

        # A client that goes away gives its slots back at once.
        for task in parked_greedy:
            task.cancel()
        await asyncio.gather(*parked_greedy, return_exceptions=True)
        await until(lambda: plane.polls.parked == 30, "slots given back")
        returning = polls(late, 1)
        await until(lambda: plane.polls.parked == 31, "a new poll parked")

        # A new version answers every parked poll, and the slots are free again.
        async with httpx.AsyncClient(base_url=cp.url) as admin:
            put = await admin.put("/v1/policy", json={}, headers=cp.admin_headers)
            assert put.json() == {"version": 2}
        for response in await asyncio.gather(*others, *returning):
            assert response.status_code == 200 and response.json()["version"] == 2
        assert plane.polls.parked == 0


def test_parked_polls_are_capped_with_a_share_per_client() -> None:
    with control_plane(max_parked_polls=40, max_parked_per_client=10) as cp:
        assert httpx.put(cp.url + "/v1/policy", json={}, headers=cp.admin_headers).is_success
        asyncio.run(capped(cp))


async def streamed(cp: ControlPlaneHandle) -> None:
    plane = plane_of(cp)
    ndjson = {"accept": "application/x-ndjson"}
    async with clients(cp) as make:
        client = make("127.0.0.1")
        # A stream that runs its course holds its slot until it ends...
        async with client.stream("GET", "/v1/policy?after=0&wait=1", headers=ndjson) as stream:
            assert stream.status_code == 200
            assert plane.polls.parked == 1
            lines = [line async for line in stream.aiter_lines() if line]
        assert len(lines) == 1 and plane.polls.parked == 0
        # ... and so does one the client drops halfway.
        async with client.stream("GET", "/v1/policy?after=0&wait=30", headers=ndjson) as stream:
            await anext(stream.aiter_lines())
            assert plane.polls.parked == 1
        await until(lambda: plane.polls.parked == 0, "the dropped stream's slot given back")
        # An answer that is ready at once takes no slot at all.
        for _ in range(5):
            assert (await client.get("/v1/policy?after=0&wait=30")).status_code == 200
        assert plane.polls.parked == 0


def test_streamed_polls_hold_their_slot_until_they_end() -> None:
    with control_plane(max_parked_polls=2, max_parked_per_client=1) as cp:
        assert httpx.put(cp.url + "/v1/policy", json={}, headers=cp.admin_headers).is_success
        asyncio.run(streamed(cp))


#: Runs ``python -m asgimesh ARGS`` with at most 120 open files, as a small fd limit would.
LOW_FD_LIMIT = (
    "import os, resource, sys; resource.setrlimit(resource.RLIMIT_NOFILE, (120, 120)); "
    "os.execv(sys.executable, [sys.executable, '-m', 'asgimesh', *sys.argv[1:]])"
)


async def flood(url: str, count: int, seconds: float) -> list[int]:
    """``count`` parked polls held for ``seconds``, then dropped: the status another caller got
    meanwhile (0 if none in 2 s), then those of the polls that were answered."""
    limits = httpx.Limits(max_connections=None)
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=seconds + 5) as client:
        tasks = [asyncio.ensure_future(client.get(POLL)) for _ in range(count)]
        try:
            await asyncio.sleep(seconds)
            try:
                probe = (await client.get("/v1/trust-bundle", timeout=2)).status_code
            except httpx.TimeoutException:
                probe = 0
        finally:
            for task in tasks:
                task.cancel()
            results = await asyncio.gather(*tasks, return_exceptions=True)
    return [probe] + [r.status_code for r in results if isinstance(r, httpx.Response)]


@pytest.mark.parametrize(
    "limits", ["default", "concurrency-only", "none"], ids=lambda limits: f"{limits}-limits"
)
def test_a_flood_of_polls_past_the_fd_limit(
    control_plane_process: ControlPlaneStarter, limits: str
) -> None:
    """Default limits (from the fd limit) keep the server answering other callers; forced past
    them, the EMFILE storm (500k lines in 4 s before the fix) logs a bounded number of events
    (10 per kind per 10 s, each a few lines of traceback)."""
    no_caps = ["--max-parked-polls", "5000", "--max-parked-per-client", "5000"]
    extra = {
        "default": [],
        "concurrency-only": no_caps,  # uvicorn's limit alone: others get at least a 503
        "none": ["--limit-concurrency", "5000", *no_caps],
    }[limits]
    cp = control_plane_process.start(*extra, launcher=[sys.executable, "-c", LOW_FD_LIMIT])
    assert httpx.put(cp.url + "/v1/policy", json={}, headers=ADMIN).is_success
    statuses = asyncio.run(flood(cp.url, 300, 3.0))
    if limits == "default":
        assert statuses[0] == 200, "the server stopped answering others"
        assert set(statuses[1:]) <= {503}, statuses  # past the caps: uvicorn's or ours
    elif limits == "concurrency-only":
        assert statuses[0] in (200, 503), "the server stopped answering others"
    else:
        assert "Too many open files" in cp.output(), "the flood did not reach the fd limit"
    time.sleep(1.5)  # what the server logs while it recovers counts too
    log = cp.output()
    assert log.count("Traceback") <= 40 and len(log.splitlines()) < 1000, log[-3000:]
    assert httpx.get(cp.url + "/v1/trust-bundle", timeout=5).status_code == 200


ADMIN = {"authorization": f"Bearer {ControlPlaneStarter.admin_token}"}
