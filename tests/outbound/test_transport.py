"""The transports against real uvicorn upstreams on loopback, through every client flavour:
httpx and httpx2, sync and async (asyncio and trio). The same cases run through each."""

from __future__ import annotations

import time
from typing import Any

import pytest
from outbound_driver import dead_url, driver, runtime, sample

from asgimesh import MeshContext
from asgimesh._wire import parse_traceparent


def test_calls_reach_every_endpoint_with_mesh_headers(mesh: Any, fake_upstreams: Any) -> None:
    urls = fake_upstreams.get(3)
    d = mesh({"pay": {"endpoints": urls, "load_balancer": "round_robin"}})
    bodies = [d.request("GET", "http://pay/charge?x=1").json() for _ in range(9)]
    assert {b["upstream"] for b in bodies} == {"u0", "u1", "u2"}
    assert all(fake_upstreams.stats(u)["requests"] == 3 for u in urls)
    headers = bodies[0]["headers"]
    assert headers["host"] == "pay" and headers["mesh-attempt"] == "1"
    assert 0 < int(headers["mesh-deadline-ms"]) <= 2000
    assert bodies[0]["path"] == "/charge"
    assert sample(d.runtime, "mesh_outbound_requests_total", upstream="pay", method="GET", status="200") == 9


def test_get_is_retried_past_503_and_reset(mesh: Any, fake_upstreams: Any) -> None:
    bad503, reset, ok = fake_upstreams.get(3)
    fake_upstreams.control(bad503, "fail:503")
    fake_upstreams.control(reset, "reset")
    d = mesh({"pay": {"endpoints": [bad503, reset, ok], "load_balancer": "round_robin"}})
    responses = [d.request("GET", "http://pay/") for _ in range(12)]
    assert [r.status_code for r in responses] == [200] * 12
    assert all(r.json()["upstream"] == "u2" for r in responses)
    assert fake_upstreams.stats(bad503)["requests"] > 0 and fake_upstreams.stats(reset)["requests"] > 0
    assert sample(d.runtime, "mesh_outbound_retries_total", upstream="pay", reason="503") > 0
    assert sample(d.runtime, "mesh_outbound_retries_total", upstream="pay", reason="reset") > 0
    retried = [r for r in responses if r.json()["headers"]["mesh-attempt"] != "1"]
    assert retried  # the tries that got through after a failure say which attempt they were


def test_post_that_reached_the_upstream_is_never_retried(mesh: Any, fake_upstreams: Any) -> None:
    bad503, reset, ok = fake_upstreams.get(3)
    fake_upstreams.control(bad503, "fail:503")
    fake_upstreams.control(reset, "reset")
    d = mesh({"pay": {"endpoints": [bad503, reset, ok], "load_balancer": "round_robin"}})
    statuses: list[Any] = []
    for _ in range(9):
        try:
            statuses.append(d.request("POST", "http://pay/charge", content=b"{}").status_code)
        except d.mod.RemoteProtocolError:
            statuses.append("reset")
    assert statuses.count(503) == 3 and statuses.count("reset") == 3 and statuses.count(200) == 3
    # Each POST reached exactly one upstream once: nothing was sent twice.
    assert sum(fake_upstreams.stats(u)["requests"] for u in (bad503, reset, ok)) == 9
    assert sample(d.runtime, "mesh_outbound_retries_total", upstream="pay", reason="503") == 0


def test_connect_failure_is_retried_even_for_post(mesh: Any, fake_upstreams: Any) -> None:
    (ok,) = fake_upstreams.get(1)
    d = mesh({"pay": {"endpoints": [dead_url(), ok], "load_balancer": "round_robin"}})
    for _ in range(4):
        response = d.request("POST", "http://pay/charge", content=b"{}")
        assert response.status_code == 200
    assert fake_upstreams.stats(ok)["by_method"] == {"POST": 4}
    assert sample(d.runtime, "mesh_outbound_retries_total", upstream="pay", reason="connect-failure") >= 1


def test_route_marked_idempotent_retries_post(mesh: Any, fake_upstreams: Any) -> None:
    bad, ok = fake_upstreams.get(2)
    fake_upstreams.control(bad, "fail:503")
    d = mesh({"pay": {"endpoints": [bad, ok], "load_balancer": "round_robin",
                      "routes": [{"match": {"path": "/search"}, "idempotent": True}]}})
    assert all(d.request("POST", "http://pay/search", content=b"q").status_code == 200 for _ in range(4))


