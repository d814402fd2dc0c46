"""Private keys sealed for a shared store (sans I/O): AES-256-GCM, the item as associated data."""

from __future__ import annotations

import base64
import os
from pathlib import Path

import pytest

from asgimesh.controlplane._sealing import KeyEncryptionKey, SealError

SECRET = b"-----BEGIN PRIVATE KEY-----\nnot really\n-----END PRIVATE KEY-----\n"


def test_a_sealed_item_opens_for_its_own_name_only() -> None:
    kek = KeyEncryptionKey(os.urandom(32))
    sealed = kek.seal("mesh-ca-sealed/ca_key", SECRET)
    assert sealed.startswith(f"aes256gcm:{kek.key_id}:")
    assert b"PRIVATE" not in base64.b64decode(sealed.rsplit(":", 1)[1])
    assert kek.unseal("mesh-ca-sealed/ca_key", sealed) == SECRET
    assert kek.seal("mesh-ca-sealed/ca_key", SECRET) != sealed  # a fresh nonce every time
    with pytest.raises(SealError, match="altered or copied from another item"):
        kek.unseal("jwt-key-sealed", sealed)


def test_a_flipped_bit_or_another_kek_is_refused_by_name() -> None:
    kek, other = KeyEncryptionKey(os.urandom(32)), KeyEncryptionKey(os.urandom(32))
    sealed = kek.seal("jwt-key-sealed", SECRET)
    head, body = sealed.rsplit(":", 1)
    raw = bytearray(base64.b64decode(body))
    raw[-1] ^= 1
    with pytest.raises(SealError, match="altered"):
        kek.unseal("jwt-key-sealed", f"{head}:{base64.b64encode(bytes(raw)).decode()}")
    with pytest.raises(SealError, match=f"another key-encryption key \\(id {kek.key_id}\\)"):
        other.unseal("jwt-key-sealed", sealed)
    with pytest.raises(SealError, match="expected an aes256gcm sealed key"):
        kek.unseal("jwt-key-sealed", SECRET.decode())


@pytest.mark.parametrize("form", ["raw", "hex", "base64"])
def test_the_kek_file_takes_32_bytes_raw_hex_or_base64(tmp_path: Path, form: str) -> None:
    key = os.urandom(32)
    text = {"raw": key, "hex": key.hex().encode() + b"\n",
            "base64": base64.b64encode(key) + b"\n"}[form]
    (tmp_path / "kek").write_bytes(text)
    loaded = KeyEncryptionKey.from_file(tmp_path / "kek")
    assert loaded.key_id == KeyEncryptionKey(key).key_id
    assert key.hex() not in repr(loaded) and loaded.key_id in repr(loaded)


def test_a_bad_kek_file_is_named_in_one_line(tmp_path: Path) -> None:
    (tmp_path / "short").write_text("my passphrase\n")
    with pytest.raises(ValueError, match=r"--key-encryption-key-file='.*short': expected 32 "):
        KeyEncryptionKey.from_file(tmp_path / "short")
    with pytest.raises(ValueError, match="cannot read it"):
        KeyEncryptionKey.from_file(tmp_path / "missing")
