"""Limits over real sockets: uvicorn (ASGI) and gunicorn with threads (WSGI), the policy from a
``MESH_CONFIG`` file that the test rewrites while the server runs."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import httpx
import pytest
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect

SLOW = 1.5  # seconds the slow endpoint keeps its request in flight


def metric(base: str, name: str) -> float:
    for line in httpx.get(base + "/_mesh/metrics", timeout=5).text.splitlines():
        if line.startswith(name + "{"):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def concurrently(url: str, count: int, stagger: float = 0.2) -> list[httpx.Response]:
    """``count`` GETs of ``url`` at once (each ``stagger`` s after the previous one)."""
    responses: list[httpx.Response] = []
    errors: list[BaseException] = []

    def get() -> None:
        try:
            responses.append(httpx.get(url, timeout=20))
        except BaseException as error:
            errors.append(error)

    threads = [threading.Thread(target=get) for _ in range(count)]
    for thread in threads:
        thread.start()
        time.sleep(stagger)
    for thread in threads:
        thread.join(30)
    assert not errors, errors
    return sorted(responses, key=lambda response: response.status_code)


def write_policy(path: Path, inbound: dict[str, object]) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"inbound": {"web": inbound}}))
    tmp.replace(path)  # whole, as an operator's deploy tool would write it


def policy_version(base: str) -> int:
    return int(httpx.get(base + "/_mesh/health", timeout=5).json()["policy_version"])


@pytest.fixture(params=["uvicorn", "gunicorn"])
def limited_server(request, spawn, tmp_path):
    """The test app behind each shell in its real server, ``concurrency_limit: 1`` from a file."""
    config = tmp_path / "policy.json"
    write_policy(config, {"concurrency_limit": 1})
    env = {"MESH_SERVICE": "web", "MESH_CONFIG": str(config)}
    if request.param == "uvicorn":
        server = spawn.uvicorn("tests.inbound.apps_asgi:app", env=env, ready_path="/_mesh/health")
    else:
        # Threads, so that two requests are in flight at once in one WSGI worker.
        server = spawn.gunicorn(
            "tests.inbound.apps_wsgi:app",
            env=env,
            ready_path="/_mesh/health",
            extra=["--worker-class", "gthread", "--threads", "4"],
        )
    server.config = config
    return server


def test_concurrency_limit_and_hot_reload_over_sockets(limited_server) -> None:
    base = limited_server.url
    slow = f"{base}/slow?s={SLOW}"

    first, second = concurrently(slow, 2)
    assert (first.status_code, second.status_code) == (200, 429)
    assert first.text == "slow"
    assert second.headers["retry-after"] == "1"
    assert second.json() == {
        "error": "rate_limited",
        "detail": "'web' is already handling its limit of 1 concurrent requests",
    }
    assert metric(base, "mesh_rate_limited_total") == 1
    # Operators reach the admin paths while the service is at its limit.
    assert httpx.get(base + "/_mesh/health", timeout=5).status_code == 200
    # Both finished: the slot is free again.
    assert httpx.get(base + "/whoami", timeout=5).status_code == 200

    # The operator raises the limit; within 2 s it applies, without a restart.
    version = policy_version(base)
    write_policy(limited_server.config, {"concurrency_limit": 2})
    deadline = time.monotonic() + 2.0
    while policy_version(base) == version:
        assert time.monotonic() < deadline, "the new policy did not apply within 2 s"
        time.sleep(0.05)
    assert [r.status_code for r in concurrently(slow, 2)] == [200, 200]
    assert [r.status_code for r in concurrently(slow, 3, stagger=0.1)] == [200, 200, 429]
    assert metric(base, "mesh_rate_limited_total") == 2


def test_rate_limit_and_authorization_over_sockets(spawn, tmp_path) -> None:
    config = tmp_path / "policy.json"
    write_policy(config, {"rate_limit": {"requests_per_second": 0.2, "burst": 2}})
    server = spawn.uvicorn(
        "tests.inbound.apps_asgi:app",
        env={"MESH_SERVICE": "web", "MESH_CONFIG": str(config)},
        ready_path="/_mesh/health",
    )
    base = server.url
    statuses = [httpx.get(base + "/whoami", timeout=5).status_code for _ in range(3)]
    assert statuses == [200, 200, 429]
    refused = httpx.get(base + "/whoami", timeout=5)
    assert refused.status_code == 429
    assert 1 <= int(refused.headers["retry-after"]) <= 5  # a token every 5 s
    assert metric(base, "mesh_rate_limited_total") == 2

    version = policy_version(base)
    write_policy(
        config,
        {
            "authorization": [
                {"allow": {"from": ["spiffe://mesh.local/ns/default/sa/orders"]}},
                {"allow": {"methods": ["GET"], "paths": ["/status/*"]}},
            ]
        },
    )
    deadline = time.monotonic() + 2.0
    while policy_version(base) == version:
        assert time.monotonic() < deadline, "the new policy did not apply within 2 s"
        time.sleep(0.05)
    denied = httpx.get(
        base + "/whoami",
        headers={"mesh-identity": "spiffe://mesh.local/ns/default/sa/orders"},
        timeout=5,
    )
    assert denied.status_code == 403
    assert denied.json()["detail"].startswith("no verified caller identity")
    assert httpx.get(base + "/status/204", timeout=5).status_code == 204  # no rate limit now
    assert metric(base, "mesh_authz_denied_total") == 1
    # Upgrading to a WebSocket does not side-step authorization.
    with pytest.raises(InvalidStatus) as refused_ws:
        connect(base.replace("http", "ws") + "/ws", open_timeout=10)
    assert refused_ws.value.response.status_code == 403
    assert b"forbidden" in (refused_ws.value.response.body or b"")
    assert metric(base, "mesh_authz_denied_total") == 2
