"""``asgimesh control-plane --tls``: a real control plane serving HTTPS with its own mesh
identity, and every client (the CLI, a service's certificate issuer and policy feed) pinning it
with the trust bundle: the chain must verify against it and the URI SAN be the control plane's
ID, or the client refuses with one line saying why."""

from __future__ import annotations

import json
import ssl
import subprocess
import sys
import textwrap
from pathlib import Path

import httpx
import pytest
from cryptography import x509

from asgimesh.testing import ThrowawayCA
from tests.conftest import ControlPlaneStarter, subprocess_env

CP_ID = "spiffe://mesh.local/ns/mesh-system/sa/control-plane"
ORDERS = "spiffe://mesh.local/ns/default/sa/orders"
TOKEN = ControlPlaneStarter.admin_token


def asgimesh(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "asgimesh", *args],
        env=subprocess_env(env),
        capture_output=True,
        text=True,
        timeout=60,
    )


def pinned(bundle: Path, expected: str = CP_ID) -> ssl.SSLContext:
    from asgimesh.identity import MeshClientContext

    return MeshClientContext(expected, bundle_pem=bundle.read_bytes())


@pytest.fixture
def cp(control_plane_process: ControlPlaneStarter):
    return control_plane_process.start(tls=True)


@pytest.fixture
def policy_file(tmp_path: Path) -> Path:
    path = tmp_path / "policy.yaml"
    path.write_text("defaults:\n  timeout: 3s\nservices:\n  payments:\n    retries: {attempts: 0}\n")
    return path


def test_the_control_plane_serves_https_with_its_own_identity(cp) -> None:
    assert cp.url.startswith("https://127.0.0.1:")
    assert cp.trust_bundle is not None and cp.trust_bundle.is_file()
    banner = f"control plane at {cp.url} as {CP_ID}; trust bundle: {cp.trust_bundle}"
    assert banner in cp.output(), cp.output()
    assert f"(give services MESH_CA={cp.trust_bundle})" in cp.output()
    with httpx.Client(verify=pinned(cp.trust_bundle), timeout=5) as client, client.stream(
        "GET", cp.url + "/v1/trust-bundle"
    ) as answer:
        der = answer.extensions["network_stream"].get_extra_info("ssl_object").getpeercert(True)
        body = answer.read()
    assert answer.status_code == 200
    assert body == cp.trust_bundle.read_bytes()  # the file is the bundle the server hands out
    leaf = x509.load_der_x509_certificate(der)
    sans = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert sans.get_values_for_type(x509.UniformResourceIdentifier) == [CP_ID]
    assert "localhost" in sans.get_values_for_type(x509.DNSName)
    # Host names check too (DNS localhost, IP 127.0.0.1), for clients that know no SPIFFE.
    strict = ssl.create_default_context(cafile=str(cp.trust_bundle))
    for host in ("localhost", "127.0.0.1"):
        url = cp.url.replace("127.0.0.1", host) + "/v1/trust-bundle"
        assert httpx.get(url, verify=strict, timeout=5).status_code == 200
    # Plain HTTP to the TLS port gets nowhere.
    with pytest.raises(httpx.HTTPError):
        httpx.get(cp.url.replace("https://", "http://") + "/v1/trust-bundle", timeout=5)


def test_the_tls_key_lives_in_a_private_temp_dir_removed_on_exit(cp) -> None:
    import os
    import tempfile

    served = x509.load_pem_x509_certificate(
        ssl.get_server_certificate(("127.0.0.1", cp.port)).encode()
    )
    private = [
        directory
        for directory in Path(tempfile.gettempdir()).glob("asgimesh-controlplane-tls-*")
        if (directory / "cert.pem").exists()
        and x509.load_pem_x509_certificates((directory / "cert.pem").read_bytes())[0] == served
    ]
    assert len(private) == 1, private
    assert (private[0] / "key.pem").read_bytes().startswith(b"-----BEGIN PRIVATE KEY-----")
    assert private[0].stat().st_mode & 0o777 == 0o700
    for name in ("cert.pem", "key.pem"):
        assert (private[0] / name).stat().st_mode & 0o777 == 0o600
    assert private[0].stat().st_uid == os.getuid()
    cp.stop()  # SIGTERM, as an operator or an orchestrator stops it
    assert not private[0].exists()


