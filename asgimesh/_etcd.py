"""etcd through its v3 JSON gateway (``/v3/kv/...``, ``/v3/watch``), with httpx, and the mesh's
layout of keys in it: shared by the control plane's etcd store (which writes) and a service's
``MESH_CONFIG=etcd://`` feed (which only reads versions and the trust bundle, and writes reports).

No gRPC stubs: the gateway ships with every etcd since 3.3 and speaks plain JSON (keys and
values base64, 64-bit numbers as strings, fields at their default value omitted). Versions are
keys ``<prefix>/policy/v/<000000000042>``, zero-padded so that key order is version order;
``<prefix>/policy/latest`` holds the highest number and a compare-and-swap transaction on its
``mod_revision`` writes the counter and the record together, so two replicas never make the
same version. Replicas learn of each other's writes through a watch on the version prefix.
"""

from __future__ import annotations

import base64
import json
import random
import ssl
import time
from collections.abc import AsyncIterator
from typing import Any

import anyio
import httpx

from ._backoff import ReconnectBackoff
from ._etcd_access import EtcdAccess, EtcdAccessError
from ._etcd_errors import EtcdError, EtcdRefusedError, answer_error, tls_refusal
from ._log import bounded, describe_error, get_logger
from ._ssl import tls_context
from .policy._signed import PolicyRecord

__all__ = [
    "EtcdAccess",
    "EtcdClient",
    "EtcdError",
    "EtcdPolicyReader",
    "EtcdRefusedError",
    "prefix_end",
]

log = get_logger("asgimesh.etcd")


def _b64(data: str | bytes) -> str:
    raw = data.encode() if isinstance(data, str) else data
    return base64.b64encode(raw).decode()


def _unb64(data: str) -> bytes:
    return base64.b64decode(data)


def prefix_end(prefix: str) -> str:
    """The ``range_end`` that selects every key starting with ``prefix`` (ASCII prefixes)."""
    raw = prefix.encode()
    return (raw[:-1] + bytes([raw[-1] + 1])).decode()


