"""Where the control plane's CA and policy-signing key live, so that every replica signs alike.

Order: key files in ``--state-dir`` if an operator put them there (a mounted secret); else, for
a replicated store (etcd), the material kept in the store, created by whichever replica starts
first (create-if-absent, so all replicas load the winner); else a new CA written to the state
dir. Keeping keys in etcd means etcd access is CA access: give etcd client TLS/auth, or mount
the same key files into every replica's state dir instead.
"""

from __future__ import annotations

import json
import os
import secrets
from pathlib import Path

import anyio.to_thread

from .._log import get_logger
from ..identity import JWTIssuer, MeshCA
from .stores import Store

__all__ = ["JWT_KEY_FILE", "load_admin_token", "load_jwt_issuer", "load_keys"]

#: The JWT-SVID signing key's file in the state dir (PKCS#8 PEM, mode 0600).
JWT_KEY_FILE = "jwt-signing-key.pem"

log = get_logger("asgimesh.controlplane")


async def load_keys(store: Store, state_dir: Path, trust_domain: str) -> MeshCA:
    ca = await _load_or_create(store, state_dir, trust_domain)
    if store.shared:
        # Public, for services that read policy straight from etcd (``MESH_CONFIG=etcd://``).
        await store.bootstrap_secret("trust-bundle", ca.bundle_pem().decode())
    return ca


async def _load_or_create(store: Store, state_dir: Path, trust_domain: str) -> MeshCA:
    ca = await anyio.to_thread.run_sync(MeshCA.load, trust_domain, state_dir)
    if ca is not None:
        log.info("mesh_ca_loaded", where=str(state_dir))
        return ca
    fresh = await anyio.to_thread.run_sync(MeshCA.create, trust_domain)
    if store.shared:
        stored = await store.bootstrap_secret("mesh-ca", json.dumps(fresh.to_pem()))
        log.info("mesh_ca_loaded", where=store.description)
        return MeshCA.from_pem(trust_domain, json.loads(stored))
    await anyio.to_thread.run_sync(fresh.save, state_dir)
    log.info("mesh_ca_created", where=str(state_dir))
    return fresh


async def load_jwt_issuer(store: Store, state_dir: Path, trust_domain: str) -> JWTIssuer:
    """The key that signs ``mesh-identity`` tokens, found in the same order as the CA's:
    ``state_dir/jwt-signing-key.pem``, else the replicated store (first replica's wins), else
    a new key written to the state dir. Every replica must sign with the same key, or a
    token from one would not verify against another's ``/v1/jwt-bundle``."""
    path = state_dir / JWT_KEY_FILE
    if path.exists():
        pem = await anyio.to_thread.run_sync(path.read_bytes)
        try:
            return JWTIssuer.from_pem(trust_domain, pem)
        except ValueError as exc:
            raise ValueError(f"{path}: {exc}") from None
    fresh = await anyio.to_thread.run_sync(JWTIssuer.create, trust_domain)
    if store.shared:
        stored = await store.bootstrap_secret("jwt-key", fresh.key_pem().decode())
        return JWTIssuer.from_pem(trust_domain, stored)
    await anyio.to_thread.run_sync(_write_private, path, fresh.key_pem())
    log.info("jwt_key_created", where=str(path))
    return fresh


def _write_private(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)


def load_admin_token(state_dir: Path) -> str:
    """The admin token kept in ``state_dir/admin-token`` (mode 0600), made on first use.

    Used only when neither ``--admin-token`` nor ``MESH_ADMIN_TOKEN`` is given; the token is
    never logged, only where to read it.
    """
    path = state_dir / "admin-token"
    if path.exists():
        return path.read_text().strip()
    state_dir.mkdir(parents=True, exist_ok=True)
    token = secrets.token_urlsafe(32)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(token + "\n")
    log.warning("admin_token_generated", path=str(path))
    return token
