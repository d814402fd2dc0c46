"""``asgimesh serve --wsgi``: a WSGI app on gunicorn (threaded workers), in the mesh.

gunicorn forks its workers, and threads do not survive a fork, so each worker builds its own
runtime (policy watcher, identity renewal) when it loads the app, as a worker started by hand
would; the master only checks the settings and, with ``MESH_MTLS``, that an identity can be had.
Each worker's TLS context comes from its own identity store, so rotations reach its new
handshakes; the client certificate gunicorn verified reaches the middleware through
:class:`~asgimesh.inbound.WSGIPeerChain`.
"""

from __future__ import annotations

import argparse
import math
import ssl
import tempfile
from typing import Any

from gunicorn.app.base import BaseApplication

__all__ = ["serve_wsgi"]


class _MeshApplication(BaseApplication):  # type: ignore[misc]
    def __init__(self, target: str, options: dict[str, Any]) -> None:
        self._target = target
        self._options = options
        super().__init__()

    def load_config(self) -> None:
        for key, value in self._options.items():
            self.cfg.set(key, value)

    def load(self) -> Any:
        from .. import _runtime
        from ..inbound import MeshWSGIMiddleware, WSGIPeerChain
        from ._serve import _import, carries_mesh

        _runtime.set_runtime(None)  # the master's runtime has no threads in this worker
        app = _import(self._target)
        if not carries_mesh(app):
            app = MeshWSGIMiddleware(app)
        return WSGIPeerChain(app)


_contexts: dict[str, ssl.SSLContext] = {}


def _worker_context(config: Any, default_factory: Any) -> ssl.SSLContext:
    """gunicorn's ``ssl_context`` hook, called in the worker for each new connection: the
    worker's one server context, which follows its identity store."""
    context = _contexts.get("server")
    if context is None:
        from .._runtime import get_runtime
        from ._serve import _server_context

        context = _contexts["server"] = _server_context(get_runtime())
    return context


def serve_wsgi(args: argparse.Namespace, runtime: Any) -> int:
    from ._serve import _say_where, _server_context

    options: dict[str, Any] = {
        "bind": f"{args.host}:{args.port}",
        "workers": args.workers,
        "threads": args.threads,
        "worker_class": "gthread",
        "loglevel": "warning",
        "accesslog": None,
        # On SIGTERM gunicorn stops accepting and lets requests in flight finish this long.
        "graceful_timeout": math.ceil(args.grace),
    }
    scheme = "http"
    if runtime.settings.mtls != "off":
        _server_context(runtime)  # an identity can be had: say so now, not in each worker
        # gunicorn turns TLS on when a certificate file is set; the context itself comes from
        # the ssl_context hook, so this file only has to exist.
        placeholder = tempfile.NamedTemporaryFile(prefix="asgimesh-", suffix=".pem")  # noqa: SIM115
        options.update(
            certfile=placeholder.name,
            cert_reqs=ssl.CERT_OPTIONAL,
            ssl_context=_worker_context,
            do_handshake_on_connect=True,
        )
        scheme = "https"
    runtime.close()  # the workers make their own
    _say_where(runtime, scheme, args.host, args.port)
    _MeshApplication(args.app, options).run()
    return 0
