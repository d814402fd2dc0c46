"""The control-plane watcher against a scripted control plane on a loopback port.

The scripted server answers every ``GET /v1/policy`` at once with whatever the test put in
``ScriptedControlPlane.envelope``: what a forged, stale or confused control plane (or a man in
the middle) would send. The watcher under test gets only a policy store, as a runtime gives it.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from asgimesh import PolicyError
from asgimesh.identity import MeshCA, load_bundle
from asgimesh.policy import PolicyStore
from asgimesh.policy.sources import ControlPlaneSource, parse_source_url
from asgimesh.testing import serve_in_thread

from ..forged import signed, workload_signed

TD = "mesh.local"


@dataclass
class ScriptedControlPlane:
    ca: MeshCA
    envelope: dict[str, Any] | None = None
    requests: int = 0
    reports: list[dict[str, Any]] = field(default_factory=list)
    url: str = ""

    def app(self) -> Starlette:
        async def policy(request: Request) -> Response:
            self.requests += 1
            if self.envelope is None:
                return Response(status_code=404)
            return JSONResponse(self.envelope)

        async def bundle(request: Request) -> Response:
            return Response(self.ca.bundle_pem(), media_type="application/x-pem-file")

        async def report(request: Request) -> Response:
            self.reports.append(await request.json())
            return JSONResponse({"ok": True})

        return Starlette(
            routes=[
                Route("/v1/policy", policy),
                Route("/v1/trust-bundle", bundle),
                Route("/v1/reports", report, methods=["POST"]),
            ]
        )


@pytest.fixture(scope="module")
def ca() -> MeshCA:
    return MeshCA.create(TD)


@pytest.fixture
def scripted(ca: MeshCA) -> Iterator[ScriptedControlPlane]:
    plane = ScriptedControlPlane(ca)
    with serve_in_thread(plane.app()) as server:
        plane.url = f"http://127.0.0.1:{server.config.port}"
        yield plane


@pytest.fixture
def watcher(
    scripted: ScriptedControlPlane, ca: MeshCA
) -> Iterator[Callable[..., tuple[ControlPlaneSource, PolicyStore, list[PolicyError]]]]:
    started: list[ControlPlaneSource] = []

    def start(
        query: str = "", **kwargs: Any
    ) -> tuple[ControlPlaneSource, PolicyStore, list[PolicyError]]:
        store = PolicyStore([])
        refusals: list[PolicyError] = []
        store.on_failure(refusals.append)
        kwargs.setdefault("bundle", load_bundle(ca.bundle_pem()))
        source = ControlPlaneSource(
            parse_source_url(scripted.url + query), store, trust_domain=TD, **kwargs
        )
        started.append(source)
        source.load()
        source.start()
        return source, store, refusals

    yield start
    for source in started:
        source.close()


def _wait_for(condition: Callable[[], bool], timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.02)
    return condition()


def test_a_refused_envelope_claiming_a_huge_version_does_not_freeze_updates(
    scripted: ScriptedControlPlane, ca: MeshCA, watcher: Any
) -> None:
    """Issue 12.4: the watermark moves only after a version verifies and applies."""
    scripted.envelope = {"version": 10**15, "policy": {"defaults": {"timeout": "1ms"}}}
    source, store, refusals = watcher()
    assert _wait_for(lambda: len(refusals) >= 1)
    assert store.current.source is None and source.watermark == 0
    scripted.envelope = signed(ca, 2, {"defaults": {"timeout": "3s"}})
    assert _wait_for(lambda: store.current.version == 2, timeout=8.0)
    assert store.current.policy.defaults.timeout == 3.0 and source.watermark == 2


def test_a_server_answering_at_once_with_nothing_new_is_backed_off_from(
    scripted: ScriptedControlPlane, ca: MeshCA, watcher: Any
) -> None:
    scripted.envelope = signed(ca, 1, {"defaults": {"timeout": "2s"}})
    _, store, _ = watcher("?backoff_max=1s")
    assert _wait_for(lambda: store.current.version == 1)
    before = scripted.requests
    time.sleep(2.0)
    # Without backoff the watcher would ask hundreds of times in two seconds; with full jitter
    # capped at 1 s it asks a handful.
    assert 1 <= scripted.requests - before <= 15


def test_a_policy_signed_by_a_workload_certificate_is_refused_once(
    scripted: ScriptedControlPlane, ca: MeshCA, watcher: Any
) -> None:
    """Issue 12.1, end to end: a man in the middle serving a policy signed with a workload's
    certificate (which chains to the bundle) changes nothing, however often it is offered."""
    scripted.envelope = workload_signed(ca, f"spiffe://{TD}/ns/default/sa/payments")
    _, store, refusals = watcher("?backoff_max=0.2s")
    assert _wait_for(lambda: scripted.requests >= 4)
    assert store.current.source is None
    assert len(refusals) == 1
    assert "not the control plane's policy signer" in refusals[0].problems[0]


def test_trust_on_first_use_pins_the_bundle_and_applies(
    scripted: ScriptedControlPlane, ca: MeshCA, watcher: Any
) -> None:
    scripted.envelope = signed(ca, 4, {"defaults": {"timeout": "4s"}})
    _, store, refusals = watcher(bundle=None)
    assert _wait_for(lambda: store.current.version == 4)
    assert refusals == []
    other = MeshCA.create(TD)
    scripted.envelope = signed(other, 5, {"defaults": {"timeout": "5s"}})
    assert _wait_for(lambda: len(refusals) == 1)
    assert store.current.version == 4


def test_reports_carry_what_the_reporter_makes_and_the_version_in_force(
    scripted: ScriptedControlPlane, ca: MeshCA, watcher: Any
) -> None:
    scripted.envelope = signed(ca, 3, {"defaults": {"timeout": "2s"}})
    calls: list[int] = []
    lock = threading.Lock()

    def reporter(version: int) -> dict[str, Any]:
        with lock:
            calls.append(version)
        return {"service": "orders", "instance": "orders-1", "policy_version": version}

    watcher("?report=0.2s", token="service-token", reporter=reporter)
    assert _wait_for(lambda: len(scripted.reports) >= 2)
    assert scripted.reports[-1] == {
        "service": "orders",
        "instance": "orders-1",
        "policy_version": 3,
    }
