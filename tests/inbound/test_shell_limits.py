"""``inbound.<service>`` limits and authorization through each shell, in-process.

The same answers from the ASGI and the WSGI middleware (``make_shell`` runs each test for both);
the shell-specific ends of a request (an ASGI app raising or being cancelled, a WSGI body closed
or never read) are tested against each shell directly. Real servers: test_servers_limits.py.
"""

from __future__ import annotations

import json
from typing import Any

import anyio
import httpx
import pytest

from asgimesh import MeshMiddleware, MeshWSGIMiddleware

from .test_wsgi import Body, Started, environ

ORDERS = "spiffe://mesh.local/ns/default/sa/orders"


def policy(**inbound: Any) -> str:
    return json.dumps({"inbound": {"web": inbound}})


def sample(runtime: Any, name: str, **labels: str) -> float:
    value = runtime.metrics.registry.get_sample_value(
        name, {"service": runtime.settings.service, **labels}
    )
    return value or 0.0


def inbound(runtime: Any, status: str, method: str = "GET") -> float:
    return sample(runtime, "mesh_inbound_requests_total", method=method, status=status)


def hold_slot(runtime: Any) -> Any:
    """Take a concurrency slot as a request in flight would; returns the gate."""
    limits = runtime.inbound_admission.current()
    assert limits is not None
    assert limits.gate is not None
    assert limits.gate.acquire()
    return limits.gate


# ---- both shells -------------------------------------------------------------------------------


def test_rate_limit_answers_429_with_retry_after(make_shell) -> None:
    shell = make_shell(
        service="web", policy=policy(rate_limit={"requests_per_second": 0.5, "burst": 2})
    )
    assert [shell.get("/whoami").status_code for _ in range(2)] == [200, 200]
    refused = shell.get("/whoami", headers={"x-request-id": "over-1"})
    assert refused.status_code == 429
    assert refused.headers["retry-after"] == "2"  # a token every 2 s, the bucket just emptied
    assert refused.headers["content-type"] == "application/json"
    assert refused.headers["x-request-id"] == "over-1"
    assert refused.json()["error"] == "rate_limited"
    assert refused.json()["detail"].startswith("'web' accepts 0.5 requests a second (burst 2)")
    runtime = shell.runtime
    assert sample(runtime, "mesh_rate_limited_total") == 1
    assert inbound(runtime, "429") == 1
    assert inbound(runtime, "200") == 2
    assert sample(runtime, "mesh_authz_denied_total") == 0


def test_concurrency_limit_answers_429_with_retry_after_1(make_shell) -> None:
    shell = make_shell(service="web", policy=policy(concurrency_limit=1))
    gate = hold_slot(shell.runtime)
    refused = shell.get("/whoami")
    assert refused.status_code == 429
    assert refused.headers["retry-after"] == "1"
    assert refused.json() == {
        "error": "rate_limited",
        "detail": "'web' is already handling its limit of 1 concurrent requests",
    }
    assert sample(shell.runtime, "mesh_rate_limited_total") == 1
    assert inbound(shell.runtime, "429") == 1
    gate.release()
    assert shell.get("/whoami").status_code == 200
    assert gate.in_flight == 0  # the request's own slot went back when it finished


def test_slot_is_released_after_an_app_exception(make_shell) -> None:
    shell = make_shell(service="web", policy=policy(concurrency_limit=1))
    for _ in range(3):
        try:
            response = shell.get("/boom")
        except RuntimeError:
            pass  # httpx's in-process transports hand the app's exception on
        else:
            assert response.status_code == 500
    assert shell.get("/whoami").status_code == 200
    assert shell.runtime.inbound_admission.current().gate.in_flight == 0  # type: ignore[union-attr]
    assert sample(shell.runtime, "mesh_rate_limited_total") == 0


def test_authorization_from_fails_closed_without_verified_identity(make_shell) -> None:
    shell = make_shell(
        service="web",
        policy=policy(authorization=[{"allow": {"from": [ORDERS], "paths": ["/whoami"]}}]),
    )
    # Headers claiming an identity are not a verified identity.
    forged = {"mesh-identity": ORDERS, "x-forwarded-client-cert": f"URI={ORDERS}"}
    denied = shell.get("/whoami", headers=forged)
    assert denied.status_code == 403
    assert denied.json()["error"] == "forbidden"
    assert denied.json()["detail"].startswith("no verified caller identity")
    assert "x-request-id" in denied.headers
    assert sample(shell.runtime, "mesh_authz_denied_total") == 1
    assert inbound(shell.runtime, "403") == 1
    assert sample(shell.runtime, "mesh_rate_limited_total") == 0


