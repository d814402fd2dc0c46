"""Randomized policy documents (hypothesis) against a real control plane over a socket.

Whatever an admin (or a broken script with the admin token) PUTs, the control plane answers
2xx or a JSON ``{"error", "detail"}`` 4xx, never a 500, and ``GET /v1/policy`` afterwards
serves either the new document, as a new version, or the previous one, untouched.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from asgimesh.testing import ControlPlaneHandle, control_plane
from tests.policy.documents import as_text, documents, raw_texts

CONTENT_TYPES = {
    "json": "application/json",
    "yaml": "application/yaml",
    "toml": "application/toml",
}


@pytest.fixture(scope="module")
def cp() -> Iterator[tuple[ControlPlaneHandle, httpx.Client, dict[str, Any]]]:
    """The control plane, a client, and what it served last (each example's "before")."""
    with control_plane() as handle, httpx.Client(base_url=handle.url, timeout=30) as client:
        seeded = client.put(
            "/v1/policy", json={"defaults": {"timeout": "2s"}}, headers=handle.admin_headers
        )
        assert seeded.status_code == 200
        yield handle, client, {"served": client.get("/v1/policy").json()}


def _written(case: tuple[str, Any]) -> tuple[str, bytes] | None:
    fmt, document = case
    try:
        return fmt, as_text(document, fmt).encode("utf-8", "surrogatepass")
    except (ValueError, UnicodeEncodeError, RecursionError):
        return None


bodies = st.one_of(
    st.one_of(documents.map(lambda d: ("json", d)), documents.map(lambda d: ("yaml", d))).map(
        _written
    ),
    st.tuples(st.sampled_from(["json", "yaml", "toml"]), raw_texts).map(
        lambda c: (c[0], c[1].encode("utf-8", "surrogatepass"))
    ),
    st.tuples(st.sampled_from(["json", "yaml"]), st.binary(max_size=64)),
)


@settings(
    max_examples=100,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(bodies)
@example(("json", b"null"))  # found by this search: stored as an empty policy
@example(("yaml", b"# nothing but a comment\n"))  # an empty YAML document is an empty policy
@example(("json", b'{"defaults": {"timeout": NaN}}'))
@example(("json", b'{"services": {"\\ud800": {}}}'))
@example(("yaml", b"defaults: {timeout: 2025-12-04}\n"))
@example(("json", b'{"inbound": {"a\\nb": {"concurrency_limit": 0}}}'))
def test_a_put_is_stored_whole_or_refused_in_json_and_the_previous_version_stays(
    cp: tuple[ControlPlaneHandle, httpx.Client, dict[str, Any]], body: tuple[str, bytes] | None
) -> None:
    if body is None:
        return
    handle, client, last = cp
    fmt, raw = body
    before = last["served"]
    put = client.put(
        "/v1/policy",
        content=raw,
        headers={**handle.admin_headers, "content-type": CONTENT_TYPES[fmt]},
    )
    assert put.status_code < 500, put.text[:300]
    after = last["served"] = client.get("/v1/policy").json()
    if put.status_code == 200:
        assert put.json() == {"version": before["version"] + 1}
        assert after["version"] == before["version"] + 1
        # What was sent, as plain JSON (YAML and TOML parse to the same values).
        assert json.loads(json.dumps(after["policy"])) == after["policy"]
        if fmt == "json":
            assert after["policy"] == json.loads(raw)
        return
    assert 400 <= put.status_code < 500
    refusal = put.json()
    assert isinstance(refusal.get("error"), str) and isinstance(refusal.get("detail"), str)
    assert "Traceback" not in refusal["detail"]
    assert after == before, "a refused PUT leaves the served version as it was"
