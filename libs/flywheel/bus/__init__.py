"""Kafka plumbing shared by every service: topics, serde, producer, outbox, inbox, consumer, DLQ, security."""

from flywheel.bus.batch import BatchConsumer, RejectBatch
from flywheel.bus.consumer import EventConsumer, EventContext, Handler, acknowledge_only
from flywheel.bus.outbox import OutboxRelay, enqueue
from flywheel.bus.producer import EventProducer
from flywheel.bus.security import KafkaSecurity, kafka_security
from flywheel.bus.topics import Topics, dlq_topic, ensure_topics

__all__ = [
    "BatchConsumer",
    "EventConsumer",
    "EventContext",
    "EventProducer",
    "Handler",
    "KafkaSecurity",
    "OutboxRelay",
    "RejectBatch",
    "Topics",
    "acknowledge_only",
    "dlq_topic",
    "enqueue",
    "ensure_topics",
    "kafka_security",
]
