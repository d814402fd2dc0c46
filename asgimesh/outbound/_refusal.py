"""A call the mesh refuses, as a decision: the binding turns it into its httpx error.

The sans-I/O parts (the upstream's pick, the call's deadline and budget) cannot raise httpx's
errors: they do not know whether the client is an ``httpx`` or an ``httpx2`` one. They say *why*
(``kind``) and *what* (the message); :meth:`HttpBinding.error` picks the class.
"""

from __future__ import annotations

__all__ = ["Refusal"]


class Refusal(Exception):  # noqa: N818 - a decision, not an error: shells turn it into one
    """A call the mesh refuses before or between tries; the shell raises its httpx error."""

    def __init__(self, kind: str, message: str) -> None:
        #: ``no-endpoints``, ``circuit-open``, ``deadline``, ``per-try``, ``budget`` or
        #: ``plaintext`` (a plain ``http://`` endpoint under ``MESH_MTLS=strict``) or ``identity``
        #: (mTLS: the server is not the service meant, or this service has no certificate yet)
        #: or ``override`` (a per-request override that is not a valid value).
        self.kind = kind
        super().__init__(message)
