"""``POST /v1/jwt-svids`` and ``GET /v1/jwt-bundle`` on a real control plane (uvicorn on a
loopback port): a service token gets tokens naming its own service only, for the one audience
it asks, living at most five minutes; the JWKS verifies them; the key survives a restart."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import jwt
import pytest

from asgimesh.identity._jwt import JWTVerifier, parse_jwks
from asgimesh.testing import ControlPlaneHandle, control_plane

ORDERS = "spiffe://mesh.local/ns/default/sa/orders"
PAYMENTS = "spiffe://mesh.local/ns/default/sa/payments"


@pytest.fixture(scope="module")
def cp() -> Iterator[ControlPlaneHandle]:
    with control_plane() as handle:
        yield handle


def token_of(cp: ControlPlaneHandle, service: str) -> str:
    response = httpx.post(
        cp.url + "/v1/tokens", json={"service": service}, headers=cp.admin_headers, timeout=5
    )
    response.raise_for_status()
    return str(response.json()["token"])


def ask(cp: ControlPlaneHandle, bearer: str, body: object) -> httpx.Response:
    return httpx.post(
        cp.url + "/v1/jwt-svids",
        json=body,
        headers={"authorization": f"Bearer {bearer}"},
        timeout=5,
    )


def verify(cp: ControlPlaneHandle, token: str, audience: str = PAYMENTS) -> str | None:
    keys = parse_jwks(httpx.get(cp.url + "/v1/jwt-bundle", timeout=5).content)
    return JWTVerifier(audience, lambda: None, jwks=lambda: keys).verify(token, time.time())[0]


def test_a_service_token_gets_a_token_naming_its_own_service(cp: ControlPlaneHandle) -> None:
    before = time.time()
    # Whatever the body claims, the token speaks for the service its bearer token belongs to.
    response = ask(
        cp, token_of(cp, "orders"),
        {"audience": PAYMENTS, "sub": PAYMENTS, "service": "payments", "lifetime": 86400},
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["spiffe_id"] == ORDERS
    claims = jwt.decode(body["token"], options={"verify_signature": False})
    assert claims["sub"] == ORDERS and claims["aud"] == PAYMENTS
    assert claims["exp"] == body["expires_at"] and claims["exp"] <= before + 301  # capped
    assert verify(cp, body["token"]) == ORDERS
    assert verify(cp, body["token"], "spiffe://mesh.local/ns/default/sa/billing") is None


def test_the_jwks_is_public_keys_only(cp: ControlPlaneHandle) -> None:
    response = httpx.get(cp.url + "/v1/jwt-bundle", timeout=5)
    assert response.status_code == 200
    (key,) = response.json()["keys"]
    assert key["kty"] == "EC" and key["alg"] == "ES256" and "d" not in key
    assert response.headers["cache-control"] == "max-age=60"


@pytest.mark.parametrize(
    ("body", "status", "code", "says"),
    [
        ({}, 422, "invalid_audience", "audience: expected the SPIFFE ID of the service to call"),
        ({"audience": "https://payments"}, 422, "invalid_audience", '"https://payments"'),
        (
            {"audience": "spiffe://other.domain/ns/default/sa/payments"},
            422, "invalid_audience", "trust domain 'mesh.local'",
        ),
        ({"audience": PAYMENTS, "lifetime": "long"}, 422, "invalid_request", "lifetime"),
        ([PAYMENTS], 400, "bad_json", "expected a JSON object"),
    ],
)
def test_bad_requests_are_named(
    cp: ControlPlaneHandle, body: object, status: int, code: str, says: str
) -> None:
    response = ask(cp, token_of(cp, "orders"), body)
    assert response.status_code == status, response.text
    assert response.json()["error"] == code and says in response.json()["detail"]


def test_no_token_or_an_unknown_one_gets_nothing(cp: ControlPlaneHandle) -> None:
    assert ask(cp, "mst_unknown", {"audience": PAYMENTS}).status_code == 401
    response = httpx.post(cp.url + "/v1/jwt-svids", json={"audience": PAYMENTS}, timeout=5)
    assert response.status_code == 401 and "token" not in response.json()


def test_the_admin_names_the_service(cp: ControlPlaneHandle) -> None:
    admin = cp.admin_token
    assert ask(cp, admin, {"audience": PAYMENTS}).status_code == 422
    response = ask(cp, admin, {"audience": PAYMENTS, "service": "orders"})
    assert response.status_code == 200 and response.json()["spiffe_id"] == ORDERS


def test_the_key_is_kept_in_the_state_dir_across_restarts(tmp_path: Path) -> None:
    with control_plane(state_dir=tmp_path) as first:
        kid = httpx.get(first.url + "/v1/jwt-bundle", timeout=5).json()["keys"][0]["kid"]
        token = ask(first, token_of(first, "orders"), {"audience": PAYMENTS}).json()["token"]
    path = tmp_path / "jwt-signing-key.pem"
    assert os.stat(path).st_mode & 0o777 == 0o600
    with control_plane(state_dir=tmp_path) as second:
        again = httpx.get(second.url + "/v1/jwt-bundle", timeout=5).json()["keys"][0]["kid"]
        assert again == kid
        assert verify(second, token) == ORDERS  # tokens made before the restart still verify
