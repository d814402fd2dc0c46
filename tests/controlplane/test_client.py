"""Services following a real control plane (and etcd): convergence, outages, trust, reports."""

import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from asgimesh import MeshRuntime, MeshSettings
from asgimesh.identity import MeshCA
from asgimesh.testing import control_plane, serve_in_thread
from tests.conftest import free_port

ADMIN = {"authorization": "Bearer test-admin-token"}


def wait_for(condition: Callable[[], bool], timeout: float = 10.0) -> float:
    """Seconds until ``condition()`` held; fails after ``timeout``."""
    start = time.monotonic()
    while not condition():
        assert time.monotonic() - start < timeout, "condition not reached in time"
        time.sleep(0.005)
    return time.monotonic() - start


def failures(runtime: MeshRuntime) -> float:
    return (
        runtime.metrics.registry.get_sample_value(
            "mesh_policy_reloads_total", {"service": runtime.settings.service, "result": "failure"}
        )
        or 0.0
    )


def test_a_runtime_converges_within_a_second_of_the_put(control_plane_process) -> None:
    cp = control_plane_process.start()
    httpx.put(cp.url + "/v1/policy", json={"defaults": {"timeout": "4s"}}, headers=ADMIN)
    runtime = MeshRuntime(MeshSettings(config=cp.url))
    try:
        assert runtime.policy.current.policy.defaults.timeout == 4.0  # loaded before serving
        assert runtime.policy.current.version == 1
        for version, timeout in ((2, "3s"), (3, "2s")):
            httpx.put(cp.url + "/v1/policy", json={"defaults": {"timeout": timeout}}, headers=ADMIN)
            waited = wait_for(lambda v=version: runtime.policy.current.version == v)
            assert waited < 1.0
        assert runtime.policy.current.policy.defaults.timeout == 2.0
        assert runtime.policy.current.origin_of("defaults.timeout").startswith("controlplane:")
    finally:
        runtime.close()


def test_control_plane_down_at_start_then_up(control_plane_process, tmp_path: Path) -> None:
    port = free_port()
    settings = MeshSettings(config=f"http://127.0.0.1:{port}?backoff_max=300ms", timeout="3s")
    runtime = MeshRuntime(settings)  # must not raise: serves on env layers meanwhile
    try:
        assert runtime.policy.current.policy.defaults.timeout == 3.0
        assert runtime.policy.current.source is None
        cp = control_plane_process.start(port=port)
        httpx.put(
            cp.url + "/v1/policy", json={"defaults": {"retries": {"attempts": 0}}}, headers=ADMIN
        )
        wait_for(lambda: runtime.policy.current.source is not None)
        assert runtime.policy.current.version == 1
        policy = runtime.policy.current.policy
        assert policy.defaults.retries.attempts == 0 and policy.defaults.timeout == 3.0
    finally:
        runtime.close()


def test_a_served_app_keeps_its_policy_while_the_control_plane_is_down(
    spawn, control_plane_process, tmp_path: Path
) -> None:
    cp = control_plane_process.start()
    state = tmp_path / "cp1"
    httpx.put(cp.url + "/v1/policy", json={"defaults": {"timeout": "7s"}}, headers=ADMIN)
    app = spawn.uvicorn(
        "policy_app:app",
        env={"MESH_CONFIG": cp.url + "?backoff_max=300ms"},
        ready_path="/",
        extra=["--app-dir", str(Path(__file__).parent)],
    )
    assert httpx.get(app.url).json() == {
        "version": 1,
        "source": f"controlplane:{cp.url}",
        "timeout": 7.0,
    }
    cp.kill()
    for _ in range(5):
        assert httpx.get(app.url).json()["timeout"] == 7.0
        time.sleep(0.1)
    cp = control_plane_process.start(state_dir=state, port=cp.port)
    httpx.put(cp.url + "/v1/policy", json={"defaults": {"timeout": "8s"}}, headers=ADMIN)
    wait_for(lambda: httpx.get(app.url).json()["version"] == 2)
    assert httpx.get(app.url).json()["timeout"] == 8.0


def test_serverless_app_refreshes_from_its_requests(spawn, control_plane_process) -> None:
    """``?refresh=``: no background watcher; MeshMiddleware's requests trigger the refresh."""
    cp = control_plane_process.start()
    httpx.put(cp.url + "/v1/policy", json={"defaults": {"timeout": "7s"}}, headers=ADMIN)
    app = spawn.uvicorn(
        "policy_app:app",
        env={"MESH_CONFIG": cp.url + "?refresh=200ms"},
        ready_path="/",
        extra=["--app-dir", str(Path(__file__).parent)],
    )
    assert httpx.get(app.url).json()["timeout"] == 7.0
    httpx.put(cp.url + "/v1/policy", json={"defaults": {"timeout": "9s"}}, headers=ADMIN)
    wait_for(lambda: httpx.get(app.url).json()["timeout"] == 9.0, timeout=5)
    assert httpx.get(app.url).json()["version"] == 2


