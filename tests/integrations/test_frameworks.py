"""Flask, Django (WSGI and ASGI) and FastAPI services behave identically on the wire.

Each app runs in a real server process (gunicorn for WSGI, uvicorn for ASGI) and calls a real
upstream through its plugin's client, so the assertions cover the whole path a user deploys.
"""

from __future__ import annotations

import httpx
import pytest

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
TRACEPARENT = f"00-{TRACE_ID}-00f067aa0ba902b7-01"

SERVERS = {
    "flask": ("gunicorn", "tests.integrations.apps.flask_app:app"),
    "django-wsgi": ("gunicorn", "tests.integrations.apps.django_app:wsgi"),
    "django-asgi": ("uvicorn", "tests.integrations.apps.django_app:asgi"),
    "fastapi": ("uvicorn", "tests.integrations.apps.fastapi_app:app"),
}


@pytest.fixture(scope="module")
def echo(module_spawn):
    """A real upstream named ``echo`` that answers with the mesh headers it received."""
    return module_spawn.uvicorn("tests.integrations.apps.echo:app")


@pytest.fixture(scope="module", params=sorted(SERVERS))
def service(request, module_spawn, echo):
    """One framework's app in its real server (shared by this module's tests)."""
    server, app = SERVERS[request.param]
    env = {"MESH_SERVICE": "web", "MESH_UPSTREAMS": f"echo={echo.url}"}
    start = module_spawn.gunicorn if server == "gunicorn" else module_spawn.uvicorn
    return start(app, env=env, ready_path="/_mesh/health")


def test_health_answers_for_the_service(service) -> None:
    response = httpx.get(service.url + "/_mesh/health")
    assert response.status_code == 200
    assert response.json()["service"] == "web"
    assert response.json()["status"] == "ok"


def test_request_id_and_trace_reach_the_app(service) -> None:
    response = httpx.get(
        service.url + "/whoami",
        headers={"x-request-id": "req-42", "traceparent": TRACEPARENT, "mesh-deadline-ms": "5000"},
    )
    assert response.status_code == 200
    assert response.headers["x-request-id"] == "req-42"
    assert response.json() == {"request_id": "req-42", "trace_id": TRACE_ID, "has_deadline": True}


def test_request_id_made_when_absent(service) -> None:
    response = httpx.get(service.url + "/whoami")
    made = response.headers["x-request-id"]
    assert len(made) >= 16
    assert response.json()["request_id"] == made


def test_outbound_call_carries_trace_request_id_and_deadline(service) -> None:
    response = httpx.get(
        service.url + "/call",
        headers={"x-request-id": "req-7", "traceparent": TRACEPARENT, "mesh-deadline-ms": "3000"},
    )
    assert response.status_code == 200, response.text
    seen = response.json()
    assert seen["x-request-id"] == "req-7"
    assert seen["traceparent"].split("-")[1] == TRACE_ID
    assert seen["traceparent"].split("-")[2] != "00f067aa0ba902b7"  # a child span, not the caller's
    assert 0 < int(seen["mesh-deadline-ms"]) <= 3000
    assert seen["mesh-attempt"] == "1"


def test_expired_deadline_is_504_before_the_app(service) -> None:
    response = httpx.get(service.url + "/whoami", headers={"mesh-deadline-ms": "0"})
    assert response.status_code == 504
    assert response.json()["error"]


def test_metrics_count_the_framework_requests(service) -> None:
    for _ in range(3):
        httpx.get(service.url + "/whoami")
    text = httpx.get(service.url + "/_mesh/metrics").text
    line = next(
        line
        for line in text.splitlines()
        if line.startswith("mesh_inbound_requests_total{")
        and 'status="200"' in line
        and 'method="GET"' in line
    )
    assert float(line.rsplit(" ", 1)[1]) >= 3
