"""100,000 randomised inbound requests through the mesh under uvicorn and under gunicorn (the
WSGI twin), over raw loopback sockets: not one 500 of the mesh's, not one answer outside what
the mesh, the app or the server's own parser may give, not one traceback in the server's log.

The app behind the mesh (``apps_fuzz.py``) runs with the mesh's features on: authorization (only
``orders`` may reach ``/secure``), a rate limit and a concurrency limit, ``MESH_MTLS=permissive``
with file identities (so ``mesh-identity`` tokens and forwarded certificates from the trusted
proxy, loopback, are parsed and verified), outbound fault injection on ``/call``, OpenTelemetry
spans, metrics and the access log. The requests come from :mod:`tests.inbound.fuzzing`, seeded:
``FUZZ_SEED`` and ``FUZZ_REQUESTS`` change the seed and the count (defaults: a fixed seed and
100,000); a failure prints the seed, the request's index and bytes, and the answer.
"""

from __future__ import annotations

import asyncio
import collections
import json
import os
import time
from pathlib import Path

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from asgimesh.testing import ThrowawayCA

from .fuzzing import (
    ORDERS,
    SERVER_STATUSES,
    Credentials,
    FuzzRequest,
    FuzzResponse,
    RequestMaker,
    run,
    verdict,
)

COUNT = int(os.environ.get("FUZZ_REQUESTS", "100000"))
SEED = int(os.environ.get("FUZZ_SEED", "20261204"))
SERVICE = "fuzzed"
SERVICE_ID = f"spiffe://mesh.local/ns/default/sa/{SERVICE}"
ADMIN_TOKEN = "fuzz-admin-token-not-a-secret"

POLICY = {
    "services": {
        # Never dialled: the fault answers every call itself (port 9 would refuse anyway).
        "faulty": {
            "endpoints": ["http://127.0.0.1:9"],
            "fault": {"abort": {"percent": 100, "status": 503},
                      "delay": {"percent": 10, "duration": "1ms"}},
            "retries": {"attempts": 0},
        },
    },
    "inbound": {
        SERVICE: {
            "authorization": [
                {"allow": {"from": [ORDERS], "paths": ["/secure*"]}},
                {"allow": {"paths": ["/", "/echo*", "/call*"]}},
            ],
            "rate_limit": {"requests_per_second": 150, "burst": 50},
            "concurrency_limit": 6,
            "trusted_proxies": ["127.0.0.1"],
        }
    },
}  # fmt: skip


def _credentials(ca: ThrowawayCA) -> Credentials:
    orders = ca.issue(ORDERS)
    foreign = ThrowawayCA("mesh.local").issue(ORDERS)
    now = int(time.time())
    x5c = {"x5c": [_der(orders.cert_pem)]}

    def token(key: object, headers: dict, algorithm: str = "ES256", **claims: object) -> str:
        body = {"sub": ORDERS, "aud": SERVICE_ID, "iat": now, "exp": now + 280, **claims}
        return jwt.encode(body, key, algorithm=algorithm, headers=headers)  # type: ignore[arg-type]

    return Credentials(
        admin_token=ADMIN_TOKEN,
        good_token=token(orders.key, x5c),
        bad_tokens=[
            token(orders.key, x5c, exp=now - 100),
            token(orders.key, x5c, aud="spiffe://mesh.local/ns/default/sa/other"),
            token(orders.key, x5c, sub="spiffe://mesh.local/ns/default/sa/admin"),
            token(foreign.key, {"x5c": [_der(foreign.cert_pem)]}),
            token(ec.generate_private_key(ec.SECP256R1()), x5c),
            token(None, x5c, algorithm="none"),
            token(orders.key, {"kid": "nope"}),
            token(orders.key, x5c, exp=now + 3600),
        ],
        good_pem=orders.cert_pem.decode(),
        foreign_pem=foreign.cert_pem.decode(),
    )


def _der(pem: bytes) -> str:
    return "".join(line for line in pem.decode().splitlines() if "-----" not in line)


