"""The same small service in Flask: /whoami shows the mesh context, /call calls upstream "echo"."""

from asgimesh_flask import Mesh, current_context
from flask import Flask, jsonify

app = Flask(__name__)
mesh = Mesh(app)


@app.get("/whoami")
def whoami():  # type: ignore[no-untyped-def]
    ctx = current_context()
    assert ctx is not None
    return jsonify(
        request_id=ctx.request_id, trace_id=ctx.trace_id, has_deadline=ctx.deadline is not None
    )


@app.get("/call")
def call():  # type: ignore[no-untyped-def]
    return jsonify(mesh.client.get("http://echo/echo").json())
