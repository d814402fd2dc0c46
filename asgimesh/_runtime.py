"""One mesh runtime per process: settings, policy, metrics and identity, shared by both halves.

``MeshMiddleware`` and the transports call :func:`get_runtime` when they are built, so the first
of them creates the runtime and the rest share it: the policy is loaded once, metrics add up in
one registry, and a policy change reaches inbound and outbound paths together. Tests and hosts
that want several isolated runtimes build :class:`MeshRuntime` themselves and pass it in.
"""

from __future__ import annotations

import os
import threading
import weakref
from collections.abc import Callable
from typing import TYPE_CHECKING

from ._errors import PolicyError
from ._log import get_logger
from .identity import X509SVID, IdentitySource, IdentityStore, identity_source_for
from .policy import PolicySnapshot, PolicyStore
from .policy.sources import PolicySource, policy_source_for
from .settings import MeshSettings
from .telemetry import InstanceReport, MeshMetrics

if TYPE_CHECKING:
    from cryptography import x509

    from .identity._jwt import TokenMinter
    from .inbound._admission import InboundAdmission
    from .inbound._authentication import Authenticator, TokenVerifier

__all__ = ["MeshRuntime", "get_runtime", "set_runtime"]

log = get_logger("asgimesh")


class MeshRuntime:
    """Everything the mesh keeps per process."""

    def __init__(self, settings: MeshSettings | None = None, *, start: bool = True) -> None:
        self.settings = settings if settings is not None else MeshSettings.from_env()
        self.metrics = MeshMetrics(self.settings.service)
        self._lock = threading.Lock()
        #: The server is stopping: ``/_mesh/health`` answers 503 so load balancers stop sending,
        #: while requests still arriving are served (see :meth:`drain`).
        self.draining = False
        self._inbound_admission: InboundAdmission | None = None
        self._inbound_authenticator: Authenticator | None = None
        self.policy = PolicyStore.from_settings(self.settings)
        self.policy.subscribe(self._applied)
        self.policy.on_failure(self._refused)
        self.metrics.policy_version.set(self.policy.current.version)
        #: This process's identity (X.509-SVID), and where it comes from: ``None`` with
        #: ``MESH_MTLS=off`` and no identity configured.
        self.identity = IdentityStore()
        #: Checks ``mesh-identity`` tokens (JWT-SVIDs): x5c-signed ones against the trust
        #: bundle, control-plane-signed ones against its JWT keys where it publishes them.
        self.token_verifier: TokenVerifier | None = None
        #: Makes this service's ``mesh-identity`` tokens, one per audience (``None``: no
        #: identity to speak for, or ``MESH_MTLS=off``).
        self.token_minter: TokenMinter | None = None
        self.identity.subscribe(self._identity_changed)
        self.identity_source: IdentitySource | None = identity_source_for(
            self.settings, self.identity
        )
        if self.settings.mtls != "off":
            self._tokens(start)
        self.reporter = InstanceReport(
            self.metrics.registry,
            self.settings.service,
            prefix=self.settings.instance,
            ejections=self.metrics.recent_ejections,
        )
        self.source: PolicySource | None = policy_source_for(
            self.settings, self.policy, reporter=self.reporter
        )
        #: Call once per request (inbound middleware, outbound transports): lets a config source
        #: without background work (serverless mode) refresh. Never blocks; a no-op otherwise.
        #: ``None`` where the source has no such hook, so the shells skip the call entirely.
        self.on_request: Callable[[], None] | None = _combined(
            getattr(self.source, "on_request", None),
            getattr(self.identity_source, "on_request", None),
        )
        if self.source is not None:
            self.source.load()
            if start:
                self.source.start()
        if self.identity_source is not None:
            self.identity_source.load()
            if start:
                self.identity_source.start()
        if start:
            _running.add(self)

    def _tokens(self, start: bool) -> None:
        """Token minter and verifier. With a control plane (its issuer can fetch tokens and
        the JWKS) tokens are its to sign; otherwise the service signs its own with its
        certificate's key (``x5c``), which callees verify against the trust bundle."""
        from .identity._jwt import JWKSCache, JWTVerifier, TokenMinter

        source = self.identity_source
        fetch_token = getattr(source, "jwt_svid", None)
        fetch_bundle = getattr(source, "jwt_bundle", None)
        jwks = None
        if fetch_bundle is not None:
            jwks = JWKSCache(fetch_bundle, source=getattr(source, "base_url", "control plane"))
            if getattr(source, "on_request", None) is None:
                jwks.refresh()  # at start-up, as the first certificate: callers' first tokens
            else:
                jwks.stale()  # serverless: in a thread, never inside a request
        self.token_verifier = JWTVerifier(
            self.settings.spiffe_id,
            self._bundle,
            jwks=None if jwks is None else jwks.keys,
            on_unknown_key=None if jwks is None else jwks.stale,
        )
        if source is not None:
            self.token_minter = TokenMinter(self.identity, fetch=fetch_token)

    def restart_in_child(self) -> None:
        """Background work again, in a child forked from the process that started it.

        A fork copies the runtime but none of its threads: a gunicorn ``--preload`` worker (the
        app, and so the runtime, built in the master) would otherwise serve with the master's
        policy forever and never renew its certificate. :func:`os.register_at_fork` calls this
        in every child of a process with running runtimes; the child reports under a name of
        its own.
        """
        self._lock = threading.Lock()
        self.reporter.rename_for_this_process()
        if self.source is not None:
            self.source.start()
        if self.identity_source is not None:
            self.identity_source.start()

    @property
    def snapshot(self) -> PolicySnapshot:
        return self.policy.current

    @property
    def inbound_admission(self) -> InboundAdmission:
        """What this service admits (``inbound.<service>``): one per runtime, so every
        middleware on it shares its buckets and in-flight count, as they serve one service.
        Made at first use: a process that only calls out never compiles inbound rules."""
        admission = self._inbound_admission
        if admission is None:
            # Imported here: the inbound package imports this module for get_runtime().
            from .inbound._admission import InboundAdmission

            with self._lock:
                admission = self._inbound_admission
                if admission is None:
                    metrics = self.metrics
                    admission = InboundAdmission(
                        self.settings.service,
                        self.policy,
                        on_rate_limited=metrics.rate_limited.inc,
                        on_denied=metrics.authz_denied.inc,
                        on_limit=metrics.concurrency_limit.set,
                    )
                    self._inbound_admission = admission
        return admission

    @property
    def inbound_authenticator(self) -> Authenticator:
        """Verifies callers against this service's trust bundle: one per runtime, so every
        middleware shares what it has verified. Made at first use."""
        authenticator = self._inbound_authenticator
        if authenticator is None:
            # Imported here: the inbound package imports this module for get_runtime().
            from .inbound._authentication import Authenticator

            with self._lock:
                authenticator = self._inbound_authenticator
                if authenticator is None:
                    failures = self.metrics.authn_failures
                    service = self.settings.service
                    authenticator = Authenticator(
                        self.settings.trust_domain,
                        self._bundle,
                        tokens=self.token_verifier,
                        on_failure=lambda reason: failures.labels(service, reason).inc(),
                    )
                    self._inbound_authenticator = authenticator
        return authenticator

    def _bundle(self) -> tuple[x509.Certificate, ...] | None:
        """The trust bundle of the identity in use (``None`` before the first identity)."""
        current = self.identity.current
        return current.bundle if current is not None else None

    def _identity_changed(self, svid: X509SVID) -> None:
        self.metrics.certificate_expiry.set(svid.expires_at.timestamp())

    def _applied(self, snapshot: PolicySnapshot) -> None:
        self.metrics.policy_version.set(snapshot.version)
        self.metrics.policy_reloads.labels(self.settings.service, "success").inc()

    def _refused(self, error: PolicyError) -> None:
        self.metrics.policy_reloads.labels(self.settings.service, "failure").inc()
        log.warning("policy_refused", source=error.source, problems=error.problems)

    def drain(self) -> None:
        """The server is about to stop: report draining on ``/_mesh/health`` (503), keep
        serving what still comes. Called by the ASGI lifespan's shutdown and by ``asgimesh
        serve`` on SIGTERM (at the start of its ``--drain-delay``)."""
        if not self.draining:
            self.draining = True
            self.reporter.state = "draining"
            log.info("draining", service=self.settings.service)
            if self.source is not None:
                self.source.report_soon()

    def serving(self) -> None:
        """A server (re)started serving with this runtime: no longer draining or stopped."""
        self.draining = False
        self.reporter.state = "serving"

    def stopped(self) -> None:
        """The server has stopped serving (its lifespan shutdown is complete, a gunicorn worker
        exits): the last report goes out now, bounded in time, so the control plane drops the
        instance at once instead of counting it until its reports go stale."""
        self.draining = True
        self.reporter.state = "stopped"
        if self.source is not None:
            self.source.report_final()

    def close(self) -> None:
        """Stop background work (the config source's watcher, identity renewal) and remove the
        identity's private files."""
        _running.discard(self)
        if self.source is not None:
            self.source.close()
        if self.identity_source is not None:
            self.identity_source.close()
        self.identity.close()


