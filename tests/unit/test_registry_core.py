"""The registry's pieces that need no database: the search query builder, row -> message
conversion, ListModels as one statement, the promotion bookkeeping, and the lineage walk over
ingestion. The RPCs against PostgreSQL are covered end to end by tests/e2e."""

from __future__ import annotations

import json
import re
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Any

import pytest

from flywheel.bus import Topics
from flywheel.config import Settings
from flywheel.errors import InvalidArgument, NotFound, Unavailable
from flywheel.v1 import common_pb2, events_pb2, ingestion_pb2, registry_pb2
from services.registry import catalog as catalog_module
from services.registry import promoter, store
from services.registry.catalog import Catalog

R = registry_pb2


def placeholders(sql: str) -> list[int]:
    return [int(n) for n in re.findall(r"\$(\d+)", sql)]


# -- SearchModelVersions ----------------------------------------------------------------------


def test_search_without_filters_pages_over_live_versions():
    sql, args = store.search_query(R.SearchModelVersionsRequest(), limit=50, offset=100)
    assert "WHERE ($1 OR NOT v.archived) ORDER BY v.created_at DESC, v.name, v.version DESC LIMIT $2 OFFSET $3" in sql
    assert args == [False, 50, 100]


def test_search_sends_every_value_as_a_parameter():
    hostile = "x' OR '1'='1"
    request = R.SearchModelVersionsRequest(
        name="churn",
        tags={"team": hostile},
        metric_filters=[
            R.MetricFilter(metric="f1", op=R.COMPARISON_GTE, value=0.8),
            R.MetricFilter(metric="rmse", op=R.COMPARISON_LT, value=2.5),
        ],
        dataset_name="churn-data",
        dataset_version=3,
        order_by_metric="f1",
        ascending=True,
        include_archived=True,
    )
    request.created_after.FromDatetime(datetime(2024, 1, 1, tzinfo=UTC))
    sql, args = store.search_query(request, limit=10, offset=0)

    assert hostile not in sql and "churn" not in sql and "0.8" not in sql
    assert placeholders(sql) == list(range(1, len(args) + 1))  # each argument used once, in order
    assert args == [
        True,
        "churn",
        "team",
        hostile,
        "f1",
        0.8,
        "rmse",
        2.5,
        "churn-data",
        3,
        datetime(2024, 1, 1, tzinfo=UTC),
        "f1",
        10,
        0,
    ]
    assert "v.name = $2" in sql
    assert "v.tags ->> $3 = $4" in sql
    assert "(v.metric_values ->> $5)::float8 >= $6" in sql
    assert "(v.metric_values ->> $7)::float8 < $8" in sql
    assert "v.dataset_name = $9 AND v.dataset_version = $10 AND v.created_at > $11" in sql
    assert "ORDER BY (v.metric_values ->> $12)::float8 ASC NULLS LAST, v.created_at DESC" in sql
    assert sql.endswith("LIMIT $13 OFFSET $14")


@pytest.mark.parametrize(
    "bad",
    [R.MetricFilter(metric="f1", value=0.5), R.MetricFilter(op=R.COMPARISON_GT, value=0.5)],
    ids=["no comparison", "no metric"],
)
def test_search_rejects_a_metric_filter_it_cannot_compare(bad):
    request = R.SearchModelVersionsRequest(
        metric_filters=[R.MetricFilter(metric="f1", op=R.COMPARISON_GT, value=0.5), bad]
    )
    with pytest.raises(InvalidArgument, match=r"^metric_filters\[1\]: needs a metric and a comparison$") as exc:
        store.search_query(request, limit=10, offset=0)
    assert exc.value.field == "metric_filters[1]"


async def test_a_bad_search_is_rejected_before_the_database_is_touched():
    pool = FakePool([])
    request = R.SearchModelVersionsRequest(metric_filters=[R.MetricFilter(metric="f1")])
    with pytest.raises(InvalidArgument):
        await Catalog(pool, None, Settings()).search(request, 10, 0)
    assert pool.acquired == 0


# -- ListModels -------------------------------------------------------------------------------


