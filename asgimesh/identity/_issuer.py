"""Identities issued by the control plane: a key made here, a CSR, a certificate, renewed.

The key is made in the process and never leaves it (a new one for every certificate); the CSR
goes to ``POST /v1/certificates`` with ``MESH_TOKEN``; the control plane's CA answers with a
short-lived chain for the ID the token names (the CSR's own names are ignored there). The answer
is checked like any other delivery (:func:`~asgimesh.identity._svid.parse_svid`), and must name
the ID this service expects, before it replaces the identity in use.

:class:`RenewalSchedule` decides when to ask, sans-I/O: at once while there is no identity,
half-way through the life of the one in use (as Istio does), and after a failure again after a
full-jitter exponential backoff (1 s doubling up to a minute), keeping the identity it has. The
issuer asks from a thread of its own, or, in serverless mode (no background work between
requests), from :meth:`ControlPlaneIssuer.on_request`, which starts one renewal when one is due
and never waits for it.
"""

from __future__ import annotations

import datetime
import json
import random
import ssl
import threading
import time
from collections.abc import Callable

import httpx
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from .._backoff import full_jitter
from .._log import bounded, describe_error, get_logger
from .._ssl import tls_context
from ._controlplane_tls import control_plane_tls_problem
from ._store import IdentityStore
from ._svid import X509SVID, IdentityError, load_pem_bundle, parse_svid

__all__ = ["ControlPlaneIssuer", "RenewalSchedule", "make_csr"]

log = get_logger("asgimesh.identity")

#: The largest certificate answer read from the control plane.
MAX_ANSWER = 256 * 1024


class RenewalSchedule:
    """When to ask for the next certificate (wall-clock seconds, as certificates count time)."""

    def __init__(
        self,
        *,
        base: float = 1.0,
        cap: float = 60.0,
        rand: Callable[[], float] = random.random,
    ) -> None:
        self.base = base
        self.cap = cap
        self._rand = rand
        self.failures = 0
        #: When the next request is due (0: now).
        self.next_at = 0.0

    def due(self, now: float) -> bool:
        return now >= self.next_at

    def succeeded(self, svid: X509SVID, now: float) -> None:
        """Record ``svid`` arriving at ``now``: the next request is due half-way from then to
        its expiry."""
        self.failures = 0
        received = datetime.datetime.fromtimestamp(now, datetime.UTC)
        self.next_at = svid.renew_at(received).timestamp()

    def failed(self, now: float) -> float:
        """Record a failed request at ``now``; returns the seconds until the next one."""
        self.failures += 1
        delay = full_jitter(self.failures, self.base, self.cap, self._rand)
        self.next_at = now + delay
        return delay


def make_csr(key: ec.EllipticCurvePrivateKey, spiffe_id: str) -> bytes:
    """A PEM CSR for ``spiffe_id`` signed by ``key`` (the CA takes the ID from the token)."""
    name = spiffe_id.rsplit("/", 1)[-1][:64] or "workload"
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
        .add_extension(
            x509.SubjectAlternativeName([x509.UniformResourceIdentifier(spiffe_id)]),
            critical=True,
        )
        .sign(key, hashes.SHA256())
    )
    return csr.public_bytes(serialization.Encoding.PEM)