def _combined(*hooks: Callable[[], None] | None) -> Callable[[], None] | None:
    """One per-request hook calling each of ``hooks`` that exists (``None`` if none does)."""
    present = [hook for hook in hooks if hook is not None]
    if len(present) <= 1:
        return present[0] if present else None

    def on_request() -> None:
        for hook in present:
            hook()

    return on_request


_runtime: MeshRuntime | None = None
_lock = threading.Lock()
#: Runtimes whose background work runs (started, not closed): restarted in forked children.
_running: weakref.WeakSet[MeshRuntime] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    for runtime in list(_running):
        runtime.restart_in_child()


if hasattr(os, "register_at_fork"):  # not on Windows, which does not fork
    os.register_at_fork(after_in_child=_after_fork_in_child)


def get_runtime() -> MeshRuntime:
    """The process's runtime, created from the environment on first use."""
    global _runtime
    runtime = _runtime
    if runtime is None:
        with _lock:
            if _runtime is None:
                _runtime = MeshRuntime()
            runtime = _runtime
    return runtime


def set_runtime(runtime: MeshRuntime | None) -> MeshRuntime | None:
    """Install ``runtime`` as the process's runtime (``None`` to forget it); returns the old one."""
    global _runtime
    with _lock:
        old, _runtime = _runtime, runtime
    return old
