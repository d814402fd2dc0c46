"""One TLS context per process for the control-plane and etcd clients.

httpx builds a new context, loading the whole CA store (about 0.1 s of CPU), for every client
made without one. The watcher makes a client per connection cycle and serverless mode one per
refresh, so they share this one instead.
"""

from __future__ import annotations

import functools
import ssl

import httpx

__all__ = ["tls_context"]


@functools.cache
def tls_context() -> ssl.SSLContext:
    return httpx.create_ssl_context()
