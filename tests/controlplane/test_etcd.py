"""Two real control-plane replicas on one real etcd.

Replicas share the private keys as an operator would: the first test mounts the first
replica's key files into the second's state dir; the others give every replica one
key-encryption key, so the keys are sealed in etcd.
"""

import os
import shutil
import threading
import time
from pathlib import Path

import httpx
import pytest

from asgimesh.identity import load_bundle
from asgimesh.policy._signed import verify_policy

ADMIN = {"authorization": "Bearer test-admin-token"}
KEY_FILES = (
    "ca.pem", "ca-key.pem", "policy-signer.pem", "policy-signing-key.pem", "jwt-signing-key.pem"
)


@pytest.fixture
def replicas(etcd, control_plane_process, tmp_path: Path):
    """``start(**kw)``: a control-plane replica on ``etcd`` with the shared key-encryption
    key."""
    kek = tmp_path / "kek"
    kek.write_bytes(os.urandom(32))

    def start(**kw):
        return control_plane_process.start("--key-encryption-key-file", str(kek),
                                           store=etcd.url, **kw)

    return start


def test_replicas_share_keys_and_a_put_through_one_wakes_long_polls_on_the_other(
    etcd, control_plane_process, tmp_path: Path
) -> None:
    a = control_plane_process.start(store=etcd.url, state_dir=tmp_path / "a")
    (tmp_path / "b").mkdir()
    for name in KEY_FILES:  # the key files mounted into every replica
        shutil.copy2(tmp_path / "a" / name, tmp_path / "b" / name)
    b = control_plane_process.start(store=etcd.url, state_dir=tmp_path / "b")
    bundle = httpx.get(b.url + "/v1/trust-bundle").content
    assert httpx.get(a.url + "/v1/trust-bundle").content == bundle  # one CA
    jwks = httpx.get(b.url + "/v1/jwt-bundle").content
    assert httpx.get(a.url + "/v1/jwt-bundle").content == jwks

    answer: list[httpx.Response] = []
    poll = threading.Thread(
        target=lambda: answer.append(httpx.get(b.url + "/v1/policy?after=0&wait=20", timeout=30))
    )
    poll.start()
    time.sleep(0.3)
    assert answer == []
    start = time.monotonic()
    put = httpx.put(a.url + "/v1/policy", json={"defaults": {"timeout": "4s"}}, headers=ADMIN)
    assert put.json() == {"version": 1}
    poll.join(10)
    assert time.monotonic() - start < 5 and answer[0].status_code == 200
    assert verify_policy(answer[0].json(), load_bundle(bundle), trust_domain="mesh.local")[0] == 1


def test_concurrent_puts_on_two_replicas_never_share_a_version(replicas) -> None:
    replicas = [replicas() for _ in range(2)]
    versions: list[int] = []

    def put_many(url: str) -> None:
        with httpx.Client() as client:
            for i in range(8):
                r = client.put(
                    url + "/v1/policy",
                    json={"defaults": {"retries": {"attempts": i}}},
                    headers=ADMIN,
                )
                versions.append(r.json()["version"])

    threads = [threading.Thread(target=put_many, args=(r.url,)) for r in replicas]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert sorted(versions) == list(range(1, 17))
    history = httpx.get(replicas[1].url + "/v1/policy/history", headers=ADMIN).json()
    assert [v["version"] for v in history["versions"]] == list(range(16, 0, -1))


def test_etcd_down_replicas_keep_serving_the_last_version_and_catch_up(etcd, replicas) -> None:
    a = replicas()
    b = replicas()
    httpx.put(a.url + "/v1/policy", json={}, headers=ADMIN)
    deadline = time.monotonic() + 5
    while httpx.get(b.url + "/v1/policy").status_code != 200 and time.monotonic() < deadline:
        time.sleep(0.05)

    etcd.stop()
    assert httpx.get(b.url + "/v1/policy").json()["version"] == 1  # from memory
    down = httpx.put(a.url + "/v1/policy", json={}, headers=ADMIN, timeout=15)
    assert down.status_code == 503 and down.json()["error"] == "store_unavailable"

    etcd.start()
    up = httpx.put(a.url + "/v1/policy", json={"defaults": {"timeout": "1s"}}, headers=ADMIN)
    assert up.json() == {"version": 2}
    got = httpx.get(b.url + "/v1/policy?after=1&wait=15", timeout=20)
    assert got.status_code == 200 and got.json()["version"] == 2


def test_a_service_on_a_stopped_replica_keeps_serving_and_converges_when_it_returns(
    replicas,
) -> None:
    from asgimesh import MeshRuntime, MeshSettings

    a = replicas()
    b = replicas()
    httpx.put(a.url + "/v1/policy", json={"defaults": {"timeout": "4s"}}, headers=ADMIN)
    runtime = MeshRuntime(MeshSettings(config=b.url + "?backoff_max=300ms"))
    try:
        deadline = time.monotonic() + 10
        while runtime.policy.current.source is None and time.monotonic() < deadline:
            time.sleep(0.02)
        assert runtime.policy.current.policy.defaults.timeout == 4.0
        b.kill()  # mid-watch
        httpx.put(a.url + "/v1/policy", json={"defaults": {"timeout": "5s"}}, headers=ADMIN)
        time.sleep(0.5)
        assert runtime.policy.current.policy.defaults.timeout == 4.0  # kept, still serving
        replicas(port=b.port)
        deadline = time.monotonic() + 10
        while runtime.policy.current.version != 2 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert runtime.policy.current.policy.defaults.timeout == 5.0  # caught up
    finally:
        runtime.close()
