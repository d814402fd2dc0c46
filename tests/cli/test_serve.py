"""``asgimesh serve`` in real processes over loopback: mTLS with file identities for ASGI
(uvicorn: Starlette wrapped by serve, FastAPI wrapped by its plugin) and WSGI (gunicorn: Flask
with its plugin), callers verified or refused, and rotation on disk without a restart."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import httpx
import pytest
from cryptography import x509

from asgimesh.identity import IdentityStore, parse_svid
from asgimesh.identity._tls import MeshClientContext
from asgimesh.testing import ThrowawayCA

ORDERS = "spiffe://mesh.local/ns/default/sa/orders"
PAYMENTS = "spiffe://mesh.local/ns/default/sa/payments"

APPS = {
    "starlette": ("tests.identity.apps_mtls:starlette_app", []),
    "fastapi": ("tests.identity.apps_mtls:fastapi_app", []),
    "flask": ("tests.identity.apps_mtls:flask_app", ["--wsgi"]),
}


@pytest.fixture(scope="module")
def ca() -> ThrowawayCA:
    return ThrowawayCA("mesh.local")


def caller_store(ca: ThrowawayCA, spiffe_id: str = ORDERS) -> IdentityStore:
    issued = ca.issue(spiffe_id)
    store = IdentityStore()
    store.set(parse_svid(issued.cert_pem, issued.key_pem, issued.bundle_pem,
                         trust_domain="mesh.local", source="caller"))
    return store


def serve(spawn, app: str, tmp_path: Path, ca: ThrowawayCA, mtls: str = "strict"):
    target, extra = APPS[app]
    files = ca.issue(PAYMENTS).write(tmp_path / "payments")
    env = {"MESH_SERVICE": "payments", "MESH_MTLS": mtls, **files.env()}
    server = spawn.start(
        [sys.executable, "-m", "asgimesh", "serve", target, "--port", "{port}", *extra], env=env
    )
    return server, files


def served_serial(url: str, context: MeshClientContext) -> int:
    with httpx.Client(verify=context) as client, client.stream("GET", url + "/_mesh/health") as r:
        der = r.extensions["network_stream"].get_extra_info("ssl_object").getpeercert(True)
        r.read()
    return x509.load_der_x509_certificate(der).serial_number


@pytest.mark.parametrize("app", list(APPS))
def test_strict_mtls_end_to_end(spawn, tmp_path, ca, app) -> None:
    server, _ = serve(spawn, app, tmp_path, ca)
    url = f"https://127.0.0.1:{server.port}"
    assert f"asgimesh serve: {url} as {PAYMENTS} (MESH_MTLS=strict)" in server.output()
    orders = caller_store(ca)
    with httpx.Client(verify=MeshClientContext(PAYMENTS, orders)) as client:
        response = client.get(url + "/whoami")
        assert response.status_code == 200, response.text
        assert response.json() == {"caller": ORDERS, "scheme": "https"}
        assert len(response.headers.get_list("x-request-id")) == 1  # wrapped exactly once
    # No client certificate: the handshake completes and the mesh answers 401 (health stays open).
    anonymous = MeshClientContext(PAYMENTS, bundle_pem=ca.bundle_pem)
    with httpx.Client(verify=anonymous) as client:
        refused = client.get(url + "/whoami")
        assert refused.status_code == 401
        assert refused.json()["error"] == "unauthenticated"
        assert client.get(url + "/_mesh/health").status_code == 200
    # A certificate of another CA: the handshake is refused.
    stranger = MeshClientContext(PAYMENTS, caller_store(ThrowawayCA("mesh.local")))
    stranger.load_verify_locations(cadata=ca.bundle_pem.decode())
    with httpx.Client(verify=stranger) as client, pytest.raises(httpx.HTTPError):
        client.get(url + "/whoami")
    # A caller expecting another service refuses before sending: the server never sees it.
    before = requests_seen(url, orders)
    with (
        httpx.Client(verify=MeshClientContext(ORDERS, orders)) as client,
        pytest.raises(httpx.ConnectError, match=f"presented {PAYMENTS}"),
    ):
        client.get(url + "/whoami")
    assert requests_seen(url, orders) == before
    orders.close()


def requests_seen(url: str, store: IdentityStore) -> float:
    """Every request the server's mesh counted (its admin paths are not counted)."""
    with httpx.Client(verify=MeshClientContext(PAYMENTS, store)) as client:
        text = client.get(url + "/_mesh/metrics").text
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("mesh_inbound_requests_total{")
    )


