"""Prometheus mode (issue 9.5): ``/v1/services`` from Prometheus' query API. The conversion is
a plain function tested on its own; then a real Prometheus (Debian's) scrapes real services and
the control plane in Prometheus mode shows the same services and edges, within tolerance, as a
control plane fed by the same services' reports."""

from __future__ import annotations

import re
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from asgimesh.controlplane import QUERIES
from asgimesh.controlplane._prometheus import (
    PrometheusError,
    parse_vector,
    queries,
    services_from_results,
)
from tests.conftest import (
    ControlPlaneStarter,
    Prometheus,
    Spawner,
    free_port,
    service_token,
    subprocess_env,
)

ADMIN = {"authorization": f"Bearer {ControlPlaneStarter.admin_token}"}
DOCS = Path(__file__).parents[2] / "docs" / "prometheus.md"


def vector(*series: tuple[dict[str, str], Any]) -> dict[str, Any]:
    return {
        "status": "success",
        "data": {
            "resultType": "vector",
            "result": [{"metric": m, "value": [1700000000.0, str(v)]} for m, v in series],
        },
    }


def test_results_become_services_instances_and_edges() -> None:
    pay1 = {"service": "payments", "instance": "10.0.0.1:8003"}
    pay2 = {"service": "payments", "instance": "10.0.0.2:8003"}
    front = {"service": "frontend", "instance": "10.0.0.9:8001"}
    edge = {"service": "frontend", "upstream": "payments"}
    outside = {"service": "frontend", "upstream": "api.example.com"}
    results = {
        name: parse_vector(body)
        for name, body in {
            "instance_rate": vector((pay1, 30), (pay2, 10), (front, 5)),
            "instance_errors": vector((pay1, 3)),
            "instance_p50": vector((pay1, 0.002), (pay2, "NaN")),
            "instance_p99": vector((pay1, 0.05)),
            "instance_version": vector((pay1, 4), (pay2, 3), (front, 4)),
            "instance_denied": vector((pay2, 2)),
            "instance_limited": vector((pay1, 1.2)),
            "service_p50": vector(({"service": "payments"}, 0.003)),
            "service_p99": vector(({"service": "payments"}, "+Inf")),
            "edge_rate": vector((edge, 40), (outside, 1)),
            "edge_errors": vector((edge, 4)),
            "edge_calls": vector((edge, 2400), (outside, 60)),
            "edge_p50": vector((edge, 0.004)),
            "edge_p99": vector((edge, 0.08)),
            "edge_retries": vector(({**edge, "reason": "503"}, 12.4), ({**edge, "reason": "x"}, 0)),
            "edge_refusals": vector(({**edge, "reason": "circuit-open"}, 2)),
            "edge_ejections": vector((edge, 1)),
        }.items()
    }
    answer = services_from_results(results)
    services = {row["service"]: row for row in answer["services"]}
    assert list(services) == ["frontend", "payments"]
    pay = services["payments"]
    assert pay["requests_per_second"] == 40 and pay["success_rate"] == pytest.approx(37 / 40)
    assert pay["policy_versions"] == [3, 4] and pay["p50_ms"] == 3.0 and pay["p99_ms"] is None
    assert (pay["denied"], pay["rate_limited"]) == (2, 1)
    first, second = pay["instances"]
    assert first["instance"] == first["address"] == "10.0.0.1:8003"
    assert (first["success_rate"], first["p50_ms"], first["p99_ms"]) == (0.9, 2.0, 50.0)
    assert second["p50_ms"] is None and second["policy_version"] == 3
    outside_row, pay_edge = answer["edges"]
    assert (outside_row["destination"], outside_row["known"]) == ("api.example.com", False)
    assert pay_edge["known"] and pay_edge["requests"] == 2400
    assert pay_edge["success_rate"] == pytest.approx(0.9) and pay_edge["p99_ms"] == 80.0
    assert pay_edge["retries"] == {"503": 12} and pay_edge["refusals"] == {"circuit-open": 2}
    assert pay_edge["ejections"] == 1


@pytest.mark.parametrize(
    "body",
    [
        {"status": "error", "errorType": "bad_data", "error": "parse error"},
        {"status": "success", "data": {"resultType": "matrix", "result": []}},
        "<html>a proxy's page</html>",
        {"status": "success", "data": {"resultType": "vector", "result": [{}] * 10_001}},
    ],
)
def test_anything_but_an_instant_vector_is_refused(body: Any) -> None:
    with pytest.raises(PrometheusError):
        parse_vector(body)


def test_the_docs_show_every_query_as_the_dashboard_runs_it() -> None:
    text = DOCS.read_text()
    for name, query in QUERIES.items():
        assert query.replace("$window", "1m") in text, name
    assert queries("30s")["edge_rate"].endswith("[30s]))")


