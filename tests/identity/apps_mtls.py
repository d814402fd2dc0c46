"""Apps that say who called them, for the mTLS tests: Starlette (bare: ``asgimesh serve`` wraps
it), FastAPI with the plugin installed (already wrapped) and Flask with the plugin (WSGI)."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from flask import Flask
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from asgimesh import current_context


def _who() -> dict[str, Any]:
    context = current_context()
    return {"caller": context.caller if context is not None else None}


async def whoami(request: Request) -> JSONResponse:
    return JSONResponse({**_who(), "scheme": request.url.scheme})


starlette_app = Starlette(routes=[Route("/whoami", whoami)])

fastapi_app = FastAPI()


@fastapi_app.get("/whoami")
async def fastapi_whoami() -> dict[str, Any]:
    return {**_who(), "scheme": "https"}


def _install_fastapi() -> None:
    from asgimesh_fastapi import install

    install(fastapi_app)


_install_fastapi()

flask_app = Flask(__name__)


@flask_app.get("/whoami")
def flask_whoami() -> dict[str, Any]:
    from flask import request

    return {**_who(), "scheme": request.scheme}


def _install_flask() -> None:
    from asgimesh_flask import Mesh

    Mesh(flask_app)


_install_flask()


# A service that calls another through the mesh: ``GET /call/<service>`` answers what the
# callee's ``/whoami`` said (status and body), or the mesh's error by class and message.
_relay_client: Any = None


async def call(request: Request) -> JSONResponse:
    import httpx

    from asgimesh import AsyncMeshTransport

    global _relay_client
    if _relay_client is None:
        _relay_client = httpx.AsyncClient(transport=AsyncMeshTransport())
    service = request.path_params["service"]
    try:
        answer = await _relay_client.get(f"http://{service}/whoami")
    except httpx.HTTPError as exc:
        return JSONResponse({"error": type(exc).__name__, "message": str(exc)}, status_code=502)
    return JSONResponse({"status": answer.status_code, "body": answer.json()})


relay_app = Starlette(routes=[Route("/whoami", whoami), Route("/call/{service}", call)])
