"""Telemetry: Prometheus metrics, the structlog access log, optional OpenTelemetry spans, and
the per-instance summary a service reports to the control plane."""

from ._metrics import CONTENT_TYPE, MeshMetrics
from ._summary import InstanceReport

__all__ = ["CONTENT_TYPE", "InstanceReport", "MeshMetrics"]
