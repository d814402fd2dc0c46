"""``MeshWSGIMiddleware`` as a WSGI citizen: lazy bodies, close(), start_response, errors."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from asgimesh import MeshWSGIMiddleware, current_context


def environ(path: str = "/", **headers: str) -> dict[str, Any]:
    env: dict[str, Any] = {
        "REQUEST_METHOD": "GET",
        "PATH_INFO": path,
        "QUERY_STRING": "",
        "SERVER_NAME": "mesh.test",
        "SERVER_PORT": "80",
        "SERVER_PROTOCOL": "HTTP/1.1",
        "REMOTE_ADDR": "127.0.0.1",
        "wsgi.url_scheme": "http",
    }
    env.update({"HTTP_" + k.upper(): v for k, v in headers.items()})
    return env


class Started:
    def __init__(self) -> None:
        self.calls: list[tuple[str, list[tuple[str, str]], Any]] = []

    def __call__(self, status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
        self.calls.append((status, headers, exc_info))
        return lambda data: None


class Body:
    """A response iterable that notes what was produced and whether it was closed."""

    def __init__(self, chunks: list[bytes]) -> None:
        self.chunks = chunks
        self.produced: list[bytes] = []
        self.contexts: list[Any] = []
        self.closed = False

    def __iter__(self) -> Iterator[bytes]:
        for chunk in self.chunks:
            self.contexts.append(current_context())
            self.produced.append(chunk)
            yield chunk

    def close(self) -> None:
        self.closed = True


def counted(runtime: Any, status: str, method: str = "GET") -> float:
    return (
        runtime.metrics.registry.get_sample_value(
            "mesh_inbound_requests_total",
            {"service": runtime.settings.service, "method": method, "status": status},
        )
        or 0.0
    )


def test_body_is_passed_lazily_and_closed_and_counted_when_done(make_runtime) -> None:
    runtime = make_runtime()
    body = Body([b"one", b"two"])

    def app(env: Any, start_response: Any) -> Body:
        start_response("200 OK", [("content-type", "text/plain")])
        return body

    start = Started()
    result = MeshWSGIMiddleware(app, runtime=runtime)(environ(X_REQUEST_ID="lazy-1"), start)
    assert body.produced == []  # nothing read yet
    assert counted(runtime, "200") == 0  # not finished yet
    iterator = iter(result)
    assert next(iterator) == b"one"
    assert body.produced == [b"one"]
    assert list(iterator) == [b"two"]
    assert counted(runtime, "200") == 1
    result.close()  # type: ignore[attr-defined]
    assert body.closed
    assert counted(runtime, "200") == 1  # once only
    # the context is current while each chunk is produced, and not after
    assert [c.request_id for c in body.contexts] == ["lazy-1", "lazy-1"]
    assert current_context() is None
    assert start.calls[0][1][-1] == ("x-request-id", "lazy-1")


def test_close_without_iterating_still_counts_and_closes(make_runtime) -> None:
    runtime = make_runtime()
    body = Body([b"never"])

    def app(env: Any, start_response: Any) -> Body:
        start_response("206 Partial Content", [])
        return body

    result = MeshWSGIMiddleware(app, runtime=runtime)(environ(), Started())
    result.close()  # type: ignore[attr-defined]
    assert body.closed
    assert body.produced == []
    assert counted(runtime, "206") == 1


def test_expired_deadline_never_calls_the_app(make_runtime) -> None:
    calls: list[Any] = []

    def app(env: Any, start_response: Any) -> list[bytes]:
        calls.append(env)
        start_response("200 OK", [])
        return [b""]

    start = Started()
    result = MeshWSGIMiddleware(app, runtime=make_runtime())(environ(MESH_DEADLINE_MS="0"), start)
    assert calls == []
    assert start.calls[0][0] == "504 Gateway Timeout"
    assert b"deadline_exceeded" in b"".join(result)


def test_non_ascii_digits_in_deadline_are_ignored(make_runtime) -> None:
    def app(env: Any, start_response: Any) -> list[bytes]:
        context = current_context()
        start_response("200 OK", [])
        return [repr(context.deadline if context else "no context").encode()]

    start = Started()
    body = MeshWSGIMiddleware(app, runtime=make_runtime())(
        environ(MESH_DEADLINE_MS="\xb2", GRPC_TIMEOUT="\xb9S"), start
    )
    assert start.calls[0][0] == "200 OK"
    assert b"".join(body) == b"None"


def test_error_while_streaming_is_counted_500_and_reraised(make_runtime) -> None:
    runtime = make_runtime()

    def broken() -> Iterator[bytes]:
        yield b"first"
        raise OSError("disk gone")

    def app(env: Any, start_response: Any) -> Iterator[bytes]:
        start_response("200 OK", [])
        return broken()

    result = iter(MeshWSGIMiddleware(app, runtime=runtime)(environ(), Started()))
    assert next(result) == b"first"
    with pytest.raises(OSError, match="disk gone"):
        next(result)
    assert counted(runtime, "500") == 1
    assert counted(runtime, "200") == 0


def test_app_exception_is_reraised_unchanged(make_runtime) -> None:
    runtime = make_runtime()
    error = KeyError("missing")

    def app(env: Any, start_response: Any) -> list[bytes]:
        raise error

    with pytest.raises(KeyError) as caught:
        MeshWSGIMiddleware(app, runtime=runtime)(environ(), Started())
    assert caught.value is error
    assert counted(runtime, "500") == 1
    assert current_context() is None


def test_exc_info_reaches_the_server(make_runtime) -> None:
    def app(env: Any, start_response: Any) -> list[bytes]:
        try:
            raise RuntimeError("late failure")
        except RuntimeError:
            start_response("500 Internal Server Error", [], sys.exc_info())
        return [b"failed"]

    start = Started()
    runtime = make_runtime()
    result = MeshWSGIMiddleware(app, runtime=runtime)(environ(), start)
    assert b"".join(result) == b"failed"
    assert start.calls[0][2][0] is RuntimeError
    assert counted(runtime, "500") == 1


def test_request_id_set_by_the_app_is_not_doubled(make_runtime) -> None:
    def app(env: Any, start_response: Any) -> list[bytes]:
        start_response("200 OK", [("X-Request-Id", "from-app")])
        return [b""]

    start = Started()
    MeshWSGIMiddleware(app, runtime=make_runtime())(environ(X_REQUEST_ID="caller"), start)
    assert start.calls[0][1] == [("X-Request-Id", "from-app")]


def test_context_is_current_while_a_streamed_body_is_produced(make_runtime) -> None:
    from . import apps_wsgi

    app = MeshWSGIMiddleware(apps_wsgi.bare, runtime=make_runtime())
    with httpx.Client(transport=httpx.WSGITransport(app=app), base_url="http://t") as client:
        response = client.get("/context-in-body", headers={"x-request-id": "streamed-7"})
    assert response.text == "streamed-7\nstreamed-7\n"


def test_flask_example(monkeypatch) -> None:
    monkeypatch.setenv("MESH_SERVICE", "hello")
    import importlib

    from examples import hello_wsgi

    importlib.reload(hello_wsgi)  # built under this test's environment
    transport = httpx.WSGITransport(app=hello_wsgi.app)
    with httpx.Client(transport=transport, base_url="http://t") as client:
        hello = client.get("/", headers={"traceparent": "00-" + "ab" * 16 + "-" + "cd" * 8 + "-01"})
        missing = client.get("/missing")
        health = client.get("/_mesh/health")
    assert hello.status_code == 200
    assert hello.text == f"Hello, mesh! (trace {'ab' * 16})\n"
    assert len(hello.headers["x-request-id"]) == 32
    assert missing.status_code == 404
    assert "x-request-id" in missing.headers
    assert health.json()["service"] == "hello"
