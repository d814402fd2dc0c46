"""The WSGI half of ``bench_chain``: the same gateway → payments chain as Flask apps under
gunicorn (sync worker), with the same answers as :mod:`bench._chain_app`.

``CHAIN_MESH=1`` (and only then is asgimesh imported) wraps each app in
``MeshWSGIMiddleware`` and gives the gateway a ``MeshTransport``; ``CHAIN_PAYMENTS`` is where
the gateway calls (see ``_chain_app``).
"""

from __future__ import annotations

import os

import httpx
from flask import Flask, Response, request

_MESH = os.environ.get("CHAIN_MESH") == "1"


def _meshed(app: Flask) -> Flask:
    if _MESH:
        from asgimesh import MeshWSGIMiddleware

        app.wsgi_app = MeshWSGIMiddleware(app.wsgi_app)  # type: ignore[method-assign]
    return app


def payments() -> Flask:
    app = Flask("payments")

    @app.get("/pay/<path:rest>")
    def pay(rest: str) -> Response:
        headers = request.headers
        seen = {
            "paid": True,
            "path": request.path,
            "traceparent": headers.get("traceparent"),
            "in": headers.get("x-chain-in"),
            "out": headers.get("x-chain-out"),
        }
        return app.json.response(seen)

    return _meshed(app)


def gateway() -> Flask:
    app = Flask("gateway")
    target = os.environ["CHAIN_PAYMENTS"].rstrip("/")
    if _MESH:
        from asgimesh import MeshTransport

        client = httpx.Client(transport=MeshTransport())
    else:
        client = httpx.Client()

    @app.get("/<path:rest>")
    def checkout(rest: str) -> Response:
        answer = client.get(f"{target}/pay/{rest}")
        front = request.headers.get("x-chain-front", "-")
        return Response(
            answer.content,
            status=answer.status_code,
            mimetype="application/json",
            headers={"x-chain-front": front},
        )

    return _meshed(app)
