"""The inbound request metrics, counted per request in plain integers and exposed on scrape.

Every request of mesh traffic adds one to ``mesh_inbound_requests_total{method,status}`` and
one observation to ``mesh_inbound_request_duration_seconds``. Through ``prometheus_client``'s
``Counter`` and ``Histogram`` that is five Python calls and three lock round trips per request
(the counter child, the histogram's sum, its bucket, each a value behind its own mutex), the
largest single share of the middleware's own cost. Here it is one call, one lock and a
``bisect``; ``prometheus_client`` still writes the exposition: :meth:`InboundTally.collect`
hands the registry ordinary metric families, built from the totals when scraped.
"""

from __future__ import annotations

import threading
import time
from bisect import bisect_left
from collections.abc import Iterator, Sequence

from prometheus_client.metrics_core import CounterMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

__all__ = ["InboundTally"]

_REQUESTS = "mesh_inbound_requests"
_REQUESTS_HELP = "Inbound requests handled, by method and status."
_DURATION = "mesh_inbound_request_duration_seconds"
_DURATION_HELP = "Inbound request duration."


class InboundTally(Collector):
    """``mesh_inbound_requests_total`` and ``mesh_inbound_request_duration_seconds`` of one
    service, registered in the runtime's registry like any other collector.

    Safe from several threads (a WSGI server's): one lock covers a request's whole record, so
    a scrape sees each request counted in both families or in neither.
    """

    def __init__(self, service: str, buckets: Sequence[float]) -> None:
        self.service = service
        self._bounds = tuple(float(b) for b in buckets)
        if list(self._bounds) != sorted(self._bounds):
            raise ValueError(f"buckets: expected increasing bounds, got {list(buckets)}")
        #: The ``le`` labels, as prometheus_client writes them ("0.005", "+Inf").
        self._les = tuple(
            floatToGoString(bound)  # type: ignore[no-untyped-call]
            for bound in (*self._bounds, float("inf"))
        )
        self._lock = threading.Lock()
        #: (method, status) -> [requests, when the series was first counted (Unix time)].
        self._requests: dict[tuple[str, str], list[float]] = {}
        #: Observations per bucket (not cumulative), the last one for ``+Inf``.
        self._buckets = [0] * (len(self._bounds) + 1)
        self._sum = 0.0
        self._created = time.time()

    def record(self, method: str, status: str, seconds: float) -> None:
        """Count one request of ``method`` answered ``status`` that took ``seconds``.

        ``method`` must come from a bounded set (the caller maps unknown ones to ``_OTHER``):
        each distinct pair is a series for as long as the process lives.
        """
        index = bisect_left(self._bounds, seconds)  # the first bound >= seconds: "le"
        key = (method, status)
        with self._lock:
            series = self._requests.get(key)
            if series is None:
                self._requests[key] = [1, time.time()]
            else:
                series[0] += 1
            self._buckets[index] += 1
            self._sum += seconds

    def describe(self) -> list[Metric]:
        """The two families, empty: what the registry checks names against when registering."""
        return [
            CounterMetricFamily(_REQUESTS, _REQUESTS_HELP, labels=["service", "method", "status"]),
            HistogramMetricFamily(_DURATION, _DURATION_HELP, labels=["service"]),
        ]

    def collect(self) -> Iterator[Metric]:
        with self._lock:
            requests = [(key, int(n), created) for key, (n, created) in self._requests.items()]
            counts = list(self._buckets)
            total = self._sum
        counter = CounterMetricFamily(
            _REQUESTS, _REQUESTS_HELP, labels=["service", "method", "status"]
        )
        for (method, status), n, created in requests:  # in order of first appearance
            counter.add_metric([self.service, method, status], n, created=created)
        yield counter
        cumulative, running = [], 0
        for le, n in zip(self._les, counts, strict=True):
            running += n
            cumulative.append((le, float(running)))
        histogram = HistogramMetricFamily(_DURATION, _DURATION_HELP, labels=["service"])
        histogram.add_metric([self.service], cumulative, sum_value=total)
        yield histogram
