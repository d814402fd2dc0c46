"""The policy in force: layers merged into an immutable snapshot, swapped atomically.

Layers, lowest first (contract, section 3): built-in defaults, the environment (``MESH_TIMEOUT``,
``MESH_RETRIES``, ``MESH_UPSTREAMS``), ``MESH_POLICY``, then the ``MESH_CONFIG`` source. Readers on
the hot path take ``store.current`` (one attribute read, no lock); writers validate first and
swap only what is whole and valid, so a bad update leaves the last good policy in force.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from .._errors import PolicyError
from ..settings import MeshSettings
from ._load import Layer, merge_layers, parse_document, validate_document
from ._model import Policy

__all__ = ["PolicySnapshot", "PolicyStore", "settings_layers"]


@dataclass(frozen=True, slots=True)
class PolicySnapshot:
    """One version of the effective policy.

    ``origin`` maps each leaf path that a layer set (``defaults.timeout``) to the layer's name;
    paths it does not list hold built-in defaults.
    """

    version: int
    policy: Policy
    origin: Mapping[str, str] = field(default_factory=dict)
    #: Name of the ``MESH_CONFIG`` source that supplied the top layer, if any.
    source: str | None = None

    def origin_of(self, path: str) -> str:
        """Where the value at ``path`` came from: a layer name, or ``"default"``."""
        probe = path
        while probe:
            if probe in self.origin:
                return self.origin[probe]
            probe = probe.rpartition(".")[0]
        return "default"


def settings_layers(settings: MeshSettings) -> list[Layer]:
    """The layers that ``MESH_*`` variables contribute, only for variables actually set."""
    layers: list[Layer] = []
    env: dict[str, Any] = {}
    if "timeout" in settings.model_fields_set:
        env.setdefault("defaults", {})["timeout"] = settings.timeout
    if "retries" in settings.model_fields_set:
        env.setdefault("defaults", {})["retries"] = {"attempts": settings.retries}
    for name, endpoints in settings.upstream_map.items():
        env.setdefault("services", {})[name] = {"endpoints": list(endpoints)}
    if env:
        layers.append(("env", env))
    if settings.policy:
        layers.append(("MESH_POLICY", parse_document(settings.policy, "json", "MESH_POLICY")))
    return layers


Listener = Callable[[PolicySnapshot], None]


class PolicyStore:
    """Holds the current :class:`PolicySnapshot` and applies updates from the config source."""

    def __init__(self, base_layers: list[Layer]) -> None:
        for name, document in base_layers:
            validate_document(document, name)
        self._base = list(base_layers)
        self._lock = threading.Lock()
        self._listeners: list[Listener] = []
        self._failure_listeners: list[Callable[[PolicyError], None]] = []
        self._local_version = 0
        self.current = self._build(None, None, None)

    @classmethod
    def from_settings(cls, settings: MeshSettings) -> PolicyStore:
        return cls(settings_layers(settings))

    def subscribe(self, listener: Listener) -> None:
        """Call ``listener(snapshot)`` after each successful update."""
        self._listeners.append(listener)

    def on_failure(self, listener: Callable[[PolicyError], None]) -> None:
        """Call ``listener(error)`` after each refused update."""
        self._failure_listeners.append(listener)

    def apply(
        self, document: Mapping[str, Any], *, source: str, version: int | None = None
    ) -> PolicySnapshot:
        """Validate ``document`` from ``source`` and, if whole and valid, make it current.

        ``version`` is the control plane's version number; local sources leave it ``None`` and
        get a local counter. Raises :class:`PolicyError`; the current policy is then unchanged.
        """
        try:
            validate_document(document, source)
            with self._lock:
                if version is not None and version <= self.current.version and self.current.source:
                    return self.current
                snapshot = self._build(document, source, version)
                self.current = snapshot
        except PolicyError as error:
            self.refused(error)
            raise
        for listener in self._listeners:
            listener(snapshot)
        return snapshot

    def refused(self, error: PolicyError) -> None:
        """Report an update refused before it reached :meth:`apply` (say, a bad signature).

        The current policy stays in force; failure listeners hear of it as of any invalid
        document, so the refusal is logged and counted once, in one place.
        """
        for failed in self._failure_listeners:
            failed(error)

    def _build(
        self, document: Mapping[str, Any] | None, source: str | None, version: int | None
    ) -> PolicySnapshot:
        layers = list(self._base)
        if document is not None and source is not None:
            layers.append((source, document))
        merged, origin = merge_layers(layers)
        policy = validate_document(merged, source or "policy")
        self._local_version += 1
        return PolicySnapshot(
            version=version if version is not None else self._local_version,
            policy=policy,
            origin=origin,
            source=source,
        )