class EtcdClient:
    """The few gateway calls the mesh needs, each returning the decoded JSON answer.

    With a user, the first call authenticates (``/v3/auth/authenticate``) and every call sends
    the token etcd gave as ``Authorization``; when etcd says the token is no longer good (it
    lapsed: ``--auth-token-ttl``, or etcd restarted) the client authenticates again once and
    repeats the call. A refused authentication is not retried before a backoff delay (0.5 s
    to 30 s), so a wrong password costs etcd one attempt per delay, not one per call.
    """

    def __init__(self, endpoint: str | EtcdAccess, *, timeout: float = 5.0) -> None:
        self.access = endpoint if isinstance(endpoint, EtcdAccess) else EtcdAccess(endpoint)
        self.endpoint = self.access.endpoint
        #: A TLS file that stopped loading since start: every call says so (as a refusal).
        self._broken: EtcdRefusedError | None = None
        try:
            verify = self.access.ssl_context()
        except EtcdAccessError as exc:
            self._broken = EtcdRefusedError(f"etcd at {self.endpoint}: {exc}")
            verify = tls_context()
        self._http = httpx.AsyncClient(base_url=self.endpoint, timeout=timeout, verify=verify)
        self._token: str | None = None
        self._auth_backoff = ReconnectBackoff(1.0, 30.0)
        self._auth_retry_at = 0.0
        self._auth_refusal: EtcdRefusedError | None = None

    def __repr__(self) -> str:
        return f"EtcdClient({self.endpoint!r}, user={self.access.user!r})"

    async def aclose(self) -> None:
        await self._http.aclose()

    async def call(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        response = await self._post(path, body, await self._auth_headers())
        if response.status_code == 401 and self.access.user is not None:
            self._token = None  # lapsed: one new token, one more try
            response = await self._post(path, body, await self._auth_headers())
        if response.status_code != 200:
            raise answer_error(self.access, path, response)
        data: dict[str, Any] = response.json()
        return data

    async def _post(
        self, path: str, body: dict[str, Any], headers: dict[str, str]
    ) -> httpx.Response:
        if self._broken is not None:
            raise self._broken
        try:
            return await self._http.post(path, json=body, headers=headers)
        except (httpx.TransportError, ssl.SSLError) as exc:
            # A refused client certificate shows on the first read (TLS 1.3), and the
            # ssl.SSLError of that read reaches us unwrapped.
            refused = tls_refusal(self.access, exc)
            if refused is not None:
                raise refused from None
            raise

    async def _auth_headers(self) -> dict[str, str]:
        if self.access.user is None:
            return {}
        if self._token is None:
            self._token = await self._authenticate()
        return {"authorization": self._token}

    async def _authenticate(self) -> str:
        if self._auth_refusal is not None and time.monotonic() < self._auth_retry_at:
            # A new exception each time: raising one object again would grow its traceback.
            raise EtcdRefusedError(str(self._auth_refusal))
        try:
            password = self.access.read_password()
        except EtcdAccessError as exc:
            raise self._refused(EtcdRefusedError(f"etcd at {self.endpoint}: {exc}")) from None
        body = {"name": self.access.user, "password": password or ""}
        response = await self._post("/v3/auth/authenticate", body, {})
        if response.status_code != 200:
            raise self._refused(answer_error(self.access, "/v3/auth/authenticate", response))
        token = response.json().get("token")
        if not isinstance(token, str) or not token:
            raise self._refused(
                EtcdRefusedError(
                    f"etcd at {self.endpoint} answered the authentication without a token: "
                    "is auth enabled there (etcdctl auth enable)?"
                )
            )
        self._auth_refusal = None
        self._auth_backoff.reset()
        return token

    def _refused(self, error: EtcdError) -> EtcdError:
        if isinstance(error, EtcdRefusedError):
            self._auth_refusal = error
            # At least half a second apart, whatever the jitter draws.
            self._auth_retry_at = time.monotonic() + max(0.5, self._auth_backoff.next_delay())
        return error

    async def range(
        self,
        key: str,
        *,
        prefix: bool = False,
        start: str | None = None,
        limit: int = 0,
        descending: bool = False,
    ) -> tuple[list[tuple[str, bytes, int]], int]:
        """``[(key, value, mod_revision)]`` and the store revision of the answer."""
        body: dict[str, Any] = {"key": _b64(start or key)}
        if prefix:
            body["range_end"] = _b64(prefix_end(key))
        if limit:
            body["limit"] = limit
        if descending:
            body["sort_order"] = "DESCEND"
            body["sort_target"] = "KEY"
        data = await self.call("/v3/kv/range", body)
        kvs = [
            (
                _unb64(kv["key"]).decode(),
                _unb64(kv.get("value", "")),
                int(kv.get("mod_revision", 0)),
            )
            for kv in data.get("kvs", [])
        ]
        return kvs, int(data.get("header", {}).get("revision", 0))

    async def put(self, key: str, value: str | bytes) -> None:
        await self.call("/v3/kv/put", {"key": _b64(key), "value": _b64(value)})

    async def delete(self, key: str) -> None:
        await self.call("/v3/kv/deleterange", {"key": _b64(key)})

    async def txn(self, compare: list[dict[str, Any]], puts: list[tuple[str, str | bytes]]) -> bool:
        """Write ``puts`` if every ``compare`` holds; whether it did."""
        body = {
            "compare": compare,
            "success": [{"request_put": {"key": _b64(k), "value": _b64(v)}} for k, v in puts],
        }
        data = await self.call("/v3/kv/txn", body)
        return bool(data.get("succeeded", False))

    @staticmethod
    def unchanged_since(key: str, mod_revision: int) -> dict[str, Any]:
        """A compare that holds while ``key`` is absent (0) or last written at ``mod_revision``."""
        if mod_revision == 0:
            return {"key": _b64(key), "target": "CREATE", "result": "EQUAL", "create_revision": "0"}
        return {
            "key": _b64(key),
            "target": "MOD",
            "result": "EQUAL",
            "mod_revision": str(mod_revision),
        }

    async def watch(self, key: str, start_revision: int) -> AsyncIterator[tuple[str, bytes]]:
        """``(key, value)`` of each put under the prefix ``key`` from ``start_revision`` on.

        Ends (or raises) when the stream breaks; the caller reconnects.
        """
        body = {
            "create_request": {
                "key": _b64(key),
                "range_end": _b64(prefix_end(key)),
                "start_revision": str(start_revision),
            }
        }
        timeout = httpx.Timeout(5.0, read=None)
        headers = await self._auth_headers()
        if self._broken is not None:
            raise self._broken
        try:
            async with self._http.stream(
                "POST", "/v3/watch", json=body, timeout=timeout, headers=headers
            ) as response:
                if response.status_code == 401:
                    self._token = None  # the next call authenticates again
                if response.status_code != 200:
                    await response.aread()
                    raise answer_error(self.access, "/v3/watch", response)
                async for item in self._events(response):
                    yield item
        except (httpx.TransportError, ssl.SSLError) as exc:
            # A refused client certificate shows on the first read (TLS 1.3), and the
            # ssl.SSLError of that read reaches us unwrapped.
            refused = tls_refusal(self.access, exc)
            if refused is not None:
                raise refused from None
            raise

    @staticmethod
    async def _events(response: httpx.Response) -> AsyncIterator[tuple[str, bytes]]:
        async for line in response.aiter_lines():
            if not line.strip():
                continue
            answer = json.loads(line)
            if "error" in answer:
                raise EtcdError(f"etcd watch: {bounded(str(answer['error']))}")
            result = answer.get("result", {})
            if result.get("canceled"):
                raise EtcdError(f"etcd watch canceled: {result.get('cancel_reason', '')}")
            for event in result.get("events", []):
                if event.get("type", "PUT") != "PUT":
                    continue
                kv = event["kv"]
                yield _unb64(kv["key"]).decode(), _unb64(kv.get("value", ""))


class EtcdPolicyReader:
    """The mesh's keys under ``prefix``, and the reads both sides of the mesh make of them.

    Versions are ``<prefix>/policy/v/<000000000042>`` (zero-padded so key order is version
    order), the trust bundle and other bootstrap values ``<prefix>/bootstrap/<name>``, instance
    reports ``<prefix>/reports/<service>/<instance>``. The control plane's store extends this
    with the writes; a service's feed uses it as is.
    """

    def __init__(self, endpoint: str | EtcdAccess, prefix: str = "/asgimesh") -> None:
        self.access = endpoint if isinstance(endpoint, EtcdAccess) else EtcdAccess(endpoint)
        self.prefix = prefix.rstrip("/")
        self.endpoint = self.access.endpoint
        self.description = f"etcd:{self.endpoint}{self.prefix}"
        self.etcd = EtcdClient(self.access)
        self._versions = f"{self.prefix}/policy/v/"

    def _version_key(self, version: int) -> str:
        return f"{self._versions}{version:012d}"

    async def open(self) -> None:
        """A fresh connection pool (so that a closed reader can be opened again); the first
        call connects."""
        await self.etcd.aclose()
        self.etcd = EtcdClient(self.access)

    async def close(self) -> None:
        await self.etcd.aclose()

    async def latest(self) -> PolicyRecord | None:
        kvs, _ = await self.etcd.range(self._versions, prefix=True, limit=1, descending=True)
        return PolicyRecord.from_json(kvs[0][1]) if kvs else None

    async def get(self, version: int) -> PolicyRecord | None:
        kvs, _ = await self.etcd.range(self._version_key(version))
        return PolicyRecord.from_json(kvs[0][1]) if kvs else None

    async def follow(self, after: int) -> AsyncIterator[PolicyRecord]:
        """Every version newer than ``after``, forever: catch up with a range, then watch;
        when etcd goes away, retry with capped exponential backoff and catch up again."""
        backoff = ReconnectBackoff(0.1, 5.0)
        while True:
            try:
                kvs, revision = await self.etcd.range(
                    self._versions, prefix=True, start=self._version_key(after + 1)
                )
                for _, value, _ in kvs:
                    record = PolicyRecord.from_json(value)
                    after = max(after, record.version)
                    yield record
                if backoff.failures:
                    log.info("etcd_watch_resumed", store=self.description, version=after)
                backoff.reset()
                async for _, value in self.etcd.watch(self._versions, revision + 1):
                    record = PolicyRecord.from_json(value)
                    if record.version > after:
                        after = record.version
                        yield record
            except (httpx.HTTPError, EtcdError, ValueError, KeyError) as exc:
                delay = backoff.next_delay()
                if backoff.failures == 1:
                    kind, message = describe_error(exc)
                    log.warning(
                        "etcd_watch_lost", store=self.description, error_type=kind, message=message
                    )
            else:
                delay = 0.1 * random.random()  # noqa: S311 - the stream ended: reconnect soon
            await anyio.sleep(delay)

    async def put_report(self, service: str, instance: str, report: dict[str, Any]) -> None:
        body = json.dumps({**report, "received": time.time()})
        await self.etcd.put(f"{self.prefix}/reports/{service}/{instance}", body)

    async def read_bootstrap(self, name: str) -> str | None:
        """A value the control plane stored at start (services read the trust bundle so)."""
        kvs, _ = await self.etcd.range(f"{self.prefix}/bootstrap/{name}")
        return kvs[0][1].decode() if kvs else None
