"""Envelopes an attacker could make, for the tests of signature checks and of the watcher."""

from __future__ import annotations

import datetime
import time
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from asgimesh.identity import MeshCA
from asgimesh.policy._signed import PolicyRecord, sign_policy, sign_record


def signed(
    ca: MeshCA, version: int, policy: dict[str, Any], *, at: float | None = None
) -> dict[str, Any]:
    """A genuine envelope, as the control plane signs it ``at`` (default: now)."""
    record = PolicyRecord(version, policy, "", ca.signer_pem().decode(), 0.0)
    return sign_record(ca.signing_key, record, time.time() if at is None else at).envelope()


def legacy_signed(ca: MeshCA, version: int, policy: dict[str, Any]) -> dict[str, Any]:
    """A genuine envelope of a control plane of an earlier release: no signing time."""
    return {
        "version": version,
        "policy": policy,
        "signature": sign_policy(ca.signing_key, version, policy),
        "signer": ca.signer_pem().decode(),
    }


def workload_signed(ca: MeshCA, spiffe_id: str, version: int = 10**6) -> dict[str, Any]:
    """A forged envelope signed by a workload: a certificate of the mesh CA, as any service
    token can get, over an Ed25519 key (an older CA accepted those in CSRs)."""
    key = ed25519.Ed25519PrivateKey.generate()
    cert = MeshCA._issue(
        ca.ca_key,
        ca.ca_cert,
        key.public_key(),
        spiffe_id,
        "payments",
        datetime.timedelta(hours=1),
        server_or_client=True,
    )
    forged = {"defaults": {"timeout": "1ms"}}
    return {
        "version": version,
        "policy": forged,
        "signature": sign_policy(key, version, forged),
        "signer": cert.public_bytes(serialization.Encoding.PEM).decode(),
    }
