"""Nothing a message raises stops a consumer, and nothing is lost: any handler failure ends in the DLQ
(decode errors at once), a record the DLQ will not take ends in the dead_letters table, an event the
broker refuses leaves the outbox after N attempts, and a batch consumer reads a reset log from its start."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Any

import asyncpg
from aiokafka import ConsumerRecord
from aiokafka.admin import AIOKafkaAdminClient

from flywheel.bus import BatchConsumer, EventConsumer, EventContext, EventProducer, OutboxRelay, enqueue
from flywheel.bus.serde import CONTENT_PROTOBUF, new_meta
from flywheel.bus.topics import dlq_topic, ensure_topics
from flywheel.v1 import events_pb2

from .bus_fixtures import bus_parts, running
from .harness import await_for, read_topic

PB = [("content-type", CONTENT_PROTOBUF.encode())]


def feedback(name: str, **fields: Any) -> bytes:
    return events_pb2.Feedback(meta=new_meta("test"), model_name=name, **fields).SerializeToString()


def exploding_handler() -> Callable[[asyncpg.Connection, events_pb2.Feedback, EventContext], Awaitable[None]]:
    """Records an effect, but raises what the event's model name asks for: not a FlywheelError."""

    async def handler(conn: asyncpg.Connection, event: events_pb2.Feedback, ctx: EventContext) -> None:
        if event.model_name == "zero":
            _ = 1 / 0
        if event.model_name == "key":
            raise KeyError("no such thing")
        await conn.execute("INSERT INTO effects (event_id, name) VALUES ($1, $2)", ctx.event_id, event.model_name)

    return handler


def headers_of(record: ConsumerRecord) -> dict[str, str]:
    return {k: v.decode() for k, v in record.headers}


async def test_any_handler_exception_is_dead_lettered_and_the_consumer_goes_on(infra, unique):
    settings = infra.settings(consumer_max_attempts=2, consumer_backoff_s=0.01)
    topic = f"test.anyexc.{unique}"
    async with bus_parts(settings, f"t_{unique}", [topic]) as (pool, producer):
        for name in ("zero", "key"):
            await producer.send_and_wait(topic, feedback(name), key=name.encode(), headers=PB)
        await producer.send_and_wait(topic, b"\x08\x96\x01garbage", key=b"undecodable", headers=PB)
        await producer.send_and_wait(topic, feedback("good"), key=b"good", headers=PB)

        c = EventConsumer(settings, "test", pool, producer, {topic: exploding_handler()}, group_id=f"g-{unique}")
        async with running(c.run()):
            await await_for(lambda: pool.fetchval("SELECT count(*) FROM effects"), 30, "the good event")

            async def all_parked() -> bool:
                return c.dead_lettered == 3

            await await_for(all_parked, 30, "the three bad records parked")
        await c.stop()

        assert [r["name"] for r in await pool.fetch("SELECT name FROM effects")] == ["good"]
        parked = {r.key: headers_of(r) for r in await read_topic(settings.kafka_bootstrap, dlq_topic(topic))}
        assert parked[b"zero"]["error.type"] == "ZeroDivisionError"
        assert parked[b"key"]["error.type"] == "KeyError"
        assert parked[b"zero"]["error.attempts"] == parked[b"key"]["error.attempts"] == "2"
        # A payload that cannot be decoded fails the same way every time: no retries.
        assert parked[b"undecodable"]["error.type"] == "MalformedEvent"
        assert parked[b"undecodable"]["error.attempts"] == "1"


async def test_a_record_the_dlq_refuses_is_kept_in_postgres(infra, unique):
    # The consumer's producer takes at most 1 MiB; the record (from a producer that allows more) is larger.
    settings = infra.settings(grpc_max_message_mb=1)
    topic = f"test.dltable.{unique}"
    big = b"\xff" * (1024 * 1024 + 4096)
    async with bus_parts(settings, f"t_{unique}", [topic]) as (pool, small_producer):
        wide = EventProducer(infra.settings(grpc_max_message_mb=8), client_id=f"wide-{unique}")
        await wide.start()
        try:
            sent = await wide.send_and_wait(topic, big, key=b"huge", headers=PB)
            await wide.send_and_wait(topic, feedback("after"), key=b"after", headers=PB)
        finally:
            await wide.stop()

        c = EventConsumer(settings, "test", pool, small_producer, {topic: exploding_handler()}, group_id=f"g-{unique}")
        async with running(c.run()):
            await await_for(lambda: pool.fetchval("SELECT count(*) FROM effects"), 30, "the record after it")
            row = await await_for(
                lambda: pool.fetchrow("SELECT * FROM dead_letters WHERE topic = $1", topic), 30, "the table row"
            )
        await c.stop()

        assert bytes(row["payload"]) == big, "the original bytes are kept"
        assert (row["origin"], row["consumer"], row["error_type"]) == ("consumer", f"g-{unique}", "MalformedEvent")
        assert (row["partition"], row["record_offset"], bytes(row["key"])) == (sent.partition, sent.offset, b"huge")
        headers = dict(json.loads(row["headers"]))
        assert headers["content-type"] == CONTENT_PROTOBUF and headers["error.type"] == "MalformedEvent"
        assert await read_topic(settings.kafka_bootstrap, dlq_topic(topic), idle_s=0.5) == []


