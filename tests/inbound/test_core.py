"""The inbound decision without sockets: injected clock (``now``) and injected random bits."""

from __future__ import annotations

import itertools
import json

import pytest

from asgimesh import MeshRuntime, MeshSettings
from asgimesh.inbound._admin import Admin
from asgimesh.inbound._decide import InboundCore, asgi_fields, environ_fields

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT = "00f067aa0ba902b7"
TRACEPARENT = f"00-{TRACE_ID}-{PARENT}-01"
NOW = 1000.0


def counting_bits():  # type: ignore[no-untyped-def]
    """Deterministic ``randbits``: 1, 2, 3, ... so made ids are predictable."""
    counter = itertools.count(1)
    return lambda bits: next(counter)


@pytest.fixture
def core() -> InboundCore:
    return InboundCore(randbits=counting_bits())


def test_absent_headers_start_a_trace_and_make_a_request_id(core: InboundCore) -> None:
    decision = core.decide("GET", "/", {}, "127.0.0.1", NOW)
    ctx = decision.context
    assert decision.answer is None
    assert ctx is not None
    assert ctx.request_id == f"{1:032x}"
    assert ctx.trace_id == f"{2:032x}"
    assert ctx.span_id == f"{3:016x}"
    assert ctx.parent_span_id is None
    assert ctx.trace_flags == "01"
    assert ctx.tracestate is None
    assert ctx.deadline is None
    assert decision.response_headers == (("x-request-id", ctx.request_id),)


def test_valid_traceparent_is_continued_with_a_new_server_span(core: InboundCore) -> None:
    fields = {"traceparent": TRACEPARENT, "tracestate": "congo=t61rcWkgMzE, rojo=00f067aa0ba902b7"}
    ctx = core.decide("GET", "/", fields, None, NOW).context
    assert ctx is not None
    assert ctx.trace_id == TRACE_ID
    assert ctx.parent_span_id == PARENT
    assert ctx.span_id not in (PARENT, "0" * 16)
    assert ctx.trace_flags == "01"
    assert ctx.tracestate == "congo=t61rcWkgMzE,rojo=00f067aa0ba902b7"
    assert ctx.traceparent() == f"00-{TRACE_ID}-{ctx.span_id}-01"


def test_unsampled_flag_is_kept(core: InboundCore) -> None:
    ctx = core.context({"traceparent": f"00-{TRACE_ID}-{PARENT}-00"}, NOW)
    assert ctx.trace_flags == "00"


@pytest.mark.parametrize(
    "bad",
    [
        "garbage",
        f"00-{TRACE_ID}-{PARENT}",  # no flags
        f"00-{'0' * 32}-{PARENT}-01",  # all-zero trace id
        f"00-{TRACE_ID}-{'0' * 16}-01",  # all-zero parent
        f"ff-{TRACE_ID}-{PARENT}-01",  # forbidden version
        f"00-{TRACE_ID.upper()}-{PARENT}-01",  # upper case hex
        f"00-{TRACE_ID}-{PARENT}-01-extra",  # version 00 has nothing after the flags
        "00-" + "a" * 600,
    ],
)
def test_invalid_traceparent_starts_a_new_trace_and_drops_tracestate(
    core: InboundCore, bad: str
) -> None:
    ctx = core.context({"traceparent": bad, "tracestate": "rojo=1"}, NOW)
    assert ctx.trace_id == f"{2:032x}"
    assert ctx.parent_span_id is None
    assert ctx.tracestate is None


@pytest.mark.parametrize("bad", ["no-equals-sign", "a=1," * 40, "é=1", "x" * 600])
def test_invalid_tracestate_is_dropped_but_the_trace_continues(core: InboundCore, bad: str) -> None:
    ctx = core.context({"traceparent": TRACEPARENT, "tracestate": bad}, NOW)
    assert ctx.trace_id == TRACE_ID
    assert ctx.tracestate is None


def test_request_id_is_kept(core: InboundCore) -> None:
    assert core.context({"x-request-id": "req-42"}, NOW).request_id == "req-42"


@pytest.mark.parametrize("absurd", ["a" * 201, "has space", "tab\there", "", "caf\xe9"])
def test_absurd_request_id_is_replaced(core: InboundCore, absurd: str) -> None:
    assert core.context({"x-request-id": absurd}, NOW).request_id == f"{1:032x}"


@pytest.mark.parametrize(
    ("fields", "seconds"),
    [
        ({"mesh-deadline-ms": "1500"}, 1.5),
        ({"grpc-timeout": "2S"}, 2.0),
        ({"grpc-timeout": "250m"}, 0.25),
        ({"grpc-timeout": "1M"}, 60.0),
        ({"x-envoy-expected-rq-timeout-ms": "750"}, 0.75),
        # first valid header wins, in the contract's order
        ({"mesh-deadline-ms": "100", "grpc-timeout": "5S"}, 0.1),
        ({"grpc-timeout": "3S", "x-envoy-expected-rq-timeout-ms": "100"}, 3.0),
        # a malformed header counts as absent: the next one is used
        ({"mesh-deadline-ms": "soon", "grpc-timeout": "2S"}, 2.0),
        ({"mesh-deadline-ms": "-5", "x-envoy-expected-rq-timeout-ms": "40"}, 0.04),
    ],
)
def test_deadline_headers_become_an_absolute_monotonic_deadline(
    core: InboundCore, fields: dict[str, str], seconds: float
) -> None:
    ctx = core.context(fields, NOW)
    assert ctx.deadline == pytest.approx(NOW + seconds)
    assert ctx.remaining(NOW + 0.01) == pytest.approx(max(0.0, seconds - 0.01))


