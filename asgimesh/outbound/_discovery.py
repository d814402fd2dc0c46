"""DNS discovery: a service's endpoints are every A/AAAA record of a name (a headless service).

The records are looked up by the shell (``anyio.getaddrinfo`` in a worker thread for the async
transport, so the event loop never blocks; ``socket.getaddrinfo`` for the sync one); this module
only decides when to look up and turns answers into endpoint URLs. One lookup at a time
(single flight); while it runs, and when it fails, calls keep using the last answer.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from typing import Any

from ..policy import parse_dns_target

__all__ = ["REFRESH", "RETRY", "DnsRecords", "addresses"]

#: How long an answer is used before it is looked up again (getaddrinfo does not expose TTLs).
REFRESH = 5.0
#: How soon a failed lookup is tried again.
RETRY = 1.0


def addresses(infos: Iterable[tuple[Any, ...]]) -> list[str]:
    """Unique IP addresses, sorted, from ``getaddrinfo`` results."""
    found = {str(info[4][0]).split("%")[0] for info in infos}
    return sorted(found, key=lambda ip: (ipaddress.ip_address(ip).version, ip))


class DnsRecords:
    """When to resolve ``host:port``, and the endpoint URLs of the last answer."""

    def __init__(self, target: str) -> None:
        self.scheme, self.host, self.port = parse_dns_target(target)
        self.urls: tuple[str, ...] | None = None
        self._due = 0.0
        self._busy = False

    def should_resolve(self, now: float) -> bool:
        """``True`` if this caller should look the name up now (it then reports back).
        Before the first answer every caller looks up: there is nothing stale to use meanwhile."""
        if self.urls is None:
            self._busy = True
            return True
        if self._busy or now < self._due:
            return False
        self._busy = True
        return True

    def resolved(self, ips: Iterable[str], now: float) -> tuple[str, ...] | None:
        """Record an answer; returns the new URLs if they changed, else ``None``."""
        self._busy = False
        self._due = now + REFRESH
        urls = tuple(self._url(ip) for ip in ips)
        if not urls:
            self._due = now + RETRY
            return None
        if urls == self.urls:
            return None
        self.urls = urls
        return urls

    def failed(self, now: float) -> None:
        self._busy = False
        self._due = now + RETRY

    def _url(self, ip: str) -> str:
        host = f"[{ip}]" if ":" in ip else ip
        return f"{self.scheme}://{host}:{self.port}"
