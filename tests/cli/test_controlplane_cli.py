"""The client commands against a real control-plane process, as an operator runs them."""

import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from tests.conftest import free_port, subprocess_env

TOKEN = "test-admin-token"


def asgimesh(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "asgimesh", *args],
        env=subprocess_env(env),
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.fixture
def cp(control_plane_process):
    return control_plane_process.start()


@pytest.fixture
def policy_files(tmp_path: Path) -> tuple[Path, Path]:
    good = tmp_path / "policy.yaml"
    good.write_text(
        "defaults:\n  timeout: 3s\nservices:\n  payments:\n    retries: {attempts: 0}\n"
    )
    bad = tmp_path / "bad.yaml"
    bad.write_text("defaults:\n  timeout: fast\n  load_balancer: fastest\n")
    return good, bad


def test_apply_get_history_rollback(cp, policy_files) -> None:
    good, _ = policy_files
    applied = asgimesh("policy", "apply", str(good), "--server", cp.url, "--token", TOKEN)
    assert applied.returncode == 0, applied.stderr
    assert applied.stdout.strip().endswith("applied as version 1")
    asgimesh("policy", "apply", str(good), "--server", cp.url, "--token", TOKEN)

    got = asgimesh("policy", "get", "--server", cp.url)
    assert got.returncode == 0 and '"timeout": "3s"' in got.stdout
    assert got.stderr.strip() == "asgimesh: policy version 2"

    rolled = asgimesh(
        "policy", "rollback", "1", env={"MESH_CONFIG": cp.url, "MESH_ADMIN_TOKEN": TOKEN}
    )
    assert rolled.returncode == 0 and "now version 3" in rolled.stdout
    history = asgimesh("policy", "history", "--server", cp.url, "--token", TOKEN)
    assert history.returncode == 0 and "rollback to 1" in history.stdout

    unknown = asgimesh("policy", "rollback", "42", "--server", cp.url, "--token", TOKEN)
    assert unknown.returncode == 1 and "version 42 is not in the history" in unknown.stderr


ROUND_TRIP = """\
defaults:
  timeout: 3s
  retries:
    on: [connect-failure, 503]
services:
  payments:
    endpoints: [http://127.0.0.1:8001, http://127.0.0.1:8002]
    routes:
      - match: {method: POST, path: /charge}
        retries: {attempts: 0}
    split: [{service: payments-v2, weight: 10}]
    fault: {abort: {percent: 5, status: 503}}
  payments-v2:
    endpoints: [http://127.0.0.1:8003]
inbound:
  payments:
    authorization:
      - allow: {from: [spiffe://mesh.local/ns/default/sa/orders], methods: [POST], paths: [/charge]}
    rate_limit: {requests_per_second: 100, burst: 200}
"""


