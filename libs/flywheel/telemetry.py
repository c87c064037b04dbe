"""Tracing for every hop: providers from the environment, instrumentation, a JSONL span file.

Exporters follow the standard OTEL_* variables (OTLP when OTEL_EXPORTER_OTLP_ENDPOINT is set);
the embedded stack also points FLYWHEEL_SPANS_FILE at var/spans.jsonl so `flywheel traces` can
rebuild a chain without a collector.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from opentelemetry import metrics, trace
from opentelemetry.instrumentation.utils import suppress_instrumentation
from opentelemetry.propagators import textmap
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import MetricReader, PeriodicExportingMetricReader
from opentelemetry.sdk.resources import SERVICE_NAME, Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult

from flywheel.config import Settings

_provider: TracerProvider | None = None
_meter_provider: MeterProvider | None = None


class JsonlSpanExporter(SpanExporter):
    """Appends one JSON object per finished span; several processes may share the file."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._path = path
        self._lock = threading.Lock()

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        lines = "".join(json.dumps(span_to_dict(s), separators=(",", ":")) + "\n" for s in spans)
        with self._lock:
            # One O_APPEND write per batch keeps lines from interleaving between processes.
            fd = os.open(self._path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            try:
                os.write(fd, lines.encode())
            finally:
                os.close(fd)
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        return None


def span_to_dict(span: ReadableSpan) -> dict[str, Any]:
    ctx = span.get_span_context()
    assert ctx is not None
    return {
        "trace_id": format(ctx.trace_id, "032x"),
        "span_id": format(ctx.span_id, "016x"),
        "parent_span_id": format(span.parent.span_id, "016x") if span.parent else None,
        "name": span.name,
        "kind": span.kind.name,
        "service": span.resource.attributes.get(SERVICE_NAME, ""),
        "start_ns": span.start_time,
        "end_ns": span.end_time,
        "status": span.status.status_code.name,
        "attributes": {k: _jsonable(v) for k, v in (span.attributes or {}).items()},
    }


def _jsonable(v: Any) -> Any:
    return list(v) if isinstance(v, tuple) else v


def setup_telemetry(service: str, settings: Settings) -> TracerProvider:
    """Install tracer and meter providers and instrument grpc, aiokafka and asyncpg (once per process)."""
    global _provider
    if _provider is not None:
        return _provider
    resource = Resource.create({SERVICE_NAME: f"flywheel-{service}"})
    _setup_metrics(resource, settings)
    provider = TracerProvider(resource=resource)
    if settings.otel_exporter_otlp_endpoint:
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    if settings.spans_file:
        provider.add_span_processor(
            BatchSpanProcessor(JsonlSpanExporter(settings.spans_file), schedule_delay_millis=200)
        )
    trace.set_tracer_provider(provider)
    _instrument()
    _provider = provider
    return provider


def _setup_metrics(resource: Resource, settings: Settings) -> None:
    """Prometheus endpoint on FLYWHEEL_METRICS_PORT, OTLP push when a collector is configured."""
    global _meter_provider
    readers: list[MetricReader] = []
    if settings.metrics_port:
        from opentelemetry.exporter.prometheus import PrometheusMetricReader
        from prometheus_client import start_http_server

        # Worker i of a pool (flywheel.workers) answers on the port + i: each has its own meters.
        start_http_server(settings.metrics_port + (settings.worker_index or 0), addr=settings.grpc_host)
        readers.append(PrometheusMetricReader())
    if settings.otel_exporter_otlp_endpoint:
        from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import OTLPMetricExporter

        readers.append(PeriodicExportingMetricReader(OTLPMetricExporter()))
    _meter_provider = MeterProvider(resource=resource, metric_readers=readers)
    metrics.set_meter_provider(_meter_provider)


def meter(name: str = "flywheel") -> metrics.Meter:
    return metrics.get_meter(name)


class KafkaHeadersGetter(textmap.Getter[Sequence[tuple[str, bytes | None]]]):
    """Trace context from Kafka record headers. Headers come from any producer: a value that is not
    UTF-8 is read with replacement characters (and then ignored as an invalid traceparent) instead of
    raising, which in aiokafka's own getter killed the consumer on every redelivery of that record."""

    def get(self, carrier: Sequence[tuple[str, bytes | None]], key: str) -> list[str] | None:
        for item_key, value in carrier:
            if item_key == key and value is not None:
                return [value.decode("utf-8", "replace")]
        return None

    def keys(self, carrier: Sequence[tuple[str, bytes | None]]) -> list[str]:
        return [key for key, _ in carrier]


kafka_headers_getter = KafkaHeadersGetter()


def _instrument() -> None:
    from opentelemetry.instrumentation.aiokafka import AIOKafkaInstrumentor
    from opentelemetry.instrumentation.aiokafka import utils as aiokafka_utils
    from opentelemetry.instrumentation.asyncpg import AsyncPGInstrumentor
    from opentelemetry.instrumentation.grpc import GrpcAioInstrumentorClient
    from opentelemetry.instrumentation.grpc.filters import health_check, negate

    # Server spans come from our own method wrapping (flywheel.grpc.methods), which leaves health
    # probes and, unless FLYWHEEL_TRACE_INFERENCE is set, inference calls untraced.
    GrpcAioInstrumentorClient(filter_=negate(health_check())).instrument()
    # The instrumentation's consume wrappers look this getter up at call time: use the tolerant one.
    aiokafka_utils._aiokafka_getter = kafka_headers_getter  # type: ignore[assignment]
    AIOKafkaInstrumentor().instrument()
    AsyncPGInstrumentor().instrument()


def shutdown_telemetry() -> None:
    global _provider, _meter_provider
    if _provider is not None:
        _provider.shutdown()
        _provider = None
    if _meter_provider is not None:
        _meter_provider.shutdown()
        _meter_provider = None


@contextmanager
def untraced() -> Iterator[None]:
    """For background polling (outbox relay, health probes) that would otherwise be a span per tick."""
    with suppress_instrumentation():
        yield


def tracer(name: str = "flywheel") -> trace.Tracer:
    return trace.get_tracer(name)


def read_spans(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    out = []
    for line in path.read_text().splitlines():
        if line.strip():
            out.append(json.loads(line))
    return out
