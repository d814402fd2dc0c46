"""App errors through real servers: one secret-free ``app_error`` line per failure.

The endpoints of :mod:`tests.telemetry.apps_errors` fail holding the request's credentials in
their locals, with ``rich`` installed, so a pretty traceback would print them. Everything the
server process writes (stdout, stderr, its logging) is searched for them.
"""

from __future__ import annotations

import json
import time

import httpx
import pytest

pytest.importorskip("rich")  # the point of these tests: rich is installed

SECRETS = {
    "authorization": "Bearer tok-3f1d9a77e2",
    "cookie": "session=ck-91b2c4d0aa",
    "mesh-identity": "eyJhbGciOiJFUzI1NiJ9.eyJzdWIiOiJ4In0.sig-55e0c1",
}
#: Fragments of the values above that no rendering (quoted, repr'd, cut) could hide.
FRAGMENTS = ("tok-3f1d9a77e2", "ck-91b2c4d0aa", "sig-55e0c1")
#: In the query string: the server's own access log may print it, the mesh's lines never do.
QUERY_SECRET = "4111111111111111"


def _fail_three_times(url: str) -> None:
    for i in range(3):
        response = httpx.get(
            f"{url}/charge/42?card=4111111111111111",
            headers={**SECRETS, "x-request-id": f"req-{i}"},
            timeout=10,
        )
        assert response.status_code == 500


def _events(output: str) -> list[dict[str, object]]:
    events = []
    for line in output.splitlines():
        if line.startswith("{"):
            events.append(json.loads(line))
    return events


def _wait_for(process, text: str, count: int) -> str:
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        output = process.output()
        if output.count(text) >= count:
            return output
        time.sleep(0.05)
    return process.output()


@pytest.mark.parametrize("host_logging", ["unconfigured", "console"])
def test_uvicorn_app_errors_log_one_line_without_secrets(spawn, host_logging) -> None:
    env = {"MESH_SERVICE": "shop", "MESH_ACCESS_LOG": "true"}
    if host_logging == "console":
        env["HOST_LOGGING"] = "console"
    server = spawn.uvicorn("tests.telemetry.apps_errors:app", env=env, extra=["--log-level", "info"])
    _fail_three_times(server.url)
    output = _wait_for(server, "Traceback (most recent call last)", 3)
    for fragment in FRAGMENTS:
        assert fragment not in output, f"{fragment!r} leaked into the server's output"
    # uvicorn prints the re-raised exception's traceback once per request; the mesh adds none.
    assert output.count("Traceback (most recent call last)") == 3
    assert "locals" not in output.lower()
    if host_logging == "unconfigured":
        assert all(QUERY_SECRET not in json.dumps(e) for e in _events(output))
        errors = [e for e in _events(output) if e["event"] == "app_error"]
        assert [e["request_id"] for e in errors] == ["req-0", "req-1", "req-2"]
        first = errors[0]
        assert first["error_type"] == "RuntimeError"
        assert first["message"] == "charge of order 42 failed"
        assert first["route"] == "/charge/{order}" and "path" not in first
        assert (first["method"], first["status"], first["level"]) == ("GET", 500, "error")
        assert len(str(first["trace_id"])) == 32
        requests = [e for e in _events(output) if e["event"] == "request"]
        assert [e["status"] for e in requests] == [500, 500, 500]
    else:
        # The host's own console renderer shows the event, still without a traceback of ours.
        assert output.count("app_error") == 3
        assert "error_type=RuntimeError" in output or "RuntimeError" in output


def test_gunicorn_app_errors_log_one_line_without_secrets(spawn) -> None:
    server = spawn.gunicorn(
        "tests.telemetry.apps_errors:wsgi_app",
        env={"MESH_SERVICE": "shop", "MESH_ACCESS_LOG": "true"},
        extra=["--log-level", "info"],
    )
    _fail_three_times(server.url)
    output = _wait_for(server, '"event": "app_error"', 3)
    for fragment in FRAGMENTS:
        assert fragment not in output, f"{fragment!r} leaked into the server's output"
    assert output.count("Traceback (most recent call last)") == 3  # gunicorn's own, one each
    errors = [e for e in _events(output) if e["event"] == "app_error"]
    assert [e["request_id"] for e in errors] == ["req-0", "req-1", "req-2"]
    assert errors[0]["path"] == "/charge/42" and errors[0]["message"] == "charge failed"
