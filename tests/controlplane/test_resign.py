"""The control plane signs each version with its signing time and re-signs the current one, so
that services, which refuse old envelopes (replays), always find the current one recent. In
process (httpx.ASGITransport, with its lifespan), under asyncio and trio."""

import dataclasses
import json
import sqlite3
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
from structlog.testing import capture_logs

from asgimesh.controlplane import ControlPlaneConfig, create_app
from asgimesh.identity import load_bundle
from asgimesh.policy._signed import PolicyRecord, verify_envelope, verify_policy

pytestmark = pytest.mark.anyio
ADMIN = {"authorization": "Bearer admin-secret"}
TD = "mesh.local"
POLICY = {"defaults": {"timeout": "2s"}}


@asynccontextmanager
async def plane(tmp_path: Path, **config: Any) -> AsyncIterator[tuple[httpx.AsyncClient, Any]]:
    app = create_app(ControlPlaneConfig(state_dir=tmp_path, admin_token="admin-secret", **config))
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://cp") as client:
            yield client, app.state.control_plane


async def _envelope(cp: httpx.AsyncClient) -> dict[str, Any]:
    got = await cp.get("/v1/policy")
    assert got.status_code == 200
    envelope: dict[str, Any] = got.json()
    return envelope


def _stored(tmp_path: Path, version: int) -> PolicyRecord:
    with sqlite3.connect(tmp_path / "controlplane.db") as db:
        (text,) = db.execute(
            "SELECT record FROM policy_versions WHERE version = ?", (version,)
        ).fetchone()
    return PolicyRecord.from_json(text)


async def test_each_version_is_signed_with_its_signing_time(tmp_path: Path) -> None:
    async with plane(tmp_path) as (cp, _):
        before = int(time.time())
        assert (await cp.put("/v1/policy", json=POLICY, headers=ADMIN)).json() == {"version": 1}
        envelope = await _envelope(cp)
        bundle = load_bundle((await cp.get("/v1/trust-bundle")).content)
    verified = verify_envelope(envelope, bundle, trust_domain=TD)
    assert verified.version == 1 and verified.policy == POLICY
    assert verified.signed_at is not None and before <= verified.signed_at <= time.time()
    # Services of earlier releases check the untimed signature, which still verifies alone.
    legacy = {k: envelope[k] for k in ("version", "policy", "signature", "signer")}
    assert verify_policy(legacy, bundle, trust_domain=TD) == (1, POLICY)


async def test_the_current_version_is_re_signed_periodically(tmp_path: Path) -> None:
    async with plane(tmp_path, resign_every=0.1) as (cp, control):
        await cp.put("/v1/policy", json=POLICY, headers=ADMIN)
        # Make the copy in memory (and the stored one) look signed long ago; the next
        # re-signing must replace it with a current one.
        stale = dataclasses.replace(control.board.record, signed_at=1_000_000_000)
        assert control.board.refresh(stale)
        await control.store.refresh(stale)
        for _ in range(200):  # at most 10 s
            envelope = await _envelope(cp)
            if envelope["signed_at"] != 1_000_000_000:
                break
            await anyio.sleep(0.05)
        bundle = load_bundle((await cp.get("/v1/trust-bundle")).content)
        assert time.time() - envelope["signed_at"] < 60
        assert verify_envelope(envelope, bundle, trust_domain=TD).version == 1
        assert envelope["policy"] == POLICY
        # Not a new version: the ETag stays, and a watcher at version 1 is told nothing new.
        got = await cp.get("/v1/policy?after=1&wait=0")
        assert got.status_code == 304 and got.headers["etag"] == '"1"'
        history = (await cp.get("/v1/policy/history", headers=ADMIN)).json()["versions"]
        assert [v["version"] for v in history] == [1]
    # Stored too: services reading the store directly (etcd) get the fresh copy.
    assert _stored(tmp_path, 1).signed_at == envelope["signed_at"]


async def test_a_starting_control_plane_re_signs_the_current_version(tmp_path: Path) -> None:
    async with plane(tmp_path) as (cp, _):
        await cp.put("/v1/policy", json=POLICY, headers=ADMIN)
        await cp.put("/v1/policy", json={"defaults": {"timeout": "3s"}}, headers=ADMIN)
    created = _stored(tmp_path, 2).created
    # As if the control plane had been down for a month since its last signing.
    month_ago = int(time.time()) - 30 * 86400
    with sqlite3.connect(tmp_path / "controlplane.db") as db:
        old = dataclasses.replace(_stored(tmp_path, 2), signed_at=month_ago)
        db.execute("UPDATE policy_versions SET record = ? WHERE version = 2", (old.to_json(),))
    async with plane(tmp_path) as (cp, _):
        envelope = await _envelope(cp)
        bundle = load_bundle((await cp.get("/v1/trust-bundle")).content)
    assert envelope["version"] == 2 and time.time() - envelope["signed_at"] < 60
    assert verify_envelope(envelope, bundle, trust_domain=TD).signed_at == envelope["signed_at"]
    stored = _stored(tmp_path, 2)
    assert stored.signed_at == envelope["signed_at"] and stored.created == created
    assert _stored(tmp_path, 1).signed_at is not None  # older versions are left as they were


async def test_a_re_signing_racing_a_new_version_does_not_undo_it(tmp_path: Path) -> None:
    """The re-signed copy of version 1 arrives after version 2 was published: dropped."""
    async with plane(tmp_path) as (cp, control):
        await cp.put("/v1/policy", json=POLICY, headers=ADMIN)
        first = control.board.record
        await cp.put("/v1/policy", json={"defaults": {"timeout": "3s"}}, headers=ADMIN)
        assert not control.board.refresh(first)
        assert (await _envelope(cp))["version"] == 2


async def test_an_old_record_without_a_signing_time_loads_and_is_re_signed(
    tmp_path: Path,
) -> None:
    """A store written by an earlier control plane: its records have no signing time."""
    async with plane(tmp_path) as (cp, _):
        await cp.put("/v1/policy", json=POLICY, headers=ADMIN)
    old = json.loads(_stored(tmp_path, 1).to_json())
    del old["signed_at"], old["signature_v2"]
    with sqlite3.connect(tmp_path / "controlplane.db") as db:
        db.execute("UPDATE policy_versions SET record = ? WHERE version = 1", (json.dumps(old),))
    assert _stored(tmp_path, 1).signed_at is None
    async with plane(tmp_path) as (cp, _):
        envelope = await _envelope(cp)
    assert time.time() - envelope["signed_at"] < 60 and envelope["signature_v2"]


async def test_a_store_failing_to_take_a_re_signing_leaves_the_control_plane_serving(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with plane(tmp_path, resign_every=0.05) as (cp, control):
        await cp.put("/v1/policy", json=POLICY, headers=ADMIN)
        failures: list[int] = []

        async def broken(record: PolicyRecord) -> None:
            failures.append(record.version)
            raise sqlite3.OperationalError("database is locked")

        monkeypatch.setattr(control.store, "refresh", broken)
        with capture_logs() as logs:
            for _ in range(200):  # at most 10 s
                if len(failures) >= 2:
                    break
                await anyio.sleep(0.05)
        assert len(failures) >= 2, "the loop went on after the first failure"
        (first, *_) = [e for e in logs if e["event"] == "policy_resign_failed"]
        assert first["message"] == "database is locked"
        envelope = await _envelope(cp)
        assert envelope["version"] == 1 and time.time() - envelope["signed_at"] < 60
        assert (await cp.put("/v1/policy", json=POLICY, headers=ADMIN)).json() == {"version": 2}
