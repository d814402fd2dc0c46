"""Where mirrors run, without sockets: fire-and-forget tasks under asyncio and trio, and the
sync transport's bounded daemon threads; what closing does to each."""

from __future__ import annotations

import gc
import logging
import threading
import time

import anyio
import pytest

from asgimesh.outbound import _shadow
from asgimesh.outbound._shadow import AsyncMirrorTasks, SyncMirrorWorkers


def test_outside_any_event_loop_nothing_is_spawned() -> None:
    """The loop is asked of asyncio and trio themselves (no sniffio): with neither running,
    even with trio imported, the copy is not started and the caller is told so."""
    import trio  # imported, but no trio run is going on

    async def copy() -> None:  # never started
        raise AssertionError("ran outside any loop")

    assert trio is not None
    assert AsyncMirrorTasks().spawn(copy) is False


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_tasks_outlive_the_spawning_scope_and_errors_stay_inside(
    backend: str, caplog: pytest.LogCaptureFixture
) -> None:
    done: list[str] = []

    async def copy() -> None:
        await anyio.sleep(0.05)
        done.append("copy")

    async def broken() -> None:
        raise RuntimeError("a bug in a copy")

    async def main() -> None:
        tasks = AsyncMirrorTasks()
        with anyio.CancelScope() as request:  # the request's own scope, cancelled at once
            assert tasks.spawn(copy) and tasks.spawn(broken)
            request.cancel()
            await anyio.sleep(1)
        for _ in range(200):
            if done:
                break
            await anyio.sleep(0.01)
        assert done == ["copy"] and tasks.running == 0
        await tasks.aclose()
        assert not tasks.spawn(copy)  # closed: the caller counts it dropped

    with caplog.at_level(logging.DEBUG, logger="asyncio"):
        anyio.run(main, backend=backend)
        gc.collect()
    assert not [r for r in caplog.records if "never retrieved" in r.getMessage()]


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_aclose_cancels_copies_in_flight_and_waits_for_them(backend: str) -> None:
    ended: list[str] = []

    async def hung() -> None:
        try:
            await anyio.sleep_forever()
        finally:
            ended.append("cancelled")

    async def main() -> float:
        tasks = AsyncMirrorTasks()
        for _ in range(5):
            tasks.spawn(hung)
        await anyio.sleep(0.05)
        assert tasks.running == 5
        started = time.monotonic()
        await tasks.aclose()
        assert tasks.running == 0 and ended == ["cancelled"] * 5
        return time.monotonic() - started

    assert anyio.run(main, backend=backend) < 1.0


def test_spawn_without_an_event_loop_is_refused() -> None:
    async def copy() -> None:
        pass

    assert not AsyncMirrorTasks().spawn(copy)


def test_threads_are_bounded_and_queued_copies_dropped_at_close(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_shadow, "CLOSE_WAIT", 0.2)
    idle: list[str] = []
    release = threading.Event()
    ran: list[int] = []
    dropped: list[int] = []
    workers = SyncMirrorWorkers(lambda: idle.append("closed"), threads=3)

    def job(n: int) -> None:
        release.wait(5)
        ran.append(n)

    for n in range(10):
        assert workers.submit(lambda n=n: job(n), lambda n=n: dropped.append(n))
    assert workers.threads == 3
    started = time.monotonic()
    workers.close()
    assert time.monotonic() - started < 1.0  # bounded: the three running jobs still wait
    assert len(dropped) == 7 and ran == [] and idle == []  # the pool stays while they run
    assert not workers.submit(lambda: None, lambda: None)
    release.set()
    deadline = time.monotonic() + 5
    while workers.threads and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(0.05)
    assert sorted(ran + dropped) == list(range(10)) and len(ran) == 3
    assert idle == ["closed"]  # once, by the last thread
    assert not [t for t in threading.enumerate() if t.name == "asgimesh-mirror"]


def test_idle_threads_end_and_a_later_copy_starts_one(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_shadow, "IDLE_EXIT", 0.05)
    ran = threading.Event()
    workers = SyncMirrorWorkers(lambda: None)
    workers.submit(lambda: None, lambda: None)
    deadline = time.monotonic() + 5
    while workers.threads and time.monotonic() < deadline:
        time.sleep(0.01)
    assert workers.threads == 0
    workers.submit(ran.set, lambda: None)
    assert ran.wait(5)
    workers.close()
