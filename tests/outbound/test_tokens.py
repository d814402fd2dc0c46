"""``mesh-identity`` tokens end to end, over real loopback sockets: where TLS ends before the
app (a plain-HTTP endpoint, as behind a serverless host's load balancer), a permissive caller's
transport sends a control-plane-signed token for the service it calls, made once and reused;
the callee's middleware verifies it against the control plane's JWKS and knows the caller —
in strict mode, only then serves. Never sent to hosts outside the mesh, never with
``MESH_MTLS=off``; an app's own ``mesh-identity`` header never reaches a mesh service."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import jwt
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from asgimesh import (
    AsyncMeshTransport,
    MeshMiddleware,
    MeshRuntime,
    MeshSettings,
    MeshTransport,
    current_context,
)
from asgimesh.testing import ControlPlaneHandle, control_plane, serve_in_thread

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


async def whoami(request: Request) -> JSONResponse:
    context = current_context()
    header = request.headers.get("mesh-identity")
    return JSONResponse(
        {
            "caller": context.caller if context is not None else None,
            "token": hashlib.sha256(header.encode()).hexdigest()[:16] if header else None,
        }
    )


@pytest.fixture(scope="module", params=["permissive", "strict"])
def payments(request: pytest.FixtureRequest, cp: ControlPlaneHandle) -> Iterator[tuple[str, str]]:
    """``payments`` behind ``MeshMiddleware`` on plain HTTP (TLS ended before it), its own
    identity and the JWKS from the control plane: ``(url, MESH_MTLS)``."""
    runtime = MeshRuntime(
        MeshSettings.from_env(
            service="payments", mtls=request.param, config=cp.url, token=token_of(cp, "payments")
        ),
        start=False,
    )
    app = MeshMiddleware(Starlette(routes=[Route("/whoami", whoami)]), runtime=runtime)
    with serve_in_thread(app) as server:
        yield f"http://127.0.0.1:{server.config.port}", request.param
    runtime.close()


@pytest.fixture
def make_orders(
    cp: ControlPlaneHandle, payments: tuple[str, str]
) -> Iterator[Callable[..., MeshRuntime]]:
    made: list[MeshRuntime] = []

    def make(**settings: Any) -> MeshRuntime:
        settings = {
            "mtls": "permissive",
            "config": cp.url,
            "token": token_of(cp, "orders"),
            "upstreams": f"payments={payments[0]}",
            **settings,
        }
        runtime = MeshRuntime(MeshSettings.from_env(service="orders", **settings), start=False)
        made.append(runtime)
        return runtime

    yield make
    for runtime in made:
        runtime.close()


@pytest.mark.anyio
async def test_a_permissive_caller_is_known_by_its_token(make_orders, payments) -> None:
    orders = make_orders()
    async with httpx.AsyncClient(transport=AsyncMeshTransport(runtime=orders)) as client:
        answers = [(await client.get("http://payments/whoami")).json() for _ in range(5)]
        # The app's own header never reaches a mesh service: the mesh's token replaces it.
        forged = jwt.encode({"sub": PAYMENTS, "aud": PAYMENTS}, key=None, algorithm="none")
        spoofed = (
            await client.get("http://payments/whoami", headers={"mesh-identity": forged})
        ).json()
    assert {a["caller"] for a in answers} == {ORDERS}
    # One token, made once and reused by every call (ES256 signatures differ every time).
    assert len({a["token"] for a in answers}) == 1 and answers[0]["token"] is not None
    assert spoofed == answers[0]


def test_the_sync_transport_sends_it_too(make_orders, payments) -> None:
    with httpx.Client(transport=MeshTransport(runtime=make_orders())) as client:
        answer = client.get("http://payments/whoami").json()
    assert answer["caller"] == ORDERS


@pytest.mark.anyio
async def test_never_to_a_host_outside_the_mesh(make_orders, payments) -> None:
    async with httpx.AsyncClient(transport=AsyncMeshTransport(runtime=make_orders())) as client:
        assert (await client.get("http://payments/whoami")).json()["caller"] == ORDERS
        # The same server, by address: not a mesh service, so no token goes with it.
        response = await client.get(payments[0] + "/whoami")
    if payments[1] == "strict":
        assert response.status_code == 401
    else:
        assert response.json() == {"caller": None, "token": None}


def test_never_with_mtls_off(make_orders, payments) -> None:
    with httpx.Client(transport=MeshTransport(runtime=make_orders(mtls="off"))) as client:
        response = client.get("http://payments/whoami")
    if payments[1] == "strict":
        assert response.status_code == 401
        assert response.json()["error"] == "unauthenticated"
    else:
        assert response.json() == {"caller": None, "token": None}


@pytest.mark.parametrize(
    "forge",
    [
        pytest.param(lambda t: jwt.encode({"sub": ORDERS, "aud": PAYMENTS}, None, "none"),
                     id="alg-none"),
        pytest.param(lambda t: t[:-4] + ("AAAA" if not t.endswith("AAAA") else "BBBB"),
                     id="bad-signature"),
        pytest.param(lambda t: "x" * 9000, id="oversized"),
    ],
)
def test_forged_tokens_are_no_identity(
    cp: ControlPlaneHandle, payments, forge: Callable[[str], str]
) -> None:
    good = httpx.post(
        cp.url + "/v1/jwt-svids",
        json={"audience": PAYMENTS},
        headers={"authorization": f"Bearer {token_of(cp, 'orders')}"},
        timeout=5,
    ).json()["token"]
    # Straight from a plain client: the good token is believed...
    ok = httpx.get(payments[0] + "/whoami", headers={"mesh-identity": good}, timeout=5)
    assert ok.json()["caller"] == ORDERS
    # ...and a forged one counts as none: 401 in strict mode, an unknown caller otherwise.
    response = httpx.get(payments[0] + "/whoami", headers={"mesh-identity": forge(good)}, timeout=5)
    if payments[1] == "strict":
        assert response.status_code == 401
    else:
        assert response.status_code == 200 and response.json()["caller"] is None


def test_file_identities_sign_their_own_tokens(tmp_path) -> None:
    """No control plane: the caller signs with its certificate's key (``x5c``), and the callee
    believes it because the chain verifies against the trust bundle and names ``sub``."""
    from asgimesh.testing import ThrowawayCA

    ca = ThrowawayCA("mesh.local")
    mine = ca.issue(ORDERS).write(tmp_path / "orders")
    theirs = ca.issue(PAYMENTS).write(tmp_path / "payments")
    callee = MeshRuntime(
        MeshSettings.from_env(
            service="payments", mtls="strict", cert=theirs.cert, key=theirs.key, ca=theirs.ca
        ),
        start=False,
    )
    app = MeshMiddleware(Starlette(routes=[Route("/whoami", whoami)]), runtime=callee)
    with serve_in_thread(app) as server:
        url = f"http://127.0.0.1:{server.config.port}"
        caller = MeshRuntime(
            MeshSettings.from_env(
                service="orders", mtls="permissive", cert=mine.cert, key=mine.key, ca=mine.ca,
                upstreams=f"payments={url}",
            ),
            start=False,
        )
        try:
            with httpx.Client(transport=MeshTransport(runtime=caller)) as client:
                answers = [client.get("http://payments/whoami").json() for _ in range(3)]
            stranger = ThrowawayCA("mesh.local").issue(ORDERS).write(tmp_path / "stranger")
            foreign = MeshRuntime(
                MeshSettings.from_env(
                    service="orders", mtls="permissive", cert=stranger.cert, key=stranger.key,
                    ca=stranger.ca, upstreams=f"payments={url}",
                ),
                start=False,
            )
            with httpx.Client(transport=MeshTransport(runtime=foreign)) as client:
                refused = client.get("http://payments/whoami")
            foreign.close()
        finally:
            caller.close()
    callee.close()
    assert {a["caller"] for a in answers} == {ORDERS} and len({a["token"] for a in answers}) == 1
    assert refused.status_code == 401  # signed by a key no trusted CA vouches for
