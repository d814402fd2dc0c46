"""The same small service in FastAPI."""

from asgimesh_fastapi import MeshClient, MeshContextDep, install
from fastapi import FastAPI

app = install(FastAPI())


@app.get("/whoami")
async def whoami(ctx: MeshContextDep) -> dict[str, object]:
    assert ctx is not None
    return {
        "request_id": ctx.request_id,
        "trace_id": ctx.trace_id,
        "has_deadline": ctx.deadline is not None,
    }


@app.get("/call")
async def call(client: MeshClient) -> dict[str, object]:
    return (await client.get("http://echo/echo")).json()  # type: ignore[no-any-return]
