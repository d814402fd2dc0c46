"""Where the control plane's private keys live: never in a shared store in clear.

Three keys matter: the mesh CA's, the policy-signing key and the JWT-SVID signing key. Holding
any of them is holding the mesh, so whoever can read the store must not find them there.

- **SQLite (one replica)**: files in ``--state-dir`` (mode 0600), made on first start.
- **etcd, default**: files in each replica's ``--state-dir`` as well; only public material
  goes to etcd (``bootstrap/trust-bundle``, the CA certificate services pin, and
  ``bootstrap/jwt-public``, the JWKS). The first replica to start makes the keys; another
  replica must be given the same files (a mounted secret): one that starts without them, or
  with other ones, is refused, since it would sign a mesh nobody trusts.
- **etcd with a key-encryption key** (``--key-encryption-key-file``): the keys are kept in etcd
  sealed with AES-256-GCM (:mod:`._sealing`), so replicas share them without sharing files.

A store written by an older version holds the keys in clear (``bootstrap/mesh-ca``,
``bootstrap/jwt-key``): the control plane refuses to start on it until it is run once with
``--migrate-keys``, which moves them to the state dir (or seals them) and deletes the clear
copies. (etcd keeps old revisions until it is compacted: compact and defragment after.)
"""

from __future__ import annotations

import json
import os
import secrets
from pathlib import Path

import anyio.to_thread

from .._log import get_logger
from ..identity import JWTIssuer, MeshCA
from ._sealing import KeyEncryptionKey, SealError
from .stores import Store

__all__ = [
    "JWT_KEY_FILE",
    "KeyStoreError",
    "load_admin_token",
    "load_all_keys",
    "load_jwt_issuer",
    "load_kek",
    "load_keys",
    "new_admin_token",
]

#: The JWT-SVID signing key's file in the state dir (PKCS#8 PEM, mode 0600).
JWT_KEY_FILE = "jwt-signing-key.pem"

#: Items of the store's ``bootstrap/`` space.
TRUST_BUNDLE, JWT_PUBLIC = "trust-bundle", "jwt-public"
SEALED_CA, SEALED_JWT = "mesh-ca-sealed", "jwt-key-sealed"
LEGACY_CA, LEGACY_JWT = "mesh-ca", "jwt-key"

log = get_logger("asgimesh.controlplane")


class KeyStoreError(Exception):
    """The keys cannot be loaded as configured; one line saying what to do instead."""


def load_kek(path: Path | None) -> KeyEncryptionKey | None:
    """The key-encryption key in ``path`` (``None``: keys stay in files)."""
    if path is None:
        return None
    try:
        return KeyEncryptionKey.from_file(path)
    except ValueError as exc:
        raise KeyStoreError(str(exc)) from None


async def load_all_keys(
    store: Store,
    state_dir: Path,
    trust_domain: str,
    *,
    kek_file: Path | None = None,
    migrate: bool = False,
) -> tuple[MeshCA, JWTIssuer]:
    """The CA (with the policy-signing key) and the JWT issuer, as the server starts with."""
    kek = await anyio.to_thread.run_sync(load_kek, kek_file)
    ca = await load_keys(store, state_dir, trust_domain, kek=kek, migrate=migrate)
    jwt = await load_jwt_issuer(store, state_dir, trust_domain, kek=kek, migrate=migrate)
    return ca, jwt


async def load_keys(
    store: Store,
    state_dir: Path,
    trust_domain: str,
    *,
    kek: KeyEncryptionKey | None = None,
    migrate: bool = False,
) -> MeshCA:
    """The mesh CA and policy-signing key, loaded or made as the module describes."""
    if not store.shared:
        if kek is not None:
            raise KeyStoreError(
                "--key-encryption-key-file: only a shared store (etcd) keeps sealed keys; "
                f"{store.description} keeps them in files in {state_dir}"
            )
        return await _ca_in_files(state_dir, trust_domain)
    legacy = await store.read_bootstrap(LEGACY_CA)
    if legacy is not None:
        await _migrate_ca(store, state_dir, trust_domain, legacy, kek, migrate)
    local = await _load_local_ca(state_dir, trust_domain)
    if kek is not None:
        ca = await _sealed_ca(store, trust_domain, kek, local, state_dir)
    else:
        ca = local if local is not None else await _new_ca(trust_domain)
    # Public, for services that read policy straight from etcd (``MESH_CONFIG=etcd://``),
    # and the mark of which CA this mesh runs on: the first replica's wins.
    ours = ca.bundle_pem().decode()
    served = await store.bootstrap_secret(TRUST_BUNDLE, ours)
    if served != ours:
        mine = "another mesh CA than the one in" if local is not None else "a mesh CA; none is in"
        raise KeyStoreError(
            f"{store.description} already serves {mine} {state_dir}: give this replica the "
            "first one's key files in --state-dir, or run every replica with one "
            "--key-encryption-key-file"
        )
    if local is None and kek is None:
        await anyio.to_thread.run_sync(ca.save, state_dir)
        log.info("mesh_ca_created", where=str(state_dir))
    else:
        log.info("mesh_ca_loaded", where=str(state_dir) if kek is None else store.description)
    return ca


