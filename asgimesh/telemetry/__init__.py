"""Telemetry: Prometheus metrics, the structlog access log and optional OpenTelemetry spans."""

from ._metrics import CONTENT_TYPE, MeshMetrics

__all__ = ["CONTENT_TYPE", "MeshMetrics"]