def test_one_shot_body_is_not_replayed(mesh: Any, fake_upstreams: Any, variant: str) -> None:
    (ok,) = fake_upstreams.get(1)
    d = mesh({"pay": {"endpoints": [dead_url(), ok], "load_balancer": "round_robin",
                      "outlier_detection": {"consecutive_failures": 100}}})
    if d.sync:
        body: Any = iter([b"one-", b"shot"])
    else:
        async def chunks() -> Any:
            yield b"one-"
            yield b"shot"
        body = chunks()
    outcomes = []
    for _ in range(2):
        try:
            outcomes.append(d.request("PUT", "http://pay/x", content=body).status_code)
        except d.mod.ConnectError:
            outcomes.append("connect")
        body = iter([b"again"]) if d.sync else chunks()
    assert "connect" in outcomes  # the try to the dead endpoint was not retried


def test_hang_is_cut_by_per_try_timeout_and_retried(mesh: Any, fake_upstreams: Any) -> None:
    hang, ok = fake_upstreams.get(2)
    fake_upstreams.control(hang, "hang")
    d = mesh({"pay": {"endpoints": [hang, ok], "load_balancer": "round_robin",
                      "per_try_timeout": "200ms", "timeout": "3s"}})
    start = time.monotonic()
    responses = [d.request("GET", "http://pay/") for _ in range(2)]
    assert [r.status_code for r in responses] == [200, 200]
    assert time.monotonic() - start < 1.5
    assert sample(d.runtime, "mesh_outbound_retries_total", upstream="pay", reason="timeout") == 1


def test_deadline_exceeded(mesh: Any, fake_upstreams: Any) -> None:
    (slow,) = fake_upstreams.get(1)
    fake_upstreams.control(slow, "slow:2")
    d = mesh({"pay": {"endpoints": [slow], "timeout": "300ms", "per_try_timeout": "5s"}})
    start = time.monotonic()
    with pytest.raises(d.mesh.DeadlineExceeded) as caught:
        d.request("GET", "http://pay/")
    assert isinstance(caught.value, d.mod.TimeoutException)
    assert str(caught.value).endswith("(the call timeout, 300ms)")
    assert 0.25 < time.monotonic() - start < 1.5
    assert sample(d.runtime, "mesh_outbound_requests_total", upstream="pay", method="GET", status="error") == 1


def test_per_try_timeout_without_retry_is_a_read_timeout(mesh: Any, fake_upstreams: Any) -> None:
    (hang,) = fake_upstreams.get(1)
    fake_upstreams.control(hang, "hang")
    d = mesh({"pay": {"endpoints": [hang], "timeout": "3s", "per_try_timeout": "200ms"}})
    with pytest.raises(d.mod.ReadTimeout, match=r"the per-try timeout, 200ms\)$"):
        d.request("POST", "http://pay/")


def test_inbound_context_propagates_and_caps_the_deadline(mesh: Any, fake_upstreams: Any) -> None:
    (ok,) = fake_upstreams.get(1)
    d = mesh({"pay": {"endpoints": [ok]}})
    context = MeshContext(request_id="req-42", trace_id="ab" * 16, span_id="cd" * 8,
                          tracestate="vendor=1", deadline=time.monotonic() + 0.5)
    headers = d.request("GET", "http://pay/", context=context).json()["headers"]
    assert 0 < int(headers["mesh-deadline-ms"]) <= 500
    trace_id, span_id, _ = parse_traceparent(headers["traceparent"])  # type: ignore[misc]
    assert trace_id == "ab" * 16 and span_id != "cd" * 8
    assert headers["x-request-id"] == "req-42" and headers["tracestate"] == "vendor=1"
    # A header the app set itself wins over the context's.
    own = d.request("GET", "http://pay/", context=context, headers={"x-request-id": "mine"}).json()
    assert own["headers"]["x-request-id"] == "mine"
    expired = MeshContext(request_id="r", trace_id="ab" * 16, span_id="cd" * 8, deadline=time.monotonic() - 1)
    with pytest.raises(d.mesh.DeadlineExceeded):
        d.request("GET", "http://pay/", context=expired)
    assert fake_upstreams.stats(ok)["requests"] == 2


def test_policy_change_applies_to_the_next_call(mesh: Any, fake_upstreams: Any) -> None:
    a, b = fake_upstreams.get(2)
    d = mesh({})
    d.runtime.policy.apply({"services": {"pay": {"endpoints": [a]}}}, source="test")
    assert d.request("GET", "http://pay/").json()["upstream"] == "u0"
    d.runtime.policy.apply({"services": {"pay": {"endpoints": [b]}}}, source="test")
    assert d.request("GET", "http://pay/").json()["upstream"] == "u1"


