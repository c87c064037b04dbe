"""Transactional outbox: `enqueue` inside the state change's transaction, `OutboxRelay` publishes.

The trace context of the writer is stored with the row, so the hop to Kafka stays in the trace
of the call that caused it even though the relay publishes later, from another task or process.
"""

from __future__ import annotations

import asyncio
import json

import asyncpg
from google.protobuf.message import Message
from opentelemetry import propagate, trace
from opentelemetry.instrumentation.aiokafka import AIOKafkaInstrumentor

from flywheel.config import Settings
from flywheel.logging import get_logger
from flywheel.retry import Backoff
from flywheel.telemetry import tracer, untraced

from . import dlq, metrics
from .producer import EventProducer
from .security import kafka_security
from .serde import CONTENT_PROTOBUF, event_type_name
from .topics import all_topics, ensure_topics

NOTIFY_CHANNEL = "flywheel_outbox"
log = get_logger(__name__)


async def enqueue(conn: asyncpg.Connection, topic: str, key: str, event: Message) -> str:
    """Stage `event` for `topic`; it is published only if the surrounding transaction commits."""
    meta = getattr(event, "meta", None)  # every Flywheel event has one; Message does not say so
    if meta is None or not meta.event_id:
        raise ValueError("event.meta must be set (flywheel.bus.serde.new_meta)")
    carrier: dict[str, str] = {}
    propagate.inject(carrier)
    headers = {"content-type": CONTENT_PROTOBUF, "event-type": event_type_name(event), **carrier}
    await conn.execute(
        "INSERT INTO outbox (event_id, topic, key, payload, headers) VALUES ($1, $2, $3, $4, $5::jsonb)",
        meta.event_id,
        topic,
        key.encode(),
        event.SerializeToString(),
        json.dumps(headers),
    )
    await conn.execute("SELECT pg_notify($1, '')", NOTIFY_CHANNEL)
    return meta.event_id