def model_row(name: str, aliases: dict[str, int], latest: int, policy: bytes | None = None) -> dict[str, Any]:
    # As asyncpg returns it: jsonb as its JSON text.
    return {
        "name": name,
        "policy": policy,
        "created_at": datetime(2024, 5, 1, 12, 0, tzinfo=UTC),
        "aliases": json.dumps(aliases),
        "latest_version": latest,
    }


def test_a_model_row_becomes_a_model():
    policy = common_pb2.PromotionPolicy(metric="rmse", min_improvement=0.1)
    model = store.to_model(model_row("churn", {"production": 2, "staging": 3}, 3, policy.SerializeToString()))
    assert model.name == "churn"
    assert dict(model.aliases) == {"production": 2, "staging": 3}
    assert model.latest_version == 3
    assert model.policy == policy
    assert model.create_time.ToDatetime(tzinfo=UTC) == datetime(2024, 5, 1, 12, 0, tzinfo=UTC)

    bare = store.to_model(model_row("empty", {}, 0))
    assert dict(bare.aliases) == {} and bare.latest_version == 0 and not bare.HasField("policy")


async def test_list_models_is_one_statement_however_many_models():
    rows = [model_row(f"m{i}", {"production": i}, i + 1) for i in range(1, 6)]
    pool = FakePool(rows)
    models = await Catalog(pool, None, Settings()).models("production", 50, 0)
    assert [m.name for m in models] == ["m1", "m2", "m3", "m4", "m5"]
    assert [m.aliases["production"] for m in models] == [1, 2, 3, 4, 5]
    assert len(pool.conn.calls) == 1
    sql, args = pool.conn.calls[0]
    assert "jsonb_object_agg" in sql and "max(v.version)" in sql
    assert args == ("production", 50, 0)


# -- promotion bookkeeping --------------------------------------------------------------------


def version(name: str = "churn", number: int = 4) -> registry_pb2.ModelVersion:
    return R.ModelVersion(ref=common_pb2.ModelRef(name=name, version=number), checksum="ab" * 32)


def audit_actions(conn: FakeConn) -> list[int]:
    return [args[1] for sql, args in conn.calls if sql.startswith("INSERT INTO audit_events")]


def outbox_topics(conn: FakeConn) -> list[str]:
    return [args[1] for sql, args in conn.calls if sql.startswith("INSERT INTO outbox")]


async def test_a_promoted_decision_moves_production_and_announces_it():
    conn = FakeConn([])
    decision = await promoter.apply_decision(
        conn, version(), R.PROMOTION_STATE_PROMOTED, "better", "registry", 3, "cause-1"
    )
    assert decision.state == R.PROMOTION_STATE_PROMOTED and decision.actor == "registry"
    assert any(sql.startswith("INSERT INTO aliases") and args[1:3] == ("production", 4) for sql, args in conn.calls)
    assert audit_actions(conn) == [R.AUDIT_ACTION_PROMOTED]
    assert outbox_topics(conn) == [Topics.MODEL_PROMOTED]
    payload = next(args[3] for sql, args in conn.calls if sql.startswith("INSERT INTO outbox"))
    event = events_pb2.ModelPromoted.FromString(payload)
    assert (event.model.version, event.previous_version, event.rollback) == (4, 3, False)


@pytest.mark.parametrize(
    ("state", "action"),
    [
        (R.PROMOTION_STATE_PENDING_APPROVAL, R.AUDIT_ACTION_CHECKS_REPORTED),
        (R.PROMOTION_STATE_REJECTED, R.AUDIT_ACTION_REJECTED),
        (R.PROMOTION_STATE_NOT_PROMOTED, R.AUDIT_ACTION_NOT_PROMOTED),
        (R.PROMOTION_STATE_CHECKS_FAILED, R.AUDIT_ACTION_NOT_PROMOTED),
    ],
)
async def test_other_decisions_are_recorded_and_leave_production_alone(state, action):
    conn = FakeConn([])
    await promoter.apply_decision(conn, version(), state, "why", "someone", 3, "")
    assert not any(sql.startswith("INSERT INTO aliases") for sql, _ in conn.calls)
    assert outbox_topics(conn) == []
    assert audit_actions(conn) == [action]
    details = next(json.loads(args[-1]) for sql, args in conn.calls if sql.startswith("INSERT INTO audit_events"))
    assert details == {"state": R.PromotionState.Name(state)}
    saved = next(args[2] for sql, args in conn.calls if sql.startswith("UPDATE model_versions SET promotion"))
    assert R.PromotionDecision.FromString(saved).state == state