def test_the_recording_rules_in_the_docs_pass_promtool(tmp_path: Path) -> None:
    import shutil

    if shutil.which("promtool") is None:
        pytest.skip("promtool is not installed (Debian: apt-get install prometheus)")
    block = re.search(r"```yaml\n(groups:.*?)```", DOCS.read_text(), re.DOTALL)
    assert block is not None, "docs/prometheus.md has no recording rules block"
    rules = tmp_path / "rules.yml"
    rules.write_text(block.group(1))
    checked = subprocess.run(["promtool", "check", "rules", str(rules)], capture_output=True)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert b"SUCCESS: %d rules found" % len(QUERIES) in checked.stdout


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (["--prometheus", "prometheus:9090"], "--prometheus: expected the server's http(s)://"),
        (["--prometheus-window", "1 minute"], "--prometheus-window: '1 minute' is not a PromQL"),
    ],
)
def test_bad_prometheus_options_stop_start_up_with_one_line(
    tmp_path: Path, options: list[str], message: str
) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "asgimesh", "control-plane", "--state-dir", str(tmp_path), *options],
        env=subprocess_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode != 0 and message in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1


def test_an_unreachable_prometheus_falls_back_to_reports_and_says_so(
    control_plane_process: ControlPlaneStarter,
) -> None:
    dead = f"http://user:secret@127.0.0.1:{free_port()}"
    cp = control_plane_process.start("--prometheus", dead)
    answer = httpx.get(cp.url + "/v1/services").json()
    assert answer["source"] == "reports" and answer["services"] == []
    assert answer["warning"].startswith("Prometheus at http://127.0.0.1:")
    assert "showing the instances' reports instead" in answer["warning"]
    assert "secret" not in answer["warning"] and "secret" not in cp.output()


def _traffic(url: str, stop: threading.Event) -> None:
    with httpx.Client(base_url=url, timeout=5) as http:
        while not stop.is_set():
            http.get("/call", params={"to": "payments"})
            http.get("/call", params={"to": "ledger"})
            time.sleep(0.01)


def test_prometheus_mode_shows_what_report_mode_shows(
    control_plane_process: ControlPlaneStarter, spawn: Spawner, prometheus: Prometheus
) -> None:
    reports = control_plane_process.start()
    env = {"MESH_CONFIG": f"{reports.url}?report=1s"}
    payments = spawn.uvicorn(
        "tests.controlplane.edges_app:app",
        env={**env, "MESH_SERVICE": "payments", "MESH_TOKEN": service_token(reports.url, "payments")},
    )
    policy = {
        "services": {
            "payments": {"endpoints": [payments.url]},
            "ledger": {
                "endpoints": [f"http://127.0.0.1:{free_port()}"],
                "retries": {"attempts": 0},
                "outlier_detection": {"consecutive_failures": 1, "max_ejection_percent": 100},
            },
        }
    }
    assert httpx.put(reports.url + "/v1/policy", json=policy, headers=ADMIN).status_code == 200
    frontend = spawn.uvicorn(
        "tests.controlplane.edges_app:app",
        env={**env, "MESH_SERVICE": "frontend", "MESH_TOKEN": service_token(reports.url, "frontend")},
    )
    payments.wait_ready(path="/ok")
    frontend.wait_ready(path="/ok")
    prometheus.start([f"127.0.0.1:{payments.port}", f"127.0.0.1:{frontend.port}"])
    promql = control_plane_process.start(
        "--prometheus", prometheus.url, "--prometheus-window", "5s"
    )
    stop = threading.Event()
    caller = threading.Thread(target=_traffic, args=(frontend.url, stop), daemon=True)
    caller.start()
    try:
        time.sleep(8)  # a few scrapes into steady traffic
        by_reports = httpx.get(reports.url + "/v1/services").json()
        by_prometheus = httpx.get(promql.url + "/v1/services").json()
    finally:
        stop.set()
        caller.join(timeout=10)
    assert by_reports["source"] == "reports" and by_prometheus["source"] == "prometheus"
    assert "warning" not in by_prometheus

    def services(answer: dict[str, Any]) -> dict[str, Any]:
        return {row["service"]: row for row in answer["services"]}

    def edges(answer: dict[str, Any]) -> dict[tuple[str, str], Any]:
        return {(e["source"], e["destination"]): e for e in answer["edges"]}

    assert set(services(by_prometheus)) == set(services(by_reports)) == {"frontend", "payments"}
    assert set(edges(by_prometheus)) == set(edges(by_reports))
    assert set(edges(by_prometheus)) == {("frontend", "payments"), ("frontend", "ledger")}
    for key in [("frontend", "payments")]:
        mine, theirs = edges(by_prometheus)[key], edges(by_reports)[key]
        assert mine["requests_per_second"] == pytest.approx(theirs["requests_per_second"], rel=0.5)
        assert mine["success_rate"] == theirs["success_rate"] == 1.0
        assert mine["p99_ms"] is not None and mine["known"] and theirs["known"]
    ledger = edges(by_prometheus)[("frontend", "ledger")]
    # Prometheus extrapolates each rate() to its window's edges, so the ratio of two of them is
    # near, not exactly, 0 when every call failed.
    assert ledger["success_rate"] < 0.05 and not ledger["known"]
    assert ledger["refusals"].get("circuit-open", 0) > 0
    pay_p, pay_r = services(by_prometheus)["payments"], services(by_reports)["payments"]
    assert pay_p["requests_per_second"] == pytest.approx(pay_r["requests_per_second"], rel=0.5)
    assert pay_p["success_rate"] == pay_r["success_rate"] == 1.0
    # Instances by what Prometheus scraped: host:port.
    assert [i["instance"] for i in pay_p["instances"]] == [f"127.0.0.1:{payments.port}"]
    assert pay_p["policy_versions"] == pay_r["policy_versions"] == [1]
