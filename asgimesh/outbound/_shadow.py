"""Where mirrors run: fire-and-forget tasks (async) and a few daemon threads (sync).

A mirror must never slow or fail the call it copies, so it cannot run in the request's own
task: the call's answer would wait for it, or a cancelled request would cancel it with its
scope. anyio has no fire-and-forget (every task belongs to a task group that waits for it), so
:class:`AsyncMirrorTasks` starts each copy as a task of the event loop itself: asyncio's
``loop.create_task`` (a strong reference held until it ends, since the loop keeps only a weak
one) or trio's ``trio.lowlevel.spawn_system_task``, whichever loop runs the caller (asked of each
library directly: the mesh does not import ``sniffio``, which it declares only so that
httpcore finds it). Each runs in an anyio cancel scope the transport's ``aclose()`` cancels.
A copy's coroutine catches every error itself (it is counted, never raised): a trio system task that
raises would crash the whole run, and an asyncio task would log "Task exception was never
retrieved".

The sync transport has no loop: :class:`SyncMirrorWorkers` hands copies to at most
:data:`MIRROR_THREADS` daemon threads (started when needed, gone after :data:`IDLE_EXIT` idle
seconds or at ``close()``). The in-flight cap (:class:`~._mirror.MirrorGate`) counts queued
copies, so the queue is bounded too.
"""

from __future__ import annotations

import asyncio
import contextlib
import queue
import sys
import threading
import time
from collections.abc import Awaitable, Callable

import anyio

__all__ = ["CLOSE_WAIT", "IDLE_EXIT", "MIRROR_THREADS", "AsyncMirrorTasks", "SyncMirrorWorkers"]

#: How long closing a transport waits for its mirrors (cancelled, or finishing) at most.
CLOSE_WAIT = 1.0
#: Threads carrying out one sync transport's mirrors at most.
MIRROR_THREADS = 8
#: Seconds an idle mirror thread waits for work before it ends.
IDLE_EXIT = 10.0


class AsyncMirrorTasks:
    """The mirror tasks of one async transport: started outside any request, cancelled and
    awaited (within :data:`CLOSE_WAIT`) by :meth:`aclose`."""

    def __init__(self) -> None:
        self._scopes: set[anyio.CancelScope] = set()
        #: asyncio keeps only weak references to tasks: these keep them alive until done.
        self._tasks: set[asyncio.Task[None]] = set()
        #: Set when the last copy has ended, once :meth:`aclose` waits for it.
        self._drained: anyio.Event | None = None
        self.closed = False

    @property
    def running(self) -> int:
        return len(self._scopes)

    def spawn(self, job: Callable[[], Awaitable[None]]) -> bool:
        """Start ``job`` (which must catch its own errors) as a task of the event loop;
        ``False`` when it cannot be (closed, or an event loop that is neither)."""
        if self.closed:
            return False
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            loop = None
        if loop is not None:
            task = loop.create_task(self._run(job))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
            return True
        trio = sys.modules.get("trio")  # a trio run has imported it
        if trio is not None:
            try:
                trio.lowlevel.spawn_system_task(self._run, job, name="asgimesh-mirror")
            except RuntimeError:  # not inside a trio run either
                return False
            return True
        return False

    async def _run(self, job: Callable[[], Awaitable[None]]) -> None:
        with anyio.CancelScope() as scope:
            self._scopes.add(scope)
            try:
                # The job counts its own errors; this guard is for a bug in the counting
                # itself, which must neither crash a trio run nor log an unretrieved exception.
                with contextlib.suppress(Exception):
                    await job()
            finally:
                self._scopes.discard(scope)
                if not self._scopes and self._drained is not None:
                    self._drained.set()

    async def aclose(self) -> None:
        """Cancel the copies in flight and wait for them to unwind (bounded)."""
        self.closed = True
        for scope in list(self._scopes):
            scope.cancel()
        if not self._scopes:
            return
        self._drained = anyio.Event()
        with anyio.move_on_after(CLOSE_WAIT):
            await self._drained.wait()


class _Job:
    __slots__ = ("drop", "run")

    def __init__(self, run: Callable[[], None], drop: Callable[[], None]) -> None:
        self.run = run
        self.drop = drop


class SyncMirrorWorkers:
    """A bounded pool of daemon threads for one sync transport's mirrors.

    ``on_idle`` runs once, when the pool is closed and its last thread has ended (at once in
    :meth:`close` if none is left): it closes the mirrors' connection pool, which must not be
    closed under a thread still using it."""

    def __init__(self, on_idle: Callable[[], None], threads: int = MIRROR_THREADS) -> None:
        self._queue: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._threads: set[threading.Thread] = set()
        self._max = threads
        self._lock = threading.Lock()
        self._on_idle: Callable[[], None] | None = on_idle
        self.closed = False

    @property
    def threads(self) -> int:
        return len(self._threads)

    def submit(self, run: Callable[[], None], drop: Callable[[], None]) -> bool:
        """Queue ``run`` (which must catch its own errors); ``drop`` ends it unrun if the
        pool closes first. ``False``: closed already."""
        with self._lock:
            if self.closed:
                return False
            self._queue.put(_Job(run, drop))
            if len(self._threads) < self._max:
                thread = threading.Thread(target=self._work, name="asgimesh-mirror", daemon=True)
                self._threads.add(thread)
                thread.start()
        return True

    def _work(self) -> None:
        try:
            while True:
                try:
                    job = self._queue.get(timeout=IDLE_EXIT)
                except queue.Empty:
                    return
                if job is None:
                    return
                with contextlib.suppress(Exception):  # as in AsyncMirrorTasks._run
                    if self.closed:
                        job.drop()
                    else:
                        job.run()
        finally:
            with self._lock:
                self._threads.discard(threading.current_thread())
                last = self.closed and not self._threads
                if not self.closed and not self._threads and not self._queue.empty():
                    # A copy queued while this thread was timing out: someone must take it.
                    thread = threading.Thread(
                        target=self._work, name="asgimesh-mirror", daemon=True
                    )
                    self._threads.add(thread)
                    thread.start()
            if last:
                self._idle()

    def _idle(self) -> None:
        with self._lock:
            on_idle, self._on_idle = self._on_idle, None
        if on_idle is not None:
            on_idle()

    def close(self) -> None:
        """Drop the queued copies, let the running ones end (each is bounded by its own time
        limit), and wait for them up to :data:`CLOSE_WAIT`; never longer."""
        with self._lock:
            self.closed = True
            threads = list(self._threads)
        while True:
            try:
                job = self._queue.get_nowait()
            except queue.Empty:
                break
            if job is not None:
                job.drop()
        for _ in threads:
            self._queue.put(None)
        deadline = time.monotonic() + CLOSE_WAIT
        for thread in threads:
            thread.join(max(deadline - time.monotonic(), 0.0))
        with self._lock:
            idle = not self._threads
        if idle:
            self._idle()
