"""The wire primitives every part shares: header parsing, names, bearer tokens."""

from __future__ import annotations

import pytest

from asgimesh._wire import (
    bearer_token,
    is_service_name,
    new_id,
    new_span_id,
    parse_request_id,
    parse_traceparent,
    parse_tracestate,
)

TRACEPARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        ("Bearer abc", "abc"),
        ("bearer   abc  ", "abc"),
        ("BEARER abc", "abc"),
        (None, None),
        ("", None),
        ("Bearer", None),
        ("Bearer    ", None),
        ("Basic YWxhZGRpbjpvcGVuc2VzYW1l", None),
        ("Token abc", None),
    ],
)
def test_bearer_token(header: str | None, expected: str | None) -> None:
    assert bearer_token(header) == expected


@pytest.mark.parametrize(
    ("name", "valid"),
    [
        ("payments", True),
        ("pay-ments.v2_a", True),
        ("a", True),
        ("a" * 253, True),
        ("a" * 254, False),
        ("-payments", False),
        ("payments-", False),
        ("pay ments", False),
        ("payments\n", False),  # '$' would have let this through
        ("pāyments", False),
        ("", False),
        (None, False),
        (7, False),
    ],
)
def test_is_service_name(name: object, valid: bool) -> None:
    assert is_service_name(name) is valid


def test_header_parsers_refuse_a_trailing_newline() -> None:
    assert parse_request_id("r-1") == "r-1"
    assert parse_request_id("r-1\n") is None
    assert parse_tracestate("a=b\n") is None
    assert parse_traceparent(TRACEPARENT) == (
        "0af7651916cd43dd8448eb211c80319c",
        "b7ad6b7169203331",
        "01",
    )


def test_new_id_is_hex_of_the_width_asked_and_never_zero() -> None:
    assert new_id(128, lambda bits: 0) == "0" * 31 + "1"
    assert new_id(64, lambda bits: 2**bits - 1) == "f" * 16
    assert len(new_id(128)) == 32 and len(new_span_id()) == 16
    assert new_span_id() != new_span_id()
