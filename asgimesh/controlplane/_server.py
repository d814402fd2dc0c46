"""The control plane's HTTP API (contract, section 7) as a Starlette app.

Handlers are thin: the store keeps state, :class:`VersionBoard` holds the newest version and
parks long polls, :mod:`asgimesh.policy._signed` signs, :mod:`asgimesh.policy` validates with
the same words as ``asgimesh policy check``. Every refusal is JSON ``{"error", "detail"}``
with a 4xx status; a store that cannot be reached is a 503, never a 500 with a traceback.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import hashlib
import hmac
import json
import math
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import httpx
from pydantic import ValidationError
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import HTMLResponse, Response, StreamingResponse
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from .._durations import parse_duration
from .._errors import PolicyError
from .._etcd import EtcdError
from .._log import Throttle, bounded, describe_error, get_logger
from .._wire import bearer_token, is_service_name
from ..identity import (
    WORKLOAD_LIFETIME,
    CertificateRequestError,
    JWTIssuer,
    MeshCA,
    is_spiffe_id,
)
from ..policy import (
    format_for,
    format_validation_error,
    parse_document,
    sign_record,
    validate_document,
)
from ._board import PollSlots, VersionBoard
from ._dashboard import DASHBOARD_HEADERS, DASHBOARD_HTML
from ._inputs import MAX_VERSION, ApiError, ApiJSONResponse, json_value, show, whole_number
from ._keys import load_admin_token, load_all_keys
from ._prometheus import PrometheusError, PrometheusSource
from ._rollup import Report, roll_up, roll_up_edges
from .stores import PolicyRecord, Store, open_store

__all__ = ["ControlPlaneConfig", "create_app", "token_digest"]

log = get_logger("asgimesh.controlplane")
#: Errors that can repeat per request (a store down, a bug on a hot path) log a bounded number
#: of lines; the next line that gets through says how many were dropped.
_error_log = Throttle()

MAX_BODY = 1 << 20
#: What a ``mesh-identity`` token lives unless the caller asks for less (the longest allowed).
MAX_JWT_LIFETIME = 300.0
PEM = "application/x-pem-file"
NDJSON = "application/x-ndjson"


@dataclass(frozen=True)
class ControlPlaneConfig:
    store: str = ""
    state_dir: Path = Path(".asgimesh-controlplane")
    admin_token: str | None = None
    trust_domain: str = "mesh.local"
    #: Longest long poll; a client asking for more waits this long.
    max_wait: float = 60.0
    #: An instance that has not reported for this long is dropped from ``/v1/services``.
    stale_after: float = 60.0
    #: Long polls parked at once; past this a poll is answered 503 with ``Retry-After``.
    max_parked_polls: int = 1024
    #: Of those, how many one client address may hold.
    max_parked_per_client: int = 256
    #: Seconds a poll refused for want of a slot is told to wait (``Retry-After``).
    poll_retry_after: int = 5
    #: Lifetime of the workload certificates issued (services renew at half of it); at most
    #: the CA's cap of 24 h. Shorter narrows what a leaked key is worth, at more CSRs.
    cert_lifetime: float = WORKLOAD_LIFETIME.total_seconds()
    #: A shared store (etcd) keeps the private keys sealed with the 32-byte key in this file
    #: (AES-256-GCM), so that replicas share them; ``None``: they stay in ``state_dir`` files.
    key_encryption_key_file: Path | None = None
    #: Move private keys that an older version kept in the store in clear, then delete them.
    migrate_keys: bool = False
    #: Read ``/v1/services`` figures from this Prometheus server (its base URL) instead of the
    #: instances' reports, with rates over ``prometheus_window`` (a PromQL duration).
    prometheus: str | None = None
    prometheus_window: str = "1m"
    #: How often the current version is signed again with a fresh signing time (also once at
    #: start): services refuse envelopes older than their ``MESH_POLICY_MAX_AGE``, and a policy
    #: no one has changed for months must still look current. Far below any sensible max age.
    resign_every: float = 3600.0


#: How long one Prometheus answer serves every dashboard that asks (each asks every 2 s).
PROMETHEUS_CACHE = 1.0


def token_digest(token: str) -> str:
    """Service tokens are stored as this digest only: a leaked store leaks no token."""
    return hashlib.sha256(token.encode()).hexdigest()


class _HeldStream(StreamingResponse):
    """A streamed long poll that gives its parking slot back however it ends: all sent, the
    client gone, or the server shutting down."""

    def __init__(self, content: AsyncIterator[bytes], release: Callable[[], None], **kw: Any):
        super().__init__(content, **kw)
        self._release = release

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self._release()


class ControlPlane:
    """State shared by the handlers of one app instance (one replica)."""

    def __init__(self, config: ControlPlaneConfig) -> None:
        self.config = config
        self.store: Store = open_store(config.store, config.state_dir)
        self.admin_token = config.admin_token or ""
        self.ca: MeshCA | None = None
        self.jwt: JWTIssuer | None = None
        self.board: VersionBoard | None = None
        self.polls = PollSlots(config.max_parked_polls, config.max_parked_per_client)
        self.prometheus = (
            PrometheusSource(config.prometheus, window=config.prometheus_window)
            if config.prometheus
            else None
        )
        self._figures: tuple[float, dict[str, Any]] | None = None
        #: Schedules a call on the server's event loop from a signal handler (asyncio's
        #: ``call_soon_threadsafe``), once the lifespan has started.
        self._on_loop: Callable[[Callable[[], None]], object] | None = None
        self._cert_lifetime = datetime.timedelta(seconds=config.cert_lifetime)

    # -- life -----------------------------------------------------------------------------------

    @asynccontextmanager
    async def lifespan(self, app: Starlette) -> AsyncIterator[None]:
        await self.store.open()
        try:
            if not self.admin_token:
                self.admin_token = await anyio.to_thread.run_sync(
                    load_admin_token, self.config.state_dir
                )
            self.ca, self.jwt = await load_all_keys(
                self.store,
                self.config.state_dir,
                self.config.trust_domain,
                kek_file=self.config.key_encryption_key_file,
                migrate=self.config.migrate_keys,
            )
            self.board = VersionBoard()
            with contextlib.suppress(RuntimeError):  # not asyncio (trio): no early drain
                self._on_loop = asyncio.get_running_loop().call_soon_threadsafe
            latest = await self.store.latest()
            if latest is not None:
                self.board.publish(latest)
                await self._resign()
            log.info(
                "control_plane_ready", store=self.store.description, version=self.board.version
            )
            async with anyio.create_task_group() as tasks:
                if self.store.shared:
                    tasks.start_soon(self._follow)
                tasks.start_soon(self._resign_loop)
                yield
                tasks.cancel_scope.cancel()
        finally:
            await self.store.close()

    def shutting_down(self) -> None:
        """The server was told to stop (safe from a signal handler): parked long polls are
        answered now with nothing new, instead of being cancelled mid-wait when the server's
        graceful-shutdown time runs out (a traceback per poll in the log)."""
        board, on_loop = self.board, self._on_loop
        if board is not None and on_loop is not None:
            on_loop(board.close)

    async def _follow(self) -> None:
        assert self.board is not None
        async for record in self.store.follow(self.board.version):
            if self.board.publish(record):
                log.info("policy_version_seen", version=record.version)

    async def _resign_loop(self) -> None:
        while True:
            await anyio.sleep(self.config.resign_every)
            try:
                await self._resign()
            except Exception as exc:  # the store down, or a bug: never the control plane's end
                # The copy in memory is served re-signed already; the store catches up next time.
                kind, message = describe_error(exc)
                log.warning("policy_resign_failed", error_type=kind, message=message)

    async def _resign(self) -> None:
        """Sign the current version again, now: same version and document, a new signing time.
        Served at once and stored (services reading etcd directly take it from there)."""
        assert self.board is not None
        assert self.ca is not None
        record = self.board.record
        if record is None:
            return
        fresh = sign_record(self.ca.signing_key, record, time.time())
        if self.board.refresh(fresh):  # else a newer version landed meanwhile, signed afresh
            await self.store.refresh(fresh)
        log.debug("policy_version_resigned", version=fresh.version, signed_at=fresh.signed_at)

    # -- helpers --------------------------------------------------------------------------------

    def _bearer(self, request: Request) -> str:
        token = bearer_token(request.headers.get("authorization"))
        if token is None:
            raise ApiError(
                401, "unauthorized", "expected an 'Authorization: Bearer <token>' header"
            )
        return token

    def _is_admin(self, token: str) -> bool:
        return bool(self.admin_token) and hmac.compare_digest(
            token.encode(), self.admin_token.encode()
        )

    def require_admin(self, request: Request) -> None:
        if not self._is_admin(self._bearer(request)):
            raise ApiError(401, "unauthorized", "the admin token is missing or wrong")

    async def require_service(self, request: Request) -> str | None:
        """The service a service token belongs to, or ``None`` for the admin token."""
        token = self._bearer(request)
        if self._is_admin(token):
            return None
        service = await self.store.token_service(token_digest(token))
        if service is None:
            raise ApiError(401, "unauthorized", "the service token is unknown")
        return service

    async def _body(self, request: Request) -> bytes:
        body = bytearray()
        async for chunk in request.stream():
            body += chunk
            if len(body) > MAX_BODY:
                raise ApiError(413, "too_large", f"the body exceeds {MAX_BODY} bytes")
        return bytes(body)

    async def _json_object(self, request: Request) -> dict[str, Any]:
        data = json_value(await self._body(request))
        if not isinstance(data, dict):
            raise ApiError(400, "bad_json", f"expected a JSON object, got {type(data).__name__}")
        return data

    def _record(self, version: int, policy: dict[str, Any], note: str | None) -> PolicyRecord:
        assert self.ca is not None
        now = time.time()
        unsigned = PolicyRecord(
            version=version,
            policy=policy,
            signature="",
            signer=self.ca.signer_pem().decode(),
            created=now,
            note=note,
        )
        return sign_record(self.ca.signing_key, unsigned, now)

    async def _store_version(self, policy: dict[str, Any], note: str | None) -> PolicyRecord:
        assert self.board is not None
        record = await self.store.append(lambda n: self._record(n, policy, note))
        self.board.publish(record)
        log.info("policy_version_stored", version=record.version, note=note)
        return record

    # -- handlers -------------------------------------------------------------------------------

    async def get_policy(self, request: Request) -> Response:
        assert self.board is not None
        after = whole_number(request.query_params.get("after"), "after")
        wait = _wait_param(request, self.config.max_wait)
        if after is None:
            if self.board.record is None:
                raise ApiError(404, "no_policy", "no policy version has been stored yet")
            if request.headers.get("if-none-match") == f'"{self.board.version}"':
                return Response(status_code=304, headers={"etag": f'"{self.board.version}"'})
            return self._current()
        if wait <= 0:
            return self._current() if self.board.version > after else self._not_modified()
        if self.board.version > after and NDJSON not in request.headers.get("accept", ""):
            return self._current()  # answered at once: no need for a slot
        return await self._long_poll(request, after, wait)

    async def _long_poll(self, request: Request, after: int, wait: float) -> Response:
        """The parked part of ``GET /v1/policy``, holding one of :attr:`polls` throughout."""
        assert self.board is not None
        client = request.client.host if request.client is not None else ""
        release = self.polls.hold(client)
        if release is None:
            retry = str(self.config.poll_retry_after)
            raise ApiError(
                503,
                "busy",
                f"too many long polls are parked (at most {self.polls.total}, "
                f"{self.polls.per_client} per client); retry in {retry} s",
                headers={"retry-after": retry},
            )
        try:
            if self.board.version <= after and await self._wait_newer(request, after, wait) is None:
                return self._not_modified()
            if NDJSON not in request.headers.get("accept", ""):
                return self._current()
            version, body = self.board.version, self.board.body
            stream = _HeldStream(
                self._stream(body, version, anyio.current_time() + wait),
                release,
                media_type=NDJSON,
                headers={"etag": f'"{version}"', "cache-control": "no-cache"},
            )
            release = None  # the stream gives the slot back once it is over
            return stream
        finally:
            if release is not None:
                release()

    def _current(self) -> Response:
        assert self.board is not None
        headers = {"etag": f'"{self.board.version}"', "cache-control": "no-cache"}
        return Response(self.board.body, media_type="application/json", headers=headers)

    def _not_modified(self) -> Response:
        assert self.board is not None
        return Response(status_code=304, headers={"etag": f'"{self.board.version}"'})

    async def _stream(self, body: bytes, version: int, deadline: float) -> AsyncIterator[bytes]:
        """The long poll, kept open: one JSON line per version until the wait is over.

        Asked for with ``Accept: application/x-ndjson``; anyone else gets the contract's plain
        long poll. A watcher then costs one request per ``wait`` instead of one per change,
        which is what lets one control plane fan a change out to hundreds of services at once.
        (Starlette ends the stream when the client disconnects.)
        """
        assert self.board is not None
        yield body + b"\n"
        while (left := deadline - anyio.current_time()) > 0:
            if await self.board.wait_newer(version, left) is None:
                return
            version, body = self.board.version, self.board.body
            yield body + b"\n"

    async def _wait_newer(self, request: Request, after: int, wait: float) -> PolicyRecord | None:
        """Park until a newer version or ``wait`` passes; give up early if the client leaves,
        so a watcher that went away holds nothing here until its wait would have ended."""
        assert self.board is not None
        board = self.board
        found: PolicyRecord | None = None
        async with anyio.create_task_group() as tasks:

            async def until_disconnect() -> None:
                while (await request.receive())["type"] != "http.disconnect":
                    pass
                tasks.cancel_scope.cancel()

            tasks.start_soon(until_disconnect)
            found = await board.wait_newer(after, wait)
            tasks.cancel_scope.cancel()
        return found

    async def put_policy(self, request: Request) -> Response:
        self.require_admin(request)
        raw = await self._body(request)
        fmt = format_for("", request.headers.get("content-type"))
        try:
            # In a worker thread: a large document takes a while to parse, and long polls, token
            # checks and reports must keep being answered meanwhile.
            document = await anyio.to_thread.run_sync(_checked_document, raw, fmt)
        except PolicyError as error:
            return _invalid(error.problems)
        record = await self._store_version(document, None)
        return ApiJSONResponse({"version": record.version})

    async def history(self, request: Request) -> Response:
        self.require_admin(request)
        limit = whole_number(request.query_params.get("limit"), "limit") or 100
        records = await self.store.history(min(limit, 1000))
        return ApiJSONResponse(
            {
                "versions": [
                    {"version": r.version, "created": r.created, "note": r.note, "policy": r.policy}
                    for r in records
                ]
            }
        )

    async def rollback(self, request: Request) -> Response:
        self.require_admin(request)
        data = await self._json_object(request)
        target = data.get("version")
        if (
            not isinstance(target, int)
            or isinstance(target, bool)
            or not 1 <= target <= MAX_VERSION
        ):
            raise ApiError(
                422,
                "invalid_request",
                f"version: expected a whole number from 1 to {MAX_VERSION}, got {show(target)}",
            )
        old = await self.store.get(target)
        if old is None:
            raise ApiError(404, "unknown_version", f"version {target} is not in the history")
        try:
            validate_document(old.policy, f"version {target}")
        except PolicyError as error:
            return _invalid(error.problems)
        record = await self._store_version(old.policy, f"rollback to {target}")
        return ApiJSONResponse({"version": record.version, "rolled_back_to": target})

    async def create_token(self, request: Request) -> Response:
        self.require_admin(request)
        data = await self._json_object(request)
        namespace, service = _service_of(data)
        token = "mst_" + secrets.token_urlsafe(32)
        await self.store.put_token(token_digest(token), f"{namespace}/{service}")
        log.info("service_token_created", service=service, namespace=namespace)
        return ApiJSONResponse({"token": token, "service": service, "namespace": namespace})

    async def trust_bundle(self, request: Request) -> Response:
        assert self.ca is not None
        return Response(self.ca.bundle_pem(), media_type=PEM)

    async def certificates(self, request: Request) -> Response:
        assert self.ca is not None
        owner = await self.require_service(request)
        raw = await self._body(request)
        csr = raw
        namespace_service = owner
        if request.headers.get("content-type", "").startswith("application/json"):
            data = json_value(raw or b"{}")
            if not isinstance(data, dict) or not isinstance(data.get("csr", ""), str):
                raise ApiError(400, "bad_json", "expected a JSON object with a 'csr' string")
            csr = data.get("csr", "").encode()
            if owner is None and "service" in data:
                namespace_service = "/".join(_service_of(data))
        if namespace_service is None:
            raise ApiError(422, "invalid_request", "service: required with the admin token")
        namespace, _, service = namespace_service.partition("/")
        spiffe_id = f"spiffe://{self.ca.trust_domain}/ns/{namespace}/sa/{service}"
        try:
            chain = await anyio.to_thread.run_sync(
                self.ca.sign_csr, csr, spiffe_id, self._cert_lifetime
            )
        except CertificateRequestError as exc:
            raise ApiError(422, "invalid_csr", str(exc)) from None
        log.info("certificate_issued", spiffe_id=spiffe_id)
        return Response(chain, media_type=PEM)

    async def jwt_svids(self, request: Request) -> Response:
        """A ``mesh-identity`` token for the service the token belongs to (never one the body
        names), for the one audience asked for, living at most five minutes."""
        assert self.jwt is not None
        owner = await self.require_service(request)
        data = await self._json_object(request)
        if owner is None:
            if "service" not in data:
                raise ApiError(422, "invalid_request", "service: required with the admin token")
            owner = "/".join(_service_of(data))
        audience = data.get("audience")
        lifetime = data.get("lifetime", MAX_JWT_LIFETIME)
        if not isinstance(lifetime, int | float) or isinstance(lifetime, bool):
            raise ApiError(
                422, "invalid_request", f"lifetime: expected seconds, got {show(lifetime)}"
            )
        namespace, _, service = owner.partition("/")
        subject = f"spiffe://{self.jwt.trust_domain}/ns/{namespace}/sa/{service}"
        if not isinstance(audience, str) or not is_spiffe_id(audience):
            raise ApiError(
                422,
                "invalid_audience",
                f"audience: expected the SPIFFE ID of the service to call, got {show(audience)}",
            )
        try:
            token, expires = self.jwt.sign(subject, audience, time.time(), float(lifetime))
        except ValueError as exc:
            raise ApiError(422, "invalid_audience", f"{exc}, got {show(audience)}") from None
        return ApiJSONResponse({"token": token, "spiffe_id": subject, "expires_at": expires})

    async def jwt_bundle(self, request: Request) -> Response:
        assert self.jwt is not None
        return ApiJSONResponse(self.jwt.jwks(), headers={"cache-control": "max-age=60"})

    async def report(self, request: Request) -> Response:
        owner = await self.require_service(request)
        data = await self._json_object(request)
        try:
            report = Report.model_validate(data)
        except ValidationError as exc:
            problems = format_validation_error(exc)
            raise ApiError(422, "invalid_report", "; ".join(problems), problems=problems) from None
        if owner is not None and owner.partition("/")[2] != report.service:
            raise ApiError(
                403, "forbidden", f"this token reports for {owner!r}, not {report.service!r}"
            )
        await self.store.put_report(report.service, report.instance, report.model_dump())
        return ApiJSONResponse({"accepted": True})

    async def services(self, request: Request) -> Response:
        assert self.board is not None
        record = self.board.record
        answer: dict[str, Any] = {
            "policy_version": self.board.version,
            "policy_created": record.created if record is not None else None,
        }
        figures = await self._prometheus_figures(answer)
        if figures is None:
            reports = await self.store.reports(time.time() - self.config.stale_after)
            figures = {"services": roll_up(reports), "edges": roll_up_edges(reports)}
        return ApiJSONResponse({**answer, **figures})

    async def _prometheus_figures(self, answer: dict[str, Any]) -> dict[str, Any] | None:
        """The figures from Prometheus (cached a second), or ``None`` to use the reports: in
        report mode, or when Prometheus cannot answer (``answer`` then says why)."""
        if self.prometheus is None:
            answer["source"] = "reports"
            return None
        now = time.monotonic()
        if self._figures is not None and now - self._figures[0] < PROMETHEUS_CACHE:
            answer["source"] = "prometheus"
            return self._figures[1]
        try:
            figures = await self.prometheus.services()
        except PrometheusError as error:
            answer["source"] = "reports"
            answer["warning"] = f"{error}; showing the instances' reports instead"
            if (dropped := _error_log.admit("prometheus")) is not None:
                log.warning("prometheus_unavailable", error=str(error), dropped=dropped)
            return None
        self._figures = (now, figures)
        answer["source"] = "prometheus"
        return figures

    async def dashboard(self, request: Request) -> Response:
        return HTMLResponse(DASHBOARD_HTML, headers=DASHBOARD_HEADERS)


def _service_of(data: Mapping[str, Any]) -> tuple[str, str]:
    """``(namespace, service)`` from a request naming them, each a valid name: they end up in
    a SPIFFE ID and a token's scope, where ``a b`` or ``x/../cp`` must never get."""
    names = []
    for field, value in (
        ("namespace", data.get("namespace", "default")),
        ("service", data.get("service")),
    ):
        if not is_service_name(value):
            raise ApiError(
                422,
                "invalid_request",
                f"{field}: expected a name of 1-253 letters, digits, '.', '_' or '-', "
                f"got {show(value)}",
            )
        names.append(value)
    return names[0], names[1]


