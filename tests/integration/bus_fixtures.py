"""In-process bus parts wired to the session's real PostgreSQL and broker, one schema per test."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable

import asyncpg

from flywheel import db
from flywheel.bus import EventConsumer, EventProducer, Handler, OutboxRelay, ensure_topics
from flywheel.bus.topics import dlq_topic, register_event_type
from flywheel.config import Settings
from flywheel.v1 import events_pb2


@contextlib.asynccontextmanager
async def bus_parts(
    settings: Settings, schema: str, topics: list[str]
) -> AsyncIterator[tuple[asyncpg.Pool, EventProducer]]:
    for t in topics:
        register_event_type(t, events_pb2.Feedback)
    await ensure_topics(
        settings.kafka_bootstrap,
        [*topics, *map(dlq_topic, topics)],
        partitions=settings.kafka_partitions,
        replication_factor=1,
    )
    pool = await db.connect(settings.database_url, schema)
    await db.migrate(pool, schema, [db.LIBRARY_MIGRATIONS])
    await pool.execute("CREATE TABLE IF NOT EXISTS effects (event_id text, name text)")
    producer = EventProducer(settings, client_id=schema)
    await producer.start()
    try:
        yield pool, producer
    finally:
        await producer.stop()
        await pool.close()


@contextlib.asynccontextmanager
async def running(*jobs: Awaitable[None]) -> AsyncIterator[None]:
    tasks = [asyncio.ensure_future(j) for j in jobs]
    try:
        yield
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


def record_effect() -> Handler:
    async def handler(conn: asyncpg.Connection, event, ctx) -> None:  # type: ignore[no-untyped-def]
        await conn.execute("INSERT INTO effects (event_id, name) VALUES ($1, $2)", ctx.event_id, event.model_name)

    return handler


def consumer(settings: Settings, pool: asyncpg.Pool, producer: EventProducer, topic: str, group: str) -> EventConsumer:
    return EventConsumer(settings, "test", pool, producer, {topic: record_effect()}, group_id=group)


def relay(settings: Settings, pool: asyncpg.Pool, producer: EventProducer) -> OutboxRelay:
    return OutboxRelay(pool, producer, settings)
