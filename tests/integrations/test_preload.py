"""gunicorn ``--preload`` builds the app, and so the mesh runtime, in the master before it forks:
each worker must still follow policy changes (and report) on its own."""

from __future__ import annotations

import time

import httpx

TOKEN = "test-admin-token"
ADMIN = {"authorization": f"Bearer {TOKEN}"}


def _answers(url: str, seconds: float, until: int | None = None) -> dict[int, int]:
    """Each worker's policy version, asking until two workers answered (with ``until``)."""
    seen: dict[int, int] = {}
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        # A new connection each time, so the kernel hands it to either worker.
        body = httpx.get(url + "/who", headers={"connection": "close"}, timeout=5).json()
        seen[body["pid"]] = body["policy_version"]
        if len(seen) >= 2 and (until is None or set(seen.values()) == {until}):
            break
        time.sleep(0.02)
    return seen


def test_preloaded_workers_each_receive_a_policy_change(spawn, control_plane_process) -> None:
    cp = control_plane_process.start()
    httpx.put(
        cp.url + "/v1/policy", json={"defaults": {"timeout": "3s"}}, headers=ADMIN
    ).raise_for_status()
    token = httpx.post(cp.url + "/v1/tokens", json={"service": "orders"}, headers=ADMIN).json()[
        "token"
    ]
    server = spawn.gunicorn(
        "tests.integrations.apps.preload_app:app",
        env={
            "MESH_SERVICE": "orders",
            "MESH_CONFIG": f"{cp.url}?report=500ms",
            "MESH_TOKEN": token,
        },
        extra=["--preload", "--workers", "2"],
        ready_path="/_mesh/health",
    )
    before = _answers(server.url, 20, until=1)
    assert len(before) == 2 and set(before.values()) == {1}, before

    httpx.put(
        cp.url + "/v1/policy", json={"defaults": {"timeout": "4s"}}, headers=ADMIN
    ).raise_for_status()
    after = _answers(server.url, 20, until=2)
    assert len(after) >= 2 and set(after.values()) == {2}, (after, server.output()[-2000:])

    # Each worker reports under a name of its own (its pid), not the master's.
    deadline = time.monotonic() + 10
    names: list[str] = []
    while time.monotonic() < deadline:
        services = httpx.get(cp.url + "/v1/services").json()["services"]
        orders = next((s for s in services if s["service"] == "orders"), None)
        names = [i["instance"] for i in orders["instances"]] if orders else []
        if all(any(f"-{pid}-" in name for name in names) for pid in after):
            break
        time.sleep(0.2)
    assert all(any(f"-{pid}-" in name for name in names) for pid in after), names


def test_preloaded_workers_each_follow_a_policy_file(spawn, tmp_path) -> None:
    policy = tmp_path / "policy.yaml"
    policy.write_text("defaults: {timeout: 3s}\n")
    server = spawn.gunicorn(
        "tests.integrations.apps.preload_app:app",
        env={"MESH_SERVICE": "orders", "MESH_CONFIG": str(policy)},
        extra=["--preload", "--workers", "2"],
        ready_path="/_mesh/health",
    )
    first = _answers(server.url, 20)
    assert len(first) == 2 and len(set(first.values())) == 1, first
    (version,) = set(first.values())
    policy.write_text("defaults: {timeout: 4s}\nservices: {payments: {timeout: 1s}}\n")
    after = _answers(server.url, 20, until=version + 1)
    assert len(after) >= 2 and set(after.values()) == {version + 1}, after
