"""Where this service's identity comes from (contract, section 8, first found wins).

1. ``MESH_CERT`` + ``MESH_KEY`` + ``MESH_CA``: files written by someone else, re-read on change;
2. ``SPIFFE_CREDENTIAL_FOLDER``: the SPIFFE filesystem delivery, re-read on change;
3. the control plane named by ``MESH_CONFIG``, with ``MESH_TOKEN``: issued and renewed here.

With ``MESH_MTLS`` ``permissive`` or ``strict`` and none of these, start-up stops with a message
that lists them: a service that claims encryption but has no identity would either refuse every
caller or silently run in clear text.
"""

from __future__ import annotations

from typing import Protocol
from urllib.parse import parse_qs, urlsplit

from ..settings import MeshSettings
from ._controlplane_tls import control_plane_context
from ._files import FileIdentitySource, files_reader, folder_reader
from ._store import IdentityStore
from ._svid import IdentityError, load_pem_bundle

__all__ = ["IdentitySource", "identity_source_for"]


class IdentitySource(Protocol):
    """What the runtime does with an identity source: load, follow, stop."""

    name: str

    def load(self) -> None: ...
    def start(self) -> None: ...
    def close(self) -> None: ...


def _read_ca(settings: MeshSettings) -> bytes | None:
    if settings.ca is None:
        return None
    try:
        data = settings.ca.read_bytes()
    except OSError as exc:
        raise IdentityError(f"MESH_CA={settings.ca}: cannot be read ({exc.strerror})") from None
    load_pem_bundle(data, f"MESH_CA={settings.ca}")
    return data


def identity_source_for(settings: MeshSettings, store: IdentityStore) -> IdentitySource | None:
    """The identity source the settings name (``None``: no identity, only allowed with
    ``MESH_MTLS=off``); :class:`IdentityError` for a half-given or unusable one."""
    if settings.cert is not None or settings.key is not None:
        missing = [
            name
            for name, value in (
                ("MESH_CERT", settings.cert),
                ("MESH_KEY", settings.key),
                ("MESH_CA", settings.ca),
            )
            if value is None
        ]
        if missing:
            raise IdentityError(
                "a file identity needs MESH_CERT, MESH_KEY and MESH_CA (the trust bundle); "
                f"missing {', '.join(missing)}"
            )
        cert, key, ca = settings.cert, settings.key, settings.ca
        assert cert is not None
        assert key is not None
        assert ca is not None
        read, paths = files_reader(cert, key, ca, settings.trust_domain)
        return FileIdentitySource(read, paths, store, f"MESH_CERT={settings.cert}")
    if settings.credential_folder is not None:
        folder = settings.credential_folder
        if not folder.is_dir():
            raise IdentityError(f"SPIFFE_CREDENTIAL_FOLDER={folder}: expected a directory")
        read, paths = folder_reader(folder, settings.trust_domain)
        return FileIdentitySource(read, paths, store, f"SPIFFE_CREDENTIAL_FOLDER={folder}")
    config = settings.config
    if config is not None and config.startswith(("http://", "https://")) and settings.token:
        parts = urlsplit(config)
        base_url = f"{parts.scheme}://{parts.netloc}{parts.path}".rstrip("/")
        bundle = _read_ca(settings)
        # https with MESH_CA: the chain and the control plane's ID are checked (pinned).
        verify = control_plane_context(base_url, settings.trust_domain, bundle)
        serverless = "refresh" in parse_qs(parts.query)
        from ._issuer import ControlPlaneIssuer  # the CSR client, for such services only

        return ControlPlaneIssuer(
            base_url,
            settings.token.get_secret_value(),
            store,
            spiffe_id=settings.spiffe_id,
            trust_domain=settings.trust_domain,
            bundle_pem=bundle,
            verify=verify,
            background=not serverless,
        )
    if settings.mtls != "off":
        raise IdentityError(
            f"MESH_MTLS={settings.mtls!r} needs an identity: set MESH_CERT, MESH_KEY and "
            "MESH_CA, or SPIFFE_CREDENTIAL_FOLDER, or MESH_CONFIG=<control plane URL> with "
            "MESH_TOKEN"
        )
    return None
