"""Events are hints: a forged or stale event moves nothing the owning service does not confirm.
Serving swaps only to the registry's production version and checks only what the registry holds
(with the registry's record); monitoring moves its reference only to production; training trains
only on dataset versions ingestion has (its data, not the event's) and retrains only on alerts
monitoring raised."""

from __future__ import annotations

import contextlib
from datetime import UTC, datetime
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import structlog

from flywheel import clients
from flywheel.bus import EventContext, Topics
from flywheel.config import Settings
from flywheel.errors import NotFound, Unavailable
from flywheel.v1 import common_pb2, events_pb2, ingestion_pb2, monitoring_pb2, registry_pb2, training_pb2
from services.monitoring import handlers as monitoring_handlers
from services.monitoring import references as monitoring_references
from services.serving import handlers as serving_handlers
from services.serving import hints as serving_hints
from services.training import handlers as training_handlers
from services.training import hints as training_hints

R = registry_pb2
MODEL = "fraud"


def _settings(tmp_path: Path) -> Settings:
    return Settings(home=tmp_path, retry_base_s=0.001, retry_max_s=0.002)


def _ectx(topic: str, event_id: str = "e-1") -> EventContext:
    return EventContext(topic=topic, key=MODEL, event_id=event_id, consumer="test", partition=0, offset=0)


def _version(version: int, state: R.PromotionState.ValueType = R.PROMOTION_STATE_PROMOTED) -> R.ModelVersion:
    return R.ModelVersion(
        ref=common_pb2.ModelRef(name=MODEL, version=version),
        checksum=f"sha-{version}",
        metrics=[common_pb2.Metric(name="accuracy", value=0.9)],
        lineage=common_pb2.Lineage(dataset=common_pb2.DatasetRef(name="tx", version=3), run_id="run-1"),
        task=common_pb2.TASK_CLASSIFICATION,
        promotion=R.PromotionDecision(state=state),
    )


class _Registry:
    """The registry's answers: `production` holds the alias, `versions` the versions by number;
    `unavailable` calls fail first, as a registry that is restarting would."""

    def __init__(self, production: int | None, versions: dict[int, R.ModelVersion], unavailable: int = 0) -> None:
        self.production, self.versions, self.unavailable = production, versions, unavailable
        self.calls: list[tuple[str, int, str]] = []

    async def model_version(self, settings: Settings, name: str, version: int = 0, alias: str = "") -> R.ModelVersion:
        self.calls.append((name, version, alias))
        if self.unavailable:
            self.unavailable -= 1
            raise Unavailable("registry: UNAVAILABLE")
        number = self.production if alias == "production" else version
        if number is None or number not in self.versions:
            raise NotFound(f"no {name} {alias or version}")
        return self.versions[number]


class _Manager:
    def __init__(self) -> None:
        self.promoted: list[tuple[str, int, R.ModelVersion | None]] = []

    async def promote(self, name: str, version: int, mv: R.ModelVersion | None = None) -> None:
        self.promoted.append((name, version, mv))