@pytest.fixture(params=["uvicorn", "gunicorn"])
def fuzzed_server(request, spawn, tmp_path):
    ca = ThrowawayCA("mesh.local")
    files = ca.issue(SERVICE_ID).write(tmp_path / "identity")
    env = {
        "MESH_SERVICE": SERVICE,
        "MESH_MTLS": "permissive",
        "MESH_ADMIN_TOKEN": ADMIN_TOKEN,
        "MESH_ACCESS_LOG": "true",
        "MESH_POLICY": json.dumps(POLICY),
        **files.env(),
    }
    if request.param == "uvicorn":
        server = spawn.uvicorn(
            "tests.inbound.apps_fuzz:asgi_app",
            env=env,
            ready_path="/_mesh/health",
            extra=["--http", "h11", "--no-access-log", "--timeout-keep-alive", "30"],
        )
    else:
        server = spawn.gunicorn(
            "tests.inbound.apps_fuzz:wsgi_app",
            env=env,
            ready_path="/_mesh/health",
            extra=["--worker-class", "gthread", "--threads", "8", "--keep-alive", "30"],
        )
    return request.param, server, _credentials(ca)


@pytest.mark.timeout(600)
def test_randomised_requests_get_no_500_from_the_mesh(fuzzed_server) -> None:
    name, server, credentials = fuzzed_server
    statuses: collections.Counter[int] = collections.Counter()
    failures: list[str] = []
    counts = collections.Counter[str]()

    def check(request: FuzzRequest, response: FuzzResponse) -> bool:
        statuses[response.status] += 1
        by_server = response.header("x-request-id") is None and response.status in SERVER_STATUSES
        counts["server" if by_server and not _is_json(response) else "mesh"] += 1
        problem = verdict(request, response)
        if problem is not None:
            counts["wrong"] += 1
            counts["mesh_500s"] += response.status == 500
            if len(failures) < 8:
                failures.append(f"{problem}: {_describe(request, response)}")
        return False

    requests = RequestMaker(SEED, credentials)
    limited = (next(requests) for _ in range(COUNT))
    # Up to 16 requests pipelined at a time on each of 8 connections. uvicorn keeps them
    # open; gunicorn's threaded worker gets a new one for each batch: it notices that a
    # kept-alive connection's request is done only at its next event or after a second's
    # poll, so reused connections would wait there, not in the mesh.
    keep_alive = name == "uvicorn"
    result = asyncio.run(
        run(server.port, limited, connections=8, depth=16, keep_alive=keep_alive, on_answer=check)
    )
    output = server.output()
    answered = sum(statuses.values())
    print(
        f"\nfuzz {name}: {COUNT} requests, {answered} answered, "
        f"{len(result.unanswered)} unanswered, {result.connections} connections, "
        f"{result.seconds:.1f}s; statuses {dict(sorted(statuses.items()))}"
    )
    problems = _log_problems(output)
    _write_figures(
        f"fuzz-{name}",
        server=name, requests=COUNT, mesh=counts["mesh"],
        server_only=counts["server"] + len(result.unanswered), mesh_500s=counts["mesh_500s"],
        wrong=counts["wrong"], tracebacks=len(problems), seconds=round(result.seconds, 1),
    )  # fmt: skip
    assert not failures, "\n".join(failures)
    assert statuses[500] == 0
    assert not problems, "\n----\n".join(problems[:3])
    # Most requests reach the mesh and many the app; the rest are refusals of each kind (the
    # faster the machine, the more the rate limit refuses: 8-10% reach the app on a fast one).
    assert statuses[200] > COUNT * 0.04, statuses
    assert statuses[403] > 0 and statuses[504] > 0, statuses
    # The server closed on some without an answer (its parser refused them, and the refusal
    # was lost to the reset of a connection it closed with bytes unread): only on those its
    # parser may refuse; whatever reached the mesh was answered.
    lost = [r for r in result.unanswered if not r.server_may_refuse]
    assert not lost, [_describe(r, None) for r in lost[:5]]


def _is_json(response: FuzzResponse) -> bool:
    return (response.header("content-type") or "").startswith("application/json")


