"""``MeshMiddleware`` as an ASGI citizen: scopes, messages, context variable, runtime, errors."""

from __future__ import annotations

import gc
import traceback
from typing import Any

import httpx
import pytest
import structlog

import asgimesh
from asgimesh import ConfigError, MeshMiddleware, current_context
from asgimesh.policy import PolicyStore

pytestmark = pytest.mark.anyio


def client_for(app: Any) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app, client=("127.0.0.1", 40000)),
        base_url="http://mesh.test",
    )


def http_scope(path: str) -> dict[str, Any]:
    """A minimal HTTP scope, for tests that call the middleware as a server would."""
    return {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "headers": [],
        "client": ("127.0.0.1", 1),
        "server": ("127.0.0.1", 80),
    }


async def empty_body() -> dict[str, Any]:
    return {"type": "http.request", "body": b"", "more_body": False}


class Recorder:
    """A raw ASGI app that records each call and answers 200 with the given messages."""

    def __init__(self, *bodies: bytes, headers: list[tuple[bytes, bytes]] | None = None) -> None:
        self.calls: list[dict[str, Any]] = []
        self.bodies = bodies or (b"ok",)
        self.start = {"type": "http.response.start", "status": 200, "headers": headers or []}

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        self.calls.append({"scope": scope, "receive": receive, "context": current_context()})
        await send(self.start)
        for index, body in enumerate(self.bodies):
            more = index < len(self.bodies) - 1
            await send({"type": "http.response.body", "body": body, "more_body": more})


async def test_expired_deadline_never_calls_the_app(make_runtime) -> None:
    app = Recorder()
    async with client_for(MeshMiddleware(app, runtime=make_runtime())) as client:
        response = await client.get("/", headers={"mesh-deadline-ms": "0"})
    assert response.status_code == 504
    assert app.calls == []


async def test_context_is_set_for_the_app_and_reset_after(make_runtime) -> None:
    app = Recorder()
    async with client_for(MeshMiddleware(app, runtime=make_runtime())) as client:
        response = await client.get("/", headers={"x-request-id": "abc"})
    assert app.calls[0]["context"].request_id == "abc"
    assert response.headers["x-request-id"] == "abc"
    assert current_context() is None


async def test_context_reaches_child_tasks(make_runtime) -> None:
    import anyio

    seen: list[Any] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        async def child() -> None:
            seen.append(current_context())

        async with anyio.create_task_group() as tg:
            tg.start_soon(child)
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    async with client_for(MeshMiddleware(app, runtime=make_runtime())) as client:
        await client.get("/", headers={"x-request-id": "child-1"})
    assert seen[0] is not None
    assert seen[0].request_id == "child-1"


async def test_messages_pass_through_one_by_one(make_runtime) -> None:
    """No buffering: every body message the app sends reaches the server as it was sent, and
    the app reads the server's own ``receive``."""
    app = Recorder(b"a", b"b", b"c")
    sent: list[dict[str, Any]] = []

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    await MeshMiddleware(app, runtime=make_runtime())(http_scope("/"), empty_body, send)
    assert [m["type"] for m in sent] == ["http.response.start", *["http.response.body"] * 3]
    assert [m["body"] for m in sent[1:]] == [b"a", b"b", b"c"]
    assert [m["more_body"] for m in sent[1:]] == [True, True, False]
    assert app.calls[0]["receive"] is empty_body


async def test_app_message_dicts_are_not_mutated(make_runtime) -> None:
    app = Recorder(headers=[(b"content-type", b"text/plain")])
    async with client_for(MeshMiddleware(app, runtime=make_runtime())) as client:
        await client.get("/")
        second = await client.get("/")
    assert app.start["headers"] == [(b"content-type", b"text/plain")]
    assert second.headers.get_list("x-request-id") == [second.headers["x-request-id"]]


async def test_request_id_set_by_the_app_is_not_doubled(make_runtime) -> None:
    app = Recorder(headers=[(b"X-Request-Id", b"from-app")])
    async with client_for(MeshMiddleware(app, runtime=make_runtime())) as client:
        response = await client.get("/", headers={"x-request-id": "from-caller"})
    assert response.headers.get_list("x-request-id") == ["from-app"]


async def test_lifespan_passes_through(make_runtime) -> None:
    events: list[str] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        assert scope["type"] == "lifespan"
        while True:
            message = await receive()
            events.append(message["type"])
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            else:
                await send({"type": "lifespan.shutdown.complete"})
                return

    incoming = iter([{"type": "lifespan.startup"}, {"type": "lifespan.shutdown"}])
    sent: list[str] = []

    async def receive() -> dict[str, Any]:
        return next(incoming)

    async def send(message: dict[str, Any]) -> None:
        sent.append(message["type"])

    runtime = make_runtime()
    await MeshMiddleware(app, runtime=runtime)({"type": "lifespan"}, receive, send)
    assert events == ["lifespan.startup", "lifespan.shutdown"]
    assert sent == ["lifespan.startup.complete", "lifespan.shutdown.complete"]
    assert runtime.draining  # the server is stopping: health says so


async def test_health_says_draining_after_shutdown_until_the_next_startup(make_runtime) -> None:
    runtime = make_runtime()
    mesh = MeshMiddleware(lambda scope, receive, send: None, runtime=runtime)

    async def lifespan(kind: str) -> None:
        messages = iter([{"type": f"lifespan.{kind}"}])

        async def app(scope: Any, receive: Any, send: Any) -> None:
            await receive()

        await MeshMiddleware(app, runtime=runtime)(
            {"type": "lifespan"}, lambda: _next(messages), _ignore
        )

    async with client_for(mesh) as client:
        assert (await client.get("/_mesh/health")).status_code == 200
        await lifespan("shutdown")
        health = await client.get("/_mesh/health")
        assert health.status_code == 503 and health.json()["status"] == "draining"
        await lifespan("startup")
        assert (await client.get("/_mesh/health")).json()["status"] == "ok"