def _checked_document(raw: bytes, fmt: str) -> dict[str, Any]:
    """A policy body parsed, normalised to plain JSON and validated, or a :class:`PolicyError`."""
    document = _plain_json(parse_document(raw, fmt, "request body"))
    validate_document(document, "request body")
    return document


def _plain_json(document: dict[str, Any]) -> dict[str, Any]:
    """The document as plain JSON values, as it will be signed and served (YAML dates and the
    like have no JSON form and are refused by path rather than failing later)."""
    try:
        normal: dict[str, Any] = json.loads(json.dumps(document, allow_nan=False))
    except (TypeError, ValueError, RecursionError) as exc:
        raise PolicyError([f"(document): expected JSON-compatible values: {exc}"]) from None
    return normal


def _invalid(problems: list[str]) -> Response:
    return ApiJSONResponse(
        {
            "error": "invalid_policy",
            "detail": f"{len(problems)} problem(s): " + "; ".join(problems),
            "problems": problems,
        },
        status_code=422,
    )


def _wait_param(request: Request, cap: float) -> float:
    value = request.query_params.get("wait")
    if value is None:
        return 0.0
    try:
        wait = parse_duration(value)
    except ValueError as exc:
        raise ApiError(400, "bad_parameter", f"wait: {exc}") from None
    return min(wait, cap) if math.isfinite(wait) else cap


