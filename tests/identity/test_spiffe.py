"""SPIFFE IDs without sockets: what is valid, and how ``from`` rules match."""

from __future__ import annotations

import pytest

from asgimesh.identity import control_plane_id, id_matches, is_spiffe_id, service_id


@pytest.mark.parametrize(
    "text",
    [
        "spiffe://mesh.local/ns/default/sa/orders",
        "spiffe://example.org/a",
        "spiffe://td_1.example-x/a.b/c-d/e_f",
    ],
)
def test_valid_ids(text: str) -> None:
    assert is_spiffe_id(text)


@pytest.mark.parametrize(
    "text",
    [
        "spiffe://mesh.local",  # a trust domain, not a workload
        "spiffe://mesh.local/",
        "spiffe://Mesh.Local/a",  # trust domains are lower case
        "spiffe://mesh.local/a//b",
        "spiffe://mesh.local/a/../b",
        "spiffe://mesh.local/./b",
        "spiffe://mesh.local:443/a",
        "spiffe://user@mesh.local/a",
        "spiffe://mesh.local/a?x=1",
        "spiffe://mesh.local/a#f",
        "spiffe://mesh.local/a b",
        "https://mesh.local/a",
        "spiffe://mesh.local/" + "a" * 3000,
        "spiffe://mesh.local/ns/\u00e9",
        "spiffe://mesh.local/a\n",
    ],
)
def test_invalid_ids(text: str) -> None:
    assert not is_spiffe_id(text)


def test_service_and_control_plane_ids() -> None:
    assert service_id("mesh.local", "shop", "orders") == "spiffe://mesh.local/ns/shop/sa/orders"
    assert control_plane_id("mesh.local") == "spiffe://mesh.local/ns/mesh-system/sa/control-plane"


def test_from_patterns_match_exactly_or_by_prefix() -> None:
    orders = "spiffe://mesh.local/ns/shop/sa/orders"
    assert id_matches(orders, orders)
    assert not id_matches(orders, orders + "-v2")
    assert id_matches("spiffe://mesh.local/ns/shop/*", orders)
    assert not id_matches("spiffe://mesh.local/ns/shop/*", "spiffe://mesh.local/ns/shopping/sa/x")
    assert id_matches("*", orders)
