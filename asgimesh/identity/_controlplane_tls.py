"""How a service (and the CLI) trusts the control plane it talks to over ``https://``.

With ``MESH_CA`` (the mesh's trust bundle) the control plane is *pinned*: its certificate must
chain to that bundle and its one URI SAN must be the control plane's ID of this service's trust
domain, ``spiffe://<MESH_TRUST_DOMAIN>/ns/mesh-system/sa/control-plane``. The check is the one
outbound mTLS uses (:class:`~asgimesh.identity.MeshClientContext`): host names are not checked,
the ID is, during the handshake, so nothing (not a token, not a CSR) is sent to a server that
is not the control plane.

Without ``MESH_CA`` an ``https://`` control plane is checked against the system's trust store
(a public or corporate CA, host names checked), as before, and one warning says that the
control plane is not pinned. Plain ``http://`` is not encrypted at all.

Contexts are built once per process (per trust domain and bundle) and shared by the certificate
issuer, the policy feed and its reports: building one costs a CA-store load.
"""

from __future__ import annotations

import functools
import ssl
import threading
from urllib.parse import urlsplit

from .._log import get_logger, redact
from .._ssl import tls_context
from ._spiffe import control_plane_id
from ._tls import MeshClientContext, identity_mismatch

__all__ = ["control_plane_context", "control_plane_tls_problem"]

log = get_logger("asgimesh.identity")

_warn_lock = threading.Lock()
#: Whether this process has said that its control plane is not pinned (it says so once).
_warned = False


@functools.lru_cache(maxsize=8)
def _pinned(trust_domain: str, bundle_pem: bytes) -> MeshClientContext:
    return MeshClientContext(control_plane_id(trust_domain), bundle_pem=bundle_pem)


def control_plane_context(
    url: str, trust_domain: str, bundle_pem: bytes | None, *, warn: bool = True
) -> ssl.SSLContext:
    """The client TLS context for the control plane at ``url``: pinned to ``bundle_pem`` and
    the control plane's ID where the URL is ``https://`` and a bundle is given; else the
    process's shared system-trust context (for ``https://`` without a bundle, after one
    warning per process unless ``warn`` is false)."""
    if urlsplit(url).scheme == "https":
        if bundle_pem is not None:
            return _pinned(trust_domain, bundle_pem)
        if warn:
            global _warned
            with _warn_lock:
                first, _warned = not _warned, True
            if first:
                log.warning(
                    "control_plane_not_pinned",
                    url=redact(url),
                    trust="system trust store",
                    advice="set MESH_CA to the mesh's trust bundle to pin the control plane's "
                    f"identity ({control_plane_id(trust_domain)})",
                )
    return tls_context()


def control_plane_tls_problem(error: BaseException, bundle: str = "MESH_CA") -> str | None:
    """One line saying why the TLS handshake behind ``error`` refused the control plane (the
    wrong ID, both named; or a chain that does not verify against ``bundle``), or ``None`` when
    ``error`` is not such a refusal."""
    mismatch = identity_mismatch(error)
    if mismatch is not None:
        return f"the server is not the control plane: {mismatch}"
    seen = 0
    current: BaseException | None = error
    while current is not None and seen < 16:
        if isinstance(current, ssl.SSLCertVerificationError):
            reason = current.verify_message or current.reason or str(current)
            return (
                f"the control plane's certificate does not verify against {bundle} ({reason}): "
                "is it this mesh's trust bundle?"
            )
        current = current.__cause__ or current.__context__
        seen += 1
    return None
