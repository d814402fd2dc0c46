"""The middleware in real servers over loopback sockets: uvicorn (ASGI) and gunicorn (WSGI).

Memory is read from ``/proc/<pid>/status``: ``VmHWM`` is the peak resident set, so a middleware
that buffered a body would show its whole size there even after freeing it.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from websockets.sync.client import connect

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
TRACEPARENT = f"00-{TRACE_ID}-00f067aa0ba902b7-01"
MB = 1024 * 1024
#: How much the server's peak memory may grow while 100 MB pass through it.
FLAT = 24 * MB


def memory(pid: int, field: str = "VmHWM") -> int:
    """A memory figure of process ``pid`` in bytes (``VmHWM``: peak RSS; ``VmRSS``: now)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no {field} for {pid}")


def worker_pid(master: int) -> int:
    """gunicorn's single worker: the master's only child."""
    children = Path(f"/proc/{master}/task/{master}/children").read_text().split()
    assert len(children) == 1, children
    return int(children[0])


def download(url: str) -> int:
    size = 0
    with httpx.stream("GET", url, timeout=60) as response:
        assert response.status_code == 200
        for chunk in response.iter_raw(65536):
            size += len(chunk)
    return size


def inbound_count(base: str, method: str, status: str) -> float:
    for line in httpx.get(base + "/_mesh/metrics").text.splitlines():
        if (
            line.startswith("mesh_inbound_requests_total{")
            and f'method="{method}"' in line
            and f'status="{status}"' in line
        ):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


@pytest.fixture
def uvicorn_app(spawn):
    return spawn.uvicorn(
        "tests.inbound.apps_asgi:app", env={"MESH_SERVICE": "web"}, ready_path="/_mesh/health"
    )


@pytest.fixture
def gunicorn_app(spawn):
    return spawn.gunicorn(
        "tests.inbound.apps_wsgi:app", env={"MESH_SERVICE": "web"}, ready_path="/_mesh/health"
    )


@pytest.fixture(params=["uvicorn", "gunicorn"])
def server(request, spawn):
    """The same test app behind each shell, each in its real server."""
    start = spawn.uvicorn if request.param == "uvicorn" else spawn.gunicorn
    module = "apps_asgi" if request.param == "uvicorn" else "apps_wsgi"
    return start(
        f"tests.inbound.{module}:app", env={"MESH_SERVICE": "web"}, ready_path="/_mesh/health"
    )


def test_mesh_headers_deadline_admin_and_metrics_over_sockets(server) -> None:
    base = server.url
    seen = httpx.get(
        base + "/whoami",
        headers={"traceparent": TRACEPARENT, "x-request-id": "req-1", "mesh-deadline-ms": "5000"},
    )
    assert seen.status_code == 200
    assert seen.headers["x-request-id"] == "req-1"
    assert seen.json()["trace_id"] == TRACE_ID
    assert 4 < seen.json()["remaining"] <= 5

    bad = httpx.get(
        base + "/whoami",
        headers={"traceparent": "00-nonsense", "x-request-id": "a" * 300, "grpc-timeout": "xx"},
    )
    assert bad.status_code == 200
    assert bad.json()["trace_id"] != TRACE_ID
    assert bad.json()["remaining"] is None
    assert len(bad.headers["x-request-id"]) == 32

    late = httpx.get(base + "/whoami", headers={"mesh-deadline-ms": "0"})
    assert late.status_code == 504
    assert late.json()["error"] == "deadline_exceeded"

    assert httpx.get(base + "/_mesh/health").json() == {
        "status": "ok",
        "service": "web",
        "policy_version": 1,
    }
    # a real loopback client may read the config while no admin token is set
    config = httpx.get(base + "/_mesh/config")
    assert config.status_code == 200
    assert config.json()["service"] == "web"

    assert inbound_count(base, "GET", "200") == 2
    assert inbound_count(base, "GET", "504") == 1


def test_app_crash_is_a_counted_500(server) -> None:
    response = httpx.get(server.url + "/boom")
    assert response.status_code == 500
    assert inbound_count(server.url, "GET", "500") == 1
    assert "boom from the app" in server.output()  # the server still saw and logged it