@pytest.mark.parametrize("fmt", ["json", "yaml"])
def test_policy_get_output_is_accepted_by_apply_as_is(cp, tmp_path, fmt) -> None:
    """The operator's loop: get > file, edit, apply file. The edited value arrives, nothing
    else changes, through a file and through stdin alike."""
    source = tmp_path / "start.yaml"
    source.write_text(ROUND_TRIP)
    first = asgimesh("policy", "apply", str(source), "--server", cp.url, "--token", TOKEN)
    assert first.returncode == 0, first.stderr

    got = asgimesh("policy", "get", "--server", cp.url, "--output", fmt)
    assert got.returncode == 0, got.stderr
    assert "asgimesh: policy version 1" in got.stderr
    edited = tmp_path / f"edited.{fmt}"
    edited.write_text(got.stdout.replace("3s", "4s"))
    again = asgimesh("policy", "apply", str(edited), "--server", cp.url, "--token", TOKEN)
    assert again.returncode == 0, again.stderr
    assert again.stdout.strip().endswith("applied as version 2")

    piped = subprocess.run(
        [sys.executable, "-m", "asgimesh", "policy", "apply", "-", "--server", cp.url],
        input=got.stdout,
        env=subprocess_env({"MESH_ADMIN_TOKEN": TOKEN}),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert piped.returncode == 0, piped.stderr

    latest = httpx.get(cp.url + "/v1/policy").json()
    stored = latest["policy"]
    assert latest["version"] == 3
    assert stored["defaults"]["timeout"] == "3s"  # the piped copy was not edited
    assert stored["defaults"]["retries"]["on"] == ["connect-failure", 503]
    allow = stored["inbound"]["payments"]["authorization"][0]["allow"]
    assert allow["from"] == ["spiffe://mesh.local/ns/default/sa/orders"]
    history = httpx.get(
        cp.url + "/v1/policy/history", headers={"authorization": f"Bearer {TOKEN}"}
    ).json()["versions"]
    by_version = {entry["version"]: entry["policy"] for entry in history}
    assert by_version[2]["defaults"]["timeout"] == "4s"
    assert {**by_version[2], "defaults": None} == {**by_version[1], "defaults": None}
    assert by_version[3] == by_version[1]


def test_an_invalid_file_prints_every_problem_and_sends_nothing(cp, policy_files) -> None:
    _, bad = policy_files
    refused = asgimesh("policy", "apply", str(bad), "--server", cp.url, "--token", TOKEN)
    assert refused.returncode == 1
    assert "2 problem(s)" in refused.stderr
    assert "defaults.timeout: expected a duration" in refused.stderr
    assert "defaults.load_balancer: expected one of" in refused.stderr
    assert httpx.get(cp.url + "/v1/policy").status_code == 404
    empty = asgimesh("policy", "get", "--server", cp.url)
    assert empty.returncode == 1 and "no policy version has been stored yet" in empty.stderr


def test_a_wrong_or_missing_token_is_exit_4(cp, policy_files) -> None:
    good, _ = policy_files
    wrong = asgimesh("policy", "apply", str(good), "--server", cp.url, "--token", "nope")
    assert wrong.returncode == 4
    assert (
        wrong.stderr.startswith("asgimesh: the control plane at")
        and "refused the token" in wrong.stderr
    )
    assert "nope" not in wrong.stderr
    missing = asgimesh("token", "create", "orders", "--server", cp.url)
    assert missing.returncode == 4 and "MESH_ADMIN_TOKEN" in missing.stderr


def test_a_token_that_starts_with_a_dash_is_read_in_the_joined_form(cp, policy_files) -> None:
    """The demo prints ``--token="$(cat FILE)"``: a value beginning with ``-`` must reach the
    control plane (and be refused there, exit 4), not stop in argparse (exit 2)."""
    good, _ = policy_files
    dashed = asgimesh("policy", "apply", str(good), "--server", cp.url, "--token=-nope")
    assert dashed.returncode == 4, dashed.stderr
    assert "refused the token" in dashed.stderr


def test_an_unreachable_server_is_exit_3_and_no_server_is_exit_2(policy_files) -> None:
    good, _ = policy_files
    url = f"http://127.0.0.1:{free_port()}"
    down = asgimesh("policy", "apply", str(good), "--server", url, "--token", TOKEN)
    assert down.returncode == 3 and f"cannot reach the control plane at {url}" in down.stderr
    assert asgimesh("status", "--server", url).returncode == 3
    nowhere = asgimesh("policy", "get")
    assert nowhere.returncode == 2 and "--server" in nowhere.stderr


def test_token_create_and_status_table(cp) -> None:
    created = asgimesh("token", "create", "orders", "--server", cp.url, "--token", TOKEN)
    assert created.returncode == 0
    token = created.stdout.strip()
    assert token.startswith("mst_")
    report = {
        "service": "orders",
        "instance": "i-1",
        "policy_version": 0,
        "requests": 50,
        "requests_per_second": 5.0,
        "success_rate": 0.98,
        "p50_ms": 2.5,
        "p99_ms": 12.0,
        "outbound": {
            "payments": {
                "requests": 40,
                "requests_per_second": 4.0,
                "success_rate": 0.75,
                "p50_ms": 3.0,
                "p99_ms": 30.0,
                "retries": {"503": 6},
                "refusals": {"budget": 2},
            }
        },
    }
    sent = httpx.post(
        cp.url + "/v1/reports", json=report, headers={"authorization": f"Bearer {token}"}
    )
    assert sent.status_code == 200
    status = asgimesh("status", env={"MESH_CONFIG": cp.url})
    assert status.returncode == 0
    header, row = status.stdout.splitlines()[1:3]
    assert header.split() == [
        "SERVICE",
        "INSTANCES",
        "POLICY",
        "REQ/S",
        "SUCCESS",
        "P50",
        "MS",
        "P99",
        "MS",
    ]
    assert row.split() == ["orders", "1", "0", "5.0", "98.00%", "2.5", "12.0"]
    calls, edge = status.stdout.splitlines()[4:6]
    assert calls.split()[:2] == ["CALLER", "CALLEE"]
    assert edge.split() == ["orders", "payments", "4.0", "75.00%", "3.0", "30.0", "503:6", "budget:2"]


def test_control_plane_refuses_a_bad_store_in_one_line(tmp_path: Path) -> None:
    result = asgimesh("control-plane", "--store", "ftp://x", "--state-dir", str(tmp_path))
    assert result.returncode == 1
    assert result.stderr.strip().startswith("asgimesh: --store='ftp://x': expected etcd://")
    assert "Traceback" not in result.stderr


def test_control_plane_names_an_unreachable_store_in_one_line(tmp_path: Path) -> None:
    store = f"etcd://127.0.0.1:{free_port()}"
    result = asgimesh(
        "control-plane", "--store", store, "--store-wait", "300ms", "--state-dir", str(tmp_path)
    )
    assert result.returncode == 3
    assert result.stderr.strip().startswith("asgimesh: cannot use the store etcd:")
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize(
    ("value", "why"),
    [("48h", "out of range; expected a duration from 2s to 24h"), ("1s", "out of range"),
     ("soon", "")],
)
def test_control_plane_refuses_a_bad_cert_lifetime_in_one_line(tmp_path, value, why) -> None:
    result = asgimesh("control-plane", "--cert-lifetime", value, "--state-dir", str(tmp_path))
    assert result.returncode == 1
    assert result.stderr.startswith("asgimesh: --cert-lifetime: ")
    assert why in result.stderr and value in result.stderr
    assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) == 1


