"""Bus instruments (OpenTelemetry metrics; exported by Prometheus and/or OTLP per telemetry setup)."""

from __future__ import annotations

from collections.abc import Callable, Iterable

from opentelemetry.metrics import CallbackOptions, Observation

from flywheel.telemetry import meter

_meter = meter("flywheel.bus")

outbox_published = _meter.create_counter(
    "flywheel.outbox.published", unit="{event}", description="Outbox rows published to Kafka"
)
consumer_processed = _meter.create_counter(
    "flywheel.consumer.processed", unit="{event}", description="Events handled (duplicates included)"
)
consumer_duplicates = _meter.create_counter(
    "flywheel.consumer.duplicates", unit="{event}", description="Redelivered events the inbox skipped"
)
consumer_retries = _meter.create_counter(
    "flywheel.consumer.retries", unit="{attempt}", description="Handler attempts that failed and were retried"
)
consumer_dead_lettered = _meter.create_counter(
    "flywheel.consumer.dead_lettered", unit="{event}", description="Events sent to <topic>.dlq"
)
dead_letters_stored = _meter.create_counter(
    "flywheel.dead_letters.stored",
    unit="{record}",
    description="Records kept in the dead_letters table because the DLQ or the broker refused them",
)
outbox_failed = _meter.create_counter(
    "flywheel.outbox.failed", unit="{attempt}", description="Outbox events the broker refused (retried later)"
)
handler_duration = _meter.create_histogram(
    "flywheel.consumer.handler.duration",
    unit="s",
    description="Time to handle one event, retries included",
    # Seconds, not the SDK's default buckets (sized for milliseconds, where every event lands in the first).
    explicit_bucket_boundaries_advisory=[0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30],
)

_lag_sources: list[Callable[[], Iterable[tuple[dict[str, str | int], int]]]] = []


def register_lag_source(source: Callable[[], Iterable[tuple[dict[str, str | int], int]]]) -> None:
    _lag_sources.append(source)


def _observe_lag(_: CallbackOptions) -> Iterable[Observation]:
    for source in _lag_sources:
        for attributes, lag in source():
            yield Observation(lag, attributes)


_meter.create_observable_gauge(
    "flywheel.consumer.lag",
    callbacks=[_observe_lag],
    unit="{message}",
    description="High-water mark minus position",
)


_outbox_sources: list[Callable[[], int | None]] = []


def register_outbox_source(source: Callable[[], int | None]) -> None:
    """A relay's view of its unsent rows (None until it has looked)."""
    _outbox_sources.append(source)


def _observe_outbox(_: CallbackOptions) -> Iterable[Observation]:
    for source in _outbox_sources:
        pending = source()
        if pending is not None:
            yield Observation(pending)


_meter.create_observable_gauge(
    "flywheel.outbox.pending",
    callbacks=[_observe_outbox],
    unit="{event}",
    description="Outbox rows not yet published (the backlog the relay still has to send)",
)
