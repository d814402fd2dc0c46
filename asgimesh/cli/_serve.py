"""``asgimesh serve MODULE:APP``: run an app in the mesh, on uvicorn (ASGI) or gunicorn (WSGI).

The app is imported from the current directory (as ``uvicorn`` and ``gunicorn`` do) and wrapped
in the mesh once: an app that already carries it (``MeshMiddleware``, FastAPI with
``asgimesh_fastapi.install``, Flask with ``asgimesh_flask.Mesh``, ``MeshWSGIMiddleware``) is
served as it is. With ``MESH_MTLS`` ``permissive`` or ``strict`` it serves HTTPS with the
service's identity, asks callers for certificates (optional at the TLS layer: a caller without
one reaches the mesh's 401, not a broken handshake), verifies them against the trust bundle, and
hands the verified certificate to the middleware; rotations reach new handshakes without a
restart. It prints where it listens.
"""

from __future__ import annotations

import argparse
import os
import sys
import threading
from typing import Any

__all__ = ["carries_mesh", "register"]

#: How long ``serve`` waits for the first identity (from the control plane) before giving up.
IDENTITY_WAIT = 30.0


def register(commands: Any) -> None:
    serve = commands.add_parser(
        "serve", help="run an app with the mesh (HTTPS with mesh mTLS when MESH_MTLS is set)"
    )
    serve.add_argument("app", help="MODULE:APP, an ASGI application (WSGI with --wsgi)")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument("--wsgi", action="store_true", help="a WSGI app, served by gunicorn")
    serve.add_argument(
        "--workers", type=int, default=1, help="gunicorn worker processes (with --wsgi)"
    )
    serve.add_argument("--threads", type=int, default=4, help="threads per gunicorn worker")
    serve.add_argument(
        "--drain-delay",
        default="0s",
        help="on SIGTERM, keep serving this long with /_mesh/health answering 503 (draining), "
        "so load balancers stop sending before the port closes (default 0s; e.g. 5s behind "
        "a Kubernetes Service)",
    )
    serve.add_argument(
        "--grace",
        default="30s",
        help="then, how long requests in flight may take to finish (default 30s)",
    )
    serve.set_defaults(handler=serve_command)


def carries_mesh(app: Any) -> bool:
    """Whether ``app`` already has the mesh in front (so ``serve`` must not add it twice)."""
    from ..inbound import MeshMiddleware, MeshWSGIMiddleware

    if isinstance(app, MeshMiddleware | MeshWSGIMiddleware):
        return True
    if any(getattr(m, "cls", None) is MeshMiddleware for m in getattr(app, "user_middleware", ())):
        return True  # Starlette / FastAPI: app.add_middleware(MeshMiddleware)
    return isinstance(getattr(app, "wsgi_app", None), MeshWSGIMiddleware)  # Flask's Mesh(app)


def _import(target: str) -> Any:
    from uvicorn.importer import ImportFromStringError, import_from_string

    from .._errors import ConfigError

    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        return import_from_string(target)
    except ImportFromStringError as exc:
        raise ConfigError(f"asgimesh serve {target}: {exc}") from None


def _durations(args: argparse.Namespace) -> tuple[float, float]:
    from .._durations import parse_duration
    from .._errors import ConfigError

    found = []
    for option, text in (("--drain-delay", args.drain_delay), ("--grace", args.grace)):
        try:
            seconds = parse_duration(text)
        except ValueError as exc:
            raise ConfigError(f"asgimesh serve {option}: {exc}") from None
        if not 0 <= seconds <= 3600:
            raise ConfigError(
                f"asgimesh serve {option}: {text!r} is out of range; expected 0s to 1h"
            )
        found.append(seconds)
    return found[0], found[1]


def serve_command(args: argparse.Namespace) -> int:
    from .._logging import configure_logging
    from .._runtime import get_runtime

    args.drain_delay, args.grace = _durations(args)
    runtime = get_runtime()  # a bad setting stops here, with its one-line message
    configure_logging(runtime.settings.log_format)
    if args.wsgi:
        from ._serve_gunicorn import serve_wsgi

        return serve_wsgi(args, runtime)
    return _serve_asgi(args, runtime)


def _serve_asgi(args: argparse.Namespace, runtime: Any) -> int:
    import uvicorn

    from ..inbound import MeshMiddleware, uvicorn_protocol

    app = _import(args.app)
    if not carries_mesh(app):
        app = MeshMiddleware(app, runtime=runtime)
    options: dict[str, Any] = {}
    scheme = "http"
    if runtime.settings.mtls != "off":
        from uvicorn.protocols.http.h11_impl import H11Protocol

        context = _server_context(runtime)
        options["ssl_context_factory"] = lambda config, default: context
        options["http"] = uvicorn_protocol(H11Protocol)
        scheme = "https"
    config = uvicorn.Config(
        app,
        host=args.host,
        port=args.port,
        log_level="warning",
        lifespan="auto",
        timeout_graceful_shutdown=int(args.grace) or None,
        **options,
    )
    server = _draining_server(uvicorn, runtime, args.drain_delay)(config)
    _say_where(runtime, scheme, args.host, args.port)
    server.run()
    if runtime.reporter.state != "stopped":  # an app without a lifespan: say goodbye here
        runtime.stopped()
    return 0


def _draining_server(uvicorn: Any, runtime: Any, delay: float) -> Any:
    """A ``uvicorn.Server`` whose first stop signal starts draining: health answers 503 and
    requests are still served for ``delay`` seconds, then the usual graceful shutdown. A
    second signal stops at once."""

    class DrainingServer(uvicorn.Server):  # type: ignore[misc]
        def handle_exit(self, sig: int, frame: Any) -> None:
            if runtime.draining or delay <= 0:
                runtime.drain()
                super().handle_exit(sig, frame)
                return
            runtime.drain()
            timer = threading.Timer(delay, super().handle_exit, (sig, frame))
            timer.daemon = True
            timer.start()

    return DrainingServer


def _server_context(runtime: Any) -> Any:
    from .._errors import ConfigError
    from ..identity import server_context

    if runtime.identity.wait(IDENTITY_WAIT) is None:
        source = runtime.identity_source.name if runtime.identity_source else "none"
        raise ConfigError(
            f"MESH_MTLS={runtime.settings.mtls!r}: no identity after {IDENTITY_WAIT:.0f}s "
            f"(source: {source}); is the control plane reachable and MESH_TOKEN valid?"
        )
    return server_context(runtime.identity)


def _say_where(runtime: Any, scheme: str, host: str, port: int) -> None:
    svid = runtime.identity.current
    identity = f" as {svid.spiffe_id}" if svid is not None and scheme == "https" else ""
    mode = f" (MESH_MTLS={runtime.settings.mtls})" if scheme == "https" else ""
    print(f"asgimesh serve: {scheme}://{host}:{port}{identity}{mode}", flush=True)
