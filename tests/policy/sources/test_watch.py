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
from structlog.testing import capture_logs

from asgimesh import PolicyError
from asgimesh.identity import MeshCA, load_bundle
from asgimesh.policy import PolicyStore
from asgimesh.policy.sources import ControlPlaneSource, parse_source_url
from asgimesh.testing import serve_in_thread

from ..forged import legacy_signed, signed, workload_signed

TD = "mesh.local"
DAY = 86400.0


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


class Applied:
    """The snapshots a store made current, in order (its success listener)."""

    def __init__(self, store: PolicyStore) -> None:
        self.versions: list[int] = []
        store.subscribe(lambda snapshot: self.versions.append(snapshot.version))


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


def test_a_signed_but_invalid_version_claiming_a_huge_number_does_not_freeze_updates(
    scripted: ScriptedControlPlane, ca: MeshCA, watcher: Any
) -> None:
    """Genuinely signed, refused by validation: the watermark stays where it was too."""
    scripted.envelope = signed(ca, 10**6, {"defaults": {"timeout": "fast"}})
    source, store, refusals = watcher("?backoff_max=0.2s")
    assert _wait_for(lambda: len(refusals) >= 1)
    assert refusals[0].problems[0].startswith("defaults.timeout")
    assert store.current.source is None and source.watermark == 0
    scripted.envelope = signed(ca, 2, {"defaults": {"timeout": "3s"}})
    assert _wait_for(lambda: store.current.version == 2, timeout=8.0)
    assert source.watermark == 2 and len(refusals) == 1


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


# -- replays (issue 12.4) --------------------------------------------------------------------


def test_a_version_older_than_the_one_applied_is_never_applied(
    scripted: ScriptedControlPlane, ca: MeshCA, watcher: Any
) -> None:
    """A man in the middle replaying a genuine, recent but superseded version changes nothing."""
    scripted.envelope = signed(ca, 5, {"defaults": {"timeout": "5s"}})
    source, store, refusals = watcher("?backoff_max=0.2s")
    assert _wait_for(lambda: store.current.version == 5)
    applied = Applied(store)
    scripted.envelope = signed(ca, 3, {"defaults": {"timeout": "60s"}})
    served = scripted.requests
    assert _wait_for(lambda: scripted.requests >= served + 3)
    assert store.current.version == 5 and store.current.policy.defaults.timeout == 5.0
    assert applied.versions == [] and source.watermark == 5 and refusals == []


def test_a_fresh_service_refuses_an_old_genuine_envelope_and_keeps_its_policy(
    scripted: ScriptedControlPlane, ca: MeshCA, watcher: Any
) -> None:
    scripted.envelope = signed(ca, 2, {"defaults": {"timeout": "9s"}}, at=time.time() - 2 * DAY)
    source, store, refusals = watcher("?backoff_max=0.2s", max_age=DAY)
    assert _wait_for(lambda: scripted.requests >= 4)
    assert store.current.source is None and source.watermark == 0
    assert len(refusals) == 1, "offered again and again, refused (and logged) once"
    (problem,) = refusals[0].problems
    assert problem.startswith("signature: version 2 was signed at ")
    assert "1d 23h 59m" in problem or "2d ago" in problem
    assert "older than the policy max age of 1d" in problem


def test_the_same_version_re_signed_is_accepted_by_a_fresh_service(
    scripted: ScriptedControlPlane, ca: MeshCA, watcher: Any
) -> None:
    """The control plane re-signs its current version: a fresh copy of a document stored long
    ago is current, and applies."""
    policy = {"defaults": {"timeout": "9s"}}
    scripted.envelope = signed(ca, 2, policy, at=time.time() - 2 * DAY)
    _, store, refusals = watcher("?backoff_max=0.2s", max_age=DAY)
    assert _wait_for(lambda: len(refusals) == 1)
    scripted.envelope = signed(ca, 2, policy)
    assert _wait_for(lambda: store.current.version == 2)
    assert store.current.policy.defaults.timeout == 9.0 and len(refusals) == 1


def test_a_re_signed_copy_of_the_version_in_force_changes_nothing(
    scripted: ScriptedControlPlane, ca: MeshCA, watcher: Any
) -> None:
    policy = {"defaults": {"timeout": "4s"}}
    scripted.envelope = signed(ca, 4, policy, at=time.time() - 3600)
    _, store, refusals = watcher("?backoff_max=0.2s", max_age=DAY)
    assert _wait_for(lambda: store.current.version == 4)
    in_force = store.current
    applied = Applied(store)
    scripted.envelope = signed(ca, 4, policy)
    served = scripted.requests
    assert _wait_for(lambda: scripted.requests >= served + 3)
    assert store.current is in_force and applied.versions == [] and refusals == []


def test_a_signing_time_ahead_of_the_clock_by_more_than_the_skew_is_refused(
    scripted: ScriptedControlPlane, ca: MeshCA, watcher: Any
) -> None:
    now = 1_800_000_000.0
    scripted.envelope = signed(ca, 2, {"defaults": {"timeout": "2s"}}, at=now + 3600)
    _, store, refusals = watcher(max_age=DAY, clock=lambda: now)
    assert _wait_for(lambda: len(refusals) == 1)
    assert "1h in the future" in refusals[0].problems[0] and store.current.source is None


def test_an_envelope_of_an_earlier_control_plane_is_refused_while_a_max_age_is_set(
    scripted: ScriptedControlPlane, ca: MeshCA, watcher: Any
) -> None:
    scripted.envelope = legacy_signed(ca, 2, {"defaults": {"timeout": "2s"}})
    _, store, refusals = watcher()  # the default max age
    assert _wait_for(lambda: len(refusals) == 1)
    assert "carries no signing time" in refusals[0].problems[0]
    assert "MESH_POLICY_MAX_AGE=0" in refusals[0].problems[0]
    assert store.current.source is None


def test_without_a_max_age_an_untimed_envelope_applies_with_one_warning(
    scripted: ScriptedControlPlane, ca: MeshCA, watcher: Any
) -> None:
    scripted.envelope = legacy_signed(ca, 2, {"defaults": {"timeout": "2s"}})
    with capture_logs() as logs:
        _, store, refusals = watcher("?backoff_max=0.2s", max_age=None)
        assert _wait_for(lambda: store.current.version == 2)
        scripted.envelope = legacy_signed(ca, 3, {"defaults": {"timeout": "3s"}})
        assert _wait_for(lambda: store.current.version == 3)
    warnings = [e for e in logs if e["event"] == "policy_signing_time_missing"]
    assert len(warnings) == 1 and warnings[0]["version"] == 2 and refusals == []