@pytest.mark.parametrize("app", ["starlette", "flask"])
def test_files_rotated_on_disk_reach_new_handshakes(spawn, tmp_path, ca, app) -> None:
    server, files = serve(spawn, app, tmp_path, ca)
    url = f"https://127.0.0.1:{server.port}"
    orders = caller_store(ca)
    context = MeshClientContext(PAYMENTS, orders)
    first = served_serial(url, context)
    rotated = ca.issue(PAYMENTS)
    rotated.write(files.cert.parent)
    deadline = time.monotonic() + 10
    serial = first
    while serial == first and time.monotonic() < deadline:
        time.sleep(0.2)
        serial = served_serial(url, context)
    assert serial == rotated.certificate.serial_number  # same process, new certificate
    assert server.proc.poll() is None
    orders.close()


def test_permissive_serves_callers_with_and_without_identity(spawn, tmp_path, ca) -> None:
    server, _ = serve(spawn, "starlette", tmp_path, ca, mtls="permissive")
    url = f"https://127.0.0.1:{server.port}"
    with httpx.Client(verify=MeshClientContext(PAYMENTS, bundle_pem=ca.bundle_pem)) as client:
        assert client.get(url + "/whoami").json() == {"caller": None, "scheme": "https"}
    orders = caller_store(ca)
    with httpx.Client(verify=MeshClientContext(PAYMENTS, orders)) as client:
        assert client.get(url + "/whoami").json()["caller"] == ORDERS
    orders.close()


def test_serve_without_mtls_serves_plain_http_and_wraps_once(spawn, tmp_path) -> None:
    server = spawn.start(
        [sys.executable, "-m", "asgimesh", "serve", "tests.identity.apps_mtls:fastapi_app",
         "--port", "{port}"],
        env={"MESH_SERVICE": "payments"},
    )
    response = httpx.get(server.url + "/whoami", headers={"x-request-id": "r-1"})
    assert response.status_code == 200 and response.json()["caller"] is None
    assert response.headers.get_list("x-request-id") == ["r-1"]
    metrics = httpx.get(server.url + "/_mesh/metrics").text
    # One middleware counted the request once.
    line = next(
        line for line in metrics.splitlines()
        if line.startswith("mesh_inbound_requests_total{") and 'status="200"' in line
    )
    assert line.endswith(" 1.0")
    assert f"asgimesh serve: http://127.0.0.1:{server.port}" in server.output()


def test_serve_stops_with_a_message_for_an_app_it_cannot_import(tmp_path) -> None:
    import subprocess

    from tests.conftest import subprocess_env

    result = subprocess.run(
        [sys.executable, "-m", "asgimesh", "serve", "no_such_module:app"],
        env=subprocess_env({}), cwd=tmp_path, capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 1
    assert result.stderr.startswith("asgimesh: asgimesh serve no_such_module:app: ")
    assert "Traceback" not in result.stderr


def test_serve_imports_from_the_current_directory(spawn, tmp_path) -> None:
    (tmp_path / "myapp.py").write_text(
        "from starlette.applications import Starlette\n"
        "from starlette.responses import PlainTextResponse\n"
        "from starlette.routing import Route\n"
        "app = Starlette(routes=[Route('/', lambda r: PlainTextResponse('here'))])\n"
    )
    server = spawn.start([sys.executable, "-m", "asgimesh", "serve", "myapp:app", "--port", "{port}"])
    response = httpx.get(server.url + "/")
    assert response.text == "here" and "x-request-id" in response.headers


def test_carries_mesh_detects_every_way_of_wrapping() -> None:
    from fastapi import FastAPI
    from flask import Flask
    from starlette.applications import Starlette

    from asgimesh import MeshMiddleware, MeshRuntime, MeshSettings, MeshWSGIMiddleware
    from asgimesh.cli._serve import carries_mesh

    runtime = MeshRuntime(MeshSettings.from_env(), start=False)
    bare = Starlette()
    assert not carries_mesh(bare) and not carries_mesh(Flask("x")) and not carries_mesh(FastAPI())
    assert carries_mesh(MeshMiddleware(bare, runtime=runtime))
    assert carries_mesh(MeshWSGIMiddleware(lambda e, s: [], runtime=runtime))
    fastapi = FastAPI()
    fastapi.add_middleware(MeshMiddleware, runtime=runtime)
    assert carries_mesh(fastapi)
    flask = Flask("y")
    flask.wsgi_app = MeshWSGIMiddleware(flask.wsgi_app, runtime=runtime)  # type: ignore[method-assign]
    assert carries_mesh(flask)
    runtime.close()
