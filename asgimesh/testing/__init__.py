"""Helpers for testing services that use asgimesh, as httpx ships ``MockTransport``.

* :class:`FakeUpstream`: an ASGI upstream to make fail, hang, reset or slow down, under uvicorn.
* :func:`control_plane`: a real control plane on a loopback port with a throwaway store and CA.
* :class:`ThrowawayCA`: X.509-SVIDs for any SPIFFE ID, good or deliberately bad, as files.
"""

from ._ca import IssuedSVID, SVIDFiles, ThrowawayCA
from ._controlplane import ControlPlaneHandle, control_plane, serve_in_thread
from ._upstream import Behaviour, FakeUpstream, parse_behaviour, upstream_from_env

__all__ = [
    "Behaviour",
    "ControlPlaneHandle",
    "FakeUpstream",
    "IssuedSVID",
    "SVIDFiles",
    "ThrowawayCA",
    "control_plane",
    "parse_behaviour",
    "serve_in_thread",
    "upstream_from_env",
]
