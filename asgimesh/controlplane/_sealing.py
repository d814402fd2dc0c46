"""Private keys sealed for a shared store: AES-256-GCM under an operator's key-encryption key.

Several control-plane replicas on one etcd must sign with one CA and one JWT key. Rather than
keep those keys in etcd in clear (then etcd access is CA access), each replica is given the
same 32-byte key-encryption key (KEK, ``--key-encryption-key-file``) and the store keeps only
ciphertext. Every sealed item carries:

- the KEK's id (a keyed hash of it, revealing nothing of the key), so that a replica given
  another KEK says so plainly instead of failing to decrypt;
- a fresh 96-bit nonce, and the ciphertext with its tag, made with the item's name as
  associated data: a ciphertext copied onto another item (the JWT key's onto the CA key's)
  fails authentication, so the store's holder can neither read nor rearrange the keys.

The KEK file holds 32 random bytes, raw or written as 64 hex digits or base64 (``openssl rand
-hex 32 > kek``); a passphrase is not accepted, since a short one would be the weak link.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

__all__ = ["KEY_BYTES", "KeyEncryptionKey", "SealError"]

KEY_BYTES = 32
_PREFIX = "aes256gcm"
_NONCE = 12
#: Longest KEK file read (64 hex digits and a newline fit with room to spare).
_MAX_FILE = 256


class SealError(ValueError):
    """A sealed item does not open: another KEK, or a ciphertext altered or moved."""


class KeyEncryptionKey:
    """The operator's KEK: seals and opens the private keys a shared store keeps."""

    def __init__(self, key: bytes, source: str = "the key-encryption key") -> None:
        if len(key) != KEY_BYTES:
            raise ValueError(f"{source}: expected {KEY_BYTES} bytes, got {len(key)}")
        self._aead = AESGCM(key)
        self.source = source
        self.key_id = hmac.new(key, b"asgimesh key-encryption key id", hashlib.sha256).hexdigest()[
            :16
        ]

    def __repr__(self) -> str:
        return f"KeyEncryptionKey(id={self.key_id!r})"

    @classmethod
    def from_file(cls, path: Path) -> KeyEncryptionKey:
        """Read ``path``: 32 raw bytes, or 64 hex digits, or base64 of 32 bytes."""
        source = f"--key-encryption-key-file={str(path)!r}"
        try:
            with path.open("rb") as handle:
                raw = handle.read(_MAX_FILE + 1)
        except OSError as exc:
            raise ValueError(f"{source}: cannot read it ({exc.strerror})") from None
        return cls(_decode(raw, source), source)

    def seal(self, item: str, plaintext: bytes) -> str:
        """``plaintext`` sealed for ``item`` (its name is the associated data), as text."""
        nonce = os.urandom(_NONCE)
        sealed = self._aead.encrypt(nonce, plaintext, _associated(item))
        body = base64.b64encode(nonce + sealed).decode()
        return f"{_PREFIX}:{self.key_id}:{body}"

    def unseal(self, item: str, text: str) -> bytes:
        """What :meth:`seal` sealed for ``item``; :class:`SealError` saying why it does not
        open (never anything of the plaintext or the key)."""
        scheme, _, rest = text.partition(":")
        key_id, _, body = rest.partition(":")
        if scheme != _PREFIX or not body:
            raise SealError(f"{item}: expected an {_PREFIX} sealed key, found something else")
        if not hmac.compare_digest(key_id, self.key_id):
            raise SealError(
                f"{item} is sealed with another key-encryption key (id {key_id}) than "
                f"{self.source} (id {self.key_id}): expected the KEK file every replica shares"
            )
        try:
            raw = base64.b64decode(body, validate=True)
            return self._aead.decrypt(raw[:_NONCE], raw[_NONCE:], _associated(item))
        except (binascii.Error, ValueError, InvalidTag):
            raise SealError(
                f"{item}: the sealed key does not open with {self.source}: it was altered or "
                "copied from another item"
            ) from None


def _associated(item: str) -> bytes:
    return f"asgimesh sealed key: {item}".encode()


def _decode(raw: bytes, source: str) -> bytes:
    if len(raw) == KEY_BYTES:
        return raw
    if len(raw) > _MAX_FILE:
        raise ValueError(f"{source}: expected {KEY_BYTES} bytes, the file is larger")
    text = raw.strip()
    if len(text) == 2 * KEY_BYTES:
        try:
            return bytes.fromhex(text.decode("ascii"))
        except (UnicodeDecodeError, ValueError):
            pass
    try:
        decoded = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        decoded = b""
    if len(decoded) == KEY_BYTES:
        return decoded
    raise ValueError(
        f"{source}: expected {KEY_BYTES} random bytes (raw, 64 hex digits or base64), "
        f"got {len(raw)} bytes of something else"
    )
