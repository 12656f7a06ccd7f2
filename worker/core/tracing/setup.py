"""Setting tracing up and flushing it, configured by the standard ``OTEL_*`` variables.

Tracing is on when ``OTEL_TRACES_EXPORTER`` names an exporter (``otlp``, ``console``) or an
OTLP endpoint is set; ``OTEL_TRACES_EXPORTER=none``, or nothing configured, leaves every
instrumentation uninstalled so it costs nothing. The SDK's batch processor owns a thread that
does not survive ``fork``: initialise only in the process that will export (gunicorn
``post_fork``, Celery ``worker_process_init``) and flush before such a process exits.
"""

from __future__ import annotations

import logging
import os
from typing import TYPE_CHECKING

from opentelemetry import trace

from worker.core.tracing.sampler import PinnableIdGenerator

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SpanExporter

logger = logging.getLogger(__name__)
_provider: TracerProvider | None = None


def tracer_provider() -> TracerProvider | None:
    """The SDK provider this process installed, or ``None`` while tracing is off."""
    return _provider


def tracing_enabled() -> bool:
    exporter = os.environ.get("OTEL_TRACES_EXPORTER", "").strip().lower()
    if exporter:
        return exporter != "none"
    return any(
        os.environ.get(name)
        for name in ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
    )


def _exporters() -> list[SpanExporter]:
    names = [n.strip() for n in os.environ.get("OTEL_TRACES_EXPORTER", "otlp").split(",")]
    exporters: list[SpanExporter] = []
    for name in names:
        if name == "otlp":
            protocol = os.environ.get(
                "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
                os.environ.get("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf"),
            )
            if protocol == "grpc":
                from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import (
                    OTLPSpanExporter as GrpcExporter,
                )

                exporters.append(GrpcExporter())
            else:
                from opentelemetry.exporter.otlp.proto.http.trace_exporter import (
                    OTLPSpanExporter as HttpExporter,
                )

                exporters.append(HttpExporter())
        elif name == "console":
            from opentelemetry.sdk.trace.export import ConsoleSpanExporter

            exporters.append(ConsoleSpanExporter())
        elif name not in ("", "none"):
            logger.warning("unsupported OTEL_TRACES_EXPORTER entry ignored", extra={"name": name})
    return exporters


def init_tracing(default_service_name: str) -> bool:
    """Install the SDK once per process; returns whether tracing is on."""
    global _provider
    if _provider is not None:
        return True
    if not tracing_enabled():
        return False
    from opentelemetry.sdk.resources import SERVICE_NAME, Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    service = os.environ.get("OTEL_SERVICE_NAME") or default_service_name
    # The sampler comes from OTEL_TRACES_SAMPLER / OTEL_TRACES_SAMPLER_ARG.
    provider = TracerProvider(
        resource=Resource.create({SERVICE_NAME: service}), id_generator=PinnableIdGenerator()
    )
    for exporter in _exporters():
        provider.add_span_processor(BatchSpanProcessor(exporter))
    trace.set_tracer_provider(provider)
    _provider = provider
    instrument_libraries(provider)
    return True


def instrument_libraries(provider: TracerProvider) -> None:
    """Celery (publish and execute) and the Redis client, with what skips dropped spans early."""
    # Imported here: with tracing off, no process loads the instrumentations at all.
    from opentelemetry.instrumentation.celery import CeleryInstrumentor
    from opentelemetry.instrumentation.redis import RedisInstrumentor

    from worker.core.tracing.consumer import skip_dropped_consumer_spans
    from worker.core.tracing.producer import skip_dropped_producer_spans
    from worker.core.tracing.redis_spans import ChildSpansOnly

    # The producer side needs the Celery instrumentation too, or no context enters the message.
    celery = CeleryInstrumentor()  # type: ignore[no-untyped-call]
    celery.instrument(tracer_provider=provider)
    skip_dropped_producer_spans(celery, provider.sampler)
    skip_dropped_consumer_spans(celery, provider)
    RedisInstrumentor().instrument(tracer_provider=ChildSpansOnly(provider))


def flush_tracing(timeout_millis: int = 5000) -> None:
    """Export what is buffered: a recycled pool child otherwise takes its spans with it."""
    if _provider is not None:
        _provider.force_flush(timeout_millis)


def current_trace_ids() -> tuple[str, str] | None:
    context = trace.get_current_span().get_span_context()
    if not context.is_valid:
        return None
    return format(context.trace_id, "032x"), format(context.span_id, "016x")
