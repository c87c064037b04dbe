"""Inbox: a redelivered event applies once. DLQ: a malformed payload is parked with error headers
at once (retrying cannot decode it) and the consumer goes on with the next good message."""

from __future__ import annotations

from flywheel.bus.serde import CONTENT_PROTOBUF, new_meta
from flywheel.bus.topics import dlq_topic
from flywheel.v1 import events_pb2

from .bus_fixtures import bus_parts, consumer, running
from .harness import await_for, read_topic

PB = [("content-type", CONTENT_PROTOBUF.encode())]


async def test_event_delivered_twice_applies_once(infra, unique):
    settings = infra.settings()
    topic = f"test.inbox.{unique}"
    async with bus_parts(settings, f"t_{unique}", [topic]) as (pool, producer):
        event = events_pb2.Feedback(meta=new_meta("test"), model_name="twice")
        payload = event.SerializeToString()
        await producer.send_and_wait(topic, payload, key=b"twice", headers=PB)
        await producer.send_and_wait(topic, payload, key=b"twice", headers=PB)  # a redelivery
        later = events_pb2.Feedback(meta=new_meta("test"), model_name="later")
        await producer.send_and_wait(topic, later.SerializeToString(), key=b"later", headers=PB)

        c = consumer(settings, pool, producer, topic, f"g-{unique}")
        async with running(c.run()):
            await await_for(lambda: pool.fetchval("SELECT count(*) FROM effects WHERE name = 'later'"), 30, "later")
        await c.stop()

        rows = await pool.fetch("SELECT event_id, name FROM effects ORDER BY name")
        assert [(r["event_id"], r["name"]) for r in rows] == [
            (later.meta.event_id, "later"),
            (event.meta.event_id, "twice"),
        ]
        assert await pool.fetchval("SELECT count(*) FROM inbox WHERE event_id = $1", event.meta.event_id) == 1
        assert c.processed == 3  # all three were consumed; the duplicate changed nothing


async def test_malformed_payload_goes_to_dlq_and_consumer_keeps_going(infra, unique):
    settings = infra.settings(consumer_max_attempts=3)
    topic = f"test.dlq.{unique}"
    async with bus_parts(settings, f"t_{unique}", [topic]) as (pool, producer):
        sent = {
            b"bad": await producer.send_and_wait(topic, b"\xff\xfenot a protobuf", key=b"bad", headers=PB),
            b"bad-json": await producer.send_and_wait(
                topic,
                b'{"meta": {"event_id": 12',
                key=b"bad-json",
                headers=[("content-type", b"application/json")],
            ),
        }
        good = events_pb2.Feedback(meta=new_meta("test"), model_name="good")
        await producer.send_and_wait(topic, good.SerializeToString(), key=b"good", headers=PB)

        c = consumer(settings, pool, producer, topic, f"g-{unique}")
        async with running(c.run()):
            await await_for(lambda: pool.fetchval("SELECT count(*) FROM effects"), 30, "the good event")

            async def both_parked() -> bool:
                return c.dead_lettered == 2

            await await_for(both_parked, 30, "both bad records in the DLQ")
        await c.stop()

        assert [r["name"] for r in await pool.fetch("SELECT name FROM effects")] == ["good"]
        parked = {r.key: r for r in await read_topic(settings.kafka_bootstrap, dlq_topic(topic))}
        assert sorted(parked) == [b"bad", b"bad-json"]
        assert parked[b"bad"].value == b"\xff\xfenot a protobuf", "the DLQ keeps the original bytes"
        for key, record in parked.items():
            headers = {k: v.decode() for k, v in record.headers}
            assert headers["error.type"] == "MalformedEvent"
            assert headers["error.attempts"] == "1", "an undecodable payload is not retried"
            assert headers["source.topic"] == topic
            assert (headers["source.partition"], headers["source.offset"]) == (
                str(sent[key].partition),
                str(sent[key].offset),
            )
            assert headers["error.consumer"] == f"g-{unique}"
            assert "cannot decode flywheel.v1.Feedback" in headers["error.message"]
        assert c.dead_lettered == 2
