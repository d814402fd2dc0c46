"""SPIFFE IDs, sans-I/O: what a valid one looks like, a service's, and how ``from`` rules match.

An ID is ``spiffe://<trust domain>/<path>`` (the SPIFFE ID standard): a lower-case trust domain
of letters, digits, ``.``, ``-`` and ``_``; a path of non-empty segments of letters, digits,
``.``, ``-`` and ``_``, never ``.`` or ``..``; no query, fragment, port or user info. The mesh
names a service ``spiffe://<trust domain>/ns/<namespace>/sa/<service>`` and the control plane
``spiffe://<trust domain>/ns/mesh-system/sa/control-plane``.
"""

from __future__ import annotations

import re

from cryptography import x509

__all__ = [
    "CONTROL_PLANE_NAMESPACE",
    "CONTROL_PLANE_SERVICE",
    "control_plane_id",
    "id_matches",
    "is_spiffe_id",
    "service_id",
    "trust_domain_of",
    "uri_sans",
]

CONTROL_PLANE_NAMESPACE = "mesh-system"
CONTROL_PLANE_SERVICE = "control-plane"
#: IDs longer than this are refused (the standard caps URIs at 2048 bytes).
MAX_LENGTH = 2048

_ID = re.compile(
    r"spiffe://(?P<td>[a-z0-9._-]{1,255})(?P<path>(?:/[A-Za-z0-9._-]+)+)", re.ASCII
)


def is_spiffe_id(text: str) -> bool:
    """Whether ``text`` is a valid SPIFFE ID with a path (a workload's, not a trust domain's)."""
    if len(text) > MAX_LENGTH:
        return False
    match = _ID.fullmatch(text)
    if match is None:
        return False
    return all(segment not in (".", "..") for segment in match["path"].split("/")[1:])


def trust_domain_of(spiffe_id: str) -> str:
    """The trust domain of a valid ID (``spiffe://td/...`` → ``td``)."""
    return spiffe_id[len("spiffe://") :].partition("/")[0]


def service_id(trust_domain: str, namespace: str, service: str) -> str:
    """The SPIFFE ID of a mesh service."""
    return f"spiffe://{trust_domain}/ns/{namespace}/sa/{service}"


def control_plane_id(trust_domain: str) -> str:
    """The control plane's own SPIFFE ID: only it may sign policy or serve as the control plane."""
    return service_id(trust_domain, CONTROL_PLANE_NAMESPACE, CONTROL_PLANE_SERVICE)


def id_matches(pattern: str, spiffe_id: str) -> bool:
    """An authorization ``from`` entry against a verified ID: exact, or a prefix where the entry
    ends with ``*`` (``spiffe://mesh.local/ns/shop/*`` matches every ID of that namespace)."""
    if pattern.endswith("*"):
        return spiffe_id.startswith(pattern[:-1])
    return spiffe_id == pattern


def uri_sans(certificate: x509.Certificate) -> list[str]:
    """The URI subject alternative names of a certificate (none where it has no SAN extension)."""
    try:
        extension = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    except x509.ExtensionNotFound:
        return []
    return list(extension.value.get_values_for_type(x509.UniformResourceIdentifier))
