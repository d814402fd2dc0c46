"""The paths the middleware answers itself (contract, section 6), for ASGI and WSGI alike.

``/_mesh/health`` and ``/_mesh/metrics`` are open to anyone, as a load balancer's health check and
a Prometheus scrape expect. ``/_mesh/config`` shows the effective policy and where each value came
from; it needs ``Authorization: Bearer <MESH_ADMIN_TOKEN>`` (compared in constant time), or, when
no admin token is set, a loopback caller. Secrets never appear in it.
"""

from __future__ import annotations

import hmac
import ipaddress
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any

from .._log import redact
from .._wire import bearer_token
from ..telemetry import CONTENT_TYPE
from ._answers import Answer, json_answer, json_document

if TYPE_CHECKING:
    from .._runtime import MeshRuntime

__all__ = ["Admin", "is_loopback"]

_SECRET_SETTINGS = ("token", "admin_token")
_ALLOWED = (("allow", "GET, HEAD"),)


def is_loopback(host: str | None) -> bool:
    """Whether ``host`` (the client address the server reports) is a loopback address."""
    if not host:
        return False
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped.is_loopback
    return address.is_loopback


def _leaves(value: Any, prefix: str = "") -> Iterator[tuple[str, Any]]:
    if isinstance(value, Mapping) and value:
        for key, item in value.items():
            yield from _leaves(item, f"{prefix}.{key}" if prefix else str(key))
    else:
        yield prefix, value


class Admin:
    """Answers the admin paths from the runtime's current state."""

    def __init__(self, runtime: MeshRuntime) -> None:
        self._runtime = runtime
        token = runtime.settings.admin_token
        self._token = token.get_secret_value().encode() if token is not None else None

    def answer(
        self, method: str, path: str, fields: Mapping[str, str], client: str | None
    ) -> Answer:
        """The answer to ``method path`` (one of the admin paths)."""
        if method not in ("GET", "HEAD"):
            return json_answer(
                405,
                "method_not_allowed",
                f"{path} answers GET and HEAD, got {method}",
                _ALLOWED,
            )
        if path == "/_mesh/health":
            return self.health()
        if path == "/_mesh/metrics":
            return Answer(
                200, (("content-type", CONTENT_TYPE),), self._runtime.metrics.exposition()
            )
        denied = self._check_admin(fields.get("authorization"), client)
        return denied if denied is not None else self.config()

    def health(self) -> Answer:
        runtime = self._runtime
        draining = runtime.draining
        return json_document(
            503 if draining else 200,
            {
                "status": "draining" if draining else "ok",
                "service": runtime.settings.service,
                "policy_version": runtime.policy.current.version,
            },
        )

    def _check_admin(self, authorization: str | None, client: str | None) -> Answer | None:
        """``None`` if the caller may read ``/_mesh/config``, else the 401/403 answer."""
        if self._token is None:
            if is_loopback(client):
                return None
            return json_answer(
                403,
                "forbidden",
                "/_mesh/config is open to loopback clients only while MESH_ADMIN_TOKEN is not "
                f"set; the client address is {client or 'unknown'}",
            )
        credentials = bearer_token(authorization)
        if credentials is None:
            return json_answer(
                401,
                "unauthorized",
                "/_mesh/config needs the header 'Authorization: Bearer <MESH_ADMIN_TOKEN>'",
                (("www-authenticate", 'Bearer realm="asgimesh"'),),
            )
        if not hmac.compare_digest(credentials.encode(), self._token):
            return json_answer(403, "forbidden", "the bearer token does not match MESH_ADMIN_TOKEN")
        return None

    def config(self) -> Answer:
        """The effective policy, where each value came from, and the settings without secrets."""
        runtime = self._runtime
        snapshot = runtime.policy.current
        # URLs may carry credentials (MESH_CONFIG, an endpoint's user:password): redacted
        # wherever they appear, as in logs.
        policy = _redacted(snapshot.policy.model_dump(mode="json"))
        settings = _redacted(runtime.settings.model_dump(mode="json"))
        for name in _SECRET_SETTINGS:
            settings[name] = "<set>" if settings.get(name) is not None else None
        if settings.get("policy"):
            settings["policy"] = "<set: see 'policy' and 'origin'>"
        return json_document(
            200,
            {
                "service": runtime.settings.service,
                "spiffe_id": runtime.settings.spiffe_id,
                "policy_version": snapshot.version,
                "source": redact(snapshot.source) if snapshot.source else None,
                "policy": policy,
                "origin": {path: snapshot.origin_of(path) for path, _ in _leaves(policy)},
                "settings": settings,
            },
        )


def _redacted(value: Any) -> Any:
    """``value`` (parsed JSON) with credentials redacted from every string in it."""
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, dict):
        return {key: _redacted(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_redacted(item) for item in value]
    return value
