"""The control plane and services on a locked-down etcd: TLS, client certificates, user auth.

One real etcd per module (``secure_etcd``) serving only HTTPS, wanting a client certificate
from its CA and a user; each test keeps to a prefix of its own.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import anyio
import httpx
import pytest

from asgimesh import MeshMiddleware, MeshRuntime, MeshSettings
from asgimesh._etcd import EtcdClient, EtcdPolicyReader, EtcdRefusedError
from asgimesh.identity import load_bundle
from asgimesh.policy._signed import verify_policy
from asgimesh.policy.sources import parse_source_url
from tests.conftest import ROOT, free_port, subprocess_env

ADMIN = {"authorization": "Bearer test-admin-token"}


def _access(url: str):
    options = parse_source_url(url)
    assert options.etcd is not None
    return options.etcd, options.prefix


def _under(secure_etcd, prefix: str) -> dict[str, bytes]:
    return {k: v for k, v in secure_etcd.read_all().items() if k.startswith(prefix + "/")}


def _wait(predicate, timeout: float = 15.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return predicate()


def run_control_plane(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """``asgimesh control-plane ARGS`` expected to refuse to start: its exit and output."""
    return subprocess.run(
        [sys.executable, "-m", "asgimesh", "control-plane", "--port", str(free_port()),
         "--admin-token", "test-admin-token", *args],
        env=subprocess_env(), cwd=ROOT, capture_output=True, text=True, timeout=timeout,
        check=False,
    )


# ---- the client: who etcd lets in -------------------------------------------------------------


@pytest.mark.anyio
async def test_a_user_with_a_client_certificate_reads_and_writes(secure_etcd) -> None:
    access, _ = _access(secure_etcd.url("/t-rw"))
    client = EtcdClient(access)
    try:
        await client.put("/t-rw/x", b"1")
        kvs, _ = await client.range("/t-rw/x")
        assert kvs[0][1] == b"1"
        assert secure_etcd.mesh_password not in repr(client) + repr(access)
    finally:
        await client.aclose()


@pytest.mark.anyio
async def test_a_lapsed_token_is_replaced_and_the_call_goes_through(secure_etcd) -> None:
    access, _ = _access(secure_etcd.url("/t-ttl"))
    client = EtcdClient(access)
    try:
        await client.put("/t-ttl/x", b"1")
        first = client._token
        await anyio.sleep(secure_etcd.token_ttl + 2)  # etcd forgets the token
        kvs, _ = await client.range("/t-ttl/x")
        assert kvs[0][1] == b"1"
        assert client._token is not None and client._token != first
    finally:
        await client.aclose()


def _refusal(secure_etcd, url: str) -> EtcdRefusedError:
    access, prefix = _access(url)

    async def read() -> EtcdRefusedError:
        reader = EtcdPolicyReader(access, prefix)
        try:
            with pytest.raises(EtcdRefusedError) as caught:
                await reader.latest()
            with pytest.raises(EtcdRefusedError) as again:
                await reader.latest()
            if access.user is not None and "refused user" in str(caught.value):
                # A refused authentication is not tried again before its backoff delay.
                assert str(again.value) == str(caught.value)
                assert reader.etcd._auth_backoff.failures == 1
            return caught.value
        finally:
            await reader.close()

    error = anyio.run(read)
    text = str(error)
    assert "\n" not in text and len(text) < 400
    for secret in (secure_etcd.mesh_password, secure_etcd.root_password):
        assert secret not in text
    return error


def test_a_wrong_password_is_refused_with_one_line(secure_etcd, tmp_path: Path) -> None:
    wrong = tmp_path / "wrong"
    wrong.write_text("not-the-password\n")
    error = _refusal(secure_etcd, secure_etcd.url("/t-bad", password_file=str(wrong)))
    assert "refused user 'mesh'" in str(error)
    assert "expected the password of an etcd user" in str(error)


def test_no_user_where_auth_is_on_is_refused(secure_etcd) -> None:
    error = _refusal(secure_etcd, secure_etcd.url("/t-bad", user=None))
    assert "requires a user" in str(error) and "password_file" in str(error)


def test_no_client_certificate_is_refused(secure_etcd) -> None:
    error = _refusal(secure_etcd, secure_etcd.url("/t-bad", tls="none"))
    assert "refused the TLS handshake without a client certificate" in str(error)


def test_a_client_certificate_from_another_ca_is_refused(secure_etcd) -> None:
    url = secure_etcd.url(
        "/t-bad",
        cert=str(secure_etcd.files["foreign-client"]),
        key=str(secure_etcd.files["foreign-client-key"]),
    )
    error = _refusal(secure_etcd, url)
    assert "refused the TLS handshake with cert=" in str(error)


def test_an_etcd_certificate_the_cacert_does_not_trust_is_refused(secure_etcd) -> None:
    error = _refusal(secure_etcd, secure_etcd.url("/t-bad", tls="foreign"))
    assert "its TLS certificate is not trusted" in str(error)
    assert "foreign-ca.pem" in str(error)


def test_a_user_outside_its_prefix_is_refused(secure_etcd) -> None:
    error = _refusal(secure_etcd, secure_etcd.url("/elsewhere"))
    assert "user 'mesh' may not call /v3/kv/range" in str(error)


def test_etcds_to_a_plain_etcd_says_it_does_not_speak_tls(secure_etcd, etcd) -> None:
    url = f"etcds://127.0.0.1:{etcd.client_port}/t?cacert={secure_etcd.files['ca']}"
    error = _refusal(secure_etcd, url)
    assert "does not speak TLS" in str(error) and "etcd://" in str(error)


def test_the_control_plane_refuses_a_wrong_password_at_once_in_one_line(
    secure_etcd, tmp_path: Path
) -> None:
    wrong = tmp_path / "wrong"
    wrong.write_text("not-the-password\n")
    started = time.monotonic()
    result = run_control_plane(
        "--store", secure_etcd.url("/t-cli", password_file=str(wrong)),
        "--state-dir", str(tmp_path / "state"),
    )
    assert time.monotonic() - started < 8  # not retried for --store-wait
    assert result.returncode == 3, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr
    assert lines[0].startswith("asgimesh: cannot use the store etcd:https://127.0.0.1:")
    assert "refused user 'mesh'" in lines[0]


# ---- the control plane and a service, through TLS and auth --------------------------------------


def test_policy_flows_through_tls_and_auth_and_no_private_key_is_in_etcd(
    secure_etcd, control_plane_process, tmp_path: Path, capfd
) -> None:
    prefix = "/t-cp"
    cp = control_plane_process.start(store=secure_etcd.url(prefix), state_dir=tmp_path / "cp")
    put = httpx.put(cp.url + "/v1/policy", json={"defaults": {"timeout": "4s"}}, headers=ADMIN)
    assert put.json() == {"version": 1}
    bundle = httpx.get(cp.url + "/v1/trust-bundle").content
    envelope = httpx.get(cp.url + "/v1/policy").json()
    assert verify_policy(envelope, load_bundle(bundle), trust_domain="mesh.local")[0] == 1

    # Private keys live in the state dir, owner-only; etcd holds public material only.
    for name in ("ca-key.pem", "policy-signing-key.pem", "jwt-signing-key.pem"):
        path = tmp_path / "cp" / name
        assert b"PRIVATE KEY" in path.read_bytes()
        assert path.stat().st_mode & 0o777 == 0o600
    stored = _under(secure_etcd, prefix)
    assert stored[f"{prefix}/bootstrap/trust-bundle"] == bundle
    assert f"{prefix}/bootstrap/jwt-public" in stored and f"{prefix}/policy/v/000000000001" in stored
    assert not [key for key, value in stored.items() if b"PRIVATE KEY" in value]

    # A service on etcds:// as a user with only the rights the docs give services (read the
    # versions and the trust bundle, which it pins on first use here, write reports), with
    # the password in the URL: redacted wherever the URL is shown.
    assert prefix == secure_etcd.service_prefix
    password = secure_etcd.svc_password
    url = secure_etcd.url(prefix, user=None).replace("etcds://", f"etcds://svc:{password}@")
    runtime = MeshRuntime(
        MeshSettings(config=url + "&backoff_max=300ms&report=1s", service="orders")
    )
    try:
        assert _wait(lambda: runtime.policy.current.version == 1)
        assert runtime.policy.current.policy.defaults.timeout == 4.0
        put = httpx.put(cp.url + "/v1/policy", json={"defaults": {"timeout": "5s"}}, headers=ADMIN)
        assert put.json() == {"version": 2}
        assert _wait(lambda: runtime.policy.current.version == 2)  # through the etcd watch
        assert runtime.policy.current.policy.defaults.timeout == 5.0

        async def config() -> httpx.Response:
            app = MeshMiddleware(lambda scope, receive, send: None, runtime=runtime)
            transport = httpx.ASGITransport(app=app, client=("127.0.0.1", 5000))
            async with httpx.AsyncClient(transport=transport, base_url="http://svc") as client:
                return await client.get("/_mesh/config")

        answer = anyio.run(config)
        assert answer.status_code == 200 and answer.json()["policy_version"] == 2
        assert answer.json()["source"].startswith("etcd:https://127.0.0.1:")
        assert answer.json()["settings"]["config"].startswith("etcds://<redacted>@127.0.0.1:")
        assert password not in answer.text
        # Its reports land in etcd, the one place it may write.
        assert _wait(lambda: any(k.startswith(f"{prefix}/reports/orders/")
                                 for k in secure_etcd.read_all()))
    finally:
        runtime.close()
    out, err = capfd.readouterr()
    assert password not in out + err + cp.output()

    # A second replica on the same etcd without the first one's key files is refused.
    result = run_control_plane("--store", secure_etcd.url(prefix),
                               "--state-dir", str(tmp_path / "other"))
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert "already serves a mesh CA; none is in" in result.stderr
    assert not (tmp_path / "other" / "ca-key.pem").exists()


def test_replicas_with_one_kek_share_sealed_keys_and_a_swap_or_another_kek_is_refused(
    secure_etcd, control_plane_process, tmp_path: Path
) -> None:
    prefix = "/t-kek"
    kek = tmp_path / "kek"
    kek.write_text(os.urandom(32).hex() + "\n")
    store = secure_etcd.url(prefix)
    a = control_plane_process.start("--key-encryption-key-file", str(kek), store=store)
    b = control_plane_process.start("--key-encryption-key-file", str(kek), store=store)
    for path in ("/v1/trust-bundle", "/v1/jwt-bundle"):
        assert httpx.get(a.url + path).content == httpx.get(b.url + path).content
    stored = _under(secure_etcd, prefix)
    assert not [key for key, value in stored.items() if b"PRIVATE KEY" in value]
    sealed_ca = json.loads(stored[f"{prefix}/bootstrap/mesh-ca-sealed"])
    for part in ("ca_key", "signing_key"):
        assert sealed_ca[part].startswith("aes256gcm:")
    assert stored[f"{prefix}/bootstrap/jwt-key-sealed"].startswith(b"aes256gcm:")
    assert not list(tmp_path.glob("cp*/ca-key.pem"))  # nothing private in the state dirs

    other = tmp_path / "other-kek"
    other.write_bytes(os.urandom(32))
    result = run_control_plane("--store", store, "--state-dir", str(tmp_path / "c"),
                               "--key-encryption-key-file", str(other))
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert "sealed with another key-encryption key" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1

    # Someone with write access to etcd swaps the two sealed keys: neither opens.
    sealed_ca["ca_key"], sealed_ca["signing_key"] = sealed_ca["signing_key"], sealed_ca["ca_key"]
    secure_etcd.put(f"{prefix}/bootstrap/mesh-ca-sealed", json.dumps(sealed_ca).encode())
    result = run_control_plane("--store", store, "--state-dir", str(tmp_path / "d"),
                               "--key-encryption-key-file", str(kek))
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert "altered or copied from another item" in result.stderr


def test_clear_keys_from_an_older_version_are_refused_until_migrated(
    secure_etcd, control_plane_process, tmp_path: Path
) -> None:
    from asgimesh.identity import JWTIssuer, MeshCA

    prefix = "/t-legacy"
    old = MeshCA.create("mesh.local")
    secure_etcd.put(f"{prefix}/bootstrap/mesh-ca", json.dumps(old.to_pem()).encode())
    secure_etcd.put(f"{prefix}/bootstrap/trust-bundle", old.bundle_pem())
    secure_etcd.put(f"{prefix}/bootstrap/jwt-key", JWTIssuer.create("mesh.local").key_pem())
    store = secure_etcd.url(prefix)
    result = run_control_plane("--store", store, "--state-dir", str(tmp_path / "cp"))
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert "in clear" in result.stderr and "--migrate-keys" in result.stderr

    cp = control_plane_process.start("--migrate-keys", store=store, state_dir=tmp_path / "cp")
    assert httpx.get(cp.url + "/v1/trust-bundle").content == old.bundle_pem()
    assert (tmp_path / "cp" / "ca-key.pem").read_text() == old.to_pem()["ca_key"]
    stored = _under(secure_etcd, prefix)
    assert f"{prefix}/bootstrap/mesh-ca" not in stored
    assert not [key for key, value in stored.items() if b"PRIVATE KEY" in value]


def test_a_service_with_a_wrong_password_starts_and_says_why_in_one_line(
    secure_etcd, tmp_path: Path, capfd
) -> None:
    wrong = tmp_path / "wrong"
    wrong.write_text("not-the-password\n")
    runtime = MeshRuntime(
        MeshSettings(config=secure_etcd.url("/t-svc", password_file=str(wrong)), service="orders")
    )
    try:
        assert runtime.policy.current.source is None  # serving its own layers meanwhile
        _, err = capfd.readouterr()
    finally:
        runtime.close()
    [line] = [json.loads(x) for x in err.splitlines() if "control_plane_unreachable" in x]
    assert line["source"].startswith("etcd:https://127.0.0.1:")
    assert "refused user 'mesh'" in line["problem"]
    assert "Traceback" not in err and "not-the-password" not in err


def test_the_control_plane_names_a_missing_tls_file_in_one_line(tmp_path: Path) -> None:
    missing = tmp_path / "nope.pem"
    result = run_control_plane(
        "--store", f"etcds://mesh:hunter2@127.0.0.1:2379/m?cacert={missing}",
        "--state-dir", str(tmp_path / "state"),
    )
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert result.stderr.strip() == (
        f"asgimesh: --store='etcds://<redacted>@127.0.0.1:2379/m?cacert={missing}': "
        f"cacert='{missing}': cannot read it (No such file or directory)"
    )