def test_a_stop_signal_answers_parked_polls_instead_of_cancelling_them(control_plane_process):
    """Services park long polls on the control plane all the time; on SIGTERM they are
    answered (304, or the stream ends) at once, so uvicorn's graceful shutdown does not run out
    and cancel them with a traceback each (seen in the demo's log)."""
    import signal
    import threading
    import time

    server = control_plane_process.start()
    admin = {"authorization": f"Bearer {control_plane_process.admin_token}"}
    assert httpx.put(server.url + "/v1/policy", json={}, headers=admin).status_code == 200
    ended: dict[str, tuple[int, float]] = {}

    def poll(name: str, headers: dict[str, str]) -> None:
        with httpx.Client(timeout=30) as client, client.stream(
            "GET", server.url + "/v1/policy?after=1&wait=25", headers=headers
        ) as answer:
            answer.read()
            ended[name] = (answer.status_code, time.monotonic())

    polls = [
        threading.Thread(target=poll, args=("plain", {})),
        threading.Thread(target=poll, args=("stream", {"accept": "application/x-ndjson"})),
    ]
    for thread in polls:
        thread.start()
    time.sleep(1.0)  # both parked
    assert not ended
    stopped = time.monotonic()
    server.proc.send_signal(signal.SIGTERM)
    for thread in polls:
        thread.join(timeout=10)
    assert server.proc.wait(timeout=10) is not None
    assert ended["plain"][0] == 304 and ended["plain"][1] - stopped < 3
    assert ended["stream"][0] == 304 and ended["stream"][1] - stopped < 3
    output = server.output()
    assert "Traceback" not in output and "graceful shutdown exceeded" not in output, output
