"""Where the control plane's private keys live, on a real (plain) etcd, in-process."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from asgimesh.controlplane import KeyStoreError, load_all_keys
from asgimesh.controlplane._keys import load_admin_token
from asgimesh.controlplane._sealing import KeyEncryptionKey
from asgimesh.controlplane.stores import open_store
from asgimesh.identity import JWTIssuer, MeshCA

pytestmark = pytest.mark.anyio


async def _load(store, state_dir: Path, **kw):
    return await load_all_keys(store, state_dir, "mesh.local", **kw)


async def _everything(store) -> dict[str, bytes]:
    kvs, _ = await store.etcd.range("/asgimesh/", prefix=True)
    return {key: value for key, value, _ in kvs}


async def test_default_mode_keeps_keys_in_files_and_refuses_a_replica_without_them(
    etcd, tmp_path: Path
) -> None:
    store = open_store(etcd.url, tmp_path)
    await store.open()
    try:
        ca, jwt = await _load(store, tmp_path / "a")
        again, jwt_again = await _load(store, tmp_path / "a")  # a restart: the same keys
        assert again.bundle_pem() == ca.bundle_pem() and jwt_again.kid == jwt.kid
        assert not [k for k, v in (await _everything(store)).items() if b"PRIVATE KEY" in v]
        with pytest.raises(KeyStoreError, match="already serves a mesh CA; none is in"):
            await _load(store, tmp_path / "b")
        assert not (tmp_path / "b" / "ca-key.pem").exists()
        (tmp_path / "c").mkdir()
        for name in ("ca.pem", "ca-key.pem", "policy-signer.pem", "policy-signing-key.pem"):
            shutil.copy2(tmp_path / "a" / name, tmp_path / "c" / name)
        with pytest.raises(KeyStoreError, match=r"already serves a JWT signing key; no .*c/jwt"):
            await _load(store, tmp_path / "c")
        shutil.copy2(tmp_path / "a" / "jwt-signing-key.pem", tmp_path / "c")
        shared, shared_jwt = await _load(store, tmp_path / "c")
        assert shared.bundle_pem() == ca.bundle_pem() and shared_jwt.kid == jwt.kid
    finally:
        await store.close()


async def test_clear_keys_migrate_into_sealed_ones_with_a_kek(etcd, tmp_path: Path) -> None:
    kek_file = tmp_path / "kek"
    kek_file.write_bytes(os.urandom(32))
    old, old_jwt = MeshCA.create("mesh.local"), JWTIssuer.create("mesh.local")
    store = open_store(etcd.url, tmp_path)
    await store.open()
    try:
        await store.bootstrap_secret("mesh-ca", json.dumps(old.to_pem()))
        await store.bootstrap_secret("trust-bundle", old.bundle_pem().decode())
        await store.bootstrap_secret("jwt-key", old_jwt.key_pem().decode())
        with pytest.raises(KeyStoreError, match=r"in clear .* --migrate-keys"):
            await _load(store, tmp_path / "a", kek_file=kek_file)
        ca, jwt = await _load(store, tmp_path / "a", kek_file=kek_file, migrate=True)
        assert ca.bundle_pem() == old.bundle_pem() and jwt.kid == old_jwt.kid
        stored = await _everything(store)
        assert "/asgimesh/bootstrap/mesh-ca" not in stored
        assert "/asgimesh/bootstrap/jwt-key" not in stored
        assert not [k for k, v in stored.items() if b"PRIVATE KEY" in v]
        assert not list((tmp_path / "a").glob("*key*"))  # sealed in etcd, not in files
        kek = KeyEncryptionKey.from_file(kek_file)
        sealed = stored["/asgimesh/bootstrap/jwt-key-sealed"].decode()
        assert kek.unseal("jwt-key-sealed", sealed) == old_jwt.key_pem()
        # Another replica, another (empty) state dir, the same KEK: the same keys.
        other, other_jwt = await _load(store, tmp_path / "b", kek_file=kek_file)
        assert other.bundle_pem() == old.bundle_pem() and other_jwt.kid == old_jwt.kid
        # A state dir holding a different CA than the sealed one is refused.
        MeshCA.create("mesh.local").save(tmp_path / "d")
        with pytest.raises(KeyStoreError, match="is not the one sealed in"):
            await _load(store, tmp_path / "d", kek_file=kek_file)
    finally:
        await store.close()


async def test_a_kek_with_a_store_of_one_replica_is_refused(tmp_path: Path) -> None:
    kek_file = tmp_path / "kek"
    kek_file.write_bytes(os.urandom(32))
    store = open_store("", tmp_path)
    await store.open()
    try:
        with pytest.raises(KeyStoreError, match="only a shared store \\(etcd\\) keeps sealed"):
            await _load(store, tmp_path, kek_file=kek_file)
        ca, _ = await _load(store, tmp_path)  # SQLite: files in the state dir, as before
        assert (tmp_path / "ca-key.pem").stat().st_mode & 0o777 == 0o600
        assert ca.bundle_pem() == (tmp_path / "ca.pem").read_bytes()
    finally:
        await store.close()


def test_the_generated_admin_token_is_private_stable_and_never_an_option(tmp_path: Path) -> None:
    """Made once (0600), read back the same; prefixed, so ``--token $(cat ...)`` never sees a
    leading ``-`` (a bare ``token_urlsafe`` starts with one a time in 64)."""
    tokens = {load_admin_token(tmp_path / f"cp{n}") for n in range(200)}
    assert len(tokens) == 200
    assert all(token.startswith("mat_") and len(token) > 40 for token in tokens)
    assert load_admin_token(tmp_path / "cp0") in tokens
    assert (tmp_path / "cp0" / "admin-token").stat().st_mode & 0o777 == 0o600
