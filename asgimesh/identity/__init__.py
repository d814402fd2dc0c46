"""Identity: SPIFFE IDs, X.509-SVIDs and where they come from, and the mesh CA.

The data plane's side: :class:`IdentityStore` holds this process's current identity (and the
private files TLS loads it from); :func:`identity_source_for` picks where it comes from (files,
a SPIFFE credential folder, or the control plane). The control plane's side: :class:`MeshCA`,
which signs what services ask for.
"""

from typing import TYPE_CHECKING, Any

from ._ca import (
    CONTROL_PLANE_TLS_LIFETIME,
    MIN_LIFETIME,
    WORKLOAD_LIFETIME,
    CertificateRequestError,
    MeshCA,
    is_policy_signer,
    load_bundle,
    verify_issued_by,
)
from ._controlplane_tls import control_plane_context, control_plane_tls_problem
from ._sources import IdentitySource, identity_source_for
from ._spiffe import (
    control_plane_id,
    id_matches,
    is_spiffe_id,
    service_id,
    trust_domain_of,
    uri_sans,
)
from ._store import IdentityFiles, IdentityStore
from ._svid import X509SVID, IdentityError, parse_svid, verify_chain
from ._tls import MeshClientContext, identity_mismatch, server_context

if TYPE_CHECKING:
    from ._jwt_issuer import JWTIssuer

__all__ = [
    "CONTROL_PLANE_TLS_LIFETIME",
    "MIN_LIFETIME",
    "WORKLOAD_LIFETIME",
    "X509SVID",
    "CertificateRequestError",
    "IdentityError",
    "IdentityFiles",
    "IdentitySource",
    "IdentityStore",
    "JWTIssuer",
    "MeshCA",
    "MeshClientContext",
    "control_plane_context",
    "control_plane_id",
    "control_plane_tls_problem",
    "id_matches",
    "identity_mismatch",
    "identity_source_for",
    "is_policy_signer",
    "is_spiffe_id",
    "load_bundle",
    "parse_svid",
    "server_context",
    "service_id",
    "trust_domain_of",
    "uri_sans",
    "verify_chain",
    "verify_issued_by",
]


def __getattr__(name: str) -> Any:
    # The control plane's JWT signer (PyJWT): imported by the control plane, not by services.
    if name == "JWTIssuer":
        from ._jwt_issuer import JWTIssuer

        return JWTIssuer
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
