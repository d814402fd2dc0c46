"""A service for the tests: plain ASGI on the process's mesh runtime, answering with the policy
it holds. (No MeshMiddleware: the inbound half is tested on its own.)"""

import json

from asgimesh import get_runtime

runtime = get_runtime()


async def app(scope, receive, send):  # type: ignore[no-untyped-def]
    if scope["type"] == "lifespan":
        while (await receive())["type"] != "lifespan.shutdown":
            await send({"type": "lifespan.startup.complete"})
        await send({"type": "lifespan.shutdown.complete"})
        return
    runtime.on_request()
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
