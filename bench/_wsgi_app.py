"""A Flask app bare and behind ``MeshWSGIMiddleware``, answering as examples/hello_asgi does.

Used by bench_inbound.py under gunicorn: two apps (not one wrapped twice), so that the bare
one has no mesh at all.
"""

from __future__ import annotations

from flask import Flask

from asgimesh import MeshWSGIMiddleware


def _hello_app() -> Flask:
    app = Flask(__name__)

    @app.get("/")
    def hello() -> str:
        return "Hello, mesh!\n"

    return app


bare = _hello_app()
app = _hello_app()
app.wsgi_app = MeshWSGIMiddleware(app.wsgi_app)  # type: ignore[method-assign]

__all__ = ["app", "bare"]
