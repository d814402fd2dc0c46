from collections.abc import Iterator
from contextlib import contextmanager

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.util._once import Once

from ..inbound.shells import make_runtime, make_shell, shell_kind

__all__ = ["installed_provider", "make_runtime", "make_shell", "otel_spans", "shell_kind"]


@pytest.fixture
def otel_spans() -> Iterator[InMemorySpanExporter]:
    """A real SDK tracer provider, installed globally for one test, exporting to memory."""
    with installed_provider() as exporter:
        yield exporter


@contextmanager
def installed_provider() -> Iterator[InMemorySpanExporter]:
    """Install a real SDK tracer provider globally, exporting to memory; remove it after.

    OpenTelemetry lets a process set its provider once; like OpenTelemetry's own test utilities
    we reset that guard around the test so that other tests keep the no-op provider.
    """
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    saved = trace._TRACER_PROVIDER, trace._TRACER_PROVIDER_SET_ONCE
    trace._TRACER_PROVIDER_SET_ONCE = Once()
    trace._TRACER_PROVIDER = None
    trace.set_tracer_provider(provider)
    try:
        yield exporter
    finally:
        trace._TRACER_PROVIDER, trace._TRACER_PROVIDER_SET_ONCE = saved
        provider.shutdown()