def test_no_endpoints_circuit_open_and_budget(mesh: Any, fake_upstreams: Any) -> None:
    d = mesh({
        "empty": {"endpoints": []},
        "dead": {"endpoints": [dead_url()], "retries": {"attempts": 0},
                 "outlier_detection": {"consecutive_failures": 1, "max_ejection_percent": 100}},
        "broke": {"endpoints": [dead_url()],
                  "retries": {"budget": {"ratio": 0, "min_per_second": 0}}},
    })
    with pytest.raises(d.mesh.NoHealthyEndpoints) as caught:
        d.request("GET", "http://empty/")
    assert isinstance(caught.value, d.mod.ConnectError) and "'empty' has no endpoints" in str(caught.value)
    with pytest.raises(d.mod.ConnectError):
        d.request("GET", "http://dead/")
    with pytest.raises(d.mesh.CircuitOpen) as open_:
        d.request("GET", "http://dead/")
    assert isinstance(open_.value, d.mod.TransportError)
    with pytest.raises(d.mesh.RetryBudgetExhausted):
        d.request("GET", "http://broke/")
    assert sample(d.runtime, "mesh_outbound_ejections_total", upstream="dead") == 1


def test_retried_answers_are_closed_so_the_pool_is_not_leaked(mesh: Any, fake_upstreams: Any) -> None:
    bad, ok = fake_upstreams.get(2)
    fake_upstreams.control(bad, "fail:503")
    d = mesh({"pay": {"endpoints": [bad, ok], "load_balancer": "round_robin",
                      "outlier_detection": {"consecutive_failures": 100}}},
             max_connections=1)
    # One connection in the pool: an answer left open would starve the next try (PoolTimeout).
    assert all(d.request("GET", "http://pay/", timeout=1).status_code == 200 for _ in range(10))
    assert fake_upstreams.stats(bad)["requests"] >= 5


def test_last_answer_is_returned_as_is(mesh: Any, fake_upstreams: Any) -> None:
    bad, = fake_upstreams.get(1)
    fake_upstreams.control(bad, "fail:502")
    d = mesh({"pay": {"endpoints": [bad], "outlier_detection": {"consecutive_failures": 100}}})
    response = d.request("GET", "http://pay/")
    assert response.status_code == 502 and response.json()["status"] == 502
    assert fake_upstreams.stats(bad)["requests"] == 3  # first try + 2 retries
    assert response.request.url == "http://pay/"  # the app sees the URL it asked for


def test_streaming_response_streams(mesh: Any, fake_upstreams: Any) -> None:
    (ok,) = fake_upstreams.get(1)
    d = mesh({"pay": {"endpoints": [ok]}})
    chunks = d.stream_chunks("http://pay/stream")
    assert b"".join(chunks) == b"".join(b"chunk%d\n" % i for i in range(10))
    assert len(chunks) > 1  # not buffered into one
    endpoint = d.transport._planner.upstreams["pay"].endpoints[0]
    assert endpoint.outstanding == 0  # the try ended when the body was closed


def test_fault_abort_and_split(mesh: Any, fake_upstreams: Any) -> None:
    a, b = fake_upstreams.get(2)
    d = mesh({
        "pay": {"endpoints": [a], "split": [{"service": "pay-v2", "weight": 100}]},
        "pay-v2": {"endpoints": [b]},
        "chaos": {"endpoints": [a], "fault": {"abort": {"percent": 100, "status": 418}}},
    })
    assert d.request("GET", "http://pay/").json()["upstream"] == "u1"
    assert d.request("GET", "http://chaos/").status_code == 418
    assert fake_upstreams.stats(a)["requests"] == 0
    assert sample(d.runtime, "mesh_outbound_requests_total", upstream="pay-v2", method="GET", status="200") == 1
    assert sample(d.runtime, "mesh_outbound_requests_total", upstream="chaos", method="GET", status="418") == 1


def test_dns_discovery(mesh: Any, fake_upstreams: Any) -> None:
    (ok,) = fake_upstreams.get(1)
    port = ok.rsplit(":", 1)[1]
    d = mesh({"db": {"dns": f"localhost:{port}"}})
    assert d.request("GET", "http://db/").status_code == 200
    urls = [e.url for e in d.transport._planner.upstreams["db"].endpoints]
    assert f"http://127.0.0.1:{port}" in urls