async def _api_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    error = getattr(exc, "error", None) or {
        404: "not_found",
        405: "method_not_allowed",
    }.get(exc.status_code, "bad_request")
    body: dict[str, Any] = {"error": error, "detail": exc.detail}
    body.update(getattr(exc, "extra", {}))
    headers = dict(exc.headers or {})
    if exc.status_code == 401:
        headers["www-authenticate"] = "Bearer"
    return ApiJSONResponse(body, status_code=exc.status_code, headers=headers)


async def _internal(request: Request, exc: Exception) -> Response:
    """A bug: one log line here, answered in the API's shape. Starlette re-raises it after this
    handler, so the server prints its traceback once (plain, without locals)."""
    dropped = _error_log.admit("internal_error")
    if dropped is not None:
        kind, message = describe_error(exc)
        log.error(
            "internal_error",
            path=bounded(request.url.path),
            error_type=kind,
            message=message,
            dropped=dropped,
        )
    return ApiJSONResponse(
        {"error": "internal", "detail": "the control plane failed; see its log"}, status_code=500
    )


async def _store_down(request: Request, exc: Exception) -> Response:
    dropped = _error_log.admit("store_unavailable")
    if dropped is not None:
        log.warning("store_unavailable", error=" ".join(describe_error(exc)), dropped=dropped)
    return ApiJSONResponse(
        {"error": "store_unavailable", "detail": "the control plane's store cannot be reached"},
        status_code=503,
    )