def _write_figures(name: str, **figures: object) -> None:
    """For ``bench/bench_reliability.py``: the run's figures, where it asks for them."""
    out = os.environ.get("ASGIMESH_RELIABILITY_OUT")
    if out:
        Path(out).mkdir(parents=True, exist_ok=True)
        (Path(out) / f"{name}.json").write_text(json.dumps(figures))


def _describe(request: FuzzRequest, response: FuzzResponse | None) -> str:
    from .fuzzing import describe

    return describe(request, response, SEED)


#: uvicorn's own failures (0.55, h11), whatever the app, all after it has answered a request
#: its parser refused with its own 400 and closed: an app's answer sent after that (a body
#: whose bad chunk arrives once the app has started, or a pipelined request past h11's buffer
#: while the previous response is being written) raises one of these in uvicorn's frames. A
#: bare ASGI app that answers without reading the body shows the same tracebacks.
UVICORN_AFTER_400 = (
    "when role=SERVER and state=MUST_CLOSE",
    "when our state is ERROR",
    "and state=ERROR",
)


def _log_problems(output: str) -> list[str]:
    """Each traceback and error event in a server's log, with context, but uvicorn's own."""
    lines = output.splitlines()
    problems = []
    for i, line in enumerate(lines):
        if "Traceback (most recent call last)" in line:
            end = next((j for j in range(i + 1, len(lines)) if not lines[j].startswith(" ")), i)
            block = lines[i : end + 1]
            refused = lines[end].startswith("h11._util.RemoteProtocolError")  # the client's bytes
            if refused or any(marker in lines[end] for marker in UVICORN_AFTER_400) or any(
                "in send_400_response" in frame for frame in block
            ):
                continue
            problems.append("\n".join(lines[max(0, i - 1) : end + 1]))
        elif '"level": "error"' in line and not any(m in line for m in UVICORN_AFTER_400):
            problems.append(line)
    return problems


def _answer(status: int, body: bytes, content_type: str = "application/json", rid: bool = True):
    headers = {"content-type": [content_type]}
    if rid:
        headers["x-request-id"] = ["r"]
    return FuzzResponse(status, headers, body)


def test_the_verdict_refuses_what_no_party_may_answer() -> None:
    """The fuzz test is only as good as its verdict: each answer that would hide a mesh bug is
    refused, and each that a party may give is let through."""
    get = FuzzRequest(index=0, raw=b"", method="GET", body_size=0)
    error = json.dumps({"error": "forbidden", "detail": "no"}).encode()
    # Refused: a 500 (with or without the mesh's header), a non-JSON or wrongly shaped mesh
    # refusal, a status the mesh never gives, a 200 that is not the app's, /secure reached
    # without a credential, a body the app did not read whole.
    assert verdict(get, _answer(500, b"Internal Server Error", "text/plain", rid=False))
    assert verdict(get, _answer(500, error))
    assert verdict(get, _answer(403, b"forbidden", "text/plain"))
    assert verdict(get, _answer(403, json.dumps({"error": "x"}).encode()))
    assert verdict(get, _answer(418, error))
    assert verdict(get, _answer(200, b"something else", "text/plain"))
    assert verdict(get, _answer(200, b"app:secure:0", "text/plain"))
    assert verdict(get, _answer(200, b"app:5", "text/plain"))
    assert verdict(get, _answer(200, b"<html>", "text/html", rid=False))
    # Let through: the app's answers, the mesh's refusals, its admin documents, the server's
    # own parser's refusals.
    assert verdict(get, _answer(200, b"app:0", "text/plain")) is None
    assert verdict(get, _answer(200, b"app:called:503", "text/plain")) is None
    proven = FuzzRequest(index=1, raw=b"", method="GET", body_size=0, credentialed=True)
    assert verdict(proven, _answer(200, b"app:secure:0", "text/plain")) is None
    for status in (401, 403, 405, 429, 504):
        assert verdict(get, _answer(status, error)) is None
    assert verdict(get, _answer(200, b'{"status": "ok"}', rid=False)) is None
    assert verdict(get, _answer(400, b"Invalid HTTP request", "text/plain", rid=False)) is None