@pytest.mark.parametrize(
    "fields",
    [
        {"mesh-deadline-ms": "1.5"},
        {"mesh-deadline-ms": "abc"},
        {"mesh-deadline-ms": "-100"},
        {"mesh-deadline-ms": "9" * 13},
        {"grpc-timeout": "10X"},
        {"grpc-timeout": "123456789S"},
        {"grpc-timeout": "S"},
        {"x-envoy-expected-rq-timeout-ms": "0"},  # Envoy's 0: no timeout
        {"x-envoy-expected-rq-timeout-ms": "1e3"},
        # digits to str.isdigit() but not to int(): must not become a 500
        {"mesh-deadline-ms": "\xb2"},
        {"grpc-timeout": "\xb9S"},
        {"x-envoy-expected-rq-timeout-ms": "1\xb2"},
    ],
)
def test_malformed_deadline_headers_mean_no_deadline(
    core: InboundCore, fields: dict[str, str]
) -> None:
    decision = core.decide("GET", "/", fields, None, NOW)
    assert decision.answer is None
    assert decision.context is not None
    assert decision.context.deadline is None


@pytest.mark.parametrize(
    ("fields", "shown"),
    [
        ({"mesh-deadline-ms": "0"}, "mesh-deadline-ms: 0"),
        ({"grpc-timeout": "0m"}, "grpc-timeout: 0m"),
        ({"mesh-deadline-ms": "bad", "grpc-timeout": "0S"}, "grpc-timeout: 0S"),
    ],
)
def test_deadline_already_passed_is_a_504(
    core: InboundCore, fields: dict[str, str], shown: str
) -> None:
    decision = core.decide("POST", "/charge", {**fields, "x-request-id": "r-1"}, None, NOW)
    assert decision.answer is not None
    assert decision.answer.status == 504
    assert dict(decision.answer.headers) == {"content-type": "application/json"}
    assert json.loads(decision.answer.body) == {
        "error": "deadline_exceeded",
        "detail": f"the caller's deadline had passed when the request arrived ({shown})",
    }
    # still mesh traffic: counted, logged, and the request id echoed
    assert decision.context is not None
    assert decision.response_headers == (("x-request-id", "r-1"),)


def test_admin_paths_are_answered_without_a_context() -> None:
    runtime = MeshRuntime(MeshSettings.from_env(service="web"))
    core = InboundCore(Admin(runtime))
    decision = core.decide("GET", "/_mesh/health", {}, "127.0.0.1", NOW)
    assert decision.context is None
    assert decision.answer is not None
    assert json.loads(decision.answer.body) == {
        "status": "ok",
        "service": "web",
        "policy_version": 1,
    }
    # an admin path of another shape is the app's
    assert core.decide("GET", "/_mesh/healthz", {}, None, NOW).answer is None


def test_fields_from_asgi_and_environ_agree() -> None:
    raw = [
        (b"host", b"example"),
        (b"traceparent", TRACEPARENT.encode()),
        (b"x-request-id", b"first"),
        (b"x-request-id", b"second"),
        (b"mesh-deadline-ms", b"250"),
    ]
    environ = {
        "HTTP_HOST": "example",
        "HTTP_TRACEPARENT": TRACEPARENT,
        "HTTP_X_REQUEST_ID": "first",
        "HTTP_MESH_DEADLINE_MS": "250",
    }
    expected = {"traceparent": TRACEPARENT, "x-request-id": "first", "mesh-deadline-ms": "250"}
    assert asgi_fields(raw) == expected
    assert environ_fields(environ) == expected


def test_non_ascii_header_bytes_do_not_raise(core: InboundCore) -> None:
    fields = asgi_fields([(b"x-request-id", "ré".encode()), (b"traceparent", b"\xff\xfe")])
    ctx = core.context(fields, NOW)
    assert ctx.request_id == f"{1:032x}"
    assert ctx.parent_span_id is None


def test_no_header_value_makes_the_core_raise() -> None:
    """Random latin-1 text (what servers hand over) in every mesh header: always a decision."""
    import random

    rng = random.Random(20261127)
    alphabet = "0123456789abcdefABCDEF-=, .:;SMHmun\t\x00\xb2\xb9\xe9\xff" + "".join(
        chr(c) for c in range(0x20, 0x7F)
    )
    names = ["traceparent", "tracestate", "x-request-id", "mesh-deadline-ms", "grpc-timeout"]
    names.append("x-envoy-expected-rq-timeout-ms")
    digits = "0123456789\xb2\xb9 -"

    def value() -> str:
        if rng.random() < 0.5:  # number-like: where parsers are most tempted to trust input
            text = "".join(rng.choice(digits) for _ in range(rng.randint(0, 4)))
            return text + rng.choice(["", "", "S", "m", "X"])
        return "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 70)))

    core = InboundCore(randbits=counting_bits())
    for _ in range(3000):
        fields = {name: value() for name in names if rng.random() < 0.7}
        decision = core.decide("GET", "/", fields, None, NOW)
        assert decision.context is not None
        assert decision.answer is None or decision.answer.status == 504
