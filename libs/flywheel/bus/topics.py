"""Topic names, the event type each carries, and topic creation (see docs/architecture.md, "Topics and events")."""

from __future__ import annotations

import asyncio

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import TopicAlreadyExistsError
from google.protobuf.message import Message

from flywheel.v1 import events_pb2

from .security import KafkaSecurity


class Topics:
    DATA_VERSIONED = "flywheel.data.versioned"
    MODEL_REGISTERED = "flywheel.model.registered"
    MODEL_PROMOTED = "flywheel.model.promoted"
    DRIFT_DETECTED = "flywheel.drift.detected"
    PREDICTIONS_LOGGED = "flywheel.predictions.logged"
    FEEDBACK = "flywheel.feedback"
    INGEST_RECORDS = "flywheel.ingest.records"
    DEPLOYMENT_CHANGED = "flywheel.deployment.changed"
    ROLLOUT_ENDED = "flywheel.rollout.ended"


EVENT_TYPES: dict[str, type[Message]] = {
    Topics.DATA_VERSIONED: events_pb2.DataVersioned,
    Topics.MODEL_REGISTERED: events_pb2.ModelRegistered,
    Topics.MODEL_PROMOTED: events_pb2.ModelPromoted,
    Topics.DRIFT_DETECTED: events_pb2.DriftDetected,
    Topics.PREDICTIONS_LOGGED: events_pb2.PredictionsLogged,
    Topics.FEEDBACK: events_pb2.Feedback,
    Topics.INGEST_RECORDS: events_pb2.IngestRecords,
    Topics.DEPLOYMENT_CHANGED: events_pb2.DeploymentChanged,
    Topics.ROLLOUT_ENDED: events_pb2.RolloutEnded,
}


def register_event_type(topic: str, cls: type[Message]) -> None:
    """Extra topics (a deployment's own, or a test harness's) join the registry the consumers decode by."""
    EVENT_TYPES[topic] = cls


def dlq_topic(topic: str) -> str:
    return f"{topic}.dlq"


def all_topics() -> list[str]:
    return [t for topic in EVENT_TYPES for t in (topic, dlq_topic(topic))]


async def ensure_topics(
    bootstrap: str,
    topics: list[str],
    *,
    partitions: int,
    replication_factor: int,
    timeout_s: float = 10.0,
    security: KafkaSecurity | None = None,
) -> list[str]:
    """Create the topics that are missing; returns those created. Safe to call from many processes.

    `security` is `kafka_security(settings)` of the calling process (None: PLAINTEXT, the embedded broker).
    """
    admin = AIOKafkaAdminClient(
        bootstrap_servers=bootstrap, request_timeout_ms=int(timeout_s * 1000), **(security or {})
    )
    await asyncio.wait_for(admin.start(), timeout_s)
    try:
        existing = set(await admin.list_topics())
        missing = [t for t in topics if t not in existing]
        if not missing:
            return []
        new = [NewTopic(t, partitions, replication_factor) for t in missing]
        try:
            await admin.create_topics(new)
        except TopicAlreadyExistsError:
            pass
        return missing
    finally:
        await admin.close()
