"""The control-plane source every service runs (``MESH_CONFIG=http(s)://…`` or ``etcd://…``).

Watching: a daemon thread runs a private asyncio loop (``anyio.run``) that long-polls the
control plane (or watches etcd) and applies each verified version. A thread of its own works the
same under uvicorn (asyncio or trio), gunicorn's sync workers and a plain script, never touches
the host's event loop and needs no lifespan wiring. Only one connection per process is parked at
a time, so its cost is one idle socket.

Serverless (``?refresh=30s`` on ``MESH_CONFIG``): no background work. :meth:`on_request`, which
the runtime calls per request, starts at most one short-lived refresh every 30 s on a helper
thread and returns at once; the request never waits for it.

Trust: with ``MESH_CA`` the signer must chain to that bundle. Without it, the bundle is fetched
from the control plane on first contact and pinned for the life of the process (trust on first
use, said once in a warning): use ``https://`` or set ``MESH_CA`` where the network is not
trusted. Either way the signer must be the control plane's own signer certificate.

The watermark (the ``after`` of the long poll) moves only when a version verifies and applies:
a forged or broken envelope claiming a huge version is refused and changes nothing, and an
answer that brings nothing new at once (a confused proxy) is backed off from, not spun on.

Replays: a version no newer than the watermark is never applied, and a fresh process (watermark
0) refuses a genuine envelope whose signing time is older than ``MESH_POLICY_MAX_AGE``
(:func:`~asgimesh.policy._signed.check_freshness`), so an old, permissive version captured by a
man in the middle cannot be served to it as current. The control plane re-signs its current
version hourly; a re-signed copy of the version in force is not news and changes nothing.

The source gets what it needs — the policy store, the options, the token and pinned bundle, and
a callback that makes a report — not the runtime, so it stays testable on its own.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import ssl
import threading
import time
from collections.abc import Awaitable, Callable
from typing import Any

import anyio
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ed25519

from ..._backoff import ReconnectBackoff
from ..._errors import PolicyError
from ..._log import describe_error, get_logger
from ...identity import load_bundle
from ...settings import DEFAULT_POLICY_MAX_AGE
from .._signed import SignatureError, check_freshness, verify_envelope
from .._state import PolicyStore
from ._feeds import LONG_POLL, Feed, FeedUnavailableError, open_feed
from ._url import SourceOptions

__all__ = ["ControlPlaneSource", "Reporter"]

log = get_logger("asgimesh.policy")

FIRST_LOAD_TIMEOUT = 3.0
#: How long a process that is exiting waits for its last report to go out.
FINAL_REPORT_TIMEOUT = 2.0
#: A watch cycle shorter than this that brought nothing new is a surprise: back off.
QUICK_CYCLE = 1.0
_REFUSALS_KEPT = 16

#: Makes this instance's next report, given the policy version it runs.
Reporter = Callable[[int], dict[str, Any]]


class ControlPlaneSource:
    """A policy source fed by the control plane or etcd."""

    def __init__(
        self,
        options: SourceOptions,
        policy: PolicyStore,
        *,
        trust_domain: str,
        token: str | None = None,
        bundle: list[x509.Certificate] | None = None,
        reporter: Reporter | None = None,
        verify: ssl.SSLContext | None = None,
        max_age: float | None = DEFAULT_POLICY_MAX_AGE,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.options = options
        self.name = options.name
        self._policy = policy
        self._trust_domain = trust_domain
        self._token = token
        self._bundle = bundle
        self._reporter = reporter
        #: The TLS context for an https control plane, built once (pinned with MESH_CA).
        self._verify = verify
        self._signers: dict[bytes, ed25519.Ed25519PublicKey] = {}
        #: Oldest signing time accepted, in seconds (``None``: any, and none at all), and the
        #: wall clock it is measured with (injected by tests).
        self._max_age = max_age
        self._clock = clock
        self._warned_untimed = False
        #: Newest version verified and applied: the long poll's ``after``.
        self.watermark = 0
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._scope: anyio.CancelScope | None = None
        self._stopping = threading.Event()
        self._next_refresh = 0.0
        self._refreshing = False
        #: Envelopes already refused (version and signature), so that one offered again (it
        #: stays the latest until the control plane moves on) is not logged and counted again.
        self._refused: collections.OrderedDict[tuple[object, ...], None] = (
            collections.OrderedDict()
        )
        #: Set (on the watch's loop) to send the next report now rather than at its time.
        self._report_now: anyio.Event | None = None

    # -- PolicySource -----------------------------------------------------------------------------

    def load(self) -> None:
        """Try once, briefly. A control plane that is down is no reason not to start: the
        service serves with its environment and inline layers and the watcher keeps trying."""
        self._next_refresh = time.monotonic() + (self.options.refresh or 0)
        _run_in_thread(self._once, FIRST_LOAD_TIMEOUT)

    def start(self) -> None:
        """Start the watch, unless it runs: again in a forked child (gunicorn ``--preload``),
        whose copy of the parent's thread is not alive and whose event loop is the parent's."""
        if self.options.refresh is not None:
            return
        if self._thread is not None and self._thread.is_alive():
            return
        self._loop = self._scope = None
        self._lock = threading.Lock()  # the parent's may have been held by a thread now gone
        self._thread = threading.Thread(
            target=self._thread_main, name="asgimesh-controlplane-watch", daemon=True
        )
        self._thread.start()

    def close(self) -> None:
        self._stopping.set()
        loop, scope = self._loop, self._scope
        if loop is not None and scope is not None:
            with contextlib.suppress(RuntimeError):  # the loop already finished
                loop.call_soon_threadsafe(scope.cancel)
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def report_soon(self) -> None:
        """Send a report now, from the watch's loop (the instance started draining: the
        control plane should know before its next report is due). Never blocks."""
        loop, event = self._loop, self._report_now
        if loop is not None and event is not None:
            with contextlib.suppress(RuntimeError):  # the loop already finished
                loop.call_soon_threadsafe(event.set)

    def report_final(self, timeout: float = FINAL_REPORT_TIMEOUT) -> None:
        """Send one last report, waiting at most ``timeout`` seconds (the process is about to
        exit: the control plane drops the instance at once instead of when it goes stale).
        A control plane that is down costs the wait for a refused connection, nothing more."""
        if self._reporter is not None:
            _run_in_thread(self._report_once, timeout)

    def on_request(self) -> None:
        """Serverless mode: start a refresh if one is due and none is running; never blocks."""
        if self.options.refresh is None or self._stopping.is_set():
            return
        now = time.monotonic()
        if now < self._next_refresh or self._refreshing:
            return
        with self._lock:
            if now < self._next_refresh or self._refreshing:
                return
            self._refreshing = True
            self._next_refresh = now + self.options.refresh
        threading.Thread(target=self._refresh_main, name="asgimesh-refresh", daemon=True).start()

    # -- work -----------------------------------------------------------------------------------

    def _feed(self) -> Feed:
        return open_feed(self.options, self._token, self._verify)

    async def _once(self) -> None:
        feed = self._feed()
        try:
            envelope = await feed.latest()
            if envelope is not None:
                await self._accept(feed, envelope)
        except FeedUnavailableError as exc:
            log.warning("control_plane_unreachable", source=self.name, problem=str(exc))
        finally:
            await feed.aclose()

    def _refresh_main(self) -> None:
        try:

            async def refresh_and_report() -> None:
                await self._once()
                await self._report_once()

            _run_in_thread(refresh_and_report, FIRST_LOAD_TIMEOUT, inline=True)
        finally:
            self._refreshing = False

    def _thread_main(self) -> None:
        anyio.run(self._watch, backend="asyncio")

    async def _watch(self) -> None:
        self._loop = asyncio.get_running_loop()
        with anyio.CancelScope() as scope:
            self._scope = scope
            if self._stopping.is_set():
                return
            feed = self._feed()
            try:
                async with anyio.create_task_group() as tasks:
                    if self._reporter is not None:
                        tasks.start_soon(self._report_loop, feed)
                    await self._poll_loop(feed)
            finally:
                with anyio.CancelScope(shield=True):
                    await feed.aclose()

    async def _poll_loop(self, feed: Feed) -> None:
        backoff = ReconnectBackoff(self.options.backoff_base, self.options.backoff_max)
        while True:
            started = time.monotonic()
            news = False
            try:
                async with contextlib.aclosing(feed.watch(self.watermark, LONG_POLL)) as versions:
                    async for envelope in versions:
                        news = await self._accept(feed, envelope) or news
            except FeedUnavailableError as exc:
                if backoff.failures == 0:
                    log.warning("control_plane_unreachable", source=self.name, problem=str(exc))
                await anyio.sleep(backoff.next_delay())
                continue
            except Exception as exc:  # a bug must not end the watch: log it, back off, go on
                kind, message = describe_error(exc)
                log.error(
                    "control_plane_watch_error", source=self.name, error_type=kind, message=message
                )
                await anyio.sleep(backoff.next_delay())
                continue
            if not news and time.monotonic() - started < QUICK_CYCLE:
                # Answered at once with nothing new (an old version, a refused one, an empty
                # answer): a confused server or proxy. Asking again at once would spin.
                await anyio.sleep(backoff.next_delay())
                continue
            if backoff.failures:
                log.info("control_plane_reconnected", source=self.name, after=backoff.failures)
                backoff.reset()

    async def _accept(self, feed: Feed, envelope: dict[str, Any]) -> bool:
        """Verify, then apply; whether the version was new and is now in force. Refusals are
        logged and counted by the store's failure listeners; the last good policy stays."""
        if self._bundle is None:
            try:
                self._bundle = load_bundle(await feed.trust_bundle())
            except ValueError:
                raise FeedUnavailableError("the trust bundle is not PEM certificates") from None
            log.warning(
                "trust_bundle_pinned",
                source=self.name,
                mode="trust-on-first-use",
                advice="set MESH_CA to the mesh's trust bundle, or use https://",
            )
        claimed = envelope.get("version")
        if isinstance(claimed, int) and claimed <= self.watermark:
            return False
        key = (claimed, envelope.get("signature"), envelope.get("signature_v2"))
        if key in self._refused:
            return False
        try:
            verified = verify_envelope(
                envelope,
                self._bundle,
                trust_domain=self._trust_domain,
                trusted_signers=self._signers,
            )
            check_freshness(
                verified.version, verified.signed_at, now=self._clock(), max_age=self._max_age
            )
        except SignatureError as exc:
            self._remember_refusal(key)
            self._policy.refused(PolicyError([f"signature: {exc}"], source=self.name))
            return False
        version = verified.version
        if verified.signed_at is None and not self._warned_untimed:
            self._warned_untimed = True
            log.warning(
                "policy_signing_time_missing",
                source=self.name,
                version=version,
                advice="upgrade the control plane: without a signing time an old envelope can "
                "be replayed; accepted because MESH_POLICY_MAX_AGE=0",
            )
        try:
            snapshot = self._policy.apply(verified.policy, source=self.name, version=version)
        except PolicyError:
            self._remember_refusal(key)
            return False  # the store's failure listeners logged and counted it
        self.watermark = max(self.watermark, version)
        log.info("policy_applied", source=self.name, version=snapshot.version)
        return True

    def _remember_refusal(self, key: tuple[object, ...]) -> None:
        self._refused[key] = None
        while len(self._refused) > _REFUSALS_KEPT:
            self._refused.popitem(last=False)

    async def _report_loop(self, feed: Feed) -> None:
        while True:
            event = self._report_now = anyio.Event()
            with anyio.move_on_after(self.options.report_every):
                await event.wait()
            with contextlib.suppress(FeedUnavailableError):  # the poll loop logs outages
                await self._report(feed)

    async def _report_once(self) -> None:
        """One report over a feed of its own (serverless refresh, the last report); an
        unreachable control plane is not an error here: the next one will say so."""
        feed = self._feed()
        try:
            with contextlib.suppress(FeedUnavailableError):
                await self._report(feed)
        finally:
            await feed.aclose()

    async def _report(self, feed: Feed) -> None:
        if self._reporter is not None:
            await feed.report(self._reporter(self._policy.current.version))


def _run_in_thread(
    func: Callable[[], Awaitable[None]], timeout: float, *, inline: bool = False
) -> None:
    """Run ``func`` on a private event loop, at most ``timeout`` seconds.

    A helper thread, because the caller may itself be inside a running event loop (a runtime
    built during an ASGI lifespan) where a second loop cannot start.
    """

    async def bounded() -> None:
        with anyio.move_on_after(timeout):
            await func()

    if inline:
        anyio.run(bounded, backend="asyncio")
        return
    thread = threading.Thread(
        target=anyio.run, args=(bounded,), kwargs={"backend": "asyncio"}, daemon=True
    )
    thread.start()
    thread.join(timeout + 1)
