"""A fake upstream service for tests and drills: an ASGI app that misbehaves on request.

Resilience code is only as good as the failures it has met. ``FakeUpstream`` answers every path
with one configurable behaviour (``ok``, ``fail`` with a status, ``hang``, ``slow``, ``reset``, a
percentage of failures, or of slow answers), counts what it receives, and can be switched at run
time over HTTP, so a test or a chaos drill drives real uvicorn processes on loopback rather than
mocks::

    uvicorn --factory asgimesh.testing:upstream_from_env --http h11   # UPSTREAM_BEHAVIOUR=fail:503

Control paths (never subject to the behaviour): ``GET /_upstream/stats`` (requests seen, per
method, and the headers, body length and body SHA-256 of the last request),
``PUT /_upstream/behaviour`` with a behaviour string as body (which also clears any
``Retry-After``), ``PUT /_upstream/retry-after`` (a ``Retry-After`` value for 429/503 answers,
until the next behaviour), ``POST /_upstream/reset-stats``.

Paths under ``/stream`` answer (when ``ok``) ten chunks 20 ms apart. Behaviour strings: ``ok``,
``fail:503``, ``hang``, ``slow:0.2`` (seconds), ``reset``,
``flaky:50:503`` (that percent of requests fail with that status, drawn from a seeded RNG so runs
repeat), ``lag:10:0.2`` (that percent of requests answer after that many seconds, the others at
once: a replica with a latency tail, for hedged requests; drawn from the same RNG). ``reset``
closes the connection without an answer, as a crashed upstream does: it starts a response with a
header h11 refuses, so uvicorn's h11 protocol drops the connection before any byte is written
(run uvicorn with ``--http h11``).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import random
from collections import Counter
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass
from typing import Any

import anyio

__all__ = ["Behaviour", "FakeUpstream", "parse_behaviour", "upstream_from_env"]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

KINDS = ("ok", "fail", "hang", "slow", "reset", "flaky", "lag")
#: A response start whose header name h11 refuses: uvicorn then closes without writing a byte.
_RESET_START = {"type": "http.response.start", "status": 200, "headers": [(b"bad header", b"")]}


@dataclass(frozen=True, slots=True)
class Behaviour:
    """What the upstream does with each request."""

    kind: str = "ok"
    status: int = 200
    seconds: float = 0.0
    percent: float = 0.0

    def __str__(self) -> str:
        if self.kind == "fail":
            return f"fail:{self.status}"
        if self.kind == "slow":
            return f"slow:{self.seconds:g}"
        if self.kind == "flaky":
            return f"flaky:{self.percent:g}:{self.status}"
        if self.kind == "lag":
            return f"lag:{self.percent:g}:{self.seconds:g}"
        return self.kind


def parse_behaviour(text: str) -> Behaviour:
    """``"fail:503"`` to a :class:`Behaviour`; ``ValueError`` naming what was expected."""
    kind, _, rest = text.strip().partition(":")
    try:
        if kind in ("ok", "hang", "reset") and not rest:
            return Behaviour(kind)
        if kind == "fail":
            return Behaviour("fail", status=int(rest or 503))
        if kind == "slow":
            return Behaviour("slow", seconds=float(rest))
        if kind == "flaky":
            percent, _, status = rest.partition(":")
            return Behaviour("flaky", status=int(status or 503), percent=float(percent))
        if kind == "lag":
            percent, _, seconds = rest.partition(":")
            return Behaviour("lag", seconds=float(seconds), percent=float(percent))
    except ValueError:
        pass
    raise ValueError(
        "expected ok, fail:STATUS, hang, slow:SECONDS, reset, flaky:PERCENT:STATUS or "
        f"lag:PERCENT:SECONDS, got {text!r}"
    )


class FakeUpstream:
    """An ASGI app with one behaviour for every path except ``/_upstream/...``."""

    def __init__(self, behaviour: Behaviour | str = "ok", *, name: str = "upstream", seed: int = 0):
        self.behaviour = parse_behaviour(behaviour) if isinstance(behaviour, str) else behaviour
        self.name = name
        self.requests = 0
        self.by_method: Counter[str] = Counter()
        self.last_headers: dict[str, str] = {}
        #: The last request's body, as its length and SHA-256 (a test compares copies by it).
        self.last_body: tuple[int, str] = (0, "")
        #: Extra headers of 429/503 answers, set by ``PUT /_upstream/retry-after``.
        self.behaviour_headers: dict[str, str] = {}
        self._rng = random.Random(seed)  # noqa: S311 - failure draws, not secrets

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await _lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        path: str = scope["path"]
        body = await _read_body(receive)
        if path.startswith("/_upstream/"):
            await self._control(scope["method"], path, body, send)
            return
        self.requests += 1
        self.by_method[scope["method"]] += 1
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
        self.last_headers = headers
        self.last_body = (len(body), hashlib.sha256(body).hexdigest())
        behaviour = self.behaviour
        kind = behaviour.kind
        if kind == "hang":
            await anyio.sleep_forever()
        if kind == "slow" or (kind == "lag" and self._rng.random() * 100 < behaviour.percent):
            await anyio.sleep(behaviour.seconds)
        if kind == "reset":
            with contextlib.suppress(Exception):  # h11's refusal is the point: the connection drops
                await send(_RESET_START)
            return
        status = 200
        if kind == "fail" or (kind == "flaky" and self._rng.random() * 100 < behaviour.percent):
            status = behaviour.status
        if status == 200 and path.startswith("/stream"):
            await self._stream(send)
            return
        payload = {
            "upstream": self.name,
            "method": scope["method"],
            "path": path,
            "status": status,
            "body_length": len(body),
            "headers": headers,
        }
        extra: list[tuple[bytes, bytes]] = []
        if status in (429, 503) and "retry-after" in self.behaviour_headers:
            extra.append((b"retry-after", self.behaviour_headers["retry-after"].encode()))
        await _send_json(send, status, payload, extra)

    async def _stream(self, send: Send) -> None:
        """Ten chunks 20 ms apart: a client can see the first before the last is written."""
        headers = [(b"content-type", b"text/plain")]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        for index in range(10):
            chunk = b"chunk%d\n" % index
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
            await anyio.sleep(0.02)
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    async def _control(self, method: str, path: str, body: bytes, send: Send) -> None:
        if path == "/_upstream/stats":
            await _send_json(
                send,
                200,
                {
                    "name": self.name,
                    "behaviour": str(self.behaviour),
                    "requests": self.requests,
                    "by_method": dict(self.by_method),
                    "last_headers": self.last_headers,
                    "last_body_length": self.last_body[0],
                    "last_body_sha256": self.last_body[1],
                },
            )
        elif path == "/_upstream/behaviour" and method == "PUT":
            try:
                self.behaviour = parse_behaviour(body.decode("utf-8", "replace"))
            except ValueError as exc:
                await _send_json(send, 422, {"error": "bad behaviour", "detail": str(exc)})
                return
            # A new behaviour starts clean: a Retry-After set for the last one would otherwise
            # stretch (or stop) the retries of whoever uses this upstream next.
            self.behaviour_headers = {}
            await _send_json(send, 200, {"behaviour": str(self.behaviour)})
        elif path == "/_upstream/retry-after" and method == "PUT":
            self.behaviour_headers = {"retry-after": body.decode("ascii", "replace").strip()}
            await _send_json(send, 200, {"retry-after": self.behaviour_headers["retry-after"]})
        elif path == "/_upstream/reset-stats" and method == "POST":
            self.requests = 0
            self.by_method.clear()
            self.last_headers, self.last_body = {}, (0, "")
            await _send_json(send, 200, {"requests": 0})
        else:
            await _send_json(send, 404, {"error": "not found", "detail": path})


def upstream_from_env() -> FakeUpstream:
    """For ``uvicorn --factory``: ``UPSTREAM_BEHAVIOUR``, ``UPSTREAM_NAME``, ``UPSTREAM_SEED``."""
    return FakeUpstream(
        os.environ.get("UPSTREAM_BEHAVIOUR", "ok"),
        name=os.environ.get("UPSTREAM_NAME", "upstream"),
        seed=int(os.environ.get("UPSTREAM_SEED", "0")),
    )


async def _read_body(receive: Receive) -> bytes:
    chunks = []
    while True:
        message = await receive()
        if message["type"] != "http.request":
            break
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            break
    return b"".join(chunks)


async def _send_json(
    send: Send, status: int, payload: object, extra: list[tuple[bytes, bytes]] | None = None
) -> None:
    body = json.dumps(payload).encode()
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        *(extra or ()),
    ]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def _lifespan(receive: Receive, send: Send) -> None:
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return