# -- lineage ----------------------------------------------------------------------------------


def lineage(version: int = 3, parents: tuple[int, ...] = (2, 1)) -> common_pb2.Lineage:
    return common_pb2.Lineage(
        dataset=common_pb2.DatasetRef(name="churn", version=version), parent_dataset_versions=list(parents)
    )


def ingestion_knows(versions: dict[int, int], fail_on: int = 0, error: Exception | None = None):
    """A stand-in for clients.dataset_version: version -> parent version."""
    asked: list[int] = []

    async def dataset_version(settings, ref):
        asked.append(ref.version)
        if ref.version == fail_on and error is not None:
            raise error
        if ref.version not in versions:
            raise NotFound("no such version")
        return ingestion_pb2.DatasetVersion(ref=ref, parent_version=versions[ref.version])

    return dataset_version, asked


def refs(found: list[common_pb2.DatasetRef]) -> list[tuple[str, int]]:
    return [(r.name, r.version) for r in found]


async def test_lineage_walks_the_parents_ingestion_knows(monkeypatch):
    fake, asked = ingestion_knows({3: 2, 2: 1, 1: 0})
    monkeypatch.setattr(catalog_module.clients, "dataset_version", fake)
    found = await Catalog(None, None, Settings())._dataset_ancestry(lineage())
    assert refs(found) == [("churn", 3), ("churn", 2), ("churn", 1)]
    assert asked == [3, 2, 1]


async def test_lineage_falls_back_to_what_training_recorded_when_ingestion_is_away(monkeypatch):
    fake, _ = ingestion_knows({3: 2, 2: 1, 1: 0}, fail_on=2, error=Unavailable("ingestion: UNAVAILABLE"))
    monkeypatch.setattr(catalog_module.clients, "dataset_version", fake)
    found = await Catalog(None, None, Settings())._dataset_ancestry(lineage())
    assert refs(found) == [("churn", 3), ("churn", 2), ("churn", 1)]


async def test_lineage_stops_at_a_version_ingestion_does_not_know(monkeypatch):
    fake, asked = ingestion_knows({3: 2})  # v2 is gone
    monkeypatch.setattr(catalog_module.clients, "dataset_version", fake)
    found = await Catalog(None, None, Settings())._dataset_ancestry(lineage())
    assert refs(found) == [("churn", 3)]
    assert asked == [3, 2]


async def test_a_version_trained_on_no_dataset_has_no_ancestry(monkeypatch):
    fake, asked = ingestion_knows({})
    monkeypatch.setattr(catalog_module.clients, "dataset_version", fake)
    assert await Catalog(None, None, Settings())._dataset_ancestry(common_pb2.Lineage()) == []
    assert asked == []


# -- fakes ------------------------------------------------------------------------------------


class FakeConn:
    """Records every statement; `fetch` answers with the rows it was given."""

    def __init__(self, rows: list[dict[str, Any]]) -> None:
        self.rows = rows
        self.calls: list[tuple[str, tuple[Any, ...]]] = []

    async def fetch(self, sql: str, *args: Any) -> list[dict[str, Any]]:
        self.calls.append((sql, args))
        return self.rows

    async def execute(self, sql: str, *args: Any) -> str:
        self.calls.append((sql, args))
        return ""

    async def fetchval(self, sql: str, *args: Any) -> Any:
        self.calls.append((sql, args))
        return datetime.now(UTC)


class FakePool:
    def __init__(self, rows: list[dict[str, Any]]) -> None:
        self.conn = FakeConn(rows)
        self.acquired = 0

    @asynccontextmanager
    async def acquire(self):
        self.acquired += 1
        yield self.conn