def test_policy_apply_and_get_over_https_with_ca(cp, policy_file) -> None:
    ca = str(cp.trust_bundle)
    applied = asgimesh("policy", "apply", str(policy_file), "--server", cp.url, "--token", TOKEN,
                       "--ca", ca)
    assert applied.returncode == 0, applied.stderr
    assert applied.stdout.strip().endswith("applied as version 1")
    got = asgimesh("policy", "get", "--server", cp.url, "--ca", ca)
    assert got.returncode == 0, got.stderr
    assert '"timeout": "3s"' in got.stdout
    assert got.stderr.strip() == "asgimesh: policy version 1"  # no warning: pinned
    # MESH_CA and MESH_CONFIG serve as well as --ca and --server.
    status = asgimesh("status", env={"MESH_CONFIG": cp.url, "MESH_CA": ca})
    assert status.returncode == 0, status.stderr
    assert "policy version 1" in status.stdout


def test_the_cli_refuses_a_control_plane_of_another_ca(cp, tmp_path) -> None:
    foreign = tmp_path / "foreign.pem"
    foreign.write_bytes(ThrowawayCA().bundle_pem)
    got = asgimesh("policy", "get", "--server", cp.url, "--ca", str(foreign))
    assert got.returncode == 3
    lines = got.stderr.strip().splitlines()
    assert len(lines) == 1, got.stderr
    assert f"does not verify against --ca {foreign}" in lines[0]
    assert "Traceback" not in got.stderr


def test_the_cli_refuses_a_control_plane_of_another_trust_domain(cp) -> None:
    """Pinned for other.local, the server presents mesh.local's control-plane ID."""
    got = asgimesh("policy", "get", "--server", cp.url, "--ca", str(cp.trust_bundle),
                   env={"MESH_TRUST_DOMAIN": "other.local"})
    assert got.returncode == 3
    assert got.stderr.strip().splitlines() == [
        f"asgimesh: cannot reach the control plane at {cp.url}: the server is not the control "
        "plane: mesh identity mismatch: expected "
        f"spiffe://other.local/ns/mesh-system/sa/control-plane, the server presented {CP_ID}"
    ]


def test_without_a_bundle_the_cli_warns_it_is_not_pinned(cp) -> None:
    got = asgimesh("policy", "get", "--server", cp.url)
    # The system trust store does not know the mesh CA: refused, after one warning line.
    assert got.returncode == 3
    lines = got.stderr.strip().splitlines()
    assert len(lines) == 2, got.stderr
    assert lines[0].startswith("asgimesh: warning: ") and "not pinned" in lines[0]
    assert "pass --ca or set MESH_CA" in lines[0]


@pytest.mark.parametrize("kind", ["missing", "directory", "not-pem"])
def test_an_unreadable_ca_file_is_one_line_naming_it(tmp_path, kind) -> None:
    path = tmp_path / "ca.pem"
    if kind == "directory":
        path.mkdir()
    elif kind == "not-pem":
        path.write_text("hello\n")
    # No server needed: the bundle is read before anything is sent.
    got = asgimesh("policy", "get", "--server", "https://127.0.0.1:9", "--ca", str(path))
    assert got.returncode == 2
    lines = got.stderr.strip().splitlines()
    assert len(lines) == 1, got.stderr
    assert lines[0].startswith(f"asgimesh: --ca {path}: ")
    assert ("expected PEM certificates" if kind == "not-pem" else "cannot read") in lines[0]
    via_env = asgimesh("policy", "get", "--server", "https://127.0.0.1:9",
                       env={"MESH_CA": str(path)})
    assert via_env.returncode == 2
    assert via_env.stderr.strip().startswith(f"asgimesh: MESH_CA={path}: ")


# ---- a service: its certificate and its policy from an https control plane --------------------

#: A service in its own process: builds its runtime from the environment, waits for its
#: certificate and for a policy from the control plane (``source`` set: local layers have none),
#: prints what it got as one JSON line.
SERVICE = textwrap.dedent(
    """
    import json, sys, time
    from asgimesh import MeshRuntime
    runtime = MeshRuntime()
    wait = float(sys.argv[1])
    svid = runtime.identity.wait(wait)
    deadline = time.monotonic() + wait
    while runtime.policy.current.source is None and time.monotonic() < deadline:
        time.sleep(0.05)
    current = runtime.policy.current
    print(json.dumps({
        "identity": svid.spiffe_id if svid else None,
        "source": current.source,
        "version": current.version if current.source else None,
    }))
    runtime.close()
    """
)


