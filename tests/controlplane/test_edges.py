"""Golden metrics per edge, end to end: real services under uvicorn report what they send, and
the control plane's ``GET /v1/services`` shows each edge caller → callee."""

from __future__ import annotations

import time
from typing import Any

import httpx

from tests.conftest import ControlPlaneStarter, Spawner, free_port, service_token

ADMIN = {"authorization": f"Bearer {ControlPlaneStarter.admin_token}"}


def test_services_show_each_edge_with_its_golden_metrics(
    control_plane_process: ControlPlaneStarter, spawn: Spawner
) -> None:
    cp = control_plane_process.start()
    env = {"MESH_CONFIG": f"{cp.url}?report=200ms"}
    payments = spawn.uvicorn(
        "tests.controlplane.edges_app:app",
        env={**env, "MESH_SERVICE": "payments", "MESH_TOKEN": service_token(cp.url, "payments")},
    )
    policy = {
        "services": {
            "payments": {"endpoints": [payments.url]},
            # Nobody listens: the first call fails and ejects the only endpoint, the next ones
            # are refused by the mesh (circuit open) without a connection attempt.
            "ledger": {
                "endpoints": [f"http://127.0.0.1:{free_port()}"],
                "retries": {"attempts": 0},
                "outlier_detection": {"consecutive_failures": 1, "max_ejection_percent": 100},
            },
        }
    }
    assert httpx.put(cp.url + "/v1/policy", json=policy, headers=ADMIN).status_code == 200
    frontend = spawn.uvicorn(
        "tests.controlplane.edges_app:app",
        env={**env, "MESH_SERVICE": "frontend", "MESH_TOKEN": service_token(cp.url, "frontend")},
    )
    payments.wait_ready(path="/ok")
    frontend.wait_ready(path="/ok")

    seen: dict[str, dict[str, Any]] = {}
    refusals: dict[str, int] = {}
    ejections = 0
    deadline = time.monotonic() + 20
    with httpx.Client(base_url=frontend.url, timeout=5) as http:
        while time.monotonic() < deadline:
            for _ in range(5):
                assert http.get("/call", params={"to": "payments"}).json() == {"status": 200}
            assert "error" in http.get("/call", params={"to": "ledger"}).json()
            answer = httpx.get(cp.url + "/v1/services").json()
            for edge in answer["edges"]:
                seen[edge["destination"]] = edge
                if edge["destination"] == "ledger":
                    ejections += edge["ejections"]
                    for kind, count in edge["refusals"].items():
                        refusals[kind] = refusals.get(kind, 0) + count
            pay = seen.get("payments")
            if pay and pay["requests"] and refusals and ejections:
                break
            time.sleep(0.1)
    assert set(seen) == {"payments", "ledger"}, seen
    pay, ledger = seen["payments"], seen["ledger"]
    assert (pay["source"], pay["known"], pay["instances"]) == ("frontend", True, 1)
    assert pay["requests"] > 0 and pay["requests_per_second"] > 0
    assert pay["success_rate"] == 1.0 and pay["p50_ms"] is not None
    assert (ledger["source"], ledger["known"]) == ("frontend", False)
    assert ejections >= 1 and refusals.get("circuit-open", 0) >= 1, (ejections, refusals)
    # The services' own rows are still there, payments' fed by frontend's calls.
    rows = {row["service"]: row for row in answer["services"]}
    assert set(rows) == {"frontend", "payments"}
