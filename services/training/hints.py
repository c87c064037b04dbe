"""Events are hints; the owning service decides. Anyone who can write to a topic can write an
event, so training queues work only for what the owner confirms: a data.versioned only for a
version ingestion holds with that content (and the run reads ingestion's record of it, never the
event's data_uri), a drift.detected only for an alert monitoring raised with that very event.
"""

from __future__ import annotations

from datetime import UTC, timedelta

from flywheel import clients
from flywheel.config import Settings
from flywheel.errors import NotFound
from flywheel.retry import Backoff, retry
from flywheel.v1 import events_pb2, monitoring_pb2
from services.training import ingestion_client
from services.training.queue import DataVersion

# An owner that stays away longer fails the handler, which the consumer retries (then DLQ; the
# reconcile loop covers a lost data.versioned), rather than holding the inbox transaction open.
CONFIRM_ATTEMPTS = 4
# How far before the window's start an alert is looked for: the alert is stored when its window
# closes, so this only absorbs clock differences between the services.
ALERT_LOOKBACK = timedelta(days=1)


async def confirmed_data_version(settings: Settings, event: events_pb2.DataVersioned) -> tuple[DataVersion | None, str]:
    """Ingestion's record of the version `event` announces, or None and why it is ignored."""
    ref = event.dataset
    if not ref.name or ref.version <= 0:  # version 0 would ask ingestion for the latest
        return None, "the event names no dataset version"
    try:
        found = await retry(
            lambda: ingestion_client.get_data_version(settings, ref.name, ref.version),
            backoff=Backoff.from_settings(settings),
            what=f"ingestion: {ref.name} v{ref.version}",
            attempts=CONFIRM_ATTEMPTS,
        )
    except NotFound:
        return None, f"ingestion has no version {ref.version} of dataset {ref.name!r}"
    why = data_verdict(event, found)
    return (None, why) if why else (found, "")


def data_verdict(event: events_pb2.DataVersioned, found: DataVersion) -> str:
    """Why `event` disagrees with ingestion's record `found`; "" when it does not."""
    if (found.name, found.version) != (event.dataset.name, event.dataset.version):
        return f"ingestion answered {found.name} v{found.version}"
    if event.dataset.content_hash and event.dataset.content_hash != found.content_hash:
        return "its content hash is not the one ingestion recorded for that version"
    return ""


async def confirmed_drift(settings: Settings, event: events_pb2.DriftDetected, event_id: str) -> str:
    """Why `event` is ignored: empty when monitoring raised the alert it names and emitted it as `event_id`."""
    if not event.model.name or not event.alert_id:
        return "the event names no model or alert"
    since = event.window_start.ToDatetime(UTC) - ALERT_LOOKBACK if event.HasField("window_start") else None
    alert = await retry(
        lambda: clients.drift_alert(settings, event.model.name, event.alert_id, event.kind, since),
        backoff=Backoff.from_settings(settings),
        what=f"monitoring: alert {event.alert_id}",
        attempts=CONFIRM_ATTEMPTS,
    )
    return drift_verdict(event, event_id, alert)


def drift_verdict(event: events_pb2.DriftDetected, event_id: str, alert: monitoring_pb2.Alert | None) -> str:
    """Why monitoring's `alert` does not back `event` (delivered as `event_id`); "" when it does."""
    if alert is None:
        return f"monitoring has no alert {event.alert_id!r} on {event.model.name!r}"
    if alert.model.name != event.model.name or alert.kind != event.kind:
        return f"alert {alert.alert_id} is about {alert.model.name!r}, kind {alert.kind}"
    if alert.suppressed or alert.event_id != event_id:
        return f"alert {alert.alert_id} was not emitted as event {event_id}"
    return ""
