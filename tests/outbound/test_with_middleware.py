"""Both halves together: an app behind MeshMiddleware (or MeshWSGIMiddleware) calls a mesh
service through the transport, and the call carries the inbound request's trace, request id
and remaining deadline without the app passing anything."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest

from asgimesh import (
    AsyncMeshTransport,
    MeshMiddleware,
    MeshRuntime,
    MeshSettings,
    MeshTransport,
    MeshWSGIMiddleware,
)

TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT = "00f067aa0ba902b7"
INBOUND = {
    "traceparent": f"00-{TRACE}-{PARENT}-01",
    "tracestate": "vendor=x",
    "x-request-id": "inbound-7",
    "mesh-deadline-ms": "800",
}


def runtime(url: str) -> MeshRuntime:
    policy = {"services": {"pay": {"endpoints": [url]}}}
    return MeshRuntime(MeshSettings(service="shop", policy=json.dumps(policy)))


def check(seen: dict[str, str]) -> None:
    version, trace_id, span_id, flags = seen["traceparent"].split("-")
    assert version == "00" and trace_id == TRACE and span_id not in (PARENT, "0" * 16) and flags == "01"
    assert seen["x-request-id"] == "inbound-7" and seen["tracestate"] == "vendor=x"
    assert 0 < int(seen["mesh-deadline-ms"]) <= 800
    assert seen["mesh-attempt"] == "1"


@pytest.mark.anyio
async def test_asgi_app_calls_carry_the_inbound_context(fake_upstreams: Any) -> None:
    (url,) = fake_upstreams.get(1)
    rt = runtime(url)
    client = httpx.AsyncClient(transport=AsyncMeshTransport(runtime=rt))

    async def app(scope: Any, receive: Any, send: Any) -> None:
        seen = (await client.get("http://pay/charge")).json()["headers"]
        body = json.dumps(seen).encode()
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"application/json")]})
        await send({"type": "http.response.body", "body": body})

    inbound = httpx.AsyncClient(transport=httpx.ASGITransport(MeshMiddleware(app, runtime=rt)),
                                base_url="http://shop")
    async with client, inbound:
        response = await inbound.get("/buy", headers=INBOUND)
    assert response.status_code == 200
    check(response.json())


def test_wsgi_app_calls_carry_the_inbound_context(fake_upstreams: Any) -> None:
    (url,) = fake_upstreams.get(1)
    rt = runtime(url)
    client = httpx.Client(transport=MeshTransport(runtime=rt))

    def app(environ: Any, start_response: Any) -> list[bytes]:
        seen = client.get("http://pay/charge").json()["headers"]
        start_response("200 OK", [("content-type", "application/json")])
        return [json.dumps(seen).encode()]

    with client, httpx.Client(transport=httpx.WSGITransport(MeshWSGIMiddleware(app, runtime=rt)),
                              base_url="http://shop") as inbound:
        response = inbound.get("/buy", headers=INBOUND)
    assert response.status_code == 200
    check(response.json())