async def _ca_in_files(state_dir: Path, trust_domain: str) -> MeshCA:
    ca = await _load_local_ca(state_dir, trust_domain)
    if ca is not None:
        log.info("mesh_ca_loaded", where=str(state_dir))
        return ca
    fresh = await anyio.to_thread.run_sync(MeshCA.create, trust_domain)
    await anyio.to_thread.run_sync(fresh.save, state_dir)
    log.info("mesh_ca_created", where=str(state_dir))
    return fresh


async def _load_local_ca(state_dir: Path, trust_domain: str) -> MeshCA | None:
    try:
        return await anyio.to_thread.run_sync(MeshCA.load, trust_domain, state_dir)
    except ValueError as exc:
        raise KeyStoreError(f"the mesh CA's files in {state_dir}: {exc}") from None


def _seal_ca(ca: MeshCA, kek: KeyEncryptionKey) -> str:
    parts = ca.to_pem()
    for secret in ("ca_key", "signing_key"):
        parts[secret] = kek.seal(f"{SEALED_CA}/{secret}", parts[secret].encode())
    return json.dumps(parts)


def _open_ca(trust_domain: str, text: str, kek: KeyEncryptionKey) -> MeshCA:
    try:
        parts = json.loads(text)
        for secret in ("ca_key", "signing_key"):
            parts[secret] = kek.unseal(f"{SEALED_CA}/{secret}", parts[secret]).decode()
        return MeshCA.from_pem(trust_domain, parts)
    except SealError as exc:
        raise KeyStoreError(f"cannot open the mesh CA in the store: {exc}") from None
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise KeyStoreError(f"the sealed mesh CA in the store does not load ({exc})") from None


async def _sealed_ca(
    store: Store,
    trust_domain: str,
    kek: KeyEncryptionKey,
    local: MeshCA | None,
    state_dir: Path,
) -> MeshCA:
    stored = await store.read_bootstrap(SEALED_CA)
    if stored is None:
        # First replica: seal the CA it has (files an operator put there) or a new one;
        # create-if-absent, so replicas starting together all load the winner's.
        fresh = local if local is not None else await _new_ca(trust_domain)
        stored = await store.bootstrap_secret(SEALED_CA, _seal_ca(fresh, kek))
    ca = _open_ca(trust_domain, stored, kek)
    if local is not None and local.bundle_pem() != ca.bundle_pem():
        raise KeyStoreError(
            f"the mesh CA in {state_dir} is not the one sealed in {store.description}: "
            "remove the state dir's CA files, or start from a store without one"
        )
    return ca


async def _migrate_ca(
    store: Store,
    state_dir: Path,
    trust_domain: str,
    legacy: str,
    kek: KeyEncryptionKey | None,
    migrate: bool,
) -> None:
    if not migrate:
        raise KeyStoreError(_legacy_refusal(store, "mesh CA"))
    try:
        ca = MeshCA.from_pem(trust_domain, json.loads(legacy))
    except (ValueError, KeyError, TypeError) as exc:
        raise KeyStoreError(f"the clear mesh CA in the store does not load ({exc})") from None
    if kek is not None:
        await store.bootstrap_secret(SEALED_CA, _seal_ca(ca, kek))
    elif await _load_local_ca(state_dir, trust_domain) is None:
        await anyio.to_thread.run_sync(ca.save, state_dir)
    await store.delete_bootstrap(LEGACY_CA)
    log.warning("mesh_ca_migrated", to=store.description if kek else str(state_dir))


def _legacy_refusal(store: Store, what: str) -> str:
    return (
        f"{store.description} holds the {what}'s private key in clear (written by an older "
        "asgimesh): start one replica once with --migrate-keys (add --key-encryption-key-file "
        "to keep it sealed in etcd, else it moves to --state-dir), then compact etcd"
    )


