"""Who is calling, verified, sans-I/O (contract, section 5 and 8): first found wins.

1. The client certificate the server verified in the TLS handshake, handed over in the ASGI
   ``tls`` extension's ``client_cert_chain`` (WSGI: ``environ["asgimesh.client_cert_chain"]``).
   It is checked again here against this service's trust bundle: a server that passes chains
   on unverified must not make an unverified caller look verified.
2. A client certificate forwarded by a proxy, only from a peer the policy lists in
   ``inbound.<service>.trusted_proxies``: Envoy's ``x-forwarded-client-cert`` (its last element,
   added by the nearest proxy: its ``Cert`` verified against the bundle, else its ``URI``, which
   the trusted proxy asserts) or RFC 9440's ``Client-Cert``. From anyone else both are ignored.
3. A ``mesh-identity`` token (JWT-SVID), checked by the token verifier.

Anything that does not verify counts as no identity, and is counted in
``mesh_authn_failures_total{reason}`` (a bounded set of reasons). Verified certificates are cached
by their PEM (or header value) until they expire, so a connection's later requests, and a
caller's later calls, cost one dictionary lookup.
"""

from __future__ import annotations

import base64
import binascii
import datetime
import ipaddress
from collections.abc import Callable, Mapping, Sequence
from typing import Protocol
from urllib.parse import unquote

from cryptography import x509

from ..identity import is_spiffe_id, trust_domain_of, uri_sans, verify_chain

__all__ = [
    "REASONS",
    "Authenticator",
    "TokenVerifier",
    "TrustedProxies",
    "parse_xfcc",
]

#: Every reason ``mesh_authn_failures_total`` counts: the label set is bounded by this.
REASONS = (
    "untrusted_certificate",  # a certificate (TLS or forwarded) that does not verify
    "untrusted_proxy",  # a forwarded certificate from a peer not in trusted_proxies
    "invalid_forwarded",  # a forwarded header that does not parse
    "invalid_token",  # a mesh-identity token that does not verify
    "missing",  # MESH_MTLS=strict and no identity at all
)
#: The largest forwarded-certificate header read; longer ones are ignored as malformed.
MAX_HEADER = 16 * 1024
#: At most this many verified certificates are remembered (then the memory starts afresh).
MAX_CACHED = 4096

ANY = "*"


class TokenVerifier(Protocol):
    """Checks ``mesh-identity`` tokens: ``(spiffe_id, None)`` or ``(None, reason)``."""

    def verify(self, token: str, now: float) -> tuple[str | None, str | None]: ...


class TrustedProxies:
    """The peers whose forwarded client certificates are believed."""

    __slots__ = ("_exact", "_networks")

    def __init__(self, entries: Sequence[str]) -> None:
        networks = [ipaddress.ip_network(entry, strict=False) for entry in entries]
        self._exact = frozenset(str(n.network_address) for n in networks if n.num_addresses == 1)
        self._networks = tuple(n for n in networks if n.num_addresses > 1)

    def __bool__(self) -> bool:
        return bool(self._exact or self._networks)

    def __contains__(self, client: object) -> bool:
        if not isinstance(client, str) or not client:
            return False
        if client in self._exact:
            return True
        try:
            address = ipaddress.ip_address(client)
        except ValueError:
            return False
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            address = address.ipv4_mapped
            if str(address) in self._exact:
                return True
        return any(address in network for network in self._networks)


def parse_xfcc(value: str) -> dict[str, str] | None:
    """The last element of an ``x-forwarded-client-cert`` value as a dict of its keys (lower
    case), or ``None`` where it does not parse. Values may be quoted; commas and semicolons
    inside quotes belong to the value."""
    elements: list[dict[str, str]] = []
    current: dict[str, str] = {}
    key, buffer, quoted, escaped = "", [], False, False
    in_value = False
    for char in value:
        if quoted:
            if escaped:
                buffer.append(char)
                escaped = False
            elif char == "\\":
                escaped = True
            elif char == '"':
                quoted = False
            else:
                buffer.append(char)
        elif char == '"' and in_value:
            quoted = True
        elif char == "=" and not in_value:
            key, buffer, in_value = "".join(buffer).strip().lower(), [], True
        elif char in ";,":
            if not in_value or not key:
                return None
            current[key] = "".join(buffer).strip()
            key, buffer, in_value = "", [], False
            if char == ",":
                elements.append(current)
                current = {}
        else:
            buffer.append(char)
    if quoted or (buffer and not in_value):
        return None
    if in_value:
        if not key:
            return None
        current[key] = "".join(buffer).strip()
    if current:
        elements.append(current)
    return elements[-1] if elements else None


