"""``asgimesh serve --wsgi``: a WSGI app on gunicorn (threaded workers), in the mesh.

gunicorn forks its workers, and threads do not survive a fork, so each worker builds its own
runtime (policy watcher, identity renewal) when it loads the app, as a worker started by hand
would; the master only checks the settings and, with ``MESH_MTLS``, that an identity can be had.
Each worker's TLS context comes from its own identity store, so rotations reach its new
handshakes; the client certificate gunicorn verified reaches the middleware through
:class:`~asgimesh.inbound.WSGIPeerChain`.

Draining: gunicorn's master stops accepting the moment it gets SIGTERM. With ``--drain-delay``
its first SIGTERM instead raises a flag in memory shared with the workers (made before they
fork); each worker's next request sees it and starts draining (``/_mesh/health`` answers 503,
requests are still served), and after the delay the master stops as gunicorn does, letting
requests in flight finish within ``--grace``. A second SIGTERM stops at once. As each worker
exits, its last report tells the control plane it is gone.
"""

from __future__ import annotations

import argparse
import math
import multiprocessing
import ssl
import tempfile
import time
from typing import Any

from gunicorn.app.base import BaseApplication
from gunicorn.arbiter import Arbiter

__all__ = ["serve_wsgi"]


class _DrainingArbiter(Arbiter):  # type: ignore[misc]
    """gunicorn's master, whose first SIGTERM starts ``delay`` seconds of draining."""

    def __init__(self, app: Any, delay: float, flag: Any) -> None:
        super().__init__(app)
        self._delay = delay
        self._flag = flag
        self._drain_until: float | None = None

    def handle_term(self) -> None:
        if self._drain_until is not None or self._delay <= 0:
            raise StopIteration  # gunicorn's own: stop accepting, finish what is in flight
        self._flag.value = 1
        self._drain_until = time.monotonic() + self._delay
        self.log.info("Draining for %gs (health answers 503), then stopping", self._delay)

    def murder_workers(self) -> None:
        """Called once a second by the master's loop: where the drain ends."""
        if self._drain_until is not None and time.monotonic() >= self._drain_until:
            raise StopIteration
        super().murder_workers()


class _DrainWatch:
    """The worker's WSGI app: the first request after the master raised the drain flag
    starts this worker's draining. One read of shared memory per request."""

    def __init__(self, app: Any, flag: Any) -> None:
        self._app = app
        self._flag = flag
        self._seen = False

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Any:
        if self._flag.value and not self._seen:
            from .._runtime import get_runtime

            self._seen = True
            get_runtime().drain()
        return self._app(environ, start_response)


def _worker_exit(server: Any, worker: Any) -> None:
    """gunicorn's ``worker_exit`` hook, in the worker: its runtime's last report."""
    from .. import _runtime

    runtime = _runtime._runtime
    if runtime is not None:
        runtime.stopped()


class _MeshApplication(BaseApplication):  # type: ignore[misc]
    def __init__(
        self, target: str, options: dict[str, Any], drain_delay: float = 0.0
    ) -> None:
        self._target = target
        self._options = options
        self._drain_delay = drain_delay
        #: Raised by the master on SIGTERM (``--drain-delay``); read by every worker.
        self._draining = multiprocessing.RawValue("b", 0)
        super().__init__()

    def run(self) -> None:
        try:
            _DrainingArbiter(self, self._drain_delay, self._draining).run()
        except RuntimeError as exc:  # as gunicorn's own BaseApplication.run
            raise SystemExit(f"asgimesh serve: gunicorn: {exc}") from None

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
        return _DrainWatch(WSGIPeerChain(app), self._draining)


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
        "worker_exit": _worker_exit,
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
    _MeshApplication(args.app, options, args.drain_delay).run()
    return 0
