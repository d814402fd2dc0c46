"""What etcd's refusals mean, in one line an operator can act on.

etcd says "no" in several layers: the TLS handshake (its certificate is not one ``cacert``
trusts, it wants a client certificate, or it does not speak TLS at all), the authentication
(a wrong password, no user where auth is on) and the permission check. Each becomes an
:class:`EtcdRefusedError` naming the endpoint and what to change; nothing here ever includes a
password or a token, only etcd's own short message.
"""

from __future__ import annotations

import ssl
from typing import TYPE_CHECKING

import httpx

from ._log import bounded, redact

if TYPE_CHECKING:
    from ._etcd_access import EtcdAccess

__all__ = ["EtcdError", "EtcdRefusedError", "answer_error", "tls_refusal"]


class EtcdError(Exception):
    """etcd answered, but not with success."""


class EtcdRefusedError(EtcdError):
    """etcd will not take us as we are: a TLS handshake refused either way, a wrong password,
    a missing permission. Trying again soon does not help; the message says what to change."""


#: gRPC status codes the gateway passes on (``"code"`` in its JSON error answers).
_PERMISSION_DENIED, _UNAUTHENTICATED = 7, 16


def answer_error(access: EtcdAccess, path: str, response: httpx.Response) -> EtcdError:
    """The error for a non-200 answer to ``path``: a refusal when etcd refused who we are."""
    where = f"etcd at {access.endpoint}"
    try:
        data = response.json()
        message = str(data.get("error") or data.get("message") or "")
        code = int(data.get("code", 0))
    except (ValueError, TypeError, AttributeError):
        message, code = response.text, 0
    message = bounded(redact(" ".join(message.split())), 200)
    if "CommonName of client" in message:
        return EtcdRefusedError(
            f"{where} refuses gateway calls made with a client certificate that has a Common "
            "Name while auth is on: expected cert= issued without a CN (a SAN only)"
        )
    if path == "/v3/auth/authenticate":
        if "not enabled" in message:
            return EtcdRefusedError(
                f"{where}: auth is not enabled there ({message}); expected 'etcdctl auth enable'"
                " or a URL without a user"
            )
        return EtcdRefusedError(
            f"{where} refused user {access.user!r} ({message}): expected the password of an "
            "etcd user (password_file=)"
        )
    if "user name is empty" in message or (code == _UNAUTHENTICATED and access.user is None):
        return EtcdRefusedError(
            f"{where} requires a user ({message}): expected etcds://USER@host:port/prefix"
            "?password_file=FILE"
        )
    if code == _PERMISSION_DENIED or "permission denied" in message:
        return EtcdRefusedError(
            f"{where}: user {access.user!r} may not call {path} ({message}); expected a role "
            "granting it the mesh's prefix"
        )
    detail = f": {message}" if message else ""
    return EtcdError(f"{where} {path}: HTTP {response.status_code}{detail}")


def tls_refusal(access: EtcdAccess, error: BaseException) -> EtcdRefusedError | None:
    """The TLS handshake's failure in ``error`` (or its causes) as one line, or ``None`` when
    the failure was something else (etcd down, a timeout: retried as usual)."""
    found: BaseException | None = error
    seen = 0
    reason = ""
    while found is not None and seen < 8:
        if isinstance(found, ssl.SSLError):
            reason = str(getattr(found, "reason", None) or found)
            break
        text = str(found)
        if "SSL" in text or "TLS" in text or "tlsv1" in text:
            reason = text
            break
        found = found.__cause__ or found.__context__
        seen += 1
    where = f"etcd at {access.endpoint}"
    if not reason:
        if access.tls and isinstance(error, (httpx.ReadError, httpx.RemoteProtocolError)):
            # With TLS 1.3 a server that refuses the client certificate may just hang up once
            # the handshake is done, before any answer: the likely reason is worth saying.
            given = "without a client certificate" if access.cert is None else "with cert="
            return EtcdRefusedError(
                f"{where} refused the TLS handshake {given} (it closed the connection "
                "unanswered); expected a client certificate its --trusted-ca-file trusts "
                "(cert= and key=)"
            )
        return None
    low = reason.lower()
    if isinstance(found, ssl.SSLCertVerificationError) or "certificate_verify_failed" in low:
        trusted = f"cacert={str(access.cacert)!r}" if access.cacert else "the system's CAs"
        detail = getattr(found, "verify_message", None) or reason
        return EtcdRefusedError(
            f"{where}: its TLS certificate is not trusted ({detail}); expected one {trusted} "
            "trusts, issued for that host"
        )
    hung_up = isinstance(error, httpx.ConnectError) and (
        "unexpected_eof" in low or "eof occurred" in low
    )  # a plain server hangs up on a ClientHello it cannot read
    if hung_up or "wrong_version_number" in low or "record_layer_failure" in low or (
        "http_request" in low
    ):
        return EtcdRefusedError(
            f"{where} does not speak TLS ({bounded(reason, 80)}); expected etcd:// for a "
            "plain-HTTP etcd"
        )
    if "certificate_required" in low or "bad_certificate" in low or "unknown_ca" in low or (
        "handshake_failure" in low
    ):
        given = "without a client certificate" if access.cert is None else "with cert="
        return EtcdRefusedError(
            f"{where} refused the TLS handshake {given} ({bounded(reason, 80)}); expected a "
            "client certificate its --trusted-ca-file trusts (cert= and key=)"
        )
    return EtcdRefusedError(f"{where}: TLS failed ({bounded(reason, 120)})")
