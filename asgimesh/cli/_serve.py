"""``asgimesh serve MODULE:APP``: run an ASGI app on uvicorn, wrapped in the mesh."""

from __future__ import annotations

import argparse
from typing import Any

__all__ = ["register"]


def register(commands: Any) -> None:
    serve = commands.add_parser("serve", help="run an ASGI app on uvicorn with the mesh")
    serve.add_argument("app", help="MODULE:APP, an ASGI application")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument("--no-wrap", action="store_true", help="the app already has MeshMiddleware")
    serve.set_defaults(handler=serve_command)


def serve_command(args: argparse.Namespace) -> int:
    import uvicorn

    from .._logging import configure_logging
    from ..inbound import MeshMiddleware

    configure_logging()
    target: Any = args.app
    if not args.no_wrap:
        target = MeshMiddleware(uvicorn.importer.import_from_string(args.app))
    uvicorn.run(target, host=args.host, port=args.port, log_level="warning", lifespan="auto")
    return 0
