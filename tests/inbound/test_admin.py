"""The admin paths (contract, section 6), for both shells: who may call, and the exact answers."""

from __future__ import annotations

import json

import pytest

from asgimesh.inbound._admin import is_loopback

TOKEN = "s3cret-admin-token"


def test_health(make_shell) -> None:
    response = make_shell(service="payments").get("/_mesh/health")
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    assert response.json() == {"status": "ok", "service": "payments", "policy_version": 1}
    # operators' calls are not mesh traffic: no request id, no count
    assert "x-request-id" not in response.headers


def test_health_from_any_client(make_shell) -> None:
    response = make_shell().get("/_mesh/health", client="10.1.2.3")
    assert response.status_code == 200


def test_metrics_are_prometheus_text(make_shell) -> None:
    shell = make_shell(service="payments")
    shell.get("/whoami")
    response = shell.get("/_mesh/metrics", client="10.1.2.3")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain; version=")
    text = response.text
    assert "# TYPE mesh_inbound_requests_total counter" in text
    assert 'mesh_inbound_requests_total{method="GET",service="payments",status="200"} 1.0' in text
    assert 'mesh_inbound_request_duration_seconds_count{service="payments"} 1.0' in text


def test_head_on_health_has_no_body(make_shell) -> None:
    response = make_shell().request("HEAD", "/_mesh/health")
    assert response.status_code == 200
    assert response.content == b""


def test_wrong_method_on_admin_path(make_shell) -> None:
    response = make_shell().request("POST", "/_mesh/health")
    assert response.status_code == 405
    assert response.headers["allow"] == "GET, HEAD"
    assert response.json() == {
        "error": "method_not_allowed",
        "detail": "/_mesh/health answers GET and HEAD, got POST",
    }


def test_config_from_loopback_without_admin_token(make_shell) -> None:
    policy = json.dumps(
        {
            "defaults": {"timeout": "3s"},
            "services": {"payments": {"endpoints": ["http://127.0.0.1:9"]}},
        }
    )
    shell = make_shell(service="orders", policy=policy, retries=4, token="svc-token-xyz")
    response = shell.get("/_mesh/config")
    assert response.status_code == 200
    body = response.json()
    assert body["service"] == "orders"
    assert body["policy_version"] == 1
    assert body["policy"]["defaults"]["timeout"] == 3.0
    assert body["origin"]["defaults.timeout"] == "MESH_POLICY"
    assert body["origin"]["defaults.retries.attempts"] == "env"
    assert body["origin"]["defaults.per_try_timeout"] == "default"
    assert body["origin"]["services.payments.endpoints"] == "MESH_POLICY"
    assert body["settings"]["token"] == "<set>"
    assert body["settings"]["admin_token"] is None
    assert "svc-token-xyz" not in response.text


def test_config_never_shows_url_credentials(make_shell) -> None:
    shell = make_shell(
        service="orders",
        # Port 9 on loopback refuses at once; serverless mode keeps it from being retried.
        config="http://ops:config-pw@127.0.0.1:9/?refresh=1h",
        upstreams="payments=http://svc:upstream-pw@127.0.0.1:9",
        policy=json.dumps(
            {"services": {"ledger": {"endpoints": ["http://ops:policy-pw@127.0.0.1:9"]}}}
        ),
    )
    response = shell.get("/_mesh/config")
    assert response.status_code == 200
    for secret in ("config-pw", "upstream-pw", "policy-pw"):
        assert secret not in response.text
    body = response.json()
    assert body["settings"]["upstreams"] == "payments=http://<redacted>@127.0.0.1:9"
    assert body["policy"]["services"]["ledger"]["endpoints"] == ["http://<redacted>@127.0.0.1:9"]
    assert body["settings"]["config"] == "http://<redacted>@127.0.0.1:9/?refresh=1h"


def test_config_from_ipv6_loopback(make_shell) -> None:
    assert make_shell().get("/_mesh/config", client="::1").status_code == 200


def test_config_refused_to_non_loopback_without_admin_token(make_shell) -> None:
    response = make_shell().get("/_mesh/config", client="10.1.2.3")
    assert response.status_code == 403
    assert response.json() == {
        "error": "forbidden",
        "detail": "/_mesh/config is open to loopback clients only while MESH_ADMIN_TOKEN is not "
        "set; the client address is 10.1.2.3",
    }


def test_config_with_the_admin_token(make_shell) -> None:
    shell = make_shell(admin_token=TOKEN)
    response = shell.get(
        "/_mesh/config", headers={"authorization": f"Bearer {TOKEN}"}, client="10.1.2.3"
    )
    assert response.status_code == 200
    assert response.json()["settings"]["admin_token"] == "<set>"
    assert TOKEN not in response.text


def test_config_without_a_token_when_one_is_set(make_shell) -> None:
    # loopback is not enough once an admin token is set
    response = make_shell(admin_token=TOKEN).get("/_mesh/config", client="127.0.0.1")
    assert response.status_code == 401
    assert response.headers["www-authenticate"] == 'Bearer realm="asgimesh"'
    assert response.json() == {
        "error": "unauthorized",
        "detail": "/_mesh/config needs the header 'Authorization: Bearer <MESH_ADMIN_TOKEN>'",
    }


@pytest.mark.parametrize("authorization", ["Basic abc", "Bearer", "Bearer   ", TOKEN])
def test_config_with_a_malformed_authorization(make_shell, authorization: str) -> None:
    response = make_shell(admin_token=TOKEN).get(
        "/_mesh/config", headers={"authorization": authorization}
    )
    assert response.status_code == 401
    assert response.json()["error"] == "unauthorized"


@pytest.mark.parametrize("wrong", [TOKEN + "x", TOKEN[:-1], "nope"])
def test_config_with_a_wrong_token(make_shell, wrong: str) -> None:
    response = make_shell(admin_token=TOKEN).get(
        "/_mesh/config", headers={"authorization": f"Bearer {wrong}"}
    )
    assert response.status_code == 403
    assert response.json() == {
        "error": "forbidden",
        "detail": "the bearer token does not match MESH_ADMIN_TOKEN",
    }
    assert TOKEN not in response.text


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("127.0.0.1", True),
        ("127.8.9.10", True),
        ("::1", True),
        ("::ffff:127.0.0.1", True),
        ("10.0.0.1", False),
        ("::ffff:10.0.0.1", False),
        ("localhost", False),  # a name, not an address the server saw
        ("", False),
        (None, False),
        ("testclient", False),
    ],
)
def test_is_loopback(host: str | None, loopback: bool) -> None:
    assert is_loopback(host) is loopback
