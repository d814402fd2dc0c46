"""Authorization, rate and concurrency limits without sockets: an injected clock (``now``) and a
policy store stand-in whose snapshot the test swaps."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import pytest

from asgimesh.inbound._admission import InboundAdmission
from asgimesh.inbound._authorization import Authorizer
from asgimesh.inbound._decide import InboundCore
from asgimesh.inbound._limits import ConcurrencyGate, TokenBucket
from asgimesh.policy import PolicySnapshot, validate_document
from asgimesh.policy._model import AuthorizationRule

NOW = 1000.0
ORDERS = "spiffe://mesh.local/ns/default/sa/orders"


# ---- token bucket ------------------------------------------------------------------------------


def test_bucket_admits_a_burst_then_refuses_until_refilled() -> None:
    bucket = TokenBucket(2.0, burst=3)
    assert [bucket.take(NOW) for _ in range(3)] == [0.0, 0.0, 0.0]
    assert bucket.take(NOW) == pytest.approx(0.5)  # one token every 0.5 s
    assert bucket.take(NOW + 0.25) == pytest.approx(0.25)
    assert bucket.take(NOW + 0.5) == 0.0
    assert bucket.take(NOW + 0.5) == pytest.approx(0.5)


def test_bucket_never_saves_more_than_its_burst() -> None:
    bucket = TokenBucket(10.0, burst=2)
    bucket.take(NOW)
    later = NOW + 3600
    assert [bucket.take(later) for _ in range(2)] == [0.0, 0.0]
    assert bucket.take(later) > 0


@pytest.mark.parametrize(("rate", "burst"), [(0.5, 1), (1.0, 1), (2.5, 3), (100.0, 100)])
def test_bucket_default_burst_is_rate_rounded_up_at_least_one(rate: float, burst: int) -> None:
    assert TokenBucket(rate).burst == burst


def test_bucket_ignores_a_clock_going_backwards() -> None:
    bucket = TokenBucket(1.0, burst=1)
    assert bucket.take(NOW) == 0.0
    assert bucket.take(NOW - 10) == pytest.approx(1.0)
    assert bucket.take(NOW + 1) == 0.0


@pytest.mark.parametrize(
    ("wait", "header"), [(0.001, 1), (0.5, 1), (1.0, 1), (1.0000000001, 1), (1.2, 2), (9.5, 10)]
)
def test_retry_after_is_whole_seconds_at_least_one(wait: float, header: int) -> None:
    assert TokenBucket.retry_after(wait) == header


# ---- concurrency gate --------------------------------------------------------------------------


def test_gate_refuses_above_its_limit_and_reopens_on_release() -> None:
    gate = ConcurrencyGate(2)
    assert gate.acquire()
    assert gate.acquire()
    assert not gate.acquire()
    assert gate.in_flight == 2
    gate.release()
    assert gate.acquire()
    assert gate.in_flight == 2


# ---- rule matching -----------------------------------------------------------------------------


def rules(*allows: dict[str, Any]) -> tuple[AuthorizationRule, ...]:
    return tuple(AuthorizationRule.model_validate({"allow": allow}) for allow in allows)


@pytest.mark.parametrize(
    ("allow", "method", "path", "allowed"),
    [
        ({"methods": ["GET"], "paths": ["/items"]}, "GET", "/items", True),
        ({"methods": ["GET"], "paths": ["/items"]}, "POST", "/items", False),
        ({"methods": ["GET"], "paths": ["/items"]}, "GET", "/items/1", False),
        ({"methods": ["get", "HEAD"]}, "HEAD", "/anything", True),
        ({"paths": ["/api/*"]}, "DELETE", "/api/v1/x", True),
        ({"paths": ["/api/*"]}, "GET", "/api/", True),
        ({"paths": ["/api/*"]}, "GET", "/api", False),
        ({"paths": ["/api/*"]}, "GET", "/apiary", False),
        ({"paths": ["/*"]}, "GET", "/", True),
        ({}, "PATCH", "/x", True),
    ],
)
def test_methods_and_paths(allow: dict[str, Any], method: str, path: str, allowed: bool) -> None:
    verdict = Authorizer("web", rules(allow)).check(method, path, None)
    assert (verdict is None) is allowed


def test_any_rule_may_allow() -> None:
    authorizer = Authorizer("web", rules({"paths": ["/a"]}, {"methods": ["POST"]}))
    assert authorizer.check("GET", "/a", None) is None
    assert authorizer.check("POST", "/b", None) is None
    assert authorizer.check("GET", "/b", None) == (
        "no authorization rule of 'web' allows GET /b from an unverified caller"
    )


def test_no_rules_allow_nobody() -> None:
    assert Authorizer("web", ()).check("GET", "/", None) is not None


@pytest.mark.parametrize("callers", [[ORDERS], ["*"]])
def test_from_never_matches_an_unverified_caller(callers: list[str]) -> None:
    authorizer = Authorizer("payments", rules({"from": callers, "paths": ["/charge"]}))
    detail = authorizer.check("POST", "/charge", None)
    assert detail is not None
    assert detail.startswith("no verified caller identity")
    assert "'payments'" in detail


def test_from_matches_a_verified_caller() -> None:
    named = Authorizer("payments", rules({"from": [ORDERS]}))
    anyone = Authorizer("payments", rules({"from": ["*"]}))
    assert named.check("POST", "/charge", ORDERS) is None
    assert anyone.check("POST", "/charge", ORDERS) is None
    refused = named.check("POST", "/charge", "spiffe://mesh.local/ns/default/sa/evil")
    assert refused == (
        "no authorization rule of 'payments' allows POST /charge from caller "
        "spiffe://mesh.local/ns/default/sa/evil"
    )


@pytest.mark.parametrize("path", ["/public/../admin", "/public/./x", "/public/..", "/a/."])
def test_dot_segments_are_refused(path: str) -> None:
    detail = Authorizer("web", rules({"paths": ["/public/*", "/a/*"]})).check("GET", path, None)
    assert detail is not None
    assert "'.' or '..' segments" in detail


def test_dots_inside_names_are_fine() -> None:
    authorizer = Authorizer("web", rules({"paths": ["/files/*"]}))
    assert authorizer.check("GET", "/files/a..b/.hidden", None) is None


# ---- the core under a policy -------------------------------------------------------------------


@dataclass
class FakeStore:
    """What :class:`InboundAdmission` reads of a ``PolicyStore``: ``current``."""

    current: PolicySnapshot
    version: int = 1

    def set(self, inbound: dict[str, Any]) -> None:
        self.version += 1
        self.current = snapshot(inbound, self.version)


def snapshot(inbound: dict[str, Any], version: int = 1) -> PolicySnapshot:
    return PolicySnapshot(version, validate_document({"inbound": inbound}, "test"))


class Counted:
    def __init__(self) -> None:
        self.rate_limited = 0
        self.denied = 0


def make_core(
    inbound: dict[str, Any], service: str = "web"
) -> tuple[InboundCore, FakeStore, Counted]:
    store = FakeStore(snapshot(inbound))
    counted = Counted()

    def on_rate_limited() -> None:
        counted.rate_limited += 1

    def on_denied() -> None:
        counted.denied += 1

    limits = InboundAdmission(service, store, on_rate_limited=on_rate_limited, on_denied=on_denied)
    return InboundCore(admission=limits), store, counted


def body(decision: Any) -> dict[str, str]:
    assert decision.answer is not None
    return dict(json.loads(decision.answer.body))


def test_rate_limit_answers_429_with_retry_after_from_the_bucket() -> None:
    core, _, counted = make_core({"web": {"rate_limit": {"requests_per_second": 0.25}}})
    assert core.decide("GET", "/", {}, None, NOW).answer is None
    refused = core.decide("GET", "/", {}, None, NOW + 1.5)
    assert refused.answer is not None
    assert refused.answer.status == 429
    assert ("retry-after", "3") in refused.answer.headers  # 2.5 s until the next token
    assert body(refused)["error"] == "rate_limited"
    assert "0.25 requests a second" in body(refused)["detail"]
    assert refused.context is not None  # counted as an inbound request, request id echoed
    assert counted.rate_limited == 1
    assert core.decide("GET", "/", {}, None, NOW + 4.0).answer is None


def test_concurrency_limit_hands_out_slots_and_refuses_past_the_limit() -> None:
    core, _, counted = make_core({"web": {"concurrency_limit": 2}})
    first = core.decide("GET", "/", {}, None, NOW)
    second = core.decide("GET", "/", {}, None, NOW)
    assert first.gate is not None
    assert first.gate is second.gate
    refused = core.decide("GET", "/", {}, None, NOW)
    assert refused.answer is not None
    assert refused.answer.status == 429
    assert ("retry-after", "1") in refused.answer.headers
    assert body(refused) == {
        "error": "rate_limited",
        "detail": "'web' is already handling its limit of 2 concurrent requests",
    }
    assert refused.gate is None
    assert counted.rate_limited == 1
    first.gate.release()
    assert core.decide("GET", "/", {}, None, NOW).gate is first.gate


def test_authorization_denies_with_403_and_counts() -> None:
    core, _, counted = make_core(
        {"web": {"authorization": [{"allow": {"from": [ORDERS], "paths": ["/charge"]}}]}}
    )
    # A caller-supplied identity header changes nothing: only a verified identity counts.
    fields = {"x-forwarded-client-cert": f"URI={ORDERS}", "mesh-identity": ORDERS}
    decision = core.decide("POST", "/charge", fields, None, NOW)
    assert decision.answer is not None
    assert decision.answer.status == 403
    assert body(decision)["error"] == "forbidden"
    assert body(decision)["detail"].startswith("no verified caller identity")
    assert counted.denied == 1
    assert counted.rate_limited == 0


def test_denied_requests_spend_no_tokens_and_hold_no_slot() -> None:
    core, _, counted = make_core(
        {
            "web": {
                "authorization": [{"allow": {"paths": ["/open"]}}],
                "rate_limit": {"requests_per_second": 1, "burst": 1},
                "concurrency_limit": 1,
            }
        }
    )
    for _ in range(3):
        assert core.decide("GET", "/closed", {}, None, NOW).answer is not None
    allowed = core.decide("GET", "/open", {}, None, NOW)
    assert allowed.answer is None
    assert allowed.gate is not None
    assert counted.denied == 3
    assert counted.rate_limited == 0


def test_expired_deadline_takes_no_slot() -> None:
    core, _, _ = make_core({"web": {"concurrency_limit": 1}})
    late = core.decide("GET", "/", {"mesh-deadline-ms": "0"}, None, NOW)
    assert late.answer is not None
    assert late.answer.status == 504
    assert late.gate is None
    assert core.decide("GET", "/", {}, None, NOW).gate is not None


def test_admin_paths_are_exempt() -> None:
    from asgimesh import MeshRuntime, MeshSettings
    from asgimesh.inbound._admin import Admin

    runtime = MeshRuntime(MeshSettings.from_env(service="web"))
    store = FakeStore(snapshot({"web": {"concurrency_limit": 1, "authorization": []}}))
    core = InboundCore(Admin(runtime), admission=InboundAdmission("web", store))
    assert core.decide("GET", "/", {}, None, NOW).answer.status == 403  # type: ignore[union-attr]
    for _ in range(3):
        answer = core.decide("GET", "/_mesh/health", {}, None, NOW).answer
        assert answer is not None
        assert answer.status == 200


def test_other_services_policies_do_not_apply() -> None:
    core, _, _ = make_core({"payments": {"concurrency_limit": 1, "authorization": []}})
    for _ in range(3):
        decision = core.decide("GET", "/", {}, None, NOW)
        assert decision.answer is None
        assert decision.gate is None


def test_limits_are_compiled_once_per_snapshot_and_kept_when_unchanged() -> None:
    inbound = {"web": {"rate_limit": {"requests_per_second": 1, "burst": 1}}}
    core, store, _ = make_core(inbound)
    limits = core._admission
    assert limits is not None
    compiled = limits.current()
    assert compiled is not None
    assert limits.current() is compiled  # same snapshot: same object
    assert core.decide("GET", "/", {}, None, NOW).answer is None
    # A new snapshot with the same inbound policy for this service keeps the bucket (empty now).
    store.set({**inbound, "payments": {"concurrency_limit": 5}})
    assert limits.current() is compiled
    assert core.decide("GET", "/", {}, None, NOW).answer is not None
    # A changed policy starts a fresh bucket.
    store.set({"web": {"rate_limit": {"requests_per_second": 2, "burst": 2}}})
    assert limits.current() is not compiled
    assert core.decide("GET", "/", {}, None, NOW).answer is None


def test_policy_removed_and_readded() -> None:
    core, store, _ = make_core({"web": {"concurrency_limit": 1}})
    held = core.decide("GET", "/", {}, None, NOW)
    assert held.gate is not None
    assert core.decide("GET", "/", {}, None, NOW).answer is not None
    store.set({})
    assert core._admission is not None
    assert core._admission.current() is None
    assert core.decide("GET", "/", {}, None, NOW).gate is None
    store.set({"web": {"trusted_proxies": ["10.0.0.0/8"]}})  # inbound policy, but no limits
    only_proxies = core._admission.current()
    assert only_proxies is not None and only_proxies.trusted is not None
    assert "10.1.2.3" in only_proxies.trusted and "11.0.0.1" not in only_proxies.trusted
    assert only_proxies.gate is None and only_proxies.authorizer is None and only_proxies.bucket is None
    assert core.decide("GET", "/", {}, None, NOW).answer is None


def test_changed_concurrency_limit_keeps_counting_requests_in_flight() -> None:
    core, store, _ = make_core({"web": {"concurrency_limit": 1}})
    held = core.decide("GET", "/", {}, None, NOW)
    assert held.gate is not None
    store.set({"web": {"concurrency_limit": 2}})
    second = core.decide("GET", "/", {}, None, NOW)
    assert second.answer is None
    assert core.decide("GET", "/", {}, None, NOW).answer is not None  # 2 in flight
    held.gate.release()
    assert core.decide("GET", "/", {}, None, NOW).answer is None
