"""Hello, mesh: a Flask app behind ``MeshWSGIMiddleware``.

gunicorn examples.hello_wsgi:app --bind 127.0.0.1:8000
curl -i localhost:8000/            # x-request-id comes back
curl localhost:8000/_mesh/health   # {"status": "ok", ...}
"""

from __future__ import annotations

from flask import Flask

from asgimesh import MeshWSGIMiddleware, current_context

app = Flask(__name__)


@app.get("/")
def hello() -> str:
    context = current_context()
    trace = context.trace_id if context else "none"
    return f"Hello, mesh! (trace {trace})\n"


# Below Flask, so 404s and errors cross the mesh too.
app.wsgi_app = MeshWSGIMiddleware(app.wsgi_app)  # type: ignore[method-assign]