def test_authorization_by_method_and_path(make_shell) -> None:
    shell = make_shell(
        service="web",
        policy=policy(
            authorization=[{"allow": {"methods": ["GET"], "paths": ["/whoami", "/status/*"]}}]
        ),
    )
    assert shell.get("/whoami").status_code == 200
    assert shell.get("/status/204").status_code == 204
    denied = shell.request("POST", "/status/201")
    assert denied.status_code == 403
    assert denied.json() == {
        "error": "forbidden",
        "detail": "no authorization rule of 'web' allows POST /status/201 from an unverified caller",
    }
    assert shell.get("/stream").status_code == 403
    assert sample(shell.runtime, "mesh_authz_denied_total") == 2
    assert inbound(shell.runtime, "403", "POST") == 1


def test_another_services_limits_do_not_apply(make_shell) -> None:
    shell = make_shell(
        service="web",
        policy=json.dumps({"inbound": {"payments": {"authorization": [], "concurrency_limit": 1}}}),
    )
    assert shell.get("/whoami").status_code == 200
    assert sample(shell.runtime, "mesh_authz_denied_total") == 0


def test_admin_paths_are_exempt(make_shell) -> None:
    shell = make_shell(
        service="web",
        policy=policy(
            authorization=[],
            rate_limit={"requests_per_second": 0.001, "burst": 1},
            concurrency_limit=1,
        ),
    )
    hold_slot(shell.runtime)
    assert shell.get("/whoami").status_code == 403  # authorization: [] allows nobody
    for _ in range(3):
        assert shell.get("/_mesh/health").status_code == 200
        metrics = shell.get("/_mesh/metrics")
        assert metrics.status_code == 200
    assert 'mesh_authz_denied_total{service="web"} 1.0' in metrics.text
    assert shell.get("/_mesh/config").status_code == 200


def test_policy_change_applies_to_the_next_request(make_shell) -> None:
    shell = make_shell(service="web")
    assert shell.get("/whoami").status_code == 200
    shell.runtime.policy.apply({"inbound": {"web": {"authorization": []}}}, source="test")
    assert shell.get("/whoami").status_code == 403
    shell.runtime.policy.apply({"inbound": {}}, source="test")
    assert shell.get("/whoami").status_code == 200


# ---- ASGI: the slot is held while the app runs, released however it ends ----------------------


class Blocking:
    """An ASGI app that answers only when ``release`` is set; ``entered`` tells it started."""

    def __init__(self) -> None:
        self.entered = anyio.Event()
        self.release = anyio.Event()

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        self.entered.set()
        await self.release.wait()
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"done"})


def asgi_client(app: Any) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app, client=("127.0.0.1", 40000)),
        base_url="http://mesh.test",
    )


@pytest.mark.anyio
async def test_asgi_slot_is_held_while_the_app_runs(make_runtime) -> None:
    runtime = make_runtime(service="web", policy=policy(concurrency_limit=1))
    app = Blocking()
    statuses: list[int] = []
    async with asgi_client(MeshMiddleware(app, runtime=runtime)) as client:

        async def first() -> None:
            statuses.append((await client.get("/")).status_code)

        async with anyio.create_task_group() as tasks:
            tasks.start_soon(first)
            await app.entered.wait()
            refused = await client.get("/")
            app.release.set()
        assert refused.status_code == 429
        assert statuses == [200]
        assert (await client.get("/")).status_code == 200


@pytest.mark.anyio
async def test_asgi_slot_is_released_when_the_request_is_cancelled(make_runtime) -> None:
    # A client that goes away makes the server cancel the request's task.
    runtime = make_runtime(service="web", policy=policy(concurrency_limit=1))
    app = Blocking()
    middleware = MeshMiddleware(app, runtime=runtime)

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: Any) -> None:
        pass

    scope = {"type": "http", "method": "GET", "path": "/", "headers": [], "client": None}
    with anyio.move_on_after(0.2):
        await middleware(scope, receive, send)
    assert app.entered.is_set()
    assert not app.release.is_set()
    assert runtime.inbound_admission.current().gate.in_flight == 0  # type: ignore[union-attr]


# ---- WSGI: the slot is held until the body is exhausted or closed ------------------------------


def streaming(env: Any, start: Any) -> Any:
    start("200 OK", [("content-type", "text/plain")])
    return Body([b"a", b"b"])


def test_wsgi_slot_is_held_until_the_body_is_closed(make_runtime) -> None:
    runtime = make_runtime(service="web", policy=policy(concurrency_limit=1))
    middleware = MeshWSGIMiddleware(streaming, runtime=runtime)
    body = middleware(environ(), Started())
    assert next(iter(body)) == b"a"  # streaming: the request is still in flight
    refused = Started()
    assert b"".join(middleware(environ(), refused)).startswith(b'{"error": "rate_limited"')
    assert refused.calls[0][0] == "429 Too Many Requests"
    assert ("retry-after", "1") in refused.calls[0][1]
    body.close()  # type: ignore[attr-defined]  # the server closes it, read or not
    admitted = Started()
    assert list(middleware(environ(), admitted)) == [b"a", b"b"]
    assert admitted.calls[0][0] == "200 OK"