def _batch_consumer(settings: Any, pool: asyncpg.Pool, producer: EventProducer, topic: str, name: str) -> BatchConsumer:
    def decode(record: ConsumerRecord) -> str:
        value = (record.value or b"").decode()  # UnicodeDecodeError for non-UTF-8: the decoder's failure
        if value == "undecodable":
            raise ValueError("cannot read this one")
        return value

    async def handler(conn: asyncpg.Connection, key: str, items: list[str]) -> None:
        if key == "cursed":
            raise RuntimeError("this key always fails")
        await conn.executemany("INSERT INTO effects (event_id, name) VALUES ($1, $2)", [(key, i) for i in items])

    return BatchConsumer(settings, "test", pool, producer, topic, decode, handler, lambda _key: (1000, 0.2), name=name)


async def test_batch_consumer_parks_one_failing_key_and_commits_the_others(infra, unique):
    settings = infra.settings(consumer_max_attempts=2, consumer_backoff_s=0.01)
    topic = f"test.batchexc.{unique}"
    async with bus_parts(settings, f"t_{unique}", [topic]) as (pool, producer):
        for key, value in [(b"cursed", b"c1"), (b"fine", b"f1"), (b"fine", b"undecodable"), (b"fine", b"\xff\xfe")]:
            await producer.send_and_wait(topic, value, key=key, headers=[])
        await producer.send_and_wait(topic, b"f2", key=b"fine", headers=[])

        c = _batch_consumer(settings, pool, producer, topic, f"b-{unique}")
        async with running(c.run()):
            await await_for(lambda: pool.fetchval("SELECT count(*) = 2 FROM effects"), 30, "the fine key's rows")

            async def parked() -> bool:
                return c.dead_lettered == 3

            await await_for(parked, 30, "the failing key and the two undecodable records parked")
        await c.stop()

        assert sorted(r["name"] for r in await pool.fetch("SELECT name FROM effects")) == ["f1", "f2"]
        dlq = [headers_of(r) for r in await read_topic(settings.kafka_bootstrap, dlq_topic(topic))]
        assert sorted(h["error.type"] for h in dlq) == ["RuntimeError", "UnicodeDecodeError", "ValueError"]


async def test_outbox_moves_an_event_the_broker_refuses_aside_after_n_attempts(infra, unique):
    settings = infra.settings(grpc_max_message_mb=1, outbox_max_attempts=2, retry_base_s=0.05, retry_max_s=0.1)
    topic = f"test.outboxbig.{unique}"
    async with bus_parts(settings, f"t_{unique}", [topic]) as (pool, producer):
        huge = events_pb2.Feedback(meta=new_meta("test"), model_name="x" * (1024 * 1024 + 100))
        later = events_pb2.Feedback(meta=new_meta("test"), model_name="later")
        async with pool.acquire() as conn, conn.transaction():
            await enqueue(conn, topic, "k", huge)
        async with pool.acquire() as conn, conn.transaction():
            await enqueue(conn, topic, "k", later)

        relay = OutboxRelay(pool, producer, settings)
        async with running(relay.run()):
            row = await await_for(
                lambda: pool.fetchrow("SELECT * FROM dead_letters WHERE event_id = $1", huge.meta.event_id),
                30,
                "the refused event in dead_letters",
            )

            async def later_sent() -> bool:
                return bool(
                    await pool.fetchval(
                        "SELECT sent_at IS NOT NULL FROM outbox WHERE event_id = $1", later.meta.event_id
                    )
                )

            await await_for(later_sent, 30, "the later event published")

        assert (row["origin"], row["attempts"], row["error_type"]) == ("outbox", 2, "MessageSizeTooLargeError")
        assert events_pb2.Feedback.FromString(bytes(row["payload"])) == huge
        assert await pool.fetchval("SELECT count(*) FROM outbox WHERE event_id = $1", huge.meta.event_id) == 0
        published = [
            events_pb2.Feedback.FromString(r.value).model_name
            for r in await read_topic(settings.kafka_bootstrap, topic)
        ]
        assert published == ["later"]