def test_a_tampered_version_is_refused_logged_and_counted(tmp_path: Path) -> None:
    with control_plane() as cp:
        httpx.put(
            cp.url + "/v1/policy", json={"defaults": {"timeout": "2s"}}, headers=cp.admin_headers
        )

        async def policy(request: Request) -> Response:
            async with httpx.AsyncClient() as client:
                envelope = (await client.get(cp.url + "/v1/policy")).json()
            if int(request.query_params.get("after", 0)) >= envelope["version"]:
                return Response(status_code=304)
            envelope["policy"]["defaults"]["timeout"] = "60s"  # a man in the middle
            return JSONResponse(envelope)

        async def bundle(request: Request) -> Response:
            async with httpx.AsyncClient() as client:
                return Response((await client.get(cp.url + "/v1/trust-bundle")).content)

        evil = Starlette(routes=[Route("/v1/policy", policy), Route("/v1/trust-bundle", bundle)])
        with serve_in_thread(evil) as server:
            runtime = MeshRuntime(MeshSettings(config=f"http://127.0.0.1:{server.config.port}"))
            try:
                assert runtime.policy.current.source is None
                assert runtime.policy.current.policy.defaults.timeout == 10.0
                assert failures(runtime) >= 1
            finally:
                runtime.close()


def test_mesh_ca_pins_the_trust_bundle(tmp_path: Path) -> None:
    stranger = tmp_path / "stranger.pem"
    stranger.write_bytes(MeshCA.create("mesh.local").bundle_pem())
    with control_plane() as cp:
        httpx.put(
            cp.url + "/v1/policy", json={"defaults": {"timeout": "2s"}}, headers=cp.admin_headers
        )
        refused = MeshRuntime(MeshSettings(config=cp.url, ca=stranger))
        trusted_file = tmp_path / "mesh-ca.pem"
        trusted_file.write_bytes(httpx.get(cp.url + "/v1/trust-bundle").content)
        trusted = MeshRuntime(MeshSettings(config=cp.url, ca=trusted_file))
        try:
            assert refused.policy.current.source is None and failures(refused) == 1
            assert trusted.policy.current.policy.defaults.timeout == 2.0
        finally:
            refused.close()
            trusted.close()


def test_serverless_mode_refreshes_from_requests_without_a_thread() -> None:
    with control_plane() as cp:
        put = lambda t: httpx.put(  # noqa: E731
            cp.url + "/v1/policy", json={"defaults": {"timeout": t}}, headers=cp.admin_headers
        )
        put("2s")
        runtime = MeshRuntime(MeshSettings(config=cp.url + "?refresh=200ms"))
        try:
            assert runtime.policy.current.version == 1
            assert runtime.source._thread is None  # type: ignore[union-attr]
            put("3s")
            time.sleep(0.5)
            assert runtime.policy.current.version == 1  # nothing happens without requests
            assert runtime.on_request is not None
            runtime.on_request()
            wait_for(lambda: runtime.policy.current.version == 2, timeout=5)
            put("4s")
            runtime.on_request()  # within 200 ms of the last refresh: not due yet
            time.sleep(0.3)
            assert runtime.policy.current.version == 2
            wait_for(lambda: (runtime.on_request(), runtime.policy.current.version == 3)[1], 5)
        finally:
            runtime.close()


def test_instances_report_their_version_and_golden_metrics() -> None:
    with control_plane() as cp:
        httpx.put(cp.url + "/v1/policy", json={}, headers=cp.admin_headers)
        token = httpx.post(
            cp.url + "/v1/tokens", json={"service": "orders"}, headers=cp.admin_headers
        ).json()["token"]
        runtime = MeshRuntime(
            MeshSettings(service="orders", token=token, config=cp.url + "?report=200ms")
        )
        try:
            for status in ["200"] * 9 + ["500"]:
                runtime.metrics.inbound.record("GET", status, 0.02)

            seen: list[dict] = []

            def reported() -> bool:
                # Later reports cover later intervals (no requests: no success rate): keep this one.
                seen[:] = httpx.get(cp.url + "/v1/services").json()["services"]
                return bool(seen) and seen[0]["success_rate"] is not None

            wait_for(reported)
            row = seen[0]
            assert row["service"] == "orders" and row["policy_versions"] == [1]
            assert row["success_rate"] == pytest.approx(0.9)
            assert 10 <= row["p50_ms"] <= 25
        finally:
            runtime.close()


def test_a_runtime_on_etcd_follows_and_survives_an_etcd_restart(
    etcd, control_plane_process
) -> None:
    cp = control_plane_process.start(store=etcd.url)
    httpx.put(cp.url + "/v1/policy", json={"defaults": {"timeout": "5s"}}, headers=ADMIN)
    runtime = MeshRuntime(MeshSettings(config=etcd.url))
    try:
        assert runtime.policy.current.policy.defaults.timeout == 5.0
        httpx.put(cp.url + "/v1/policy", json={"defaults": {"timeout": "6s"}}, headers=ADMIN)
        assert wait_for(lambda: runtime.policy.current.version == 2) < 1.0
        etcd.stop()
        time.sleep(0.3)
        assert runtime.policy.current.policy.defaults.timeout == 6.0
        etcd.start()
        httpx.put(cp.url + "/v1/policy", json={"defaults": {"timeout": "9s"}}, headers=ADMIN)
        wait_for(lambda: runtime.policy.current.version == 3, timeout=15)
        assert runtime.policy.current.policy.defaults.timeout == 9.0
    finally:
        runtime.close()


def test_close_stops_the_watcher_promptly(control_plane_process) -> None:
    cp = control_plane_process.start()
    runtime = MeshRuntime(MeshSettings(config=cp.url))
    thread = runtime.source._thread  # type: ignore[union-attr]
    assert thread is not None and thread.is_alive()
    start = time.monotonic()
    runtime.close()
    assert not thread.is_alive() and time.monotonic() - start < 5