def run_service(env: dict[str, str], tmp_path: Path, wait: float) -> tuple[dict[str, object], str]:
    done = subprocess.run(
        [sys.executable, "-c", SERVICE, str(wait)],
        env=subprocess_env(env),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    answer: dict[str, object] = json.loads(done.stdout.strip().splitlines()[-1])
    return answer, done.stderr


def service_env(cp, ca: Path | None) -> dict[str, str]:
    admin = {"authorization": f"Bearer {TOKEN}"}
    verify = pinned(cp.trust_bundle)
    put = httpx.put(cp.url + "/v1/policy", json={"version": 1, "defaults": {"timeout": "4s"}},
                    headers=admin, verify=verify, timeout=5)
    assert put.status_code == 200, put.text
    token = httpx.post(cp.url + "/v1/tokens", json={"service": "orders"}, headers=admin,
                       verify=verify, timeout=5).json()["token"]
    env = {"MESH_SERVICE": "orders", "MESH_MTLS": "strict", "MESH_CONFIG": cp.url,
           "MESH_TOKEN": token}
    if ca is not None:
        env["MESH_CA"] = str(ca)
    return env


def test_a_service_gets_its_certificate_and_policy_over_pinned_https(cp, tmp_path) -> None:
    answer, logs = run_service(service_env(cp, cp.trust_bundle), tmp_path, 15)
    assert answer == {"identity": ORDERS, "source": f"controlplane:{cp.url}", "version": 1}, logs
    assert "control_plane_not_pinned" not in logs
    assert "trust_bundle_pinned" not in logs  # MESH_CA: no trust on first use either


def test_a_service_pinned_to_another_ca_refuses_the_control_plane(cp, tmp_path) -> None:
    foreign = tmp_path / "foreign.pem"
    foreign.write_bytes(ThrowawayCA().bundle_pem)
    answer, logs = run_service(service_env(cp, foreign), tmp_path, 2)
    assert answer == {"identity": None, "source": None, "version": None}
    events = [json.loads(line) for line in logs.splitlines() if line.startswith("{")]
    renewal = [e for e in events if e["event"] == "identity_renewal_failed"]
    assert renewal, logs
    assert "does not verify against MESH_CA" in renewal[0]["message"]
    feed = [e for e in events if e["event"] == "control_plane_unreachable"]
    assert feed, logs
    assert "does not verify against MESH_CA" in feed[0]["problem"]
    assert "Traceback" not in logs


def test_a_service_without_mesh_ca_warns_once_that_it_is_not_pinned(cp, tmp_path) -> None:
    answer, logs = run_service(service_env(cp, None), tmp_path, 2)
    # The system trust store knows no mesh CA: nothing arrives, and one warning says why.
    assert answer == {"identity": None, "source": None, "version": None}
    events = [json.loads(line) for line in logs.splitlines() if line.startswith("{")]
    warnings = [e for e in events if e["event"] == "control_plane_not_pinned"]
    assert len(warnings) == 1, logs
    assert CP_ID in warnings[0]["advice"] and "MESH_CA" in warnings[0]["advice"]


# ---- a server that is not the control plane, with a certificate of the pinned CA ----------------


def served_requests(url: str, bundle: Path) -> int:
    """How many requests the impostor answered (its stats, read as the ID it really has)."""
    answer = httpx.get(url + "/_upstream/stats", verify=pinned(bundle, ORDERS), timeout=5)
    return int(answer.json()["requests"])


@pytest.fixture
def impostor(https_server, tmp_path):
    """HTTPS with a certificate of the pinned CA for a workload's ID, not the control plane's."""
    ca = ThrowawayCA()
    files = ca.issue(ORDERS).write(tmp_path / "impostor")
    return https_server(files.cert, files.key), files.ca


def test_the_cli_refuses_a_server_presenting_another_id_naming_both(impostor) -> None:
    server, bundle = impostor
    got = asgimesh("policy", "get", "--server", server.url, "--ca", str(bundle))
    assert got.returncode == 3
    assert got.stderr.strip().splitlines() == [
        f"asgimesh: cannot reach the control plane at {server.url}: the server is not the "
        f"control plane: mesh identity mismatch: expected {CP_ID}, the server presented {ORDERS}"
    ]


def test_the_issuer_refuses_a_server_presenting_another_id(impostor) -> None:
    from asgimesh.identity import IdentityStore, control_plane_context, control_plane_tls_problem
    from asgimesh.identity._issuer import ControlPlaneIssuer

    server, bundle = impostor
    issuer = ControlPlaneIssuer(
        server.url, "token", IdentityStore(), spiffe_id=ORDERS, trust_domain="mesh.local",
        verify=control_plane_context(server.url, "mesh.local", bundle.read_bytes()),
    )
    with pytest.raises(httpx.ConnectError) as caught:
        issuer.issue()
    assert control_plane_tls_problem(caught.value) == (
        f"the server is not the control plane: mesh identity mismatch: expected {CP_ID}, "
        f"the server presented {ORDERS}"
    )
    # Refused in the handshake: the request (with its token and CSR) never reached it.
    assert served_requests(server.url, bundle) == 0


@pytest.mark.anyio
async def test_the_policy_feed_refuses_a_server_presenting_another_id(impostor) -> None:
    from asgimesh.identity import control_plane_context
    from asgimesh.policy.sources import parse_source_url
    from asgimesh.policy.sources._feeds import FeedUnavailableError, HttpFeed

    server, bundle = impostor
    verify = control_plane_context(server.url, "mesh.local", bundle.read_bytes())
    feed = HttpFeed(parse_source_url(server.url), "token", verify)
    try:
        with pytest.raises(FeedUnavailableError) as caught:
            await feed.latest()
    finally:
        await feed.aclose()
    assert str(caught.value) == (
        f"the server is not the control plane: mesh identity mismatch: expected {CP_ID}, "
        f"the server presented {ORDERS}"
    )
    # Pinned to the right ID, the same server is accepted: the refusal above is the ID's.
    from asgimesh.identity import MeshClientContext

    right = MeshClientContext(ORDERS, bundle_pem=bundle.read_bytes())
    async with httpx.AsyncClient(verify=right, timeout=5) as client:
        assert (await client.get(server.url + "/v1/policy")).status_code == 200
        stats = (await client.get(server.url + "/_upstream/stats")).json()
    assert stats["requests"] == 1  # only the pinned-to-its-ID request reached it


def test_one_context_per_process_for_every_client(tmp_path) -> None:
    from asgimesh.identity import control_plane_context

    bundle = ThrowawayCA().bundle_pem
    first = control_plane_context("https://cp:7070", "mesh.local", bundle)
    assert control_plane_context("https://cp:7070/x", "mesh.local", bundle) is first
    assert getattr(first, "expected_id", None) == CP_ID
    other = control_plane_context("https://cp:7070", "other.local", bundle)
    assert getattr(other, "expected_id", None) == "spiffe://other.local/ns/mesh-system/sa/control-plane"
    # Without a bundle: the shared system-trust context, as before.
    from asgimesh._ssl import tls_context

    assert control_plane_context("https://cp:7070", "mesh.local", None, warn=False) is tls_context()


def test_asgimesh_serve_gets_its_identity_and_policy_over_pinned_https(cp, spawn) -> None:
    """A real ``asgimesh serve`` (strict mTLS) whose certificate and policy come from the
    https control plane, pinned with MESH_CA: it serves https with the issued certificate."""
    from tests.conftest import free_port

    port = free_port()
    server = spawn.start(
        [sys.executable, "-m", "asgimesh", "serve", "tests.identity.apps_mtls:starlette_app",
         "--port", str(port)],
        port=port,
        env=service_env(cp, cp.trust_bundle),
    )
    assert f"https://127.0.0.1:{port} as {ORDERS} (MESH_MTLS=strict)" in server.output()
    bundle = cp.trust_bundle.read_bytes()
    from asgimesh.identity import MeshClientContext

    with httpx.Client(verify=MeshClientContext(ORDERS, bundle_pem=bundle), timeout=5) as client:
        assert client.get(f"https://127.0.0.1:{port}/_mesh/health").status_code == 200
        config = client.get(f"https://127.0.0.1:{port}/_mesh/config").json()
    assert config["policy_version"] == 1, config
    assert config["source"] == f"controlplane:{cp.url}"
    assert "control_plane_not_pinned" not in server.output()
