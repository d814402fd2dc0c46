"""Each plugin installs once, wraps the right layer and shares the process's runtime."""

from __future__ import annotations

import httpx
import pytest
from fastapi import FastAPI
from flask import Flask

from asgimesh import MeshRuntime, MeshSettings, MeshWSGIMiddleware


def test_flask_extension_wraps_wsgi_app_once() -> None:
    from asgimesh_flask import Mesh

    app = Flask("svc")
    mesh = Mesh(app, runtime=MeshRuntime(MeshSettings(service="flasky")))
    assert isinstance(app.wsgi_app, MeshWSGIMiddleware)
    assert app.extensions["asgimesh"] is mesh
    with pytest.raises(RuntimeError, match="already installed"):
        Mesh(app)
    with httpx.Client(transport=httpx.WSGITransport(app=app), base_url="http://svc") as client:
        assert client.get("/_mesh/health").json()["service"] == "flasky"


def test_fastapi_install_refuses_twice_and_serves_admin_paths() -> None:
    from asgimesh_fastapi import install

    app = install(FastAPI(), runtime=MeshRuntime(MeshSettings(service="fast")))
    with pytest.raises(RuntimeError, match="already installed"):
        install(app)
    from starlette.testclient import TestClient

    with TestClient(app) as client:
        assert client.get("/_mesh/health").json()["service"] == "fast"
