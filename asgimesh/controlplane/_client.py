"""The control-plane client every service runs (``MESH_CONFIG=http(s)://…`` or ``etcd://…``).

Watching: a daemon thread runs a private asyncio loop (``anyio.run``) that long-polls the
control plane (or watches etcd) and applies each verified version. A thread of its own works the
same under uvicorn (asyncio or trio), gunicorn's sync workers and a plain script, never touches
the host's event loop, needs no lifespan wiring, and shares the async etcd code with the server.
Only one connection per process is parked at a time, so its cost is one idle socket.

Serverless (``?refresh=30s`` on ``MESH_CONFIG``): no background work. :meth:`on_request`, which
the runtime calls per request, starts at most one short-lived refresh every 30 s on a helper
thread and returns at once; the request never waits for it.

Trust: with ``MESH_CA`` the signer must chain to that bundle. Without it, the bundle is fetched
from the control plane on first contact and pinned for the life of the process
(trust on first use): use ``https://`` or set ``MESH_CA`` where the network is not trusted.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import secrets
import socket
import threading
import time
from collections.abc import AsyncGenerator, Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol
from urllib.parse import parse_qs, urlsplit, urlunsplit

import anyio
import httpx
import structlog
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ed25519

from .._durations import parse_duration
from .._errors import ConfigError, PolicyError
from ..identity import load_bundle
from ._etcd import EtcdError, EtcdStore
from ._golden import Reading, golden, read_registry
from ._signing import SignatureError, verify_policy
from ._tls import tls_context

if TYPE_CHECKING:
    from .._runtime import MeshRuntime

__all__ = ["Backoff", "ControlPlaneSource", "SourceOptions", "parse_source_url"]

log = structlog.get_logger("asgimesh.controlplane")

LONG_POLL = 30.0
NDJSON = "application/x-ndjson"
FIRST_LOAD_TIMEOUT = 3.0


@dataclass(frozen=True, slots=True)
class SourceOptions:
    """``MESH_CONFIG`` taken apart."""

    kind: str  # "http" or "etcd"
    base_url: str  # the control plane URL, or the etcd gateway URL
    prefix: str = "/asgimesh"  # etcd only
    #: Serverless mode: refresh at most this often, from requests. ``None``: watch.
    refresh: float | None = None
    report_every: float = 10.0
    #: Exponential backoff (full jitter) between reconnection attempts.
    backoff_base: float = 0.1
    backoff_max: float = 5.0


def parse_source_url(url: str) -> SourceOptions:
    """Parse ``http(s)://host:port[/path][?refresh=30s&report=10s]`` or ``etcd://host:port/p``.

    Unknown parameters are refused by name: a typo must not silently disable serverless mode.
    """
    parts = urlsplit(url)
    params = {k: v[-1] for k, v in parse_qs(parts.query, keep_blank_values=True).items()}
    unknown = sorted(set(params) - {"refresh", "report", "backoff_max"})
    if unknown:
        raise ConfigError(
            f"MESH_CONFIG={url!r}: unknown parameter {unknown[0]!r} "
            "(expected refresh, report or backoff_max)"
        )
    durations: dict[str, float] = {}
    for name, value in params.items():
        try:
            durations[name] = parse_duration(value)
        except ValueError as exc:
            raise ConfigError(f"MESH_CONFIG={url!r}: {name}: {exc}") from None
    refresh = durations.get("refresh")
    common: dict[str, Any] = {
        "refresh": refresh if refresh else None,
        "report_every": durations.get("report", 10.0) or 10.0,
        "backoff_max": durations.get("backoff_max", 5.0) or 5.0,
    }
    if parts.scheme == "etcd":
        if not parts.hostname or not parts.port:
            raise ConfigError(f"MESH_CONFIG={url!r}: expected etcd://host:port[/prefix]")
        return SourceOptions(
            kind="etcd",
            base_url=f"http://{parts.hostname}:{parts.port}",
            prefix=parts.path.rstrip("/") or "/asgimesh",
            **common,
        )
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(f"MESH_CONFIG={url!r}: expected an http(s):// or etcd:// URL")
    base = urlunsplit((parts.scheme, parts.netloc, parts.path.rstrip("/"), "", ""))
    return SourceOptions(kind="http", base_url=base, **common)


class Backoff:
    """Capped exponential backoff with full jitter (the AWS architecture blog's variant)."""

    def __init__(self, base: float, cap: float, rand: Callable[[], float] = random.random) -> None:
        self.base, self.cap, self._rand = base, cap, rand
        self.failures = 0

    def next_delay(self) -> float:
        self.failures += 1
        ceiling: float = min(self.cap, self.base * 2 ** min(self.failures, 30))
        return self._rand() * ceiling

    def reset(self) -> None:
        self.failures = 0


class FeedUnavailableError(Exception):
    """The control plane (or etcd) cannot be reached or answered with a server error."""


class Feed(Protocol):
    """Where signed versions come from: the control plane's HTTP API, or etcd directly."""

    async def latest(self) -> dict[str, Any] | None: ...

    async def newer(self, after: int, wait: float) -> dict[str, Any] | None: ...

    def watch(self, after: int, wait: float) -> AsyncGenerator[dict[str, Any], None]:
        """Versions newer than ``after`` as they come, for up to ``wait`` seconds."""

    async def trust_bundle(self) -> bytes: ...

    async def report(self, payload: dict[str, Any]) -> None: ...

    async def aclose(self) -> None: ...


class HttpFeed:
    def __init__(self, options: SourceOptions, token: str | None) -> None:
        headers = {"authorization": f"Bearer {token}"} if token else {}
        self._http = httpx.AsyncClient(
            base_url=options.base_url,
            headers=headers,
            timeout=httpx.Timeout(5.0, read=LONG_POLL + 10.0),
            verify=tls_context(),
        )
        self._token = token

    async def _get(self, path: str, **params: Any) -> httpx.Response:
        try:
            response = await self._http.get(path, params=params)
        except httpx.HTTPError as exc:
            raise FeedUnavailableError(f"{type(exc).__name__}: {exc}") from None
        if response.status_code >= 500:
            raise FeedUnavailableError(f"HTTP {response.status_code} from {path}")
        return response

    async def latest(self) -> dict[str, Any] | None:
        response = await self._get("/v1/policy")
        return _envelope(response)

    async def newer(self, after: int, wait: float) -> dict[str, Any] | None:
        response = await self._get("/v1/policy", after=after, wait=wait)
        return _envelope(response)

    async def watch(self, after: int, wait: float) -> AsyncGenerator[dict[str, Any], None]:
        """The long poll, asking the server to keep it open (``Accept: application/x-ndjson``):
        one line per version. A server that answers a plain long poll ends after one."""
        params = {"after": after, "wait": wait}
        try:
            async with self._http.stream(
                "GET", "/v1/policy", params=params, headers={"accept": NDJSON}
            ) as response:
                if response.status_code in (304, 404):
                    return
                if response.status_code != 200:
                    raise FeedUnavailableError(f"HTTP {response.status_code} from /v1/policy")
                if not response.headers.get("content-type", "").startswith(NDJSON):
                    await response.aread()
                    envelope = _envelope(response)
                    if envelope is not None:
                        yield envelope
                    return
                async for line in response.aiter_lines():
                    if line.strip():
                        yield _line(line)
        except httpx.HTTPError as exc:
            raise FeedUnavailableError(f"{type(exc).__name__}: {exc}") from None

    async def trust_bundle(self) -> bytes:
        response = await self._get("/v1/trust-bundle")
        if response.status_code != 200:
            raise FeedUnavailableError(f"HTTP {response.status_code} from /v1/trust-bundle")
        return response.content

    async def report(self, payload: dict[str, Any]) -> None:
        if not self._token:
            return
        try:
            response = await self._http.post("/v1/reports", json=payload)
        except httpx.HTTPError as exc:
            raise FeedUnavailableError(str(exc)) from None
        if response.status_code != 200:
            log.warning("report_refused", status=response.status_code, detail=response.text[:200])

    async def aclose(self) -> None:
        await self._http.aclose()


def _envelope(response: httpx.Response) -> dict[str, Any] | None:
    if response.status_code in (304, 404):
        return None
    if response.status_code != 200:
        raise FeedUnavailableError(f"HTTP {response.status_code}: {response.text[:200]}")
    try:
        data = response.json()
    except ValueError:
        raise FeedUnavailableError("the control plane did not answer with JSON") from None
    if not isinstance(data, dict):
        raise FeedUnavailableError("expected a JSON object from the control plane")
    return data


def _line(line: str) -> dict[str, Any]:
    try:
        data = json.loads(line)
    except ValueError:
        raise FeedUnavailableError("the control plane sent a line that is not JSON") from None
    if not isinstance(data, dict):
        raise FeedUnavailableError("expected JSON objects from the control plane")
    return data


class EtcdFeed:
    """Reads the versions the control plane stored in etcd, without a control plane between."""

    def __init__(self, options: SourceOptions) -> None:
        self._store = EtcdStore(options.base_url, options.prefix)

    async def latest(self) -> dict[str, Any] | None:
        try:
            record = await self._store.latest()
        except (httpx.HTTPError, EtcdError) as exc:
            raise FeedUnavailableError(str(exc)) from None
        return None if record is None else record.envelope()

    async def newer(self, after: int, wait: float) -> dict[str, Any] | None:
        current = await self.latest()
        if current is not None and int(current.get("version", 0)) > after:
            return current
        with anyio.move_on_after(wait):
            async for record in self._store.follow(after):
                # Several versions may have landed at once: jump to the newest.
                newest = await self.latest()
                return newest if newest is not None else record.envelope()
        return None

    async def watch(self, after: int, wait: float) -> AsyncGenerator[dict[str, Any], None]:
        envelope = await self.newer(after, wait)
        if envelope is not None:
            yield envelope

    async def trust_bundle(self) -> bytes:
        try:
            bundle = await self._store.read_bootstrap("trust-bundle")
        except (httpx.HTTPError, EtcdError) as exc:
            raise FeedUnavailableError(str(exc)) from None
        if bundle is None:
            raise FeedUnavailableError("no trust bundle in etcd yet (has a control plane started?)")
        return bundle.encode()

    async def report(self, payload: dict[str, Any]) -> None:
        try:
            await self._store.put_report(payload["service"], payload["instance"], payload)
        except (httpx.HTTPError, EtcdError) as exc:
            raise FeedUnavailableError(str(exc)) from None

    async def aclose(self) -> None:
        await self._store.close()


class ControlPlaneSource:
    """A :class:`~asgimesh._runtime.PolicySource` fed by the control plane or etcd."""

    def __init__(self, runtime: MeshRuntime, options: SourceOptions) -> None:
        self._runtime = runtime
        self.options = options
        where = options.base_url + (options.prefix if options.kind == "etcd" else "")
        self.name = f"controlplane:{where}" if options.kind == "http" else f"etcd:{where}"
        settings = runtime.settings
        self._token = settings.token.get_secret_value() if settings.token else None
        self._bundle: list[x509.Certificate] | None = None
        if settings.ca is not None:
            try:
                self._bundle = load_bundle(settings.ca.read_bytes())
            except (OSError, ValueError) as exc:
                raise ConfigError(
                    f"MESH_CA={str(settings.ca)!r}: expected a readable PEM bundle ({exc})"
                ) from None
        self._signers: dict[bytes, ed25519.Ed25519PublicKey] = {}
        self._seen = 0  # newest version received, applied or refused: the long poll's "after"
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._scope: anyio.CancelScope | None = None
        self._stopping = threading.Event()
        self._next_refresh = 0.0
        self._refreshing = False
        self.instance = f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(3)}"
        self._reading = Reading()
        self._read_at = time.monotonic()

    # -- PolicySource -----------------------------------------------------------------------------

    def load(self) -> None:
        """Try once, briefly. A control plane that is down is no reason not to start: the
        service serves with its environment and inline layers and the watcher keeps trying."""
        self._next_refresh = time.monotonic() + (self.options.refresh or 0)
        _run_in_thread(self._once, FIRST_LOAD_TIMEOUT)

    def start(self) -> None:
        if self.options.refresh is not None or self._thread is not None:
            return
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
        if self.options.kind == "etcd":
            return EtcdFeed(self.options)
        return HttpFeed(self.options, self._token)

    async def _once(self) -> None:
        feed = self._feed()
        try:
            envelope = await feed.latest()
            if envelope is not None:
                await self._accept(feed, envelope)
        except FeedUnavailableError as exc:
            log.warning("control_plane_unreachable", source=self.name, error=str(exc))
        finally:
            await feed.aclose()

    def _refresh_main(self) -> None:
        try:

            async def refresh_and_report() -> None:
                await self._once()
                feed = self._feed()
                try:
                    with contextlib.suppress(FeedUnavailableError):
                        await self._report(feed)
                finally:
                    await feed.aclose()

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
                    tasks.start_soon(self._report_loop, feed)
                    await self._poll_loop(feed)
            finally:
                with anyio.CancelScope(shield=True):
                    await feed.aclose()

    async def _poll_loop(self, feed: Feed) -> None:
        backoff = Backoff(self.options.backoff_base, self.options.backoff_max)
        while True:
            try:
                async with contextlib.aclosing(feed.watch(self._seen, LONG_POLL)) as versions:
                    async for envelope in versions:
                        await self._accept(feed, envelope)
            except FeedUnavailableError as exc:
                if backoff.failures == 0:
                    log.warning("control_plane_unreachable", source=self.name, error=str(exc))
                await anyio.sleep(backoff.next_delay())
                continue
            except Exception:  # a bug must not end the watch: log it, back off, go on
                log.exception("control_plane_watch_error", source=self.name)
                await anyio.sleep(backoff.next_delay())
                continue
            if backoff.failures:
                log.info("control_plane_reconnected", source=self.name, after=backoff.failures)
                backoff.reset()

    async def _accept(self, feed: Feed, envelope: dict[str, Any]) -> None:
        """Verify, then apply. Refusals are logged and counted; the last good policy stays."""
        if self._bundle is None:
            try:
                self._bundle = load_bundle(await feed.trust_bundle())
            except ValueError:
                raise FeedUnavailableError("the trust bundle is not PEM certificates") from None
            log.info("trust_bundle_pinned", source=self.name, mode="trust-on-first-use")
        version = envelope.get("version")
        if isinstance(version, int) and version > self._seen:
            self._seen = version
        try:
            version, policy = verify_policy(envelope, self._bundle, trusted_signers=self._signers)
        except SignatureError as exc:
            self._runtime.metrics.policy_reloads.labels(
                self._runtime.settings.service, "failure"
            ).inc()
            log.warning("policy_signature_refused", source=self.name, reason=str(exc))
            return
        try:
            snapshot = self._runtime.policy.apply(policy, source=self.name, version=version)
        except PolicyError:
            return  # the store's failure listener logged and counted it
        log.info("policy_applied", source=self.name, version=snapshot.version)

    async def _report_loop(self, feed: Feed) -> None:
        while True:
            await anyio.sleep(self.options.report_every)
            with contextlib.suppress(FeedUnavailableError):  # the poll loop logs outages
                await self._report(feed)

    async def _report(self, feed: Feed) -> None:
        runtime = self._runtime
        now = time.monotonic()
        reading = read_registry(runtime.metrics.registry, runtime.settings.service)
        summary = golden(self._reading, reading, now - self._read_at)
        self._reading, self._read_at = reading, now
        await feed.report(
            {
                "service": runtime.settings.service,
                "instance": self.instance,
                "policy_version": runtime.policy.current.version,
                "requests": summary.requests,
                "requests_per_second": summary.requests_per_second,
                "success_rate": summary.success_rate,
                "p50_ms": summary.p50_ms,
                "p99_ms": summary.p99_ms,
            }
        )


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