@pytest.fixture
def serving(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> SimpleNamespace:
    manager = _Manager()
    monkeypatch.setattr(serving_handlers, "runtime", lambda ctx: SimpleNamespace(manager=manager))
    return SimpleNamespace(ctx=SimpleNamespace(settings=_settings(tmp_path), name="serving"), manager=manager)


# -- serving: model.promoted ----------------------------------------------------------------------


async def test_a_promoted_event_for_a_version_not_in_production_swaps_nothing(monkeypatch, serving):
    registry = _Registry(production=1, versions={1: _version(1), 2: _version(2, R.PROMOTION_STATE_REJECTED)})
    monkeypatch.setattr(clients, "model_version", registry.model_version)
    with structlog.testing.capture_logs() as logs:
        swapped = await serving_handlers.swap_if_production(serving.ctx, MODEL, 2, "forged-1")
    assert not swapped and serving.manager.promoted == []
    (ignored,) = [e for e in logs if e["event"] == "model.promoted ignored"]
    assert ignored["version"] == 2 and "v1 in production" in ignored["reason"] and ignored["event_id"] == "forged-1"


async def test_a_promoted_event_the_registry_confirms_swaps_with_the_registrys_record(monkeypatch, serving):
    registry = _Registry(production=2, versions={1: _version(1), 2: _version(2)}, unavailable=2)
    monkeypatch.setattr(clients, "model_version", registry.model_version)
    assert await serving_handlers.swap_if_production(serving.ctx, MODEL, 2, "e-1")  # after two Unavailable
    assert serving.manager.promoted == [(MODEL, 2, _version(2))]
    assert registry.calls == [(MODEL, 0, "production")] * 3


async def test_a_promoted_event_for_a_model_without_production_swaps_nothing(monkeypatch, serving):
    monkeypatch.setattr(clients, "model_version", _Registry(production=None, versions={}).model_version)
    assert not await serving_handlers.swap_if_production(serving.ctx, MODEL, 1, "e-1")
    assert serving.manager.promoted == []


async def test_a_registry_that_stays_away_fails_the_handler_for_the_consumer_to_retry(monkeypatch, serving):
    registry = _Registry(production=1, versions={1: _version(1)}, unavailable=99)
    monkeypatch.setattr(clients, "model_version", registry.model_version)
    with pytest.raises(Unavailable):
        await serving_handlers.swap_if_production(serving.ctx, MODEL, 1, "e-1")
    assert len(registry.calls) == serving_hints.CONFIRM_ATTEMPTS and serving.manager.promoted == []


# -- serving: model.registered --------------------------------------------------------------------


@pytest.fixture
def staging(monkeypatch: pytest.MonkeyPatch) -> SimpleNamespace:
    seen = SimpleNamespace(checked=[], reported=[])

    async def run_checks(manager: Any, settings: Settings, event: Any, mv: Any = None) -> R.StagingReport:
        seen.checked.append((event, mv))
        return R.StagingReport(passed=True)

    async def report_staging(settings: Settings, ref: Any, report: Any, causation_id: str) -> R.PromotionDecision:
        seen.reported.append((ref, causation_id))
        return R.PromotionDecision(reason="ok")

    monkeypatch.setattr(serving_handlers.staging, "run_checks", run_checks)
    monkeypatch.setattr(clients, "report_staging", report_staging)
    return seen


def _registered(version: int, accuracy: float = 0.99) -> events_pb2.ModelRegistered:
    return events_pb2.ModelRegistered(
        model=common_pb2.ModelRef(name=MODEL, version=version),
        metrics=[common_pb2.Metric(name="accuracy", value=accuracy)],
        lineage=common_pb2.Lineage(dataset=common_pb2.DatasetRef(name="elsewhere", version=9)),
    )


async def test_staging_checks_use_the_registrys_record_not_the_events(monkeypatch, serving, staging):
    candidate = _version(3, R.PROMOTION_STATE_PENDING_CHECKS)
    monkeypatch.setattr(clients, "model_version", _Registry(1, {1: _version(1), 3: candidate}).model_version)
    on_registered = serving_handlers.handlers(serving.ctx)[Topics.MODEL_REGISTERED]
    await on_registered(None, _registered(3, accuracy=0.99), _ectx(Topics.MODEL_REGISTERED))
    ((checked, mv),) = staging.checked
    assert mv == candidate and checked.model == candidate.ref
    assert list(checked.metrics) == list(candidate.metrics) and checked.lineage == candidate.lineage
    assert staging.reported == [(candidate.ref, "e-1")]


@pytest.mark.parametrize(
    ("versions", "reason"),
    [
        ({}, "no such version"),
        ({3: _version(3, R.PROMOTION_STATE_REJECTED)}, "REJECTED"),
        ({3: _version(3, R.PROMOTION_STATE_PROMOTED)}, "PROMOTED"),
    ],
)
async def test_a_registered_event_the_registry_does_not_wait_checks_for_checks_nothing(
    monkeypatch, serving, staging, versions, reason
):
    monkeypatch.setattr(clients, "model_version", _Registry(None, versions).model_version)
    on_registered = serving_handlers.handlers(serving.ctx)[Topics.MODEL_REGISTERED]
    with structlog.testing.capture_logs() as logs:
        await on_registered(None, _registered(3), _ectx(Topics.MODEL_REGISTERED))
    assert staging.checked == [] and staging.reported == []
    (ignored,) = [e for e in logs if e["event"] == "model.registered ignored"]
    assert reason in ignored["reason"]


# -- monitoring: model.promoted -------------------------------------------------------------------


class _MonitoringConn:
    """The little of an asyncpg connection follow_production touches: no reference stored yet."""

    def __init__(self) -> None:
        self.sql: list[tuple[str, tuple[Any, ...]]] = []

    def transaction(self) -> contextlib.AbstractAsyncContextManager[None]:
        return contextlib.nullcontext()

    async def execute(self, sql: str, *args: Any) -> None:
        self.sql.append((sql, args))

    async def fetchval(self, sql: str, *args: Any) -> None:
        self.sql.append((sql, args))


async def test_monitoring_loads_a_reference_only_for_the_registrys_production(monkeypatch, tmp_path):
    loaded: list[tuple[str, int, R.ModelVersion | None]] = []

    async def load_reference(ctx: Any, conn: Any, model: str, version: int, mv: Any = None) -> None:
        loaded.append((model, version, mv))

    monkeypatch.setattr(monitoring_references, "load_reference", load_reference)
    registry = _Registry(production=1, versions={1: _version(1), 2: _version(2, R.PROMOTION_STATE_REJECTED)})
    monkeypatch.setattr(clients, "model_version", registry.model_version)
    ctx = SimpleNamespace(settings=_settings(tmp_path))
    on_promoted = monitoring_handlers.handlers(ctx)[Topics.MODEL_PROMOTED]

    def promoted(version: int) -> events_pb2.ModelPromoted:
        return events_pb2.ModelPromoted(model=common_pb2.ModelRef(name=MODEL, version=version))

    with structlog.testing.capture_logs() as logs:
        await on_promoted(_MonitoringConn(), promoted(2), _ectx(Topics.MODEL_PROMOTED))
    assert loaded == [] and [e["version"] for e in logs if e["event"] == "model.promoted ignored"] == [2]
    conn = _MonitoringConn()
    await on_promoted(conn, promoted(1), _ectx(Topics.MODEL_PROMOTED))
    assert loaded == [(MODEL, 1, _version(1))]
    # The registry was asked under the model's lock, which every replica's writer takes first.
    assert conn.sql[0] == ("SELECT pg_advisory_xact_lock(hashtext($1))", (f"monitoring.model_refs:{MODEL}",))


# -- training: data.versioned ---------------------------------------------------------------------


def _stored(name: str, version: int, content_hash: str = "h3") -> ingestion_pb2.DatasetVersion:
    return ingestion_pb2.DatasetVersion(
        ref=common_pb2.DatasetRef(name=name, version=version, content_hash=content_hash),
        data_uri="sha256:real-data",
        parent_version=version - 1,
    )


class _Ingestion:
    def __init__(self, versions: dict[tuple[str, int], ingestion_pb2.DatasetVersion]) -> None:
        self.versions = versions
        self.calls: list[tuple[str, int]] = []

    async def dataset_version(self, settings: Settings, ref: common_pb2.DatasetRef) -> ingestion_pb2.DatasetVersion:
        self.calls.append((ref.name, ref.version))
        found = self.versions.get((ref.name, ref.version))
        if found is None:
            raise NotFound(f"dataset {ref.name!r} has no version {ref.version}")
        return found


def _data_event(
    version: int, content_hash: str = "h3", data_uri: str = "sha256:someone-elses-data"
) -> events_pb2.DataVersioned:
    return events_pb2.DataVersioned(
        dataset=common_pb2.DatasetRef(name="tx", version=version, content_hash=content_hash), data_uri=data_uri
    )


@pytest.mark.parametrize(
    ("event", "reason", "asked"),
    [
        (_data_event(7), "no version 7", True),
        (_data_event(0), "names no dataset version", False),  # version 0 would mean "the latest"
        (_data_event(3, content_hash="forged"), "content hash", True),
    ],
)
async def test_a_data_versioned_event_ingestion_does_not_confirm_is_ignored(
    monkeypatch, tmp_path, event, reason, asked
):
    ingestion = _Ingestion({("tx", 3): _stored("tx", 3)})
    monkeypatch.setattr(clients, "dataset_version", ingestion.dataset_version)
    data, why = await training_hints.confirmed_data_version(_settings(tmp_path), event)
    assert data is None and reason in why and bool(ingestion.calls) == asked


async def test_a_confirmed_data_version_is_ingestions_record(monkeypatch, tmp_path):
    monkeypatch.setattr(clients, "dataset_version", _Ingestion({("tx", 3): _stored("tx", 3)}).dataset_version)
    data, why = await training_hints.confirmed_data_version(_settings(tmp_path), _data_event(3))
    assert why == "" and data is not None
    assert (data.name, data.version, data.content_hash, data.data_uri, data.parents) == (
        "tx", 3, "h3", "sha256:real-data", [2],
    )  # fmt: skip


class _Savepoint:
    async def __aenter__(self) -> None:
        return None

    async def __aexit__(self, *exc: object) -> None:
        return None


class _Conn:
    async def fetchrow(self, *args: Any) -> None:  # no pending retraining
        return None

    def transaction(self) -> _Savepoint:  # each spec's reaction runs in a savepoint
        return _Savepoint()


async def test_training_queues_nothing_for_a_forged_data_version(monkeypatch, tmp_path):
    spec = training_pb2.TrainingSpec(
        name="s", version=1, dataset="tx", triggers=training_pb2.Triggers(on_data_versioned=True)
    )
    queued: list[Any] = []

    async def latest_specs_for(conn: Any, dataset: str) -> list[training_pb2.TrainingSpec]:
        return [spec]

    async def covering_run(conn: Any, spec: Any, data: Any) -> None:
        return None

    async def enqueue_run(conn: Any, spec: Any, data: Any, **kw: Any) -> tuple[str, bool]:
        queued.append(data)
        return "run-1", True

    async def decide(*args: Any) -> None:
        return None

    monkeypatch.setattr(training_handlers.store, "latest_specs_for", latest_specs_for)
    monkeypatch.setattr(training_handlers, "covering_run", covering_run)
    monkeypatch.setattr(training_handlers, "enqueue_run", enqueue_run)
    monkeypatch.setattr(training_handlers, "decide", decide)
    monkeypatch.setattr(clients, "dataset_version", _Ingestion({("tx", 3): _stored("tx", 3)}).dataset_version)
    ctx = SimpleNamespace(settings=_settings(tmp_path))
    on_data = training_handlers.handlers(ctx)[Topics.DATA_VERSIONED]

    with structlog.testing.capture_logs() as logs:
        await on_data(_Conn(), _data_event(7), _ectx(Topics.DATA_VERSIONED))
    assert queued == [] and any(e["event"] == "data.versioned ignored" for e in logs)
    await on_data(_Conn(), _data_event(3), _ectx(Topics.DATA_VERSIONED))
    assert [d.data_uri for d in queued] == ["sha256:real-data"]  # ingestion's artifact, not the event's


# -- training: drift.detected ---------------------------------------------------------------------


def _drift(
    alert_id: str = "a-1", kind: common_pb2.DriftKind.ValueType = common_pb2.DRIFT_KIND_DATA_DRIFT
) -> events_pb2.DriftDetected:
    event = events_pb2.DriftDetected(model=common_pb2.ModelRef(name=MODEL, version=1), alert_id=alert_id, kind=kind)
    event.window_start.FromDatetime(datetime(2025, 1, 2, tzinfo=UTC))
    return event


def _alert(event_id: str = "e-1", suppressed: bool = False, model: str = MODEL) -> monitoring_pb2.Alert:
    return monitoring_pb2.Alert(
        alert_id="a-1", model=common_pb2.ModelRef(name=model, version=1), kind=common_pb2.DRIFT_KIND_DATA_DRIFT,
        event_id=event_id, suppressed=suppressed,
    )  # fmt: skip


@pytest.mark.parametrize(
    ("alert", "reason"),
    [
        (None, "no alert"),
        (_alert(event_id="e-other"), "not emitted as event e-1"),
        (_alert(event_id="", suppressed=True), "not emitted"),
        (_alert(model="other"), "about 'other'"),
        (_alert(), ""),
    ],
)
def test_drift_verdict(alert, reason):
    why = training_hints.drift_verdict(_drift(), "e-1", alert)
    assert (reason in why) if reason else why == ""


async def test_a_drift_event_is_confirmed_with_monitoring(monkeypatch, tmp_path):
    asked: list[tuple[str, str, int, datetime | None]] = []

    async def drift_alert(settings: Settings, model: str, alert_id: str, kind: int = 0, since: Any = None) -> Any:
        asked.append((model, alert_id, kind, since))
        return _alert() if alert_id == "a-1" else None

    monkeypatch.setattr(clients, "drift_alert", drift_alert)
    settings = _settings(tmp_path)
    assert await training_hints.confirmed_drift(settings, _drift(), "e-1") == ""
    assert "no alert" in await training_hints.confirmed_drift(settings, _drift("a-forged"), "e-2")
    assert "names no model or alert" in await training_hints.confirmed_drift(settings, _drift(""), "e-3")
    assert [a[:3] for a in asked] == [(MODEL, "a-1", common_pb2.DRIFT_KIND_DATA_DRIFT), (MODEL, "a-forged", 1)]
    assert asked[0][3] == datetime(2025, 1, 1, tzinfo=UTC)  # a day before the window, for clock differences


async def test_training_queues_nothing_for_a_forged_drift_event(monkeypatch, tmp_path):
    spec = training_pb2.TrainingSpec(name="s", version=1, dataset="tx", model_name=MODEL,
                                     triggers=training_pb2.Triggers(on_drift_detected=True))  # fmt: skip
    row = {"spec": spec.SerializeToString(), "created_at": datetime(2025, 1, 1, tzinfo=UTC)}
    touched: list[str] = []

    class Conn:
        async def fetch(self, sql: str, *args: Any) -> list[dict[str, Any]]:
            return [row] if "FROM specs" in sql else []

        async def fetchval(self, sql: str, *args: Any) -> None:  # the guard rails' reads: past the check
            touched.append(sql)

    async def drift_alert(*args: Any, **kw: Any) -> None:
        return None  # monitoring raised no such alert

    monkeypatch.setattr(clients, "drift_alert", drift_alert)
    on_drift = training_handlers.handlers(SimpleNamespace(settings=_settings(tmp_path)))[Topics.DRIFT_DETECTED]
    with structlog.testing.capture_logs() as logs:
        await on_drift(Conn(), _drift("a-forged"), _ectx(Topics.DRIFT_DETECTED))
    assert touched == [] and any(e["event"] == "drift.detected ignored" for e in logs)
