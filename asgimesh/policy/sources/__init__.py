"""Where a service's top policy layer comes from (``MESH_CONFIG``): a file, a control plane, etcd.

Everything here runs inside the service, so none of it imports the control-plane server: the
signed-envelope format lives in :mod:`asgimesh.policy._signed` and the etcd gateway client in
:mod:`asgimesh._etcd`, shared with the server from neutral ground. Sources receive what they
need (the policy store, the parsed URL, a token, a trust bundle, a report callback), never the
whole runtime.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol

from ..._errors import ConfigError
from ...settings import MeshSettings
from .._state import PolicyStore
from ._file import FilePolicySource
from ._url import SourceOptions, parse_source_url

if TYPE_CHECKING:
    from ._watch import ControlPlaneSource, Reporter

__all__ = [
    "ControlPlaneSource",
    "FilePolicySource",
    "PolicySource",
    "Reporter",
    "SourceOptions",
    "parse_source_url",
    "policy_source_for",
]

_REMOTE = ("http://", "https://", "etcd://", "etcds://")


def __getattr__(name: str) -> Any:
    # The control-plane client (its feeds, the etcd gateway client) is imported when a
    # service follows one, not by every service that imports the mesh (cold start).
    if name in ("ControlPlaneSource", "Reporter"):
        from . import _watch

        return getattr(_watch, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


class PolicySource(Protocol):
    """A ``MESH_CONFIG`` source as the runtime drives it."""

    name: str

    def load(self) -> None:
        """First load, before serving. May raise :class:`PolicyError`."""

    def start(self) -> None:
        """Begin following changes in the background."""

    def close(self) -> None:
        """Stop following changes."""

    def report_soon(self) -> None:
        """Send this instance's report now rather than when it is due (never blocks)."""

    def report_final(self) -> None:
        """Send this instance's last report, waiting a bounded time (the process exits)."""


def policy_source_for(
    settings: MeshSettings, policy: PolicyStore, *, reporter: Reporter | None = None
) -> PolicySource | None:
    """The source ``MESH_CONFIG`` names, feeding ``policy`` (``None`` without ``MESH_CONFIG``).

    Raises :class:`ConfigError` for a URL or ``MESH_CA`` that cannot be used, naming it.
    """
    target = settings.config
    if target is None:
        return None
    if not target.startswith(_REMOTE):
        return FilePolicySource(target, policy)
    options = parse_source_url(target)
    bundle = None
    bundle_pem: bytes | None = None
    if settings.ca is not None:
        from ...identity import load_bundle

        try:
            bundle_pem = settings.ca.read_bytes()
            bundle = load_bundle(bundle_pem)
        except (OSError, ValueError) as exc:
            raise ConfigError(
                f"MESH_CA={str(settings.ca)!r}: expected a readable PEM bundle ({exc})"
            ) from None
    from ._watch import ControlPlaneSource

    verify = None
    if options.kind == "http":
        from ...identity import control_plane_context

        # https with MESH_CA: the control plane's chain and ID are checked (pinned).
        verify = control_plane_context(options.base_url, settings.trust_domain, bundle_pem)
    return ControlPlaneSource(
        options,
        policy,
        trust_domain=settings.trust_domain,
        token=settings.token.get_secret_value() if settings.token else None,
        bundle=bundle,
        reporter=reporter,
        verify=verify,
        max_age=settings.policy_max_age or None,
    )
