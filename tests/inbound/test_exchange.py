"""The inbound exchange without sockets: one request's status, headers, slot and telemetry,
recorded exactly once whoever calls ``finish`` first (an injected clock gives the duration)."""

from __future__ import annotations

import json

from asgimesh import MeshRuntime, MeshSettings
from asgimesh.inbound._decide import InboundCore
from asgimesh.telemetry._inbound import InboundTelemetry


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def core_for(policy: dict[str, object] | None = None) -> tuple[InboundCore, MeshRuntime, Clock]:
    settings = {"service": "web"}
    if policy is not None:
        settings["policy"] = json.dumps(policy)
    runtime = MeshRuntime(MeshSettings.from_env(**settings))
    clock = Clock(100.0)
    core = InboundCore(
        admission=runtime.inbound_admission, telemetry=InboundTelemetry(runtime), clock=clock
    )
    return core, runtime, clock


def requests(runtime: MeshRuntime, status: str) -> float:
    labels = {"service": "web", "method": "GET", "status": status}
    return runtime.metrics.registry.get_sample_value("mesh_inbound_requests_total", labels) or 0.0


def duration_sum(runtime: MeshRuntime) -> float:
    value = runtime.metrics.registry.get_sample_value(
        "mesh_inbound_request_duration_seconds_sum", {"service": "web"}
    )
    return value or 0.0


def test_status_is_500_until_the_app_starts_a_response() -> None:
    core, runtime, clock = core_for()
    exchange = core.decide("GET", "/", {"x-request-id": "r-1"}, None)
    assert exchange.answer is None and exchange.status == 500
    assert exchange.response_headers == (("x-request-id", "r-1"),)
    clock.now += 0.25
    exchange.finish()
    assert requests(runtime, "500") == 1
    assert duration_sum(runtime) == 0.25  # from the injected clock


def test_finish_records_and_releases_exactly_once() -> None:
    core, runtime, _ = core_for({"inbound": {"web": {"concurrency_limit": 1}}})
    exchange = core.decide("GET", "/", {}, None)
    assert exchange.gate is not None and exchange.gate.in_flight == 1
    exchange.status = 201
    exchange.finish()
    exchange.finish(RuntimeError("late"))  # a second end (close after exhaustion): ignored
    assert exchange.gate.in_flight == 0
    labels = {"service": "web", "method": "GET", "status": "201"}
    assert runtime.metrics.registry.get_sample_value("mesh_inbound_requests_total", labels) == 1
    assert requests(runtime, "500") == 0
    # The slot is free again: the next request gets it.
    assert core.decide("GET", "/", {}, None).answer is None


def test_an_error_counts_as_500_whatever_status_was_started() -> None:
    core, runtime, _ = core_for()
    exchange = core.decide("GET", "/", {}, None)
    exchange.status = 200
    exchange.finish(ValueError("boom"))
    assert requests(runtime, "500") == 1


def test_refusals_carry_their_answer_and_count_with_its_status() -> None:
    core, runtime, _ = core_for({"inbound": {"web": {"concurrency_limit": 1}}})
    held = core.decide("GET", "/", {}, None)
    refused = core.decide("GET", "/", {}, None)
    assert refused.answer is not None and refused.answer.status == 429
    assert refused.gate is None and refused.status == 429
    refused.finish()
    assert requests(runtime, "429") == 1
    assert held.gate is not None and held.gate.in_flight == 1  # the refusal took no slot
    held.finish()


def test_admin_answers_stay_out_of_the_request_metrics() -> None:
    runtime = MeshRuntime(MeshSettings.from_env(service="web"))
    core = InboundCore.for_runtime(runtime)
    exchange = core.decide("GET", "/_mesh/health", {}, "127.0.0.1")
    assert exchange.context is None and exchange.response_headers == ()
    assert exchange.answer is not None and exchange.answer.status == 200
    exchange.finish()
    assert runtime.metrics.registry.get_sample_value(
        "mesh_inbound_requests_total", {"service": "web", "method": "GET", "status": "200"}
    ) is None


def test_middlewares_on_one_runtime_share_its_admission() -> None:
    runtime = MeshRuntime(MeshSettings.from_env(service="web"))
    first, second = InboundCore.for_runtime(runtime), InboundCore.for_runtime(runtime)
    assert first._admission is second._admission is runtime.inbound_admission
    assert first.telemetry is not second.telemetry  # label caches are per middleware