async def load_jwt_issuer(
    store: Store,
    state_dir: Path,
    trust_domain: str,
    *,
    kek: KeyEncryptionKey | None = None,
    migrate: bool = False,
) -> JWTIssuer:
    """The key that signs ``mesh-identity`` tokens, kept where the CA's is. Every replica must
    sign with the same key, or a token from one would not verify against another's
    ``/v1/jwt-bundle``."""
    path = state_dir / JWT_KEY_FILE
    if store.shared:
        legacy = await store.read_bootstrap(LEGACY_JWT)
        if legacy is not None:
            if not migrate:
                raise KeyStoreError(_legacy_refusal(store, "JWT signing key"))
            issuer = _issuer(trust_domain, legacy, "the clear JWT key in the store")
            if kek is not None:
                await store.bootstrap_secret(SEALED_JWT, kek.seal(SEALED_JWT, issuer.key_pem()))
            elif not path.exists():
                await anyio.to_thread.run_sync(_write_private, path, issuer.key_pem())
            await store.delete_bootstrap(LEGACY_JWT)
            log.warning("jwt_key_migrated", to=store.description if kek else str(path))
    local = None
    if path.exists():
        pem = await anyio.to_thread.run_sync(path.read_bytes)
        local = _issuer(trust_domain, pem, str(path))
    if not store.shared:
        if local is not None:
            return local
        fresh = await anyio.to_thread.run_sync(JWTIssuer.create, trust_domain)
        await anyio.to_thread.run_sync(_write_private, path, fresh.key_pem())
        log.info("jwt_key_created", where=str(path))
        return fresh
    if kek is not None:
        stored = await store.read_bootstrap(SEALED_JWT)
        if stored is None:
            made = local if local is not None else await _new_issuer(trust_domain)
            stored = await store.bootstrap_secret(SEALED_JWT, kek.seal(SEALED_JWT, made.key_pem()))
        try:
            pem = kek.unseal(SEALED_JWT, stored)
        except SealError as exc:
            raise KeyStoreError(f"cannot open the JWT signing key in the store: {exc}") from None
        issuer = _issuer(trust_domain, pem, "the sealed JWT key in the store")
    else:
        issuer = local if local is not None else await _new_issuer(trust_domain)
    public = json.dumps(issuer.jwks(), sort_keys=True)
    if await store.bootstrap_secret(JWT_PUBLIC, public) != public:
        mine = "another JWT signing key than" if local is not None else "a JWT signing key; no"
        raise KeyStoreError(
            f"{store.description} already serves {mine} {path}: give this replica the first "
            f"one's {JWT_KEY_FILE} in --state-dir, or run every replica with one "
            "--key-encryption-key-file"
        )
    if local is None and kek is None:
        await anyio.to_thread.run_sync(_write_private, path, issuer.key_pem())
        log.info("jwt_key_created", where=str(path))
    elif local is not None and kek is not None and local.kid != issuer.kid:
        raise KeyStoreError(f"{path} is not the JWT signing key sealed in {store.description}")
    return issuer


async def _new_ca(trust_domain: str) -> MeshCA:
    ca: MeshCA = await anyio.to_thread.run_sync(MeshCA.create, trust_domain)
    return ca


async def _new_issuer(trust_domain: str) -> JWTIssuer:
    issuer: JWTIssuer = await anyio.to_thread.run_sync(JWTIssuer.create, trust_domain)
    return issuer


def _issuer(trust_domain: str, pem: bytes | str, where: str) -> JWTIssuer:
    try:
        return JWTIssuer.from_pem(trust_domain, pem)
    except ValueError as exc:
        raise KeyStoreError(f"{where}: {exc}") from None


def _write_private(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)


def new_admin_token() -> str:
    """A fresh admin token: ``mat_`` and 32 random bytes, URL-safe.

    The prefix is not decoration: a bare ``token_urlsafe`` starts with ``-`` one time in 64,
    and ``asgimesh policy apply --token "$(cat admin-token)"`` then fails in argparse
    ("expected one argument"), as does any other tool that takes the token as an option's
    value. It also lets secret scanners recognise a leaked admin token (as ``mst_`` does for
    service tokens).
    """
    return "mat_" + secrets.token_urlsafe(32)


def load_admin_token(state_dir: Path) -> str:
    """The admin token kept in ``state_dir/admin-token`` (mode 0600), made on first use.

    Used only when neither ``--admin-token`` nor ``MESH_ADMIN_TOKEN`` is given; the token is
    never logged, only where to read it.
    """
    path = state_dir / "admin-token"
    if path.exists():
        return path.read_text().strip()
    state_dir.mkdir(parents=True, exist_ok=True)
    token = new_admin_token()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(token + "\n")
    log.warning("admin_token_generated", path=str(path))
    return token