async def _next(messages: Any) -> Any:
    return next(messages)


async def _ignore(message: Any) -> None:
    return None


async def test_websocket_scope_passes_through_untouched(make_runtime) -> None:
    calls: list[Any] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        calls.append((scope, receive, send, current_context()))

    scope = {"type": "websocket", "path": "/ws", "headers": []}

    async def receive() -> dict[str, Any]:
        return {"type": "websocket.connect"}

    async def send(message: dict[str, Any]) -> None:
        pass

    await MeshMiddleware(app, runtime=make_runtime())(scope, receive, send)
    assert calls == [(scope, receive, send, None)]


async def test_a_failing_request_leaves_no_reference_cycle(make_runtime) -> None:
    """An app error must not leave garbage for the cyclic collector (exception -> traceback ->
    the middleware's frame -> exception): under a stream of failing requests collecting it
    cost more than everything else the mesh does for them (bench_app_errors.py)."""

    async def app(scope: Any, receive: Any, send: Any) -> None:
        raise RuntimeError("boom")

    middleware = MeshMiddleware(app, runtime=make_runtime(service="web"))

    async def send(message: Any) -> None:
        pass

    async def fail_many(target: Any) -> int:
        gc.collect()
        gc.disable()
        try:
            for _ in range(20):
                with pytest.raises(RuntimeError):
                    await target(http_scope("/boom"), empty_body, send)
            return gc.collect()
        finally:
            gc.enable()

    with structlog.testing.capture_logs():
        await fail_many(middleware)  # warm-up: first-use caches
        bare, meshed = await fail_many(app), await fail_many(middleware)
    assert meshed == bare == 0


async def test_app_exception_is_reraised_unchanged_and_logged(make_runtime) -> None:
    raised: list[BaseException] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        error = ValueError("bad things")
        raised.append(error)
        raise error

    runtime = make_runtime(service="web")
    with structlog.testing.capture_logs() as logs:
        async with client_for(MeshMiddleware(app, runtime=runtime)) as client:
            with pytest.raises(ValueError, match="bad things") as caught:
                await client.get("/explode", headers={"x-request-id": "r-9"})
    assert caught.value is raised[0]
    [entry] = [e for e in logs if e["event"] == "app_error"]
    assert entry["log_level"] == "error"
    assert entry["request_id"] == "r-9"
    assert entry["path"] == "/explode"
    assert (entry["error_type"], entry["message"], entry["status"]) == (
        "ValueError",
        "bad things",
        500,
    )
    assert entry["trace_id"] and "exc_info" not in entry
    assert (
        runtime.metrics.registry.get_sample_value(
            "mesh_inbound_requests_total", {"service": "web", "method": "GET", "status": "500"}
        )
        == 1
    )


async def test_the_servers_traceback_starts_at_the_apps_frame(make_runtime) -> None:
    """The server prints the traceback of the re-raised error: the app's frames, all of them,
    and not the middleware's (it tells the reader nothing and costs the server time to format
    per failure, bench_app_errors.py)."""

    async def handler() -> None:
        raise RuntimeError("boom")

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await handler()

    middleware = MeshMiddleware(app, runtime=make_runtime(service="web"))

    async def send(message: Any) -> None:
        pass

    with structlog.testing.capture_logs(), pytest.raises(RuntimeError) as caught:
        await middleware(http_scope("/boom"), empty_body, send)
    names = [frame.name for frame in traceback.extract_tb(caught.value.__traceback__)]
    assert names[-2:] == ["app", "handler"], names
    assert "__call__" not in names, names


async def test_app_returning_without_a_response_counts_as_500(make_runtime) -> None:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        return None

    runtime = make_runtime(service="web")
    middleware = MeshMiddleware(app, runtime=runtime)
    sent: list[Any] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b""}

    async def send(message: Any) -> None:
        sent.append(message)

    scope = {"type": "http", "method": "GET", "path": "/", "headers": [], "client": None}
    await middleware(scope, receive, send)
    assert sent == []
    assert (
        runtime.metrics.registry.get_sample_value(
            "mesh_inbound_requests_total", {"service": "web", "method": "GET", "status": "500"}
        )
        == 1
    )


def test_two_middlewares_share_one_runtime_and_load_policy_once(monkeypatch) -> None:
    monkeypatch.setenv("MESH_SERVICE", "shared")
    monkeypatch.setenv("MESH_POLICY", '{"defaults": {"timeout": "2s"}}')
    loads: list[object] = []
    original = PolicyStore.from_settings.__func__  # type: ignore[attr-defined]

    def counting(cls: type[PolicyStore], settings: Any) -> PolicyStore:
        loads.append(settings)
        return original(cls, settings)

    monkeypatch.setattr(PolicyStore, "from_settings", classmethod(counting))
    first = MeshMiddleware(Recorder())
    second = MeshMiddleware(Recorder())
    wsgi = asgimesh.MeshWSGIMiddleware(lambda environ, start_response: [])
    assert first.runtime is second.runtime is wsgi.runtime is asgimesh.get_runtime()
    assert first.runtime.settings.service == "shared"
    assert first.runtime.snapshot.policy.defaults.timeout == 2.0
    assert len(loads) == 1


def test_bad_settings_stop_construction_with_one_clear_message(monkeypatch) -> None:
    monkeypatch.setenv("MESH_RETRIES", "lots")
    with pytest.raises(ConfigError) as caught:
        MeshMiddleware(Recorder())
    assert "MESH_RETRIES='lots'" in str(caught.value)
