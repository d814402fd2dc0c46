"""The shop's frontend as an AWS Lambda function: the same FastAPI app, behind Mangum.

Mangum turns an API Gateway (REST or HTTP API) or ALB event into one ASGI request and the app's
answer back into the response the event source expects; the mesh is already in the app
(``asgimesh_fastapi.install``), so every event gets trace context, a request id, a deadline,
metrics and ``/_mesh/health`` exactly as under uvicorn.

Lambda handler setting: ``lambda_handler.handler``. Environment, for example::

    MESH_SERVICE=frontend
    MESH_UPSTREAMS=orders=https://orders.internal.example
    MESH_CONFIG=https://mesh-cp.internal.example:7070?refresh=30s   # serverless mode
    MESH_TOKEN=...                                                  # from a secret store

``?refresh=30s`` is serverless mode: no watcher thread (a frozen sandbox would leave it
half-way through a long poll); instead, at most every 30 s, a request starts a refresh of the
policy (and of the identity, and a report) on a short-lived helper and is answered without
waiting for it. The policy is loaded once, at import, which is Lambda's init phase.

``LambdaDeadline``: each event's deadline is at most the time the invocation has left (less a
quarter second), so a slow upstream ends as the mesh's ``DeadlineExceeded`` and the frontend's
502 naming it, in time, rather than as Lambda stopping the function mid-call.

``lifespan="off"``: Mangum would otherwise run the app's start-up and shut-down around every
event, closing the mesh's ``httpx.AsyncClient`` (and its pooled connections) each time; a warm
sandbox keeps the client and its connections from one event to the next instead.
"""

from __future__ import annotations

from frontend import app
from mangum import Mangum

from asgimesh.serverless import LambdaDeadline

handler = Mangum(LambdaDeadline(app), lifespan="off")
