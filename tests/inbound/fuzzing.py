"""The inbound fuzzer: seeded random HTTP/1.1 requests, a raw-socket client that pipelines them
over keep-alive connections, and the verdict on each answer.

Everything an outsider controls is randomised: the method (odd tokens too), the target
(percent-encoding, ``..``, very long, bytes that are not UTF-8, ``/_mesh/*`` look-alikes), the
query string, the ``host``, the mesh's own headers (trace context, request id, the three
deadline headers, ``mesh-identity``, forwarded client certificates, ``authorization``),
duplicates, huge values, control characters, the body with its framing, and WebSocket
handshakes. Requests are plain bytes made by :class:`RequestMaker` from one
``random.Random(seed)``: request ``i`` of a seed is always the same, so a failure names the
seed and the index along with the bytes.

Most requests are well framed and travel pipelined, several on one connection. A request that
may desynchronise the connection (a ``content-length`` that lies, conflicting framing, an
upgrade) is sent *alone*, on a connection of its own. When a server closes a connection (after
refusing a request in its parser, say), the requests it did not answer are sent again on a
fresh one; one that the server closes on without any answer, three times, is given up on, and
the test allows that only for requests whose bytes a server's parser may refuse.

:func:`verdict` knows what each party may answer. The app answers ``200`` with a body that
starts ``app:``. The mesh answers mesh traffic with its ``x-request-id`` echo, and refuses with
one of :data:`MESH_STATUSES` as JSON ``{"error", "detail"}``; its admin paths answer JSON or
the Prometheus text. The server's own parser refuses malformed requests with a 4xx of its own,
without the mesh's header. Any 5xx but the mesh's JSON 503/504, any 200 that is not the app's,
and any request that reached ``/secure`` without a credential that names ``orders`` fail.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import random
import re
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

#: What the mesh may answer with instead of calling the app (contract, sections 5 and 6).
MESH_STATUSES = frozenset({400, 401, 403, 404, 405, 413, 429, 431, 503, 504})
#: What a server's own HTTP parser may answer a request it cannot parse with.
SERVER_STATUSES = frozenset({400, 404, 405, 413, 414, 431, 501})
ADMIN = ("/_mesh/health", "/_mesh/metrics", "/_mesh/config")
ORDERS = "spiffe://mesh.local/ns/default/sa/orders"

_TCHAR = "!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
_HEX = "0123456789abcdef"
#: Host headers (the server and the spans read them): ports that are no number, or too big.
_HOSTS = (
    "127.0.0.1:8000", "localhost", "[::1]:80", "[::1]", ":", "host:", ":80", "a:\u00b2",
    "a:99999999999999999999", "a:65536", "a:-1", "\u00e9:80", "x" * 300, "a:b:c", "[::1]:x",
    "a:\u00b9\u00b2", "a:0",
)  # fmt: skip
#: Bytes in a request head that some servers refuse: controls other than tab, and non-ASCII.
_UNUSUAL = re.compile(rb"[\x00-\x08\x0a-\x0c\x0e-\x1f\x7f-\xff]")


@dataclass
class Credentials:
    """Values that really prove an identity (made by the test with its throwaway CA), so the
    fuzzer also walks the paths where verification succeeds."""

    admin_token: str
    #: ``mesh-identity`` tokens: one of ``orders`` for this service, and refused ones.
    good_token: str
    bad_tokens: Sequence[str]
    #: PEM of ``orders``' certificate from the mesh CA, and one from a foreign CA.
    good_pem: str
    foreign_pem: str


@dataclass
class FuzzRequest:
    index: int
    raw: bytes
    method: str
    #: Sent on a connection of its own (the framing may leave the connection unusable).
    alone: bool = False
    #: Bytes of body the app should count, where the framing is honest (else ``None``).
    body_size: int | None = None
    #: Carries something that names ``orders`` in a header that may prove it.
    credentialed: bool = False
    #: A WebSocket handshake (the app closes every one before accepting).
    websocket: bool = False
    #: Something a server's parser may refuse before the mesh sees the request (bytes outside
    #: printable ASCII in the head, a line or head past common limits, no ``host``, framing that
    #: lies): the only requests that may go unanswered, when the server closes on them.
    server_may_refuse: bool = False
    tries: int = 0


@dataclass
class FuzzResponse:
    status: int
    headers: dict[str, list[str]]
    body: bytes

    def header(self, name: str) -> str | None:
        values = self.headers.get(name)
        return values[0] if values else None


class RequestMaker:
    """Makes request ``0, 1, 2, ...`` of a seed (not thread-safe; one event loop uses it)."""

    def __init__(self, seed: int, credentials: Credentials) -> None:
        self.rng = random.Random(seed)
        self.seed = seed
        self.c = credentials
        self._count = 0
        good_der = _der(credentials.good_pem)
        foreign_der = _der(credentials.foreign_pem)
        self._xfcc_good = (
            f'By=spiffe://mesh.local/ns/default/sa/fuzzed;Hash=abc;Cert="{quote(credentials.good_pem)}"',
            f"URI={ORDERS}",
            f'Hash=1;Cert="{quote(credentials.good_pem)}";URI=spiffe://other/ns/x/sa/y',
            f'URI=spiffe://mesh.local/ns/default/sa/x,By=a;URI={ORDERS}',
        )
        self._xfcc_bad = (
            f'Cert="{quote(credentials.foreign_pem)}"',
            'Cert="-----BEGIN CERTIFICATE-----%0Agarbage%0A-----END CERTIFICATE-----"',
            "URI=spiffe://evil.example/ns/default/sa/orders",
            "URI=https://mesh.local/orders",
            'URI="unterminated',
            ";;,,==;",
            "=",
            ",",
            "By=;URI=",
            'Cert="%ZZ%"',
            'Cert="' + "%41" * 3000 + '"',
            "URI=" + "a" * 17000,
            'Hash="\\";URI=spiffe://mesh.local/ns/default/sa/orders',
        )
        self._client_cert_good = (f":{good_der}:",)
        self._client_cert_bad = (
            f":{foreign_der}:", "::", ":", ":!!!:", ":" + "QUFB" * 5000 + ":", good_der,
            ":" + good_der[:-8] + ":", "::::",
        )  # fmt: skip

    def __iter__(self) -> Iterator[FuzzRequest]:
        return self

    def __next__(self) -> FuzzRequest:
        index = self._count
        self._count += 1
        return self.make(index)

    # -- one request --------------------------------------------------------------------------

    def make(self, index: int) -> FuzzRequest:
        rng = self.rng
        method = self._method()
        target = self._path() + self._query()
        headers: list[tuple[str, str]] = []
        credentialed = False
        for _ in range(rng.choice((0, 1, 2, 3, 4, 6))):
            name, value, proves = self._mesh_header()
            credentialed = credentialed or proves
            headers.append((name, value))
            if rng.random() < 0.08:  # the same header twice, another value
                name2, value2, proves2 = self._mesh_header(name)
                credentialed = credentialed or proves2
                headers.append((name2, value2))
        for _ in range(rng.choice((0, 0, 0, 1, 2))):
            headers.append(self._other_header())
        if rng.random() < 0.1:
            headers = [(_recase(rng, n), v) for n, v in headers]
        body, framing, alone, honest = self._body(method)
        if rng.random() < 0.04:
            alone = True
            headers.append(("connection", rng.choice(("close", "keep-alive", "upgrade, x"))))
        if rng.random() < 0.03:
            headers.append(("expect", "100-continue"))
        websocket = rng.random() < 0.03
        if websocket:  # a handshake: upgrades the connection, so alone
            alone = True
            method, body, framing = "GET", b"", []
            key = base64.b64encode(rng.randbytes(16)).decode()
            headers += [("upgrade", "websocket"), ("connection", "Upgrade"),
                        ("sec-websocket-key", key), ("sec-websocket-version", "13")]  # fmt: skip
        roll = rng.random()
        if roll < 0.85:
            host = [("host", "127.0.0.1")]
        elif roll < 0.97:
            host = [("host", rng.choice(_HOSTS))]
        else:
            host = []
        lines = [f"{method} {target} HTTP/1.1"]
        raw_headers = [*host, *headers, *framing]
        head = "\r\n".join(lines + [f"{n}: {v}" for n, v in raw_headers]) + "\r\n\r\n"
        encoded = head.encode("latin-1")
        request = FuzzRequest(
            index=index,
            raw=encoded + body,
            server_may_refuse=(
                honest is None
                or not host
                or len(encoded) > 16000
                or any(
                    len(line) > (4000 if n == 0 else 8000) or _UNUSUAL.search(line) is not None
                    for n, line in enumerate(encoded.split(b"\r\n"))
                )
            ),
            method=method,
            alone=alone,
            body_size=None if websocket else honest,
            credentialed=credentialed,
            websocket=websocket,
        )
        return request

    def _method(self) -> str:
        rng = self.rng
        roll = rng.random()
        if roll < 0.45:
            return "GET"
        if roll < 0.62:
            return "POST"
        if roll < 0.70:
            return "HEAD"
        if roll < 0.82:
            return rng.choice(("PUT", "DELETE", "PATCH", "OPTIONS", "TRACE"))
        odd = ("BREW", "M-SEARCH", "get", "Post", "PROPFIND", "X" * 60, "G.E.T", "*", "~",
               "'QUOTED'", "A!B#C$")  # fmt: skip
        if roll < 0.95:
            return rng.choice(odd)
        return "".join(rng.choice(_TCHAR) for _ in range(rng.randint(1, 24)))

    def _path(self) -> str:
        rng = self.rng
        base = rng.choice(
            (
                "/", "/echo", "/echo/x", "/call", "/call/deep", "/secure", "/secure/admin",
                *ADMIN, *ADMIN, "/_mesh/", "/_mesh/other", "/_mesh/health/", "/_MESH/health",
                "/%5Fmesh/health", "/_mesh%2Fconfig", "/_mesh/health%00", "/echo/../_mesh/config",
                "/_mesh/../secure", "/secure/..", "//secure", "/%73ecure", "/echo/%2e%2e/secure",
                "/elsewhere", "*", "/echo;x=1", "/echo%",
            )
        )  # fmt: skip
        roll = rng.random()
        if roll < 0.55:
            return base
        if roll < 0.75:
            return base.rstrip("/") + "/" + self._segment()
        if roll < 0.90:
            return base + "/" + "/".join(self._segment() for _ in range(rng.randint(2, 8)))
        if roll < 0.97:
            return base + "/" + "a" * rng.choice((200, 1000, 2000, 4000, 9000, 20000))
        # bytes outside ASCII, raw (latin-1 here means: this byte on the wire)
        if roll < 0.985:
            return base + "/" + "".join(chr(rng.randint(0x80, 0xFF)) for _ in range(rng.randint(1, 6)))
        return base + "/" + self._segment()

    def _segment(self) -> str:
        rng = self.rng
        parts = []
        for _ in range(rng.randint(1, 4)):
            kind = rng.random()
            if kind < 0.3:
                parts.append("".join(rng.choice("abcxyz019-._~") for _ in range(rng.randint(1, 9))))
            elif kind < 0.55:
                parts.append("%" + rng.choice(_HEX) + rng.choice(_HEX))
            elif kind < 0.65:
                parts.append(rng.choice(("%00", "%ff", "%c3%28", "%e2%82", "%zz", "%", "%2", "%25")))
            elif kind < 0.75:
                parts.append(rng.choice(("..", ".", "%2e%2e", "%2E.", "..;", "...")))
            elif kind < 0.765:
                parts.append(rng.choice(("\u00e9", "\u00ff", "\u0080")))  # raw high bytes
            else:
                parts.append(rng.choice(("!", "$", "&", "'", "(", ")", "*", "+", ",", ";", "=",
                                         ":", "@", "[", "]", "{", "}", "|", "\\", "^", "`")))  # fmt: skip
        return "".join(parts)

    def _query(self) -> str:
        rng = self.rng
        roll = rng.random()
        if roll < 0.6:
            return ""
        if roll < 0.7:
            return "?"
        if roll < 0.97:
            pairs = []
            for _ in range(rng.randint(1, 6)):
                key = rng.choice(("a", "mb", "s", "x%20y", "%00", "", "&", "k" * 50, "%C3%A9"))
                value = rng.choice(("1", "", "%ff", "a+b", "=", "==", "%", "v" * 300, "%e2%82"))
                pairs.append(f"{key}={value}" if rng.random() < 0.8 else key)
            return "?" + rng.choice("&;").join(pairs)
        return "?" + "q" * rng.choice((3000, 8000, 30000))

    def _mesh_header(self, name: str | None = None) -> tuple[str, str, bool]:
        rng = self.rng
        c = self.c
        if name is None:
            name = rng.choice(
                ("traceparent", "traceparent", "tracestate", "x-request-id", "x-request-id",
                 "mesh-deadline-ms", "mesh-deadline-ms", "grpc-timeout",
                 "x-envoy-expected-rq-timeout-ms", "mesh-identity", "mesh-identity",
                 "x-forwarded-client-cert", "x-forwarded-client-cert", "client-cert",
                 "authorization", "authorization", "mesh-attempt")
            )  # fmt: skip
        lowered = name.lower()
        if lowered == "traceparent":
            trace_id = "".join(rng.choice(_HEX) for _ in range(32))
            span_id = "".join(rng.choice(_HEX) for _ in range(16))
            return name, rng.choice((
                f"00-{trace_id}-{span_id}-01", f"00-{trace_id}-{span_id}-00",
                f"01-{trace_id}-{span_id}-01-extra", f"ff-{trace_id}-{span_id}-01",
                f"00-{'0' * 32}-{span_id}-01", f"00-{trace_id}-{'0' * 16}-01",
                f"00-{trace_id.upper()}-{span_id}-01", f"00-{trace_id}-{span_id}",
                f"00-{trace_id}-{span_id}-01-", f" 00-{trace_id}-{span_id}-01 ",
                f"00-{trace_id}-{span_id}-0\u00e9", "00-" + "a" * 600, "", "-", "garbage",
                f"00-{trace_id}-{span_id}-01\t",
            )), False  # fmt: skip
        if lowered == "tracestate":
            return name, rng.choice((
                "vendor=value", "a=1,b=2", ",".join(f"k{i}=v" for i in range(40)),
                "x" * 600, "=,=", "novalue", "", "k=\u00e9", "k=v,   ,", "k=v\tx",
                "a=" + "b" * 511,
            )), False  # fmt: skip
        if lowered == "x-request-id":
            return name, rng.choice((
                "req-1", "a" * 200, "a" * 201, "has space", "\u00e9\u00e8", "", "a\tb",
                "x" * 5000, "'\"<script>",
                "".join(rng.choice(_TCHAR) for _ in range(rng.randint(1, 40))),
            )), False  # fmt: skip
        if lowered in ("mesh-deadline-ms", "x-envoy-expected-rq-timeout-ms"):
            return name, rng.choice((
                "0", "1", "5", "100", "2000", "999999999999", "9" * 13, "9" * 400, "-5", "1e3",
                "1.5", "abc", "\u00b2", " 100 ", "", "0x10", "00000000001",
            )), False  # fmt: skip
        if lowered == "grpc-timeout":
            return name, rng.choice((
                "10S", "0m", "1n", "99999999H", "999999999H", "1x", "", "S", "5u", "-1S",
                "\u00b2S", "1 S", "100m",
            )), False  # fmt: skip
        if lowered == "mesh-identity":
            roll = rng.random()
            if roll < 0.3:
                return name, c.good_token, True
            if roll < 0.6:
                return name, rng.choice(c.bad_tokens), False
            return name, rng.choice((
                "", "a.b.c", "...", "eyJ.eyJ.sig", "x" * 20000,
                base64.urlsafe_b64encode(rng.randbytes(60)).decode(),
                c.good_token[:-3] + "abc", c.good_token + ".x", "\u00e9.\u00e9.\u00e9",
                "Bearer " + c.good_token,
            )), False  # fmt: skip
        if lowered == "x-forwarded-client-cert":
            if rng.random() < 0.35:
                return name, rng.choice(self._xfcc_good), True
            return name, rng.choice(self._xfcc_bad), False
        if lowered == "client-cert":
            if rng.random() < 0.35:
                return name, rng.choice(self._client_cert_good), True
            return name, rng.choice(self._client_cert_bad), False
        if lowered == "authorization":
            return name, rng.choice((
                f"Bearer {c.admin_token}", f"bearer {c.admin_token}", "Bearer wrong",
                "Bearer", "Bearer ", "Basic dXNlcjpwdw==", "Bearer " + "x" * 9000,
                f"Bearer {c.admin_token}x", "Bearer \u00e9", f"  Bearer   {c.admin_token}  ",
                "Token abc",
            )), False  # fmt: skip
        return name, rng.choice(("1", "0", "-1", "x", "")), False

    def _other_header(self) -> tuple[str, str]:
        rng = self.rng
        name = rng.choice(
            ("x-custom", "accept", "user-agent", "cookie", "x-b3-traceid", "forwarded",
             "x-forwarded-for", "".join(rng.choice(_TCHAR) for _ in range(rng.randint(1, 30))))
        )  # fmt: skip
        value = rng.choice((
            "v", "", "\u00e9\u00ff", "a\tb", "x" * rng.choice((100, 1000, 3000, 9000, 40000)),
            "".join(chr(rng.randint(0x20, 0x7E)) for _ in range(20)),
            "\x01\x02", "a\x7fb", "127.0.0.1", "for=10.0.0.1",
        ))  # fmt: skip
        return name, value

    def _body(self, method: str) -> tuple[bytes, list[tuple[str, str]], bool, int | None]:
        """(body bytes, framing headers, alone, bytes the app should count or None)."""
        rng = self.rng
        roll = rng.random()
        if roll < 0.5 and method != "POST":
            return b"", [], False, 0
        # Mostly small: the mesh passes bodies through, and bytes cost the server's parser.
        size = rng.choice((0, 1, 10, 100, 1000, 4000, 10000, 65536))
        if rng.random() < 0.01:
            size = 300_000
        data = rng.randbytes(size)
        if roll < 0.8:
            return data, [("content-length", str(size))], False, size
        if roll < 0.9:
            chunks = []
            left = data
            while left:
                n = rng.randint(1, max(1, len(left)))
                chunks.append(f"{n:x}\r\n".encode() + left[:n] + b"\r\n")
                left = left[n:]
            return b"".join(chunks) + b"0\r\n\r\n", [("transfer-encoding", "chunked")], False, size
        # framing that lies or conflicts: alone on its connection
        lie = rng.choice((
            [("content-length", str(size + 5))], [("content-length", str(max(0, size - 1)))],
            [("content-length", "abc")], [("content-length", "-1")],
            [("content-length", f"{size},{size}")],
            [("content-length", str(size)), ("content-length", str(size + 1))],
            [("content-length", str(size)), ("transfer-encoding", "chunked")],
            [("transfer-encoding", "chunked")], [("transfer-encoding", "gzip")],
            [("content-length", "9" * 30)],
        ))  # fmt: skip
        return data, lie, True, None


def _der(pem: str) -> str:
    lines = [line for line in pem.strip().splitlines() if "-----" not in line]
    return "".join(lines)


def _recase(rng: random.Random, name: str) -> str:
    return "".join(ch.upper() if rng.random() < 0.5 else ch for ch in name)


# ---- the client ------------------------------------------------------------------------------


class _Closed(Exception):
    pass


async def _read_response(reader: asyncio.StreamReader, method: str) -> FuzzResponse:
    """One response, skipping interim 1xx ones."""
    while True:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError) as error:
            raise _Closed from error
        lines = head.decode("latin-1").split("\r\n")
        try:
            status = int(lines[0].split(" ", 2)[1])
        except (IndexError, ValueError):
            # Not a response: the server wrote half of one (uvicorn's 400 that fails midway,
            # see test_fuzz.UVICORN_AFTER_400). The connection is of no more use.
            raise _Closed(head[:200]) from None
        headers: dict[str, list[str]] = {}
        for line in lines[1:]:
            if line:
                name, _, value = line.partition(":")
                headers.setdefault(name.strip().lower(), []).append(value.strip())
        if 100 <= status < 200 and status != 101:
            continue
        try:
            if method == "HEAD" or status in (101, 204, 304):
                body = b""
            elif "chunked" in ",".join(headers.get("transfer-encoding", [])).lower():
                parts = []
                while True:
                    size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
                    chunk = await reader.readexactly(size + 2)
                    if size == 0:
                        break
                    parts.append(chunk[:-2])
                body = b"".join(parts)
            elif "content-length" in headers:
                body = await reader.readexactly(int(headers["content-length"][0]))
            else:
                body = await reader.read()  # until the server closes
        except (asyncio.IncompleteReadError, ConnectionError) as error:
            raise _Closed from error
        return FuzzResponse(status, headers, body)


@dataclass
class FuzzRun:
    """What one run through a server saw."""

    answered: list[tuple[FuzzRequest, FuzzResponse]] = field(default_factory=list)
    #: Requests no response came back for (the server dropped the connection on them).
    unanswered: list[FuzzRequest] = field(default_factory=list)
    connections: int = 0
    seconds: float = 0.0


async def run(
    port: int,
    requests: Iterator[FuzzRequest],
    *,
    connections: int = 8,
    depth: int = 16,
    window: int = 12_000,
    on_answer: Callable[[FuzzRequest, FuzzResponse], bool] | None = None,
    keep_alive: bool = True,
    read_timeout: float = 20.0,
) -> FuzzRun:
    """Send every request in ``requests`` to ``127.0.0.1:port``, ``depth`` at a time pipelined on
    each of ``connections`` keep-alive connections (and no more than ``window`` bytes at a time:
    a server keeps the pipelined requests behind the one it is answering in a bounded buffer,
    16 KiB in h11). Without ``keep_alive`` each batch has a connection of its own. A server
    that has not answered for ``read_timeout`` seconds has its connection dropped.
    ``on_answer(request, response)`` sees each answer as it comes (the run keeps only those it
    returns true for)."""
    result = FuzzRun()
    retry: deque[FuzzRequest] = deque()
    exhausted = False

    def take(n: int) -> list[FuzzRequest]:
        """Up to ``n`` requests, at most ``window`` bytes of them (but at least one)."""
        nonlocal exhausted
        batch: list[FuzzRequest] = []
        size = 0
        while len(batch) < n and size < window:
            if retry:
                request = retry.popleft()
            elif exhausted:
                break
            else:
                try:
                    request = next(requests)
                except StopIteration:
                    exhausted = True
                    break
            batch.append(request)
            size += len(request.raw)
        return batch

    def answered(request: FuzzRequest, response: FuzzResponse) -> None:
        if on_answer is None or on_answer(request, response):
            result.answered.append((request, response))

    async def exchange(
        batch: list[FuzzRequest], kept: list[Any]
    ) -> tuple[list[FuzzRequest], bool]:
        """Send ``batch`` on the worker's keep-alive connection (``kept``: empty, or its reader
        and writer; a new one is made when empty, and left there while the server keeps it
        open): the requests left unanswered, and whether the server said it would close
        (else it closed, or reset, without an answer)."""
        alone = batch[-1].alone
        if not kept or alone or not keep_alive:
            result.connections += 1
            connection = list(await asyncio.open_connection("127.0.0.1", port, limit=1 << 20))
            if not alone and keep_alive:
                kept[:] = connection
        else:
            connection = kept
        reader, writer = connection
        pending = deque(batch)
        said_close = False
        reusable = not alone and keep_alive
        try:
            writer.write(b"".join(r.raw for r in batch))
            with contextlib.suppress(ConnectionError):
                await writer.drain()
            if alone and batch[-1].body_size is None:
                # A lying content-length must not hang the server. Only then: asyncio closes a
                # server's transport on EOF (uvicorn's ``eof_received`` returns None), so an
                # honest request whose app takes a moment (``/call``) would lose its answer.
                with contextlib.suppress(OSError):
                    writer.write_eof()
            while pending:
                try:
                    response = await asyncio.wait_for(
                        _read_response(reader, pending[0].method), read_timeout
                    )
                except (_Closed, TimeoutError):
                    reusable = False
                    break
                answered(pending.popleft(), response)
                if "close" in ",".join(response.headers.get("connection", [])).lower():
                    said_close, reusable = True, False
                    break
        finally:
            if not reusable:
                if connection is kept:
                    kept.clear()
                writer.close()
                with contextlib.suppress(Exception):
                    await writer.wait_closed()
        return list(pending), said_close

    async def worker() -> None:
        kept: list[Any] = []
        while True:
            batch = take(depth)
            if not batch:
                if kept:
                    kept[1].close()
                return
            # Alone ones go on connections of their own; the rest pipelined together.
            together = [r for r in batch if not r.alone]
            groups = [[r] for r in batch if r.alone] + ([together] if together else [])
            for group in groups:
                left, said_close = await exchange(group, kept)
                if said_close:  # those behind the answer that closed it go again
                    retry.extend(left)
                    continue
                if not left:
                    continue
                # Closed without an answer: the first unanswered one may be why. It goes again
                # alone, three times at most; those behind it are only sent again.
                first = left[0]
                first.tries += 1
                if first.tries >= 3:
                    result.unanswered.append(first)
                else:
                    first.alone = True
                    retry.append(first)
                retry.extend(left[1:])

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(connections)))
    result.seconds = time.perf_counter() - started
    return result


# ---- the verdict -----------------------------------------------------------------------------


def verdict(request: FuzzRequest, response: FuzzResponse) -> str | None:
    """Why this answer is wrong, or ``None`` when some party may give it."""
    status, body = response.status, response.body
    if request.websocket:
        # The app closes each handshake before accepting: the server answers 403 (or the mesh
        # refuses it first, as JSON: checked below); a 101 would mean someone accepted it.
        if status == 101:
            return "a WebSocket handshake was accepted"
        if status == 403 and response.header("x-request-id") is None and not (
            (response.header("content-type") or "").startswith("application/json")
        ):
            return None
    is_json = (response.header("content-type") or "").startswith("application/json")
    head = request.method == "HEAD"
    if status >= 500 and status not in (503, 504):
        return f"{status} from the server"
    mesh_traffic = response.header("x-request-id") is not None
    if mesh_traffic and status == 200:
        if not (head and body == b"") and not body.startswith(b"app:"):
            return "200 with the mesh's request id that is not the app's answer"
        if body.startswith(b"app:secure:") and not request.credentialed:
            return "reached /secure without a credential naming orders"
        size = body.rsplit(b":", 1)[-1]
        if body.startswith(b"app:called:"):
            return None
        if body == b"app:broken-body":
            return None if request.body_size is None else "the app saw an honest body broken"
        if request.body_size is not None and size.isdigit() and int(size) != request.body_size:
            return f"the app read {int(size)} bytes of a {request.body_size}-byte body"
        return None
    if mesh_traffic or is_json:
        if status == 200:
            return _admin_document(body, head)
        if status not in MESH_STATUSES:
            return f"mesh answered {status}, not one of {sorted(MESH_STATUSES)}"
        if not is_json:
            return f"mesh answered {status} without JSON"
        if head:
            return None
        try:
            document = json.loads(body)
        except ValueError:
            return f"mesh answered {status} with a body that is not JSON"
        if not (
            isinstance(document, dict)
            and set(document) == {"error", "detail"}
            and all(isinstance(v, str) for v in document.values())
        ):
            return f"mesh answered {status} without the {{error, detail}} shape"
        return None
    if status == 200:
        if (response.header("content-type") or "").startswith("text/plain") and (
            head or b"mesh_inbound_requests_total" in body
        ):
            return None  # /_mesh/metrics
        return "200 that is neither the app's nor an admin path's"
    if status in SERVER_STATUSES:
        return None  # the server's own parser refused it before the mesh saw it
    return f"unexpected {status}"


def _admin_document(body: bytes, head: bool) -> str | None:
    if head:
        return None
    try:
        document = json.loads(body)
    except ValueError:
        return "admin 200 with a body that is not JSON"
    if not isinstance(document, dict) or not ({"status", "policy"} & set(document)):
        return "admin 200 that is neither /_mesh/health nor /_mesh/config"
    return None


def describe(request: FuzzRequest, response: FuzzResponse | None, seed: int) -> str:
    """One failure, for the test's message: the request's bytes (shortened) and the answer."""
    raw = request.raw if len(request.raw) <= 400 else request.raw[:400] + b"...(cut)"
    answer = (
        f"{response.status} {response.headers} {response.body[:200]!r}"
        if response is not None
        else "no answer"
    )
    return f"seed {seed} request #{request.index}: {raw!r}\n  -> {answer}"
