"""``asgimesh.serverless.LambdaDeadline``: the invocation's remaining time becomes the request's
deadline, a caller's shorter one is kept, and nothing changes outside Lambda. The mesh itself
then bounds outbound calls by it (``tests/integrations/test_lambda.py`` drives that end to end
with a real upstream)."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from asgimesh import MeshMiddleware, MeshRuntime, MeshSettings, current_context
from asgimesh.serverless import LambdaDeadline

pytestmark = pytest.mark.anyio


class LambdaContext:
    """The one method of the Lambda runtime's context object that LambdaDeadline reads."""

    def __init__(self, remaining_ms: int) -> None:
        self.remaining_ms = remaining_ms

    def get_remaining_time_in_millis(self) -> int:
        return self.remaining_ms


class Recorder:
    def __init__(self) -> None:
        self.scopes: list[dict[str, Any]] = []

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        self.scopes.append(scope)
        if scope["type"] == "http":
            await send({"type": "http.response.start", "status": 204, "headers": []})
            await send({"type": "http.response.body", "body": b""})


async def call(app: Any, headers: list[tuple[bytes, bytes]], context: Any) -> None:
    scope: dict[str, Any] = {
        "type": "http",
        "method": "GET",
        "path": "/",
        "headers": headers,
    }
    if context is not None:
        scope["aws.context"] = context

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b""}

    async def send(message: Any) -> None:
        pass

    await app(scope, receive, send)


def deadlines(scope: dict[str, Any]) -> list[bytes]:
    return [value for name, value in scope["headers"] if name == b"mesh-deadline-ms"]


async def test_the_remaining_time_less_the_margin_is_the_deadline() -> None:
    inner = Recorder()
    await call(LambdaDeadline(inner), [(b"host", b"x")], LambdaContext(3000))
    assert deadlines(inner.scopes[0]) == [b"2750"]
    assert (b"host", b"x") in inner.scopes[0]["headers"]


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        ((b"mesh-deadline-ms", b"800"), b"800"),  # shorter than the invocation's: kept
        ((b"mesh-deadline-ms", b"90000"), b"1900"),  # longer: the invocation's wins
        ((b"grpc-timeout", b"500m"), b"500"),
        ((b"x-envoy-expected-rq-timeout-ms", b"700"), b"700"),
        ((b"mesh-deadline-ms", b"soon"), b"1900"),  # unparsable: as if absent
    ],
)
async def test_a_callers_shorter_deadline_is_kept(
    header: tuple[bytes, bytes], expected: bytes
) -> None:
    inner = Recorder()
    await call(LambdaDeadline(inner, margin=0.1), [header], LambdaContext(2000))
    assert deadlines(inner.scopes[0]) == [expected]


async def test_repeated_deadline_headers_become_one() -> None:
    inner = Recorder()
    headers = [(b"mesh-deadline-ms", b"60000"), (b"mesh-deadline-ms", b"1")]
    await call(LambdaDeadline(inner), headers, LambdaContext(5000))
    assert deadlines(inner.scopes[0]) == [b"4750"]  # the first, as the mesh reads it


async def test_an_invocation_almost_out_of_time_still_gets_a_positive_deadline() -> None:
    inner = Recorder()
    await call(LambdaDeadline(inner), [], LambdaContext(100))
    assert deadlines(inner.scopes[0]) == [b"1"]


async def test_outside_lambda_the_scope_is_passed_through_untouched() -> None:
    inner = Recorder()
    headers = [(b"mesh-deadline-ms", b"90000")]
    await call(LambdaDeadline(inner), headers, None)
    assert inner.scopes[0]["headers"] is headers


def test_a_bad_margin_is_refused_with_its_value() -> None:
    with pytest.raises(ValueError, match=r"LambdaDeadline margin: expected 0 to 60 seconds, got -1"):
        LambdaDeadline(Recorder(), margin=-1)


async def test_the_mesh_takes_it_as_the_requests_deadline() -> None:
    """Through MeshMiddleware, the request's context carries the deadline LambdaDeadline set."""
    seen: list[float | None] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        ctx = current_context()
        seen.append(ctx.remaining() if ctx is not None else None)
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    runtime = MeshRuntime(MeshSettings(service="frontend", timeout=30.0))
    try:
        wrapped = LambdaDeadline(MeshMiddleware(app, runtime=runtime))

        async def with_context(scope: Any, receive: Any, send: Any) -> None:
            scope["aws.context"] = LambdaContext(1500)  # what Mangum puts in the scope
            await wrapped(scope, receive, send)

        transport = httpx.ASGITransport(app=with_context)
        async with httpx.AsyncClient(transport=transport, base_url="http://frontend") as client:
            assert (await client.get("/")).status_code == 200
    finally:
        runtime.close()
    assert seen[0] is not None
    assert 0.5 < seen[0] <= 1.25
