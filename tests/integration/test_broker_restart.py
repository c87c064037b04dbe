"""Broker restart: producer, relay and consumer recover in the same process, and events written
to the outbox while the broker was away are delivered once it is back."""

from __future__ import annotations

import pytest

from flywheel.bus import enqueue
from flywheel.bus.serde import new_meta
from flywheel.stack.broker import EmbeddedBroker
from flywheel.stack.procs import free_port
from flywheel.v1 import events_pb2

from .bus_fixtures import bus_parts, consumer, relay, running
from .harness import await_for


@pytest.fixture
def own_broker(tmp_path):
    broker = EmbeddedBroker(free_port(), tmp_path / "broker.log")
    broker.start()
    yield broker
    broker.stop()


async def _stage(pool, topic: str, name: str) -> str:
    async with pool.acquire() as conn, conn.transaction():
        return await enqueue(conn, topic, name, events_pb2.Feedback(meta=new_meta("test"), model_name=name))


async def test_outbox_events_written_during_broker_outage_are_delivered(infra, own_broker, unique):
    settings = infra.settings(kafka_bootstrap=own_broker.bootstrap)
    topic = f"test.restart.{unique}"
    async with bus_parts(settings, f"t_{unique}", [topic]) as (pool, producer):
        c = consumer(settings, pool, producer, topic, f"g-{unique}")
        r = relay(settings, pool, producer)

        async def effects() -> list[str]:
            return [row["name"] for row in await pool.fetch("SELECT name FROM effects ORDER BY name")]

        async with running(r.run(), c.run()):
            await _stage(pool, topic, "before")
            await await_for(lambda: _has(effects, "before"), 40, "the event sent before the outage")

            own_broker.kill()
            await _stage(pool, topic, "during")  # the state change commits; Kafka is away
            assert await pool.fetchval("SELECT count(*) FROM outbox WHERE sent_at IS NULL") == 1
            own_broker.start()

            await await_for(lambda: _has(effects, "during"), 90, "the event staged during the outage")
            await _stage(pool, topic, "after")
            await await_for(lambda: _has(effects, "after"), 60, "an event sent after recovery")
        await c.stop()
        assert await effects() == ["after", "before", "during"]
        assert await pool.fetchval("SELECT count(*) FROM outbox WHERE sent_at IS NULL") == 0


async def _has(effects, name: str) -> bool:  # type: ignore[no-untyped-def]
    return name in await effects()