class OutboxRelay:
    """Publishes unsent outbox rows in id order with acks=all, then marks them sent.

    An event the broker refuses for its own sake (too large, say) is retried on later drains and,
    after `outbox_max_attempts`, moved to `dead_letters`, so it never blocks the events behind it;
    refusals that are the broker's (away, timing out) count against no event.

    Rows are claimed with FOR UPDATE SKIP LOCKED, so replicas share the work; a crash between
    publish and mark re-publishes, which the consumers' inbox absorbs (at-least-once).
    """

    def __init__(self, pool: asyncpg.Pool, producer: EventProducer, settings: Settings, batch: int = 200):
        self._pool = pool
        self._producer = producer
        self._settings = settings
        self._batch = batch
        self._wake = asyncio.Event()
        self.published = 0
        self.pending: int | None = None  # unsent rows when last counted (the flywheel.outbox.pending gauge)
        metrics.register_outbox_source(lambda: self.pending)

    async def run(self) -> None:
        listener = await self._pool.acquire()
        await listener.add_listener(NOTIFY_CHANNEL, self._on_notify)
        backoff = Backoff.from_settings(self._settings)
        try:
            while True:
                try:
                    n = await self.drain_once()
                    backoff.reset()
                except (asyncpg.PostgresError, OSError) as exc:
                    log.warning("outbox relay: database error, will retry", error=str(exc))
                    n = 0
                    await backoff.wait()
                except Exception as exc:  # broker errors: keep rows, retry with backoff
                    log.warning("outbox relay: publish failed, will retry", error=repr(exc))
                    n = 0
                    await backoff.wait()
                    await self._recreate_topics()
                if n == 0:
                    self._wake.clear()
                    try:
                        await asyncio.wait_for(self._wake.wait(), self._settings.outbox_poll_s)
                    except TimeoutError:
                        pass
        finally:
            try:
                await listener.remove_listener(NOTIFY_CHANNEL, self._on_notify)
            finally:
                await self._pool.release(listener)

    def _on_notify(self, *_: object) -> None:
        self._wake.set()

    async def drain_once(self) -> int:
        """Publish one batch; returns how many went out. Raises when none did (broker trouble: back off)."""
        async with self._pool.acquire() as conn, conn.transaction():
            with untraced():
                rows = await conn.fetch(
                    "SELECT id, event_id, topic, key, payload, headers, attempts FROM outbox WHERE sent_at IS NULL"
                    " ORDER BY id LIMIT $1 FOR UPDATE SKIP LOCKED",
                    self._batch,
                )
            if not rows:
                self.pending = 0
                return 0
            outcomes = await self._publish_all(rows)
            sent = [r for r, problem in zip(rows, outcomes, strict=True) if problem is None]
            failed = [(r, problem) for r, problem in zip(rows, outcomes, strict=True) if problem is not None]
            with untraced():
                if sent:
                    await conn.execute(
                        "UPDATE outbox SET sent_at = now() WHERE id = ANY($1::bigint[])", [r["id"] for r in sent]
                    )
                for row, problem in failed:
                    await self._failed(conn, row, problem)
        self.published += len(sent)
        for r in sent:
            metrics.outbox_published.add(1, {"topic": r["topic"]})
        with untraced():
            self.pending = await self._pool.fetchval("SELECT count(*) FROM outbox WHERE sent_at IS NULL")
        if failed and not sent:
            raise failed[0][1]
        return len(sent)

    async def _publish_all(self, rows: list[asyncpg.Record]) -> list[BaseException | None]:
        """Each row's outcome: None once the broker acked it, else why not."""
        outcomes: list[BaseException | None] = [None] * len(rows)
        acks: dict[int, asyncio.Future] = {}
        for i, row in enumerate(rows):
            try:
                acks[i] = await self._publish(row)
            except Exception as exc:  # refused before sending (e.g. larger than the producer allows)
                outcomes[i] = exc
        results = await asyncio.wait_for(asyncio.gather(*acks.values(), return_exceptions=True), 30)
        for i, result in zip(acks, results, strict=True):
            if isinstance(result, BaseException):
                outcomes[i] = result
        return outcomes

    async def _failed(self, conn: asyncpg.Connection, row: asyncpg.Record, problem: BaseException) -> None:
        """Count a refusal that is the event's own fault; after outbox_max_attempts move it aside."""
        metrics.outbox_failed.add(1, {"topic": row["topic"]})
        if not dlq.refused_for_itself(problem):
            return  # the broker is away or busy: every event waits alike, nothing is counted
        attempts = row["attempts"] + 1
        if attempts < self._settings.outbox_max_attempts:
            await conn.execute(
                "UPDATE outbox SET attempts = $2, last_error = $3 WHERE id = $1", row["id"], attempts, repr(problem)
            )
            log.warning("outbox relay: broker refused an event", event_id=row["event_id"], error=repr(problem))
            return
        stored: dict[str, str] = json.loads(row["headers"])
        await dlq.store(
            conn,
            origin="outbox",
            topic=row["topic"],
            key=bytes(row["key"]) if row["key"] is not None else None,
            payload=bytes(row["payload"]),
            headers=[(k, v.encode()) for k, v in stored.items()],
            error=problem,
            attempts=attempts,
            event_id=row["event_id"],
        )
        await conn.execute("DELETE FROM outbox WHERE id = $1", row["id"])
        log.error(
            "outbox relay: event moved to dead_letters; later events go on",
            event_id=row["event_id"],
            topic=row["topic"],
            attempts=attempts,
            error=repr(problem),
        )

    async def _publish(self, row: asyncpg.Record) -> asyncio.Future:
        stored: dict[str, str] = json.loads(row["headers"])
        parent = propagate.extract(stored)
        with tracer().start_as_current_span(
            f"outbox publish {row['topic']}", context=parent, kind=trace.SpanKind.INTERNAL
        ):
            headers = {k: v for k, v in stored.items() if k not in ("traceparent", "tracestate")}
            if not AIOKafkaInstrumentor().is_instrumented_by_opentelemetry:
                propagate.inject(headers)  # the instrumentation injects its own send span otherwise
            return await self._producer.send(
                row["topic"],
                bytes(row["payload"]),
                key=bytes(row["key"]) if row["key"] is not None else None,
                headers=[(k, v.encode()) for k, v in headers.items()],
            )

    async def _recreate_topics(self) -> None:
        # A broker with memory storage forgets its topics on restart; the outbox still holds the events.
        try:
            await ensure_topics(
                self._settings.kafka_bootstrap,
                all_topics(),
                partitions=self._settings.kafka_partitions,
                replication_factor=self._settings.kafka_replication_factor,
                timeout_s=3.0,
                security=kafka_security(self._settings),
            )
        except Exception as exc:
            log.info("outbox relay: broker not ready yet", error=repr(exc))
