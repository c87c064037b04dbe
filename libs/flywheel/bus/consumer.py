"""Consumer loop: decode, run the handler and the inbox insert in one transaction, commit offsets.

A failing message is retried with backoff; after `consumer_max_attempts` (at once when the
message itself is at fault: it cannot be decoded, or the handler says it is invalid) it is sent
to `<topic>.dlq` with the error in headers, or kept in the dead_letters table when the DLQ will
not take it, and the loop moves on: whatever a message raises, it never stops a consumer.
Offsets are committed only after the handler's transaction committed.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any, TypeAlias, TypeVar

import asyncpg
import structlog
from aiokafka import ConsumerRecord, TopicPartition
from aiokafka.errors import KafkaError
from google.protobuf.message import Message
from opentelemetry import propagate, trace
from opentelemetry.context import Context

from flywheel.config import Settings
from flywheel.db import CONNECTION_ERRORS
from flywheel.errors import DataLoss, InvalidArgument
from flywheel.logging import get_logger
from flywheel.retry import Backoff
from flywheel.telemetry import kafka_headers_getter, tracer

from . import metrics
from .dlq import DeadLetters
from .groups import fetch, group_consumer, join
from .producer import EventProducer
from .serde import CONTENT_JSON, MalformedEvent, decode, header
from .topics import EVENT_TYPES

log = get_logger(__name__)

# Failures that are a property of the message itself: the same bytes fail the same way, so no retries.
NOT_RETRIED: tuple[type[BaseException], ...] = (MalformedEvent, InvalidArgument, DataLoss, UnicodeError)


@dataclass(frozen=True)
class EventContext:
    topic: str
    key: str | None
    event_id: str
    consumer: str
    partition: int
    offset: int


MessageT = TypeVar("MessageT", bound=Message)
# A reaction to one event type: `async def on_x(conn, event: events_pb2.X, ctx) -> None` is a Handler[X].
# It runs inside the consumer's transaction, with the inbox insert that makes it happen once.
Handler: TypeAlias = Callable[[asyncpg.Connection, MessageT, EventContext], Awaitable[None]]


class EventConsumer:
    def __init__(
        self,
        settings: Settings,
        service: str,
        pool: asyncpg.Pool,
        producer: EventProducer,
        handlers: dict[str, Handler[Any]],
        *,
        group_id: str | None = None,
        offset_reset: str = "earliest",
    ) -> None:
        self._settings = settings
        self._pool = pool
        self._producer = producer
        self._handlers = handlers
        self.name = group_id or f"flywheel-{service}"
        self._consumer = group_consumer(settings, self.name, *handlers, offset_reset=offset_reset)
        self.processed = 0
        self.dead_lettered = 0
        self._next_offsets: dict[TopicPartition, int] = {}
        self._dead_letters = DeadLetters(settings, pool, producer, self.name)
        metrics.register_lag_source(self._lag)

    def _lag(self) -> Iterable[tuple[dict[str, str | int], int]]:
        for tp, position in list(self._next_offsets.items()):
            high = self._consumer.highwater(tp)
            if high is not None:
                yield (
                    {"group": self.name, "topic": tp.topic, "partition": tp.partition},
                    max(high - position, 0),
                )

    async def stop(self) -> None:
        await self._consumer.stop()

    async def run(self) -> None:
        """Join the group (in the background of a SERVING process: joins can take seconds) and consume."""
        await join(self._consumer, self.name)
        while True:
            batches = await fetch(self._consumer, timeout_ms=500, max_records=100)
            if batches is None:
                continue
            for tp, records in batches.items():
                for record in records:
                    await self._process(record)
                self._next_offsets[tp] = records[-1].offset + 1
                await self._commit(tp, records[-1].offset + 1)

    async def _commit(self, tp: TopicPartition, offset: int) -> None:
        try:
            await self._consumer.commit({tp: offset})
        except KafkaError as exc:
            # Not fatal: the next commit covers it; a redelivery meanwhile is absorbed by the inbox.
            log.warning("consumer: offset commit failed", error=repr(exc), topic=tp.topic, partition=tp.partition)

    async def _process(self, record: ConsumerRecord) -> None:
        parent = propagate.extract(record.headers, getter=kafka_headers_getter)
        started = time.perf_counter()
        try:
            await self._attempts(record, parent)
        finally:
            handler_attrs = {"group": self.name, "topic": record.topic}
            metrics.handler_duration.record(time.perf_counter() - started, handler_attrs)

    async def _attempts(self, record: ConsumerRecord, parent: Context) -> None:
        attempt = 0
        backoff = Backoff(self._settings.consumer_backoff_s, self._settings.consumer_backoff_max_s)
        while True:
            attempt += 1
            with (
                tracer().start_as_current_span(
                    f"{record.topic} process", context=parent, kind=trace.SpanKind.CONSUMER
                ) as span,
                structlog.contextvars.bound_contextvars(topic=record.topic, offset=record.offset),
            ):
                span.set_attribute("messaging.consumer.group.name", self.name)
                span.set_attribute("messaging.kafka.offset", record.offset)
                span.set_attribute("flywheel.attempt", attempt)
                try:
                    await self._handle(record)
                    self.processed += 1
                    metrics.consumer_processed.add(1, {"group": self.name, "topic": record.topic})
                    return
                except Exception as exc:  # any failure: one bad message must never stop the consumer
                    span.record_exception(exc)
                    span.set_status(trace.StatusCode.ERROR, str(exc)[:500])
                    if isinstance(exc, CONNECTION_ERRORS):
                        # The database is away: that is no fault of the message; wait it out, uncounted.
                        log.warning("consumer: database unavailable, will retry", error=repr(exc)[:500])
                        attempt -= 1
                    elif isinstance(exc, NOT_RETRIED) or attempt >= self._settings.consumer_max_attempts:
                        log.error("consumer: giving up, sending to DLQ", error=repr(exc)[:500], attempts=attempt)
                        await self._dead_letter(record, exc, attempt)
                        return
                    else:
                        log.warning("consumer: handler failed, will retry", error=repr(exc)[:500], attempt=attempt)
                    metrics.consumer_retries.add(1, {"group": self.name, "topic": record.topic})
            await backoff.wait()

    async def _handle(self, record: ConsumerRecord) -> None:
        handler = self._handlers.get(record.topic)
        if handler is None:
            raise MalformedEvent(f"no handler for topic {record.topic!r}")
        event = decode(EVENT_TYPES[record.topic], record.value, record.headers)
        event_id = _event_id(event, record)
        structlog.contextvars.bind_contextvars(event_id=event_id)
        trace.get_current_span().set_attribute("flywheel.event_id", event_id)
        try:
            ctx = EventContext(
                topic=record.topic,
                key=record.key.decode("utf-8", "replace") if record.key else None,
                event_id=event_id,
                consumer=self.name,
                partition=record.partition,
                offset=record.offset,
            )
            async with self._pool.acquire() as conn, conn.transaction():
                fresh = await conn.fetchval(
                    "INSERT INTO inbox (consumer, event_id, topic) VALUES ($1, $2, $3)"
                    " ON CONFLICT DO NOTHING RETURNING true",
                    self.name,
                    event_id,
                    record.topic,
                )
                if not fresh:
                    log.info("consumer: duplicate event skipped")
                    metrics.consumer_duplicates.add(1, {"group": self.name, "topic": record.topic})
                    return
                await handler(conn, event, ctx)
        finally:
            structlog.contextvars.unbind_contextvars("event_id")

    async def _dead_letter(self, record: ConsumerRecord, exc: BaseException, attempts: int) -> None:
        await self._dead_letters.park(record, exc, attempts)
        self.dead_lettered += 1


def _event_id(event: Message, record: ConsumerRecord) -> str:
    meta = getattr(event, "meta", None)
    if meta is not None and meta.event_id:
        return str(meta.event_id)
    if header(record.headers, "content-type") == CONTENT_JSON:
        # Outside JSON producers may omit meta; the record's position identifies it, with its
        # fingerprint so that a new record at a reused offset (a reset log) is not taken for a duplicate.
        return f"{record.topic}:{record.partition}:{record.offset}:{fingerprint(record)}"
    raise MalformedEvent("event has no meta.event_id")


def fingerprint(record: ConsumerRecord) -> str:
    """Enough of a record to tell it from another at the same offset of a different log."""
    digest = hashlib.blake2b(digest_size=12)
    digest.update(record.key or b"")
    digest.update(b"\0")
    digest.update(record.value or b"")
    return f"{record.timestamp}:{digest.hexdigest()}"


def acknowledge_only(reaction: str) -> Handler[Message]:
    """A handler for a topic whose reaction is not built yet: the event is recorded in the inbox
    (so it is consumed once, and lag stays visible) and logged with what will happen to it."""

    async def handler(_conn: asyncpg.Connection, event: Message, ctx: EventContext) -> None:
        log.info("event received", event_type=event.DESCRIPTOR.full_name, key=ctx.key, pending_reaction=reaction)

    return handler