def create_app(config: ControlPlaneConfig | None = None) -> Starlette:
    """The control-plane ASGI app; run it with a lifespan-aware server (uvicorn)."""
    plane = ControlPlane(config or ControlPlaneConfig())
    routes: list[tuple[str, Callable[[Request], Awaitable[Response]], list[str]]] = [
        ("/", plane.dashboard, ["GET"]),
        ("/v1/policy", plane.get_policy, ["GET"]),
        ("/v1/policy", plane.put_policy, ["PUT"]),
        ("/v1/policy/history", plane.history, ["GET"]),
        ("/v1/policy/rollback", plane.rollback, ["POST"]),
        ("/v1/tokens", plane.create_token, ["POST"]),
        ("/v1/trust-bundle", plane.trust_bundle, ["GET"]),
        ("/v1/certificates", plane.certificates, ["POST"]),
        ("/v1/jwt-svids", plane.jwt_svids, ["POST"]),
        ("/v1/jwt-bundle", plane.jwt_bundle, ["GET"]),
        ("/v1/reports", plane.report, ["POST"]),
        ("/v1/services", plane.services, ["GET"]),
    ]
    handlers: Mapping[Any, Callable[[Request, Exception], Awaitable[Response]]] = {
        HTTPException: _api_error,
        httpx.HTTPError: _store_down,
        EtcdError: _store_down,
        Exception: _internal,
    }
    app = Starlette(
        routes=[Route(path, endpoint, methods=methods) for path, endpoint, methods in routes],
        exception_handlers=dict(handlers),
        lifespan=plane.lifespan,
    )
    app.state.control_plane = plane
    return app
