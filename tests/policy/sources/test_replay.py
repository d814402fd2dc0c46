"""Issue 12.4, end to end: a real control plane, a man in the middle on a loopback port that
replays an envelope it captured from it, and fresh services (runtimes built from ``MESH_*``
settings, as a deployed service builds its own) watching through it.

The max age is a few seconds here so that an envelope can grow old during the test; the
control plane re-signs every 0.2 s, so its current envelope never does.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from structlog.testing import capture_logs

from asgimesh import MeshRuntime, MeshSettings
from asgimesh.testing import ControlPlaneHandle, control_plane, serve_in_thread

MAX_AGE = 5.0
#: Version 1: anyone may call payments. Version 2 (current): only orders may.
PERMISSIVE = {"inbound": {"payments": {"authorization": [{"allow": {}}]}}}
STRICT = {
    "inbound": {
        "payments": {
            "authorization": [{"allow": {"from": ["spiffe://mesh.local/ns/default/sa/orders"]}}]
        }
    }
}


class ManInTheMiddle:
    """Answers every ``GET /v1/policy`` with :attr:`envelope`, whatever was asked."""

    def __init__(self, envelope: dict[str, Any]) -> None:
        self.envelope = envelope
        self.requests = 0

    def app(self) -> Starlette:
        async def policy(request: Request) -> Response:
            self.requests += 1
            return JSONResponse(self.envelope)

        return Starlette(routes=[Route("/v1/policy", policy)])


@pytest.fixture
def cp() -> Iterator[ControlPlaneHandle]:
    with control_plane(resign_every=0.2) as handle:
        yield handle


def _wait_for(condition: Callable[[], bool], timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.05)
    return condition()


def _fresh_service(url: str, bundle: Path) -> MeshRuntime:
    return MeshRuntime(
        MeshSettings(
            service="payments",
            config=url + "?backoff_max=0.3s",
            ca=bundle,
            policy_max_age=MAX_AGE,
        )
    )


def _failures(runtime: MeshRuntime) -> float:
    counter = runtime.metrics.policy_reloads.labels(runtime.settings.service, "failure")
    return float(counter._value.get())


def test_an_old_envelope_replayed_to_a_fresh_service_is_refused_and_a_re_signed_one_applies(
    cp: ControlPlaneHandle, tmp_path: Path
) -> None:
    put = httpx.put(cp.url + "/v1/policy", json=PERMISSIVE, headers=cp.admin_headers)
    assert put.json() == {"version": 1}
    captured = httpx.get(cp.url + "/v1/policy").json()
    assert httpx.put(cp.url + "/v1/policy", json=STRICT, headers=cp.admin_headers).json() == {
        "version": 2
    }
    bundle = tmp_path / "bundle.pem"
    bundle.write_bytes(httpx.get(cp.url + "/v1/trust-bundle").content)
    # The captured envelope grows older than the services' max age; the control plane's
    # current one does not, re-signed all the while.
    assert _wait_for(lambda: time.time() - captured["signed_at"] > MAX_AGE + 0.5)
    current = httpx.get(cp.url + "/v1/policy").json()
    assert current["version"] == 2 and time.time() - current["signed_at"] < MAX_AGE

    mitm = ManInTheMiddle(captured)
    with serve_in_thread(mitm.app()) as server, capture_logs() as logs:
        runtime = _fresh_service(f"http://127.0.0.1:{server.config.port}", bundle)
        try:
            assert _wait_for(lambda: mitm.requests >= 4 and _failures(runtime) >= 1)
            # Refused, once however often it is offered, and the service keeps what it had.
            assert runtime.snapshot.source is None and runtime.snapshot.policy.inbound == {}
            assert _failures(runtime) == 1
            (refusal,) = [e for e in logs if e["event"] == "policy_refused"]
            (problem,) = refusal["problems"]
            assert problem.startswith("signature: version 1 was signed at ")
            assert "older than the policy max age of 5s (MESH_POLICY_MAX_AGE)" in problem

            # The same man in the middle now passes on the current, re-signed version 2: a
            # document stored long ago (by this max age), signed a moment ago. It applies.
            mitm.envelope = httpx.get(cp.url + "/v1/policy").json()
            assert _wait_for(lambda: runtime.snapshot.version == 2)
            rules = runtime.snapshot.policy.inbound["payments"].authorization
            assert [r.allow.from_ for r in rules] == [("spiffe://mesh.local/ns/default/sa/orders",)]
        finally:
            runtime.close()


def test_a_fresh_service_takes_a_current_version_stored_long_ago_from_the_control_plane(
    cp: ControlPlaneHandle, tmp_path: Path
) -> None:
    """No one changed the policy for longer than the max age: the re-signed copy is current."""
    httpx.put(cp.url + "/v1/policy", json=STRICT, headers=cp.admin_headers)
    stored = httpx.get(cp.url + "/v1/policy/history", headers=cp.admin_headers).json()
    created = stored["versions"][0]["created"]
    assert _wait_for(lambda: time.time() - created > MAX_AGE + 0.5)
    bundle = tmp_path / "bundle.pem"
    bundle.write_bytes(httpx.get(cp.url + "/v1/trust-bundle").content)
    runtime = _fresh_service(cp.url, bundle)
    try:
        assert _wait_for(lambda: runtime.snapshot.version == 1)
        assert "payments" in runtime.snapshot.policy.inbound and _failures(runtime) == 0
    finally:
        runtime.close()


def test_a_service_reading_etcd_directly_gets_the_re_signed_copy(etcd: Any, tmp_path: Path) -> None:
    """The control plane writes each re-signing back to its store: a service that follows etcd
    without a control plane in between must not find only the copy signed when it was stored."""
    with control_plane(store=etcd.url, resign_every=0.2) as handle:
        httpx.put(handle.url + "/v1/policy", json=STRICT, headers=handle.admin_headers)
        history = httpx.get(handle.url + "/v1/policy/history", headers=handle.admin_headers)
        created = history.json()["versions"][0]["created"]
        assert _wait_for(lambda: time.time() - created > MAX_AGE + 0.5)
        bundle = tmp_path / "bundle.pem"
        bundle.write_bytes(httpx.get(handle.url + "/v1/trust-bundle").content)
        runtime = _fresh_service(etcd.url, bundle)
        try:
            assert _wait_for(lambda: runtime.snapshot.version == 1)
            assert _failures(runtime) == 0
        finally:
            runtime.close()