class Authenticator:
    """Finds the caller's verified SPIFFE ID for one request."""

    def __init__(
        self,
        trust_domain: str,
        bundle: Callable[[], Sequence[x509.Certificate] | None],
        *,
        tokens: TokenVerifier | None = None,
        on_failure: Callable[[str], None] = lambda reason: None,
    ) -> None:
        self.trust_domain = trust_domain
        self._bundle = bundle
        self._tokens = tokens
        self.on_failure = on_failure
        #: PEM or header value -> (verified ID or None, expiry as Unix time).
        self._cache: dict[str, tuple[str | None, float]] = {}
        self._cached_for: object = None

    def authenticate(
        self,
        peer_chain: Sequence[str] | None,
        fields: Mapping[str, str],
        client: str | None,
        trusted: TrustedProxies | None,
        now: float,
    ) -> str | None:
        """The caller's verified ID, or ``None``; ``now`` is Unix time (certificates count it)."""
        if peer_chain:
            caller = self._certificate(peer_chain[0], now, pem=True)
            if caller is not None:
                return caller
        forwarded = fields.get("x-forwarded-client-cert") or fields.get("client-cert")
        if forwarded is not None:
            if trusted and client in trusted:
                caller = self._forwarded(fields, now)
                if caller is not None:
                    return caller
            else:
                self.on_failure("untrusted_proxy")  # ignored, as if absent
        token = fields.get("mesh-identity")
        if token is not None and self._tokens is not None:
            caller, reason = self._tokens.verify(token, now)
            if caller is not None:
                return caller
            self.on_failure(reason or "invalid_token")
        return None

    # -- certificates ----------------------------------------------------------------------

    def _check(self, certificate: x509.Certificate, now: float) -> str | None:
        bundle = self._bundle()
        if not bundle:
            return None
        moment = datetime.datetime.fromtimestamp(now, datetime.UTC)
        if verify_chain([certificate], bundle, moment) is not None:
            return None
        ids = uri_sans(certificate)
        if len(ids) != 1 or not is_spiffe_id(ids[0]):
            return None
        if trust_domain_of(ids[0]) != self.trust_domain:
            return None
        return ids[0]

    def _remembered(self, key: str, now: float) -> tuple[bool, str | None]:
        bundle = self._bundle()
        if bundle is not self._cached_for:  # a new trust bundle: verify everything again
            self._cache = {}
            self._cached_for = bundle
        entry = self._cache.get(key)
        if entry is not None and now < entry[1]:
            return True, entry[0]
        return False, None

    def _remember(self, key: str, caller: str | None, until: float) -> None:
        if len(self._cache) >= MAX_CACHED:
            self._cache = {}
        self._cache[key] = (caller, until)

    def _certificate(self, data: str, now: float, *, pem: bool) -> str | None:
        known, caller = self._remembered(data, now)
        if not known:
            certificate = _load(data, pem=pem)
            caller = self._check(certificate, now) if certificate is not None else None
            until = certificate.not_valid_after_utc.timestamp() if certificate else now + 60
            # A refusal is remembered briefly only: the bundle may be about to gain its CA.
            self._remember(data, caller, until if caller is not None else now + 5)
        if caller is None:
            self.on_failure("untrusted_certificate")
        return caller

    def _forwarded(self, fields: Mapping[str, str], now: float) -> str | None:
        xfcc = fields.get("x-forwarded-client-cert")
        if xfcc is not None:
            element = parse_xfcc(xfcc) if len(xfcc) <= MAX_HEADER else None
            if element is None:
                self.on_failure("invalid_forwarded")
                return None
            cert = element.get("cert")
            if cert:
                return self._certificate(unquote(cert), now, pem=True)
            uri = element.get("uri", "")
            if is_spiffe_id(uri) and trust_domain_of(uri) == self.trust_domain:
                return uri
            self.on_failure("invalid_forwarded")
            return None
        value = fields.get("client-cert", "")
        if len(value) > MAX_HEADER or len(value) < 3 or not (value[0] == value[-1] == ":"):
            self.on_failure("invalid_forwarded")
            return None
        return self._certificate(value, now, pem=False)


def _load(data: str, *, pem: bool) -> x509.Certificate | None:
    try:
        if pem:
            return x509.load_pem_x509_certificate(data.encode("ascii"))
        der = base64.b64decode(data.strip(":"), validate=True)
        return x509.load_der_x509_certificate(der)
    except (ValueError, UnicodeEncodeError, binascii.Error):
        return None
