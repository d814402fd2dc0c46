"""Telemetry: Prometheus metrics, the structlog access log, optional OpenTelemetry spans, and
the per-instance summary a service reports to the control plane."""

from ._inbound import InboundTelemetry, asgi_route
from ._metrics import CONTENT_TYPE, MeshMetrics
from ._otel import SpanScope, environ_attributes, scope_attributes
from ._summary import MAX_EJECTED_PER_UPSTREAM, MAX_UPSTREAMS_PER_REPORT, InstanceReport

__all__ = [
    "CONTENT_TYPE",
    "MAX_EJECTED_PER_UPSTREAM",
    "MAX_UPSTREAMS_PER_REPORT",
    "InboundTelemetry",
    "InstanceReport",
    "MeshMetrics",
    "SpanScope",
    "asgi_route",
    "environ_attributes",
    "scope_attributes",
]
