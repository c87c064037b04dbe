"""Consumer-group membership shared by the per-event and the micro-batching consumers."""

from __future__ import annotations

import asyncio

from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition
from aiokafka.errors import KafkaError

from flywheel.config import Settings
from flywheel.logging import get_logger

from .security import kafka_security

log = get_logger(__name__)


def group_consumer(settings: Settings, group: str, *topics: str, offset_reset: str = "earliest") -> AIOKafkaConsumer:
    return AIOKafkaConsumer(
        *topics,
        bootstrap_servers=settings.kafka_bootstrap,
        group_id=group,
        client_id=group,
        enable_auto_commit=False,  # offsets are committed after the effects (broker or Postgres)
        auto_offset_reset=offset_reset,
        metadata_max_age_ms=5_000,  # notice recreated topics quickly after a broker restart
        # tansu holds a join for the rebalance timeout, so keep group timings short for fast starts.
        session_timeout_ms=settings.consumer_session_timeout_ms,
        heartbeat_interval_ms=settings.consumer_heartbeat_ms,
        rebalance_timeout_ms=settings.consumer_rebalance_timeout_ms,
        **kafka_security(settings),
    )


async def join(consumer: AIOKafkaConsumer, group: str) -> None:
    """Start the consumer, retrying while the broker is away (a serving process joins in the background)."""
    while True:
        try:
            await consumer.start()
            break
        except KafkaError as exc:
            log.warning("consumer: cannot join group yet, will retry", group=group, error=repr(exc))
            await asyncio.sleep(1.0)
    log.info("consumer: joined group", group=group)


async def fetch(
    consumer: AIOKafkaConsumer, *, timeout_ms: int, max_records: int
) -> dict[TopicPartition, list[ConsumerRecord]] | None:
    """The next records by partition (empty when none came in time); None, after a pause, while the
    broker is away."""
    try:
        return await consumer.getmany(timeout_ms=timeout_ms, max_records=max_records)
    except KafkaError as exc:
        log.warning("consumer: fetch failed, will retry", error=repr(exc))
        await asyncio.sleep(1.0)
        return None
