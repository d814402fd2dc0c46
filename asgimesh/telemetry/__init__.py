"""Telemetry: Prometheus metrics, the structlog access log, optional OpenTelemetry spans, and
the per-instance summary a service reports to the control plane."""

from ._client import ClientSpans, TrySpan
from ._inbound import InboundTelemetry, asgi_route
from ._metrics import CONTENT_TYPE, MeshMetrics
from ._otel import SpanScope, environ_attributes, scope_attributes
from ._summary import MAX_EJECTED_PER_UPSTREAM, MAX_UPSTREAMS_PER_REPORT, InstanceReport

__all__ = [
    "CONTENT_TYPE",
    "MAX_EJECTED_PER_UPSTREAM",
    "MAX_UPSTREAMS_PER_REPORT",
    "ClientSpans",
    "InboundTelemetry",
    "InstanceReport",
    "MeshMetrics",
    "SpanScope",
    "TrySpan",
    "asgi_route",
    "environ_attributes",
    "scope_attributes",
]
