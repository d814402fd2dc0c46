"""Where signed policy versions come from: the control plane's HTTP API, or etcd directly.

A feed only moves bytes: it never verifies or applies (the watcher does), and reports every
outage as :class:`FeedUnavailableError` with a one-line reason, so the watcher has one thing to
back off from. Answers are bounded: a policy envelope larger than :data:`MAX_ENVELOPE` is refused
unread, whatever the control plane (or someone in its place) sends.
"""

from __future__ import annotations

import json
import ssl
from collections.abc import AsyncGenerator
from typing import Any, Protocol

import anyio
import httpx

from ..._etcd import EtcdError, EtcdPolicyReader
from ..._log import bounded, get_logger, redact
from ..._ssl import tls_context
from ...identity import control_plane_tls_problem
from ._url import SourceOptions

__all__ = ["EtcdFeed", "Feed", "FeedUnavailableError", "HttpFeed", "open_feed"]

log = get_logger("asgimesh.policy")

LONG_POLL = 30.0
NDJSON = "application/x-ndjson"
#: The largest envelope (or NDJSON line) accepted from a feed.
MAX_ENVELOPE = 4 * 1024 * 1024


class FeedUnavailableError(Exception):
    """The control plane (or etcd) cannot be reached or answered with a server error."""


class Feed(Protocol):
    async def latest(self) -> dict[str, Any] | None: ...

    def watch(self, after: int, wait: float) -> AsyncGenerator[dict[str, Any], None]:
        """Versions newer than ``after`` as they come, for up to ``wait`` seconds."""

    async def trust_bundle(self) -> bytes: ...

    async def report(self, payload: dict[str, Any]) -> None: ...

    async def aclose(self) -> None: ...


def open_feed(
    options: SourceOptions, token: str | None, verify: ssl.SSLContext | None = None
) -> Feed:
    """A new connection to the feed ``options`` names (one per watch cycle or refresh).
    ``verify`` is the process's TLS context for the control plane (pinned with ``MESH_CA``);
    ``None``: the shared system-trust one."""
    if options.kind == "etcd":
        return EtcdFeed(options)
    return HttpFeed(options, token, verify)


def _unavailable(exc: Exception) -> FeedUnavailableError:
    refused = control_plane_tls_problem(exc)
    if refused is not None:
        return FeedUnavailableError(bounded(redact(refused), 600))
    return FeedUnavailableError(bounded(redact(f"{type(exc).__name__}: {exc}")))


class HttpFeed:
    def __init__(
        self, options: SourceOptions, token: str | None, verify: ssl.SSLContext | None = None
    ) -> None:
        headers = {"authorization": f"Bearer {token}"} if token else {}
        self._http = httpx.AsyncClient(
            base_url=options.base_url,
            headers=headers,
            timeout=httpx.Timeout(5.0, read=LONG_POLL + 10.0),
            verify=verify if verify is not None else tls_context(),
        )
        self._token = token

    async def _get(self, path: str, **params: Any) -> tuple[int, bytes]:
        try:
            async with self._http.stream("GET", path, params=params) as response:
                body = await _read_bounded(response)
        except httpx.HTTPError as exc:
            raise _unavailable(exc) from None
        if response.status_code >= 500:
            raise FeedUnavailableError(f"HTTP {response.status_code} from {path}")
        return response.status_code, body

    async def latest(self) -> dict[str, Any] | None:
        return _envelope(*await self._get("/v1/policy"))

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
                    envelope = _envelope(response.status_code, await _read_bounded(response))
                    if envelope is not None:
                        yield envelope
                    return
                async for line in response.aiter_lines():
                    if len(line) > MAX_ENVELOPE:
                        raise FeedUnavailableError("the control plane sent an oversized version")
                    if line.strip():
                        yield _json_object(line)
        except httpx.HTTPError as exc:
            raise _unavailable(exc) from None

    async def trust_bundle(self) -> bytes:
        status, body = await self._get("/v1/trust-bundle")
        if status != 200:
            raise FeedUnavailableError(f"HTTP {status} from /v1/trust-bundle")
        return body

    async def report(self, payload: dict[str, Any]) -> None:
        if not self._token:
            return
        try:
            response = await self._http.post("/v1/reports", json=payload)
        except httpx.HTTPError as exc:
            raise _unavailable(exc) from None
        if response.status_code != 200:
            log.warning(
                "report_refused",
                status=response.status_code,
                detail=bounded(redact(response.text)),
            )

    async def aclose(self) -> None:
        await self._http.aclose()


async def _read_bounded(response: httpx.Response) -> bytes:
    """The body of a streamed ``response``, refusing more than :data:`MAX_ENVELOPE` bytes."""
    chunks, size = [], 0
    async for chunk in response.aiter_bytes():
        size += len(chunk)
        if size > MAX_ENVELOPE:
            raise FeedUnavailableError(f"the answer is larger than {MAX_ENVELOPE} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def _envelope(status: int, body: bytes) -> dict[str, Any] | None:
    if status in (304, 404):
        return None
    if status != 200:
        text = body[:400].decode("utf-8", "replace")
        raise FeedUnavailableError(f"HTTP {status}: {bounded(redact(text))}")
    return _json_object(body)


def _json_object(text: str | bytes) -> dict[str, Any]:
    """One JSON object from the control plane: a whole answer, or one line of a stream."""
    try:
        data = json.loads(text)
    except (ValueError, RecursionError):
        raise FeedUnavailableError("the control plane did not send JSON") from None
    if not isinstance(data, dict):
        raise FeedUnavailableError("expected a JSON object from the control plane")
    return data


class EtcdFeed:
    """Reads the versions the control plane stored in etcd, without a control plane between."""

    def __init__(self, options: SourceOptions) -> None:
        self._etcd = EtcdPolicyReader(options.etcd or options.base_url, options.prefix)

    async def latest(self) -> dict[str, Any] | None:
        try:
            record = await self._etcd.latest()
        except (httpx.HTTPError, EtcdError, ValueError, KeyError) as exc:
            raise _unavailable(exc) from None
        return None if record is None else record.envelope()

    async def _newer(self, after: int, wait: float) -> dict[str, Any] | None:
        current = await self.latest()
        if current is not None and int(current.get("version", 0)) > after:
            return current
        with anyio.move_on_after(wait):
            async for record in self._etcd.follow(after):
                # Several versions may have landed at once: jump to the newest.
                newest = await self.latest()
                return newest if newest is not None else record.envelope()
        return None

    async def watch(self, after: int, wait: float) -> AsyncGenerator[dict[str, Any], None]:
        envelope = await self._newer(after, wait)
        if envelope is not None:
            yield envelope

    async def trust_bundle(self) -> bytes:
        try:
            bundle = await self._etcd.read_bootstrap("trust-bundle")
        except (httpx.HTTPError, EtcdError) as exc:
            raise _unavailable(exc) from None
        if bundle is None:
            raise FeedUnavailableError("no trust bundle in etcd yet (has a control plane started?)")
        return bundle.encode()

    async def report(self, payload: dict[str, Any]) -> None:
        try:
            await self._etcd.put_report(payload["service"], payload["instance"], payload)
        except (httpx.HTTPError, EtcdError) as exc:
            raise _unavailable(exc) from None

    async def aclose(self) -> None:
        await self._etcd.close()
