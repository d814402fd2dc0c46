"""A service for the tests: an ASGI app behind MeshMiddleware, answering with the policy its
runtime holds (so serverless refreshes come from the middleware, as in production)."""

import json

from asgimesh import MeshMiddleware, get_runtime

runtime = get_runtime()


async def inner(scope, receive, send):  # type: ignore[no-untyped-def]
    if scope["type"] == "lifespan":
        while (await receive())["type"] != "lifespan.shutdown":
            await send({"type": "lifespan.startup.complete"})
        await send({"type": "lifespan.shutdown.complete"})
        return
    snapshot = runtime.policy.current
    body = json.dumps(
        {
            "version": snapshot.version,
            "source": snapshot.source,
            "timeout": snapshot.policy.defaults.timeout,
        }
    ).encode()
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [(b"content-type", b"application/json")],
        }
    )
    await send({"type": "http.response.body", "body": body})


app = MeshMiddleware(inner, runtime=runtime)
