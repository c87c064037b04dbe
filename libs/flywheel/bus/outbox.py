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

from . import metrics
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
        async with self._pool.acquire() as conn, conn.transaction():
            with untraced():
                rows = await conn.fetch(
                    "SELECT id, topic, key, payload, headers FROM outbox WHERE sent_at IS NULL"
                    " ORDER BY id LIMIT $1 FOR UPDATE SKIP LOCKED",
                    self._batch,
                )
            if not rows:
                return 0
            acks = [await self._publish(r) for r in rows]
            await asyncio.wait_for(asyncio.gather(*acks), 30)
            with untraced():
                await conn.execute(
                    "UPDATE outbox SET sent_at = now() WHERE id = ANY($1::bigint[])", [r["id"] for r in rows]
                )
        self.published += len(rows)
        for r in rows:
            metrics.outbox_published.add(1, {"topic": r["topic"]})
        return len(rows)

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