def test_other_hosts_pass_through_like_plain_httpx(mesh: Any, fake_upstreams: Any) -> None:
    hang, ok = fake_upstreams.get(2)
    fake_upstreams.control(hang, "hang")
    d = mesh({"pay": {"endpoints": [ok]}})
    response = d.request("GET", ok + "/direct")
    assert response.status_code == 200 and "mesh-attempt" not in response.json()["headers"]
    with pytest.raises(d.mod.ConnectError) as caught:
        d.request("GET", dead_url())
    assert not isinstance(caught.value, d.mesh.NoHealthyEndpoints)
    with pytest.raises(d.mod.ReadTimeout):
        d.request("GET", hang + "/", timeout=0.2)
    assert sample(d.runtime, "mesh_outbound_requests_total", upstream="127.0.0.1", method="GET", status="200") == 1
    assert sample(d.runtime, "mesh_outbound_requests_total", upstream="127.0.0.1", method="GET", status="error") == 2


def test_kwargs_reach_the_inner_transport(variant: str) -> None:
    d_kwargs = {"verify": False, "http2": True, "retries": 3}
    rt = runtime({})
    with driver(variant, rt, **d_kwargs) as d:
        limits = d.mod.Limits(max_connections=7)
        transport = (d.mesh.MeshTransport if d.sync else d.mesh.AsyncMeshTransport)(
            runtime=rt, limits=limits, **d_kwargs)
        pool = transport._inner._pool
        assert pool._max_connections == 7 and pool._retries == 3 and pool._http2 is True
        assert pool._ssl_context.verify_mode.name == "CERT_NONE"
        proxied = (d.mesh.MeshTransport if d.sync else d.mesh.AsyncMeshTransport)(
            runtime=rt, proxy="http://127.0.0.1:1")
        assert "Proxy" in type(proxied._inner._pool).__name__
        with pytest.raises(TypeError):
            (d.mesh.MeshTransport if d.sync else d.mesh.AsyncMeshTransport)(runtime=rt, nonsense=1)
        assert isinstance(d.transport, d.mod.BaseTransport if d.sync else d.mod.AsyncBaseTransport)


def test_retry_after_past_the_deadline_returns_the_answer(mesh: Any, fake_upstreams: Any) -> None:
    (busy,) = fake_upstreams.get(1)
    fake_upstreams.control(busy, "fail:503", retry_after="5")
    d = mesh({"pay": {"endpoints": [busy], "timeout": "1s",
                      "outlier_detection": {"consecutive_failures": 100}}})
    start = time.monotonic()
    response = d.request("GET", "http://pay/")
    assert response.status_code == 503 and response.headers["retry-after"] == "5"
    assert time.monotonic() - start < 0.5  # did not sleep towards a retry it could not make
    assert fake_upstreams.stats(busy)["requests"] == 1


def test_default_runtime_reads_mesh_upstreams(variant: str, fake_upstreams: Any,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    a, b = fake_upstreams.get(2)
    monkeypatch.setenv("MESH_UPSTREAMS", f"pay={a},{b}")
    monkeypatch.setenv("MESH_SERVICE", "shop")
    import asgimesh

    with driver(variant, None) as d:
        names = {d.request("GET", "http://pay/").json()["upstream"] for _ in range(10)}
        assert names <= {"u0", "u1"} and names
        rt = asgimesh.get_runtime()
        assert rt.metrics.registry.get_sample_value(
            "mesh_outbound_requests_total",
            {"service": "shop", "upstream": "pay", "method": "GET", "status": "200"}) == 10


def test_fault_delay_waits_and_counts_against_the_deadline(mesh: Any, fake_upstreams: Any) -> None:
    (ok,) = fake_upstreams.get(1)
    d = mesh({
        "slowed": {"endpoints": [ok], "fault": {"delay": {"percent": 100, "duration": "150ms"}}},
        "doomed": {"endpoints": [ok], "timeout": "100ms",
                   "fault": {"delay": {"percent": 100, "duration": "1s"}}},
    })
    start = time.monotonic()
    assert d.request("GET", "http://slowed/").status_code == 200
    assert time.monotonic() - start >= 0.15
    start = time.monotonic()
    with pytest.raises(d.mesh.DeadlineExceeded):
        d.request("GET", "http://doomed/")
    assert time.monotonic() - start < 0.6  # waited only until the deadline
    assert fake_upstreams.stats(ok)["requests"] == 1
