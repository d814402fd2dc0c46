"""The control-plane API in process (httpx.ASGITransport, with its lifespan), under asyncio and
trio; the real-process and long-poll-over-sockets tests are in test_processes.py."""

import base64
import hashlib
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import anyio
import httpx
import pytest

from asgimesh.controlplane import ControlPlaneConfig, create_app
from asgimesh.identity import load_bundle
from asgimesh.policy._signed import verify_policy

pytestmark = pytest.mark.anyio
ADMIN = {"authorization": "Bearer admin-secret"}


@asynccontextmanager
async def plane(tmp_path: Path, **config: object) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(ControlPlaneConfig(state_dir=tmp_path, admin_token="admin-secret", **config))
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://cp") as client:
            yield client


async def test_put_then_get_signed_version_with_etag(tmp_path: Path) -> None:
    async with plane(tmp_path) as cp:
        assert (await cp.get("/v1/policy")).json()["error"] == "no_policy"
        put = await cp.put("/v1/policy", json={"defaults": {"timeout": "2s"}}, headers=ADMIN)
        assert put.status_code == 200 and put.json() == {"version": 1}
        got = await cp.get("/v1/policy")
        assert got.headers["etag"] == '"1"'
        body = got.json()
        assert body["policy"] == {"defaults": {"timeout": "2s"}}
        bundle = load_bundle((await cp.get("/v1/trust-bundle")).content)
        assert verify_policy(body, bundle, trust_domain="mesh.local") == (
            1,
            {"defaults": {"timeout": "2s"}},
        )
        assert (await cp.get("/v1/policy", headers={"if-none-match": '"1"'})).status_code == 304


async def test_yaml_body_by_content_type(tmp_path: Path) -> None:
    async with plane(tmp_path) as cp:
        put = await cp.put(
            "/v1/policy",
            content="defaults:\n  retries: {attempts: 1, on: [503]}\n",
            headers={**ADMIN, "content-type": "application/yaml"},
        )
        assert put.status_code == 200
        policy = (await cp.get("/v1/policy")).json()["policy"]
        assert policy == {"defaults": {"retries": {"attempts": 1, "on": [503]}}}


async def test_invalid_document_lists_every_problem_and_stores_nothing(tmp_path: Path) -> None:
    async with plane(tmp_path) as cp:
        bad = {
            "defaults": {"timeout": "fast", "load_balancer": "fastest"},
            "services": {"payments": {"timout": "1s"}},
        }
        put = await cp.put("/v1/policy", json=bad, headers=ADMIN)
        assert put.status_code == 422
        body = put.json()
        assert body["error"] == "invalid_policy"
        paths = [problem.split(":")[0] for problem in body["problems"]]
        assert paths == ["defaults.timeout", "defaults.load_balancer", "services.payments.timout"]
        syntax = await cp.put("/v1/policy", content=b"{nope", headers=ADMIN)
        assert syntax.status_code == 422 and "invalid JSON" in syntax.json()["problems"][0]
        assert (await cp.get("/v1/policy")).status_code == 404


async def test_admin_calls_need_the_admin_token(tmp_path: Path) -> None:
    async with plane(tmp_path) as cp:
        for headers in ({}, {"authorization": "Bearer wrong"}, {"authorization": "Basic x"}):
            put = await cp.put("/v1/policy", json={}, headers=headers)
            assert put.status_code == 401 and put.json()["error"] == "unauthorized"
            assert put.headers["www-authenticate"] == "Bearer"
        assert (await cp.get("/v1/policy/history")).status_code == 401
        assert (await cp.post("/v1/policy/rollback", json={"version": 1})).status_code == 401
        assert (await cp.post("/v1/tokens", json={"service": "a"})).status_code == 401


async def test_history_and_rollback_make_a_new_equal_version(tmp_path: Path) -> None:
    async with plane(tmp_path) as cp:
        for timeout in ("1s", "2s", "3s"):
            await cp.put("/v1/policy", json={"defaults": {"timeout": timeout}}, headers=ADMIN)
        rolled = await cp.post("/v1/policy/rollback", json={"version": 1}, headers=ADMIN)
        assert rolled.json() == {"version": 4, "rolled_back_to": 1}
        current = (await cp.get("/v1/policy")).json()
        assert current["version"] == 4 and current["policy"] == {"defaults": {"timeout": "1s"}}
        history = (await cp.get("/v1/policy/history", headers=ADMIN)).json()["versions"]
        assert [v["version"] for v in history] == [4, 3, 2, 1]
        assert history[0]["note"] == "rollback to 1"