async def _recreate(bootstrap: str, topic: str, partitions: int) -> None:
    """Delete `topic` and create it again, empty: a log that numbers its records from 0 again."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.delete_topics([topic])

        async def gone() -> bool:
            return topic not in await admin.list_topics()

        await await_for(gone, 30, "the topic deleted")
    finally:
        await admin.close()
    await ensure_topics(bootstrap, [topic], partitions=partitions, replication_factor=1)


async def test_batch_consumer_reads_a_reset_log_from_its_start(infra, unique):
    settings = infra.settings()
    topic = f"test.reset.{unique}"
    name = f"b-{unique}"
    async with bus_parts(settings, f"t_{unique}", [topic]) as (pool, producer):

        async def consume(expected: int, log_length: int, what: str) -> BatchConsumer:
            c = _batch_consumer(settings, pool, producer, topic, name)
            async with running(c.run()):
                await await_for(lambda: pool.fetchval("SELECT count(*) >= $1 FROM effects", expected), 30, what)

                async def offsets_stored() -> bool:
                    stored = await pool.fetchval("SELECT next_offset FROM consumer_offsets WHERE consumer = $1", name)
                    return bool(stored == log_length)

                await await_for(offsets_stored, 30, "offsets stored")
            await c.stop()
            names = [r["name"] for r in await pool.fetch("SELECT name FROM effects ORDER BY name")]
            assert len(names) == expected, f"{what}: {names}"
            return c

        async def produce(*values: str) -> None:
            # Sent together, so they share record batches (a broker may then report the log's end short).
            acks = [await producer.send(topic, v.encode(), key=b"k", headers=[]) for v in values]
            for ack in acks:
                await ack
            held = [r.value.decode() for r in await read_topic(settings.kafka_bootstrap, topic, idle_s=0.5)]
            assert held[-len(values) :] == list(values), f"the broker holds {held}"

        await produce("a0", "a1", "a2")
        await consume(3, 3, "the first log")

        # The same log again: the stored offset holds, nothing is taken twice.
        await produce("a3")
        again = await consume(4, 4, "the record after a restart")
        assert again.resets == 0

        # A new log longer than the old one: its records at offsets 0..3 are new, not "already processed".
        await _recreate(settings.kafka_bootstrap, topic, settings.kafka_partitions)
        await produce("b0", "b1", "b2", "b3", "b4", "b5")
        longer = await consume(10, 6, "every record of the recreated log")
        assert longer.resets == 1

        # A new log shorter than the stored offset: read from its start, not from its end.
        await _recreate(settings.kafka_bootstrap, topic, settings.kafka_partitions)
        await produce("c0", "c1")
        shorter = await consume(12, 2, "every record of the shorter log")
        assert shorter.resets == 1

        names = [r["name"] for r in await pool.fetch("SELECT name FROM effects")]
        assert sorted(names) == sorted(["a0", "a1", "a2", "a3", "b0", "b1", "b2", "b3", "b4", "b5", "c0", "c1"])


async def test_a_trace_header_that_is_not_utf8_does_not_stop_the_consumer(infra, unique):
    settings = infra.settings()
    topic = f"test.badtrace.{unique}"
    async with bus_parts(settings, f"t_{unique}", [topic]) as (pool, producer):
        garbage = [("traceparent", b"\xff\xfe"), ("tracestate", b"\xc3"), ("baggage", b"\x80")]
        await producer.send_and_wait(topic, feedback("odd-headers"), key=b"k", headers=[*PB, *garbage])
        await producer.send_and_wait(topic, feedback("after"), key=b"k", headers=PB)

        c = EventConsumer(settings, "test", pool, producer, {topic: exploding_handler()}, group_id=f"g-{unique}")
        async with running(c.run()):
            await await_for(lambda: pool.fetchval("SELECT count(*) = 2 FROM effects"), 30, "both records handled")
        await c.stop()
        assert sorted(r["name"] for r in await pool.fetch("SELECT name FROM effects")) == ["after", "odd-headers"]
