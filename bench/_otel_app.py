"""examples/hello_asgi's mesh app with the OpenTelemetry SDK installed (spans made, then dropped).

Used by bench_inbound.py to show what a real tracer provider costs per request.
"""

from __future__ import annotations

from collections.abc import Sequence

from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult


class DropSpans(SpanExporter):
    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        return SpanExportResult.SUCCESS


provider = TracerProvider()
provider.add_span_processor(BatchSpanProcessor(DropSpans()))
trace.set_tracer_provider(provider)

from examples.hello_asgi import app  # noqa: E402

__all__ = ["app"]