@pytest.mark.parametrize(
    ("body", "status", "error"),
    [
        ({"version": 99}, 404, "unknown_version"),
        ({"version": "1"}, 422, "invalid_request"),
        ({}, 422, "invalid_request"),
        (b"{not json", 400, "bad_json"),
        (b"[1]", 400, "bad_json"),
    ],
)
async def test_rollback_bad_input_is_a_clear_4xx(
    tmp_path: Path, body: object, status: int, error: str
) -> None:
    async with plane(tmp_path) as cp:
        await cp.put("/v1/policy", json={}, headers=ADMIN)
        kwargs = {"content": body} if isinstance(body, bytes) else {"json": body}
        answer = await cp.post("/v1/policy/rollback", headers=ADMIN, **kwargs)
        assert answer.status_code == status
        assert answer.json()["error"] == error and answer.json()["detail"]


async def test_bad_query_parameters_are_400(tmp_path: Path) -> None:
    async with plane(tmp_path) as cp:
        assert (await cp.get("/v1/policy?after=x")).json()["error"] == "bad_parameter"
        assert (await cp.get("/v1/policy?after=0&wait=soon")).status_code == 400


async def test_long_poll_answers_the_moment_a_version_lands(tmp_path: Path) -> None:
    async with plane(tmp_path) as cp:
        answers: list[httpx.Response] = []
        all_in = anyio.Event()

        async def poll() -> None:
            answers.append(await cp.get("/v1/policy?after=0&wait=20"))
            if len(answers) == 5:
                all_in.set()

        async with anyio.create_task_group() as tasks:
            for _ in range(5):
                tasks.start_soon(poll)
            await anyio.sleep(0.1)
            assert answers == []
            with anyio.fail_after(2):  # far less than the 20 s wait
                await cp.put("/v1/policy", json={}, headers=ADMIN)
                await all_in.wait()
        assert {a.status_code for a in answers} == {200}
        assert {a.json()["version"] for a in answers} == {1}
        with anyio.fail_after(2):
            assert (await cp.get("/v1/policy?after=1&wait=0.2")).status_code == 304
        assert (await cp.get("/v1/policy?after=0&wait=5")).json()["version"] == 1


async def test_wait_is_capped(tmp_path: Path) -> None:
    async with plane(tmp_path, max_wait=0.2) as cp:
        with anyio.fail_after(3):
            assert (await cp.get("/v1/policy?after=0&wait=3600")).status_code == 304


async def test_tokens_are_stored_hashed_and_scope_reports(tmp_path: Path) -> None:
    async with plane(tmp_path, stale_after=0.5) as cp:
        token = (await cp.post("/v1/tokens", json={"service": "orders"}, headers=ADMIN)).json()[
            "token"
        ]
        assert token.encode() not in (tmp_path / "controlplane.db").read_bytes()
        report = {
            "service": "orders",
            "instance": "i-1",
            "policy_version": 0,
            "requests": 10,
            "requests_per_second": 2.0,
            "success_rate": 0.9,
            "p50_ms": 1.5,
            "p99_ms": 7.0,
        }
        bearer = {"authorization": f"Bearer {token}"}
        assert (await cp.post("/v1/reports", json=report, headers=bearer)).status_code == 200
        other = {**report, "service": "payments"}
        assert (await cp.post("/v1/reports", json=other, headers=bearer)).status_code == 403
        unknown = {"authorization": "Bearer mst_unknown"}
        assert (await cp.post("/v1/reports", json=report, headers=unknown)).status_code == 401
        missing = await cp.post("/v1/reports", json={"service": "orders"}, headers=bearer)
        assert missing.status_code == 422 and "instance: required" in missing.json()["detail"]
        services = (await cp.get("/v1/services")).json()["services"]
        assert services[0]["service"] == "orders" and services[0]["success_rate"] == 0.9
        assert services[0]["instances"][0]["instance"] == "i-1"
        await anyio.sleep(0.6)
        assert (await cp.get("/v1/services")).json()["services"] == []