class ControlPlaneIssuer:
    """Keeps the store holding a certificate issued by the control plane at ``base_url``."""

    name = "control plane"

    def __init__(
        self,
        base_url: str,
        token: str,
        store: IdentityStore,
        *,
        spiffe_id: str,
        trust_domain: str,
        bundle_pem: bytes | None = None,
        verify: ssl.SSLContext | bool = True,
        background: bool = True,
        timeout: float = 10.0,
        schedule: RenewalSchedule | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self._token = token
        self._store = store
        self.spiffe_id = spiffe_id
        self.trust_domain = trust_domain
        #: The trust bundle the issued chains must verify against: ``MESH_CA`` where pinned,
        #: else fetched from the control plane at the first request and kept (trust on first
        #: use, said once in a warning by the policy source).
        self._bundle_pem = bundle_pem
        self._verify = verify
        self._background = background
        self._timeout = timeout
        self.schedule = schedule or RenewalSchedule()
        self._clock = clock
        self._busy = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        #: Serverless mode: ``on_request`` is the per-request hook; else ``None``.
        self.on_request: Callable[[], None] | None = None if background else self._on_request

    # -- one issuance ----------------------------------------------------------------------

    def issue(self) -> X509SVID:
        """Ask for a certificate now and put it in the store; raises on any failure."""
        key = ec.generate_private_key(ec.SECP256R1())
        csr = make_csr(key, self.spiffe_id)
        headers = {"authorization": f"Bearer {self._token}"}
        with httpx.Client(
            base_url=self.base_url, verify=self._verify, timeout=self._timeout
        ) as client:
            if self._bundle_pem is None:
                self._bundle_pem = self._fetch(client, "/v1/trust-bundle", {})
                load_pem_bundle(self._bundle_pem, "the control plane's trust bundle")
            chain = self._fetch(
                client, "/v1/certificates", headers, method="POST",
                json={"csr": csr.decode("ascii")},
            )
        key_pem = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        svid = parse_svid(
            chain, key_pem, self._bundle_pem, trust_domain=self.trust_domain,
            source=f"control plane {self.base_url}",
        )
        if svid.spiffe_id != self.spiffe_id:
            raise IdentityError(
                f"control plane {self.base_url}: issued {svid.spiffe_id}, but this service is "
                f"{self.spiffe_id} (does MESH_TOKEN belong to another service?)"
            )
        self._store.set(svid)
        self.schedule.succeeded(svid, self._clock())
        return svid

    def _fetch(
        self,
        client: httpx.Client,
        path: str,
        headers: dict[str, str],
        *,
        method: str = "GET",
        json: object = None,
    ) -> bytes:
        with client.stream(method, path, headers=headers, json=json) as response:
            body = b""
            for chunk in response.iter_bytes():
                body += chunk
                if len(body) > MAX_ANSWER:
                    raise IdentityError(f"{self.base_url}{path}: answer over {MAX_ANSWER} bytes")
        if response.status_code in (401, 403):
            raise IdentityError(
                f"{self.base_url}{path} refused MESH_TOKEN ({response.status_code}): create a "
                "token for this service with 'asgimesh token create SERVICE'"
            )
        if response.status_code != 200:
            detail = body[:200].decode("utf-8", "replace")
            raise IdentityError(f"{self.base_url}{path} answered {response.status_code}: {detail}")
        return body

    # -- JWT-SVIDs (mesh-identity tokens) ---------------------------------------------------

    def _client(self) -> httpx.Client:
        verify = tls_context() if self._verify is True else self._verify
        return httpx.Client(base_url=self.base_url, verify=verify, timeout=self._timeout)

    def jwt_svid(self, audience: str) -> str:
        """A control-plane-signed token naming this service, for ``audience`` (blocking; the
        minter calls it once per audience and half-life). ``LookupError`` when there is no
        token to be had, with why."""
        headers = {"authorization": f"Bearer {self._token}"}
        try:
            with self._client() as client:
                body = self._fetch(
                    client, "/v1/jwt-svids", headers, method="POST", json={"audience": audience}
                )
            token = json.loads(body)["token"]
        except (IdentityError, httpx.HTTPError, OSError, ValueError, KeyError, TypeError) as exc:
            kind, message = describe_error(exc)
            raise LookupError(f"no mesh-identity token for {audience}: {kind}: {message}") from None
        if not isinstance(token, str):
            raise LookupError(f"no mesh-identity token for {audience}: the answer has none")
        return token

    def jwt_bundle(self) -> bytes:
        """The control plane's JWKS (``GET /v1/jwt-bundle``), as read (blocking)."""
        with self._client() as client:
            return self._fetch(client, "/v1/jwt-bundle", {})

    def _attempt(self) -> bool:
        """One issuance, its failure logged and scheduled for a retry; never raises."""
        try:
            svid = self.issue()
        except (IdentityError, httpx.HTTPError, OSError) as exc:
            delay = self.schedule.failed(self._clock())
            current = self._store.current
            kind, message = describe_error(exc)
            refused = control_plane_tls_problem(exc)
            if refused is not None:
                kind, message = "ControlPlaneRefused", bounded(refused, 600)
            log.warning(
                "identity_renewal_failed",
                source=self.name,
                error_type=kind,
                message=message,
                retry_in_s=round(delay, 3),
                keeps=hex(current.serial) if current is not None else None,
            )
            return False
        log.info(
            "identity_issued",
            source=self.name,
            spiffe_id=svid.spiffe_id,
            serial=hex(svid.serial),
            expires=svid.expires_at.isoformat(),
        )
        return True

    # -- when ------------------------------------------------------------------------------

    def load(self) -> None:
        """At start-up: one attempt (its failure is retried, never fatal: the service starts,
        and calls that need the identity wait for it, bounded by their deadlines)."""
        if self._background:
            self._attempt()
        else:
            self._on_request()

    def start(self) -> None:
        if not self._background:
            return
        self._thread = threading.Thread(
            target=self._run, name="asgimesh-identity-renewal", daemon=True
        )
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            wait = self.schedule.next_at - self._clock()
            if wait > 0:
                # Wake at least every minute: a clock that jumps must not delay a renewal long.
                if self._stop.wait(min(wait, 60.0)):
                    return
                continue
            self._attempt()

    def _on_request(self) -> None:
        """Serverless: start one renewal in a thread if one is due, never waiting for it."""
        if not self.schedule.due(self._clock()) or not self._busy.acquire(blocking=False):
            return

        def renew() -> None:
            try:
                self._attempt()
            finally:
                self._busy.release()

        threading.Thread(target=renew, name="asgimesh-identity-refresh", daemon=True).start()

    def close(self) -> None:
        self._stop.set()
