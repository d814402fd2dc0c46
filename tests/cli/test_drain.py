"""Graceful drain (issue 13.5): on SIGTERM ``asgimesh serve`` reports draining on
``/_mesh/health`` while it keeps serving for ``--drain-delay``, then lets requests in flight
finish; and a rolling restart of two replicas, under load, fails no call of a mesh caller."""

from __future__ import annotations

import signal
import sys
import threading
import time
from typing import Any

import httpx
import pytest

from asgimesh import MeshRuntime, MeshSettings, MeshTransport
from tests.conftest import ServerProcess, Spawner, free_port


def _serve(spawn: Spawner, replica: str, port: int, *extra: str) -> ServerProcess:
    return spawn.start(
        [sys.executable, "-m", "asgimesh", "serve", "tests.cli.drain_app:app",
         "--port", "{port}", *extra],
        port=port,
        env={"REPLICA": replica, "MESH_SERVICE": "work"},
        ready_path="/_mesh/health",
    )  # fmt: skip


def _gunicorn(spawn: Spawner, replica: str, port: int) -> ServerProcess:
    return spawn.start(
        [sys.executable, "-m", "gunicorn", "tests.cli.drain_app:wsgi_app",
         "--bind", "127.0.0.1:{port}", "--workers", "1", "--worker-class", "gthread",
         "--threads", "4", "--graceful-timeout", "10", "--log-level", "warning"],
        port=port,
        env={"REPLICA": replica, "MESH_SERVICE": "work"},
        ready_path="/_mesh/health",
    )  # fmt: skip


def test_health_says_draining_while_the_drain_delay_keeps_serving(spawn: Spawner) -> None:
    server = _serve(spawn, "a", free_port(), "--drain-delay", "2s")
    assert httpx.get(server.url + "/_mesh/health").json()["status"] == "ok"
    server.proc.send_signal(signal.SIGTERM)
    stopped = time.monotonic()
    deadline = stopped + 1.5
    health = httpx.get(server.url + "/_mesh/health")
    while health.status_code != 503 and time.monotonic() < deadline:
        time.sleep(0.05)
        health = httpx.get(server.url + "/_mesh/health")
    assert health.status_code == 503 and health.json()["status"] == "draining"
    assert httpx.get(server.url + "/work").text == "a"  # still served while draining
    assert server.proc.wait(timeout=15) is not None
    assert time.monotonic() - stopped >= 1.9  # the whole delay was served
    with pytest.raises(httpx.ConnectError):
        httpx.get(server.url + "/_mesh/health")
    assert '"draining"' in server.output() or "draining" in server.output()


def test_bad_drain_options_stop_with_one_line(spawn: Spawner) -> None:
    import subprocess

    from tests.conftest import subprocess_env

    proc = subprocess.run(
        [sys.executable, "-m", "asgimesh", "serve", "tests.cli.drain_app:app", "--grace", "soon"],
        env=subprocess_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode != 0 and "asgimesh serve --grace:" in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr


def _load(url: str, runtime: MeshRuntime, stop: threading.Event, seen: list[Any]) -> None:
    with httpx.Client(transport=MeshTransport(runtime=runtime), timeout=10) as client:
        while not stop.is_set():
            try:
                seen.append(client.get(url).text)
            except httpx.HTTPError as error:
                seen.append(error)


@pytest.mark.parametrize("server", ["uvicorn", "gunicorn"])
def test_a_rolling_restart_of_two_replicas_fails_no_call(spawn: Spawner, server: str) -> None:
    def start(replica: str, port: int) -> ServerProcess:
        if server == "uvicorn":
            return _serve(spawn, replica, port, "--drain-delay", "0.5s")
        return _gunicorn(spawn, replica, port)

    ports = {"a": free_port(), "b": free_port()}
    replicas = {name: start(name, port) for name, port in ports.items()}
    upstreams = ",".join(f"http://127.0.0.1:{port}" for port in ports.values())
    runtime = MeshRuntime(MeshSettings(service="caller", upstreams=f"work={upstreams}"))
    stop, seen = threading.Event(), []
    callers = [
        threading.Thread(target=_load, args=("http://work/work", runtime, stop, seen))
        for _ in range(4)
    ]
    for thread in callers:
        thread.start()
    try:
        time.sleep(1.0)
        for name, port in ports.items():
            before = len(seen)
            replicas[name].proc.send_signal(signal.SIGTERM)
            assert replicas[name].proc.wait(timeout=20) is not None
            replicas[name] = start(name, port)
            time.sleep(1.0)
            assert len(seen) > before  # the load kept going through the restart
    finally:
        stop.set()
        for thread in callers:
            thread.join(timeout=20)
        runtime.close()
    failures = [s for s in seen if not isinstance(s, str)]
    assert failures == [], failures[:5]
    # The callers kept being answered by the replicas (a restarted one may stay ejected by
    # outlier detection for its base ejection time: the other carries the load meanwhile).
    assert len(seen) > 100 and set(seen) == {"a", "b"}


def _instances(cp_url: str) -> dict[str, dict[str, Any]]:
    services = httpx.get(cp_url + "/v1/services", timeout=5).json()["services"]
    return {i["instance"]: i for s in services for i in s["instances"]}


@pytest.mark.parametrize("server", ["uvicorn", "gunicorn"])
def test_the_control_plane_hears_the_drain_and_the_last_report(
    spawn: Spawner, control_plane_process: Any, server: str
) -> None:
    """Reports are due only hourly here: what the control plane learns comes from the drain's
    report (sent at once) and the last one, as the process exits (it then drops the instance
    at once, not when its report goes stale). gunicorn drains for ``--drain-delay`` too."""
    from tests.conftest import service_token

    cp = control_plane_process.start()
    app, extra = ("tests.cli.drain_app:app", ()) if server == "uvicorn" else (
        "tests.cli.drain_app:wsgi_app", ("--wsgi",))  # fmt: skip
    replica = spawn.start(
        [sys.executable, "-m", "asgimesh", "serve", app, "--port", "{port}", *extra,
         "--drain-delay", "3s", "--grace", "5s"],
        port=free_port(),
        env={"REPLICA": "a", "MESH_SERVICE": "work", "MESH_INSTANCE": "work-a",
             "MESH_CONFIG": cp.url + "?report=1h", "MESH_TOKEN": service_token(cp.url, "work")},
        ready_path="/_mesh/health",
    )  # fmt: skip
    assert httpx.get(replica.url + "/work").text == "a"
    assert _instances(cp.url) == {}  # nothing reported yet
    replica.proc.send_signal(signal.SIGTERM)
    stopped = time.monotonic()
    deadline = stopped + 2.5
    draining: dict[str, Any] = {}
    while time.monotonic() < deadline:
        health = httpx.get(replica.url + "/_mesh/health")  # gunicorn: this request sees the flag
        draining = _instances(cp.url)
        if health.status_code == 503 and draining:
            break
        time.sleep(0.1)
    assert health.status_code == 503 and health.json()["status"] == "draining"
    (name,) = draining
    assert name.startswith("work-a-") and draining[name]["state"] == "draining"
    assert httpx.get(replica.url + "/work").text == "a"  # still served while draining
    assert replica.proc.wait(timeout=20) is not None
    assert time.monotonic() - stopped >= 2.9  # the whole delay was served, gunicorn too
    assert _instances(cp.url) == {}  # the last report said goodbye