async def test_token_needs_a_valid_service_name(tmp_path: Path) -> None:
    async with plane(tmp_path) as cp:
        answer = await cp.post("/v1/tokens", json={"service": "no spaces"}, headers=ADMIN)
        assert answer.status_code == 422 and "service" in answer.json()["detail"]


async def test_certificates_for_the_tokens_service(tmp_path: Path) -> None:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    key = ec.generate_private_key(ec.SECP256R1())
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([]))
        .sign(key, hashes.SHA256())
        .public_bytes(serialization.Encoding.PEM)
    )
    async with plane(tmp_path) as cp:
        token = (
            await cp.post(
                "/v1/tokens", json={"service": "orders", "namespace": "shop"}, headers=ADMIN
            )
        ).json()["token"]
        answer = await cp.post(
            "/v1/certificates",
            json={"csr": csr.decode()},
            headers={"authorization": f"Bearer {token}"},
        )
        assert answer.status_code == 200
        leaf = load_bundle(answer.content)[0]
        san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        assert san.get_values_for_type(x509.UniformResourceIdentifier) == [
            "spiffe://mesh.local/ns/shop/sa/orders"
        ]
        assert (await cp.post("/v1/certificates", content=csr)).status_code == 401


async def test_dashboard_is_one_self_contained_page(tmp_path: Path) -> None:
    async with plane(tmp_path) as cp:
        page = await cp.get("/")
        assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
        assert "v1/services" in page.text and "v1/policy" in page.text
        # No address to fetch from: the one URL is the SVG namespace, a name, not a resource.
        text = page.text.lower().replace("http-equiv", "").replace("http://www.w3.org/2000/svg", "")
        assert "http" not in text
        assert "innerHTML" not in page.text and "eval(" not in page.text
        csp = page.headers["content-security-policy"]
        assert "default-src 'none'" in csp and "connect-src 'self'" in csp
        script = page.text.split("<script>", 1)[1].split("</script>", 1)[0]
        digest = base64.b64encode(hashlib.sha256(script.encode()).digest()).decode()
        assert f"script-src 'sha256-{digest}'" in csp
        assert page.headers["x-content-type-options"] == "nosniff"


async def test_services_name_the_current_version_and_when_it_was_stored(tmp_path: Path) -> None:
    async with plane(tmp_path) as cp:
        empty = (await cp.get("/v1/services")).json()
        assert empty == {
            "policy_version": 0,
            "policy_created": None,
            "source": "reports",
            "services": [],
            "edges": [],
        }
        before = time.time()
        await cp.put("/v1/policy", json={}, headers=ADMIN)
        answer = (await cp.get("/v1/services")).json()
        assert answer["policy_version"] == 1
        assert before - 1 <= answer["policy_created"] <= time.time() + 1


async def test_keys_survive_a_restart_in_the_state_dir(tmp_path: Path) -> None:
    async with plane(tmp_path) as cp:
        await cp.put("/v1/policy", json={}, headers=ADMIN)
        bundle = (await cp.get("/v1/trust-bundle")).content
    async with plane(tmp_path) as cp:
        assert (await cp.get("/v1/trust-bundle")).content == bundle
        assert (await cp.get("/v1/policy")).json()["version"] == 1


async def test_unknown_paths_and_bad_csr_bodies_are_json_4xx(tmp_path: Path) -> None:
    async with plane(tmp_path) as cp:
        missing = await cp.get("/v2/nothing")
        assert missing.status_code == 404 and missing.json()["error"] == "not_found"
        wrong_method = await cp.delete("/v1/policy")
        assert wrong_method.status_code == 405 and "error" in wrong_method.json()
        bad = await cp.post(
            "/v1/certificates",
            content=b"{oops",
            headers={**ADMIN, "content-type": "application/json"},
        )
        assert bad.status_code == 400 and bad.json()["error"] == "bad_json"
        garbage = await cp.post(
            "/v1/certificates",
            json={"csr": "junk", "service": "orders"},
            headers=ADMIN,
        )
        assert garbage.status_code == 422 and garbage.json()["error"] == "invalid_csr"