def test_admin_token_over_sockets(spawn) -> None:
    server = spawn.uvicorn(
        "tests.inbound.apps_asgi:app",
        env={"MESH_ADMIN_TOKEN": "t0ken"},
        ready_path="/_mesh/health",
    )
    url = server.url + "/_mesh/config"
    assert httpx.get(url).status_code == 401
    assert httpx.get(url, headers={"authorization": "Bearer nope"}).status_code == 403
    good = httpx.get(url, headers={"authorization": "Bearer t0ken"})
    assert good.status_code == 200
    assert "t0ken" not in good.text


def test_100mb_response_streams_through_uvicorn_with_flat_memory(uvicorn_app) -> None:
    pid = uvicorn_app.proc.pid
    assert download(uvicorn_app.url + "/stream?mb=2") == 2 * MB  # warm up
    before = memory(pid)
    assert download(uvicorn_app.url + "/stream?mb=100") == 100 * MB
    growth = memory(pid) - before
    assert growth < FLAT, f"peak RSS grew by {growth / MB:.1f} MB"


def test_large_request_body_streams_through_uvicorn_with_flat_memory(uvicorn_app) -> None:
    pid = uvicorn_app.proc.pid

    def body(megabytes: int) -> Iterator[bytes]:
        chunk = b"y" * 65536
        for _ in range(megabytes * 16):
            yield chunk

    def upload(megabytes: int) -> str:
        response = httpx.post(uvicorn_app.url + "/upload", content=body(megabytes), timeout=60)
        assert response.status_code == 200
        return response.text

    assert upload(2) == str(2 * MB)
    before = memory(pid)
    assert upload(64) == str(64 * MB)
    growth = memory(pid) - before
    assert growth < FLAT, f"peak RSS grew by {growth / MB:.1f} MB"


def test_websocket_passes_through_uvicorn(uvicorn_app) -> None:
    with connect(uvicorn_app.url.replace("http", "ws") + "/ws", open_timeout=10) as ws:
        ws.send("hi")
        assert ws.recv(timeout=10) == "echo: hi"
        ws.send("again")
        assert ws.recv(timeout=10) == "echo: again"
    # a websocket session is not an HTTP request: nothing counted
    assert inbound_count(uvicorn_app.url, "GET", "101") == 0
    assert "mesh_inbound_requests_total{" not in httpx.get(uvicorn_app.url + "/_mesh/metrics").text


def test_response_streams_lazily_through_gunicorn_with_flat_memory(gunicorn_app) -> None:
    pid = worker_pid(gunicorn_app.proc.pid)
    assert download(gunicorn_app.url + "/stream?mb=2") == 2 * MB
    before = memory(pid)
    assert download(gunicorn_app.url + "/stream?mb=64") == 64 * MB
    growth = memory(pid) - before
    assert growth < FLAT, f"peak RSS grew by {growth / MB:.1f} MB"
    assert inbound_count(gunicorn_app.url, "GET", "200") == 2


def test_request_body_reaches_the_wsgi_app(gunicorn_app) -> None:
    payload = b"z" * (3 * MB)
    response = httpx.post(gunicorn_app.url + "/upload", content=payload, timeout=30)
    assert response.text == str(3 * MB)


def test_examples_serve_hello(spawn) -> None:
    asgi = spawn.uvicorn("examples.hello_asgi:app", ready_path="/_mesh/health")
    wsgi = spawn.gunicorn("examples.hello_wsgi:app", ready_path="/_mesh/health")
    for server in (asgi, wsgi):
        response = httpx.get(server.url + "/")
        assert response.status_code == 200
        assert response.text.startswith("Hello, mesh!")
        assert len(response.headers["x-request-id"]) == 32
    bare = spawn.uvicorn("examples.hello_asgi:bare")
    response = httpx.get(bare.url + "/")
    assert response.text == "Hello, mesh!\n"
    assert "x-request-id" not in response.headers