def test_wsgi_slot_is_released_when_the_body_is_exhausted(make_runtime) -> None:
    runtime = make_runtime(service="web", policy=policy(concurrency_limit=1))
    middleware = MeshWSGIMiddleware(streaming, runtime=runtime)
    for _ in range(3):
        started = Started()
        assert list(middleware(environ(), started)) == [b"a", b"b"]  # never closed
        assert started.calls[0][0] == "200 OK"
    assert runtime.inbound_admission.current().gate.in_flight == 0  # type: ignore[union-attr]


def test_wsgi_slot_is_released_when_the_app_raises(make_runtime) -> None:
    runtime = make_runtime(service="web", policy=policy(concurrency_limit=1))

    def boom(env: Any, start: Any) -> Any:
        raise RuntimeError("boom")

    middleware = MeshWSGIMiddleware(boom, runtime=runtime)
    for _ in range(2):
        with pytest.raises(RuntimeError):
            middleware(environ(), Started())
    assert runtime.inbound_admission.current().gate.in_flight == 0  # type: ignore[union-attr]
    assert inbound(runtime, "500") == 2
    assert inbound(runtime, "429") == 0


def test_policy_file_rewrite_applies_within_2_seconds(make_shell, tmp_path) -> None:
    import time

    config = tmp_path / "policy.yaml"
    config.write_text("inbound:\n  web:\n    concurrency_limit: 10\n")
    shell = make_shell(service="web", config=str(config))
    assert [shell.get("/whoami").status_code for _ in range(3)] == [200, 200, 200]
    config.write_text("inbound:\n  web:\n    rate_limit: {requests_per_second: 0.001, burst: 1}\n")
    deadline = time.monotonic() + 2.0
    statuses: list[int] = []
    while 429 not in statuses:
        assert time.monotonic() < deadline, f"the new limit did not apply within 2 s: {statuses}"
        statuses.append(shell.get("/whoami").status_code)
        time.sleep(0.02)
    assert sample(shell.runtime, "mesh_rate_limited_total") == 1
    assert shell.get("/whoami").status_code == 429


def test_asgi_and_wsgi_on_one_runtime_share_the_limit(make_runtime) -> None:
    runtime = make_runtime(service="web", policy=policy(concurrency_limit=1))
    wsgi = MeshWSGIMiddleware(streaming, runtime=runtime)
    asgi = MeshMiddleware(Blocking(), runtime=runtime)
    body = wsgi(environ(), Started())
    assert next(iter(body)) == b"a"

    async def call_asgi() -> int:
        async with asgi_client(asgi) as client:
            return (await client.get("/")).status_code

    assert anyio.run(call_asgi) == 429
    body.close()  # type: ignore[attr-defined]
    assert sample(runtime, "mesh_rate_limited_total") == 1


def test_a_runtime_is_not_kept_alive_by_its_limits() -> None:
    import gc
    import weakref

    from asgimesh import MeshRuntime, MeshSettings

    runtime = MeshRuntime(MeshSettings.from_env(service="web", policy=policy(concurrency_limit=1)))
    assert runtime.inbound_admission is runtime.inbound_admission
    MeshMiddleware(Blocking(), runtime=runtime)
    ref = weakref.ref(runtime)
    del runtime
    gc.collect()
    assert ref() is None


# ---- ASGI: a WebSocket handshake is authorized as a GET of its path ---------------------------


async def handshake(runtime: Any, path: str, extensions: dict[str, Any]) -> tuple[list[Any], bool]:
    """Run one handshake through the middleware: the messages it sent, and whether the app ran."""
    called: list[bool] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        called.append(True)

    sent: list[Any] = []

    async def receive() -> dict[str, Any]:
        return {"type": "websocket.connect"}

    async def send(message: Any) -> None:
        sent.append(message)

    scope = {"type": "websocket", "path": path, "headers": [], "extensions": extensions}
    await MeshMiddleware(app, runtime=runtime)(scope, receive, send)
    return sent, bool(called)


@pytest.mark.anyio
async def test_websocket_handshake_refused_by_authorization(make_runtime) -> None:
    runtime = make_runtime(
        service="web", policy=policy(authorization=[{"allow": {"paths": ["/open/*"]}}])
    )
    sent, called = await handshake(runtime, "/ws", {"websocket.http.response": {}})
    assert not called
    assert sent[0]["type"] == "websocket.http.response.start"
    assert sent[0]["status"] == 403
    assert json.loads(sent[1]["body"])["error"] == "forbidden"
    sent, called = await handshake(runtime, "/ws", {})  # no denial-response extension
    assert not called
    assert sent == [{"type": "websocket.close", "code": 1008}]
    assert sample(runtime, "mesh_authz_denied_total") == 2
    sent, called = await handshake(runtime, "/open/ws", {})
    assert called
    assert sent == []
