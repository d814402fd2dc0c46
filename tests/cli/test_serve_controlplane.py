"""Identities issued by a real control plane: two services run by ``asgimesh serve`` in strict
mode, each getting its certificate with its service token, calling one another by mTLS, and a
caller in its own process getting through; who may call whom decided by ``from`` rules on the
verified IDs."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import httpx
import pytest
from cryptography import x509

from asgimesh import MeshRuntime, MeshSettings, MeshTransport
from asgimesh.identity._tls import MeshClientContext
from tests.conftest import ControlPlaneStarter, Spawner, free_port, subprocess_env

TD = "spiffe://mesh.local/ns/default/sa"
RELAY = "tests.identity.apps_mtls:relay_app"

#: A caller in its own process: ``frontend`` with its own token, calling a service through the
#: sync transport; prints what came back (or the mesh's error) as one JSON line.
CALLER = textwrap.dedent(
    """
    import json, sys, httpx
    from asgimesh import MeshTransport
    with httpx.Client(transport=MeshTransport(), timeout=10) as client:
        try:
            answer = client.get(sys.argv[1])
            print(json.dumps({"status": answer.status_code, "body": answer.json()}))
        except httpx.HTTPError as exc:
            print(json.dumps({"error": type(exc).__name__, "message": str(exc)}))
    """
)


def token_for(cp_url: str, service: str) -> str:
    answer = httpx.post(
        cp_url + "/v1/tokens",
        json={"service": service},
        headers={"authorization": f"Bearer {ControlPlaneStarter.admin_token}"},
    )
    answer.raise_for_status()
    token: str = answer.json()["token"]
    return token


def policy(ports: dict[str, int]) -> dict[str, object]:
    """payments answers only orders; orders answers only frontend; both over https."""
    return {
        "version": 1,
        "services": {
            name: {"endpoints": [f"https://127.0.0.1:{port}"]} for name, port in ports.items()
        },
        "inbound": {
            "payments": {"authorization": [{"allow": {"from": [f"{TD}/orders"]}}]},
            "orders": {"authorization": [{"allow": {"from": [f"{TD}/frontend"]}}]},
        },
    }


def mesh_env(cp_url: str, service: str) -> dict[str, str]:
    return {
        "MESH_SERVICE": service,
        "MESH_MTLS": "strict",
        "MESH_CONFIG": cp_url,
        "MESH_TOKEN": token_for(cp_url, service),
    }


def call_as_frontend(cp_url: str, url: str, tmp_path: Path) -> dict[str, object]:
    done = subprocess.run(
        [sys.executable, "-c", CALLER, url],
        env=subprocess_env(mesh_env(cp_url, "frontend")),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    answer: dict[str, object] = json.loads(done.stdout.strip().splitlines()[-1])
    return answer


#: What serves payments: Starlette under uvicorn, or Flask (with its plugin) under gunicorn.
PAYMENTS_APPS = {
    "uvicorn": ["tests.identity.apps_mtls:starlette_app"],
    "gunicorn": ["tests.identity.apps_mtls:flask_app", "--wsgi"],
}


@pytest.fixture(params=list(PAYMENTS_APPS))
def mesh(request, spawn: Spawner, control_plane_process: ControlPlaneStarter):
    """A control plane with the policy above, and payments and orders served by it (strict)."""
    return start_mesh(spawn, control_plane_process.start(), PAYMENTS_APPS[request.param])


def start_mesh(spawn: Spawner, cp, payments_app: list[str]):
    ports = {"payments": free_port(), "orders": free_port()}
    put = httpx.put(
        cp.url + "/v1/policy",
        json=policy(ports),
        headers={"authorization": f"Bearer {ControlPlaneStarter.admin_token}"},
    )
    assert put.status_code == 200, put.text
    apps = {"orders": [RELAY], "payments": payments_app}
    servers = {
        name: spawn.start(
            [sys.executable, "-m", "asgimesh", "serve", *apps[name], "--port", str(port)],
            port=port,
            env=mesh_env(cp.url, name),
        )
        for name, port in ports.items()
    }
    return cp, servers


def test_control_plane_identities_end_to_end(mesh, tmp_path) -> None:
    cp, servers = mesh
    payments = f"https://127.0.0.1:{servers['payments'].port}"
    for name, server in servers.items():
        assert f"as {TD}/{name} (MESH_MTLS=strict)" in server.output()

    # frontend → orders → payments, each hop mTLS with control-plane certificates.
    through = call_as_frontend(cp.url, "http://orders/call/payments", tmp_path)
    assert through == {"status": 200, "body": {"status": 200, "body": {
        "caller": f"{TD}/orders", "scheme": "https"}}}, through

    # frontend straight to payments: a verified identity, but not one payments allows.
    refused = call_as_frontend(cp.url, "http://payments/whoami", tmp_path)
    assert refused["status"] == 403, refused

    # No identity at all (the trust bundle, no certificate): 401 in strict; health stays open.
    bundle = httpx.get(cp.url + "/v1/trust-bundle").content
    with httpx.Client(verify=MeshClientContext(f"{TD}/payments", bundle_pem=bundle)) as client:
        anonymous = client.get(payments + "/whoami")
        assert anonymous.status_code == 401
        assert anonymous.json()["error"] == "unauthenticated"
        assert client.get(payments + "/_mesh/health").status_code == 200


def served_serial(url: str, spiffe_id: str, bundle: bytes) -> int:
    """The serial of the certificate ``url`` presents to a new handshake."""
    context = MeshClientContext(spiffe_id, bundle_pem=bundle)
    with httpx.Client(verify=context) as client, client.stream("GET", url + "/_mesh/health") as r:
        der = r.extensions["network_stream"].get_extra_info("ssl_object").getpeercert(True)
        r.read()
    return x509.load_der_x509_certificate(der).serial_number


def test_three_renewals_under_steady_traffic_fail_no_call(spawn, control_plane_process) -> None:
    """4 s certificates, renewed every ~2 s by every party, while a caller keeps calling
    through both hops, each call a new handshake with orders: not one call fails."""
    cp = control_plane_process.start("--cert-lifetime", "4s")
    _, servers = start_mesh(spawn, cp, PAYMENTS_APPS["uvicorn"])
    bundle = httpx.get(cp.url + "/v1/trust-bundle").content
    runtime = MeshRuntime(MeshSettings(
        service="frontend", mtls="strict", config=cp.url, token=token_for(cp.url, "frontend")
    ))
    mine: set[int] = set()
    runtime.identity.subscribe(lambda svid: mine.add(svid.serial))
    seen: dict[str, set[int]] = {"orders": set(), "payments": set()}
    calls = failures = 0
    no_reuse = httpx.Limits(max_keepalive_connections=0)
    try:
        with httpx.Client(transport=MeshTransport(runtime=runtime, limits=no_reuse)) as client:
            deadline = time.monotonic() + 40
            while time.monotonic() < deadline and min(
                len(mine), *(len(s) for s in seen.values())
            ) < 4:
                answer = client.get("http://orders/call/payments", timeout=5)
                calls += 1
                ok = answer.status_code == 200 and answer.json()["status"] == 200
                failures += not ok
                for name, server in servers.items():
                    url = f"https://127.0.0.1:{server.port}"
                    seen[name].add(served_serial(url, f"{TD}/{name}", bundle))
                time.sleep(0.05)
    finally:
        runtime.close()
    # The first certificate and three renewals, at least, on every side; not one failed call.
    assert len(mine) >= 4 and all(len(s) >= 4 for s in seen.values()), (mine, seen)
    assert failures == 0 and calls > 20, (failures, calls)
