"""A Flask service for ``gunicorn --preload``: /who says which worker answered, with which policy."""

import os

from asgimesh_flask import Mesh
from flask import Flask, jsonify

app = Flask(__name__)
mesh = Mesh(app)  # built in the gunicorn master under --preload, runtime and watcher included


@app.get("/who")
def who():  # type: ignore[no-untyped-def]
    runtime = app.wsgi_app.runtime  # type: ignore[attr-defined]
    return jsonify(pid=os.getpid(), policy_version=runtime.snapshot.version)
