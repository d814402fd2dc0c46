"""DNS discovery: when to look up, and endpoint URLs from answers."""

from __future__ import annotations

import socket

from asgimesh.outbound._discovery import REFRESH, RETRY, DnsRecords, addresses


def test_addresses_unique_and_sorted_v4_first() -> None:
    infos = [
        (socket.AF_INET6, 1, 6, "", ("::1", 80, 0, 0)),
        (socket.AF_INET, 1, 6, "", ("10.0.0.2", 80)),
        (socket.AF_INET, 1, 6, "", ("10.0.0.1", 80)),
        (socket.AF_INET, 1, 6, "", ("10.0.0.1", 80)),
    ]
    assert addresses(infos) == ["10.0.0.1", "10.0.0.2", "::1"]


def test_records_refresh_single_flight_and_urls() -> None:
    dns = DnsRecords("db.internal:8080")
    assert dns.should_resolve(0.0)
    assert dns.should_resolve(0.0)  # no answer yet: every caller looks up
    assert dns.resolved(["10.0.0.1", "fe80::1"], 0.0) == ("http://10.0.0.1:8080", "http://[fe80::1]:8080")
    assert not dns.should_resolve(REFRESH - 0.1)
    assert dns.should_resolve(REFRESH)
    assert not dns.should_resolve(REFRESH)  # single flight
    assert dns.resolved(["10.0.0.1", "fe80::1"], REFRESH) is None  # unchanged
    assert dns.should_resolve(2 * REFRESH)
    dns.failed(2 * REFRESH)
    assert dns.urls is not None  # a failure keeps the last answer
    assert not dns.should_resolve(2 * REFRESH + RETRY - 0.1)
    assert dns.should_resolve(2 * REFRESH + RETRY)


def test_https_target() -> None:
    dns = DnsRecords("https://db:443")
    dns.should_resolve(0.0)
    assert dns.resolved(["10.1.1.1"], 0.0) == ("https://10.1.1.1:443",)
