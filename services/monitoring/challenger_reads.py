"""Reading a challenger's rows next to production's: a shadow's paired with production's on the same
requests (published as metrics too; the RPC and the ticker both come through here), and a canary's
over the same period as production's (a progressive rollout's gates)."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime
from typing import Any

import asyncpg

from flywheel.errors import NotFound
from flywheel.telemetry import meter
from flywheel.v1 import common_pb2, monitoring_pb2
from services.monitoring.comparison import DEFAULT_ROWS, Side, canary_report, compare
from services.monitoring.evaluator import stored_object
from services.monitoring.windows import Task

M = monitoring_pb2
REFRESH_S = 30.0  # how often the ticker refreshes the metrics of models with a live shadow
RECENT = "10 minutes"  # a shadow that logged within this is live
_meter = meter("flywheel.monitoring")
_last: dict[tuple[str, str, str], float] = {}


def _observe(_: Any) -> Any:
    from opentelemetry.metrics import Observation

    for (model, challenger, figure), value in list(_last.items()):
        yield Observation(value, {"model": model, "challenger_version": challenger, "figure": figure})


_meter.create_observable_gauge(
    "flywheel.monitoring.shadow_comparison", callbacks=[_observe],
    description="A shadow challenger against production on the same requests: agreement or mean |difference|,"
    " each model's p50 latency and live quality",
)  # fmt: skip


async def comparison(conn: asyncpg.Connection, model: str, version: int, max_rows: int) -> M.ShadowComparison:
    """The comparison of `model`'s shadow `version` (0: the latest to shadow) over its newest paired rows."""
    shadow = common_pb2.SERVING_ROLE_SHADOW
    if not version:
        version = await conn.fetchval(
            "SELECT version FROM challenger_predictions WHERE model = $1 AND role = $2 ORDER BY id DESC LIMIT 1",
            model,
            shadow,
        )
        if version is None:
            raise NotFound(f"no shadow answers logged for model {model!r}", field="model_name")
    ref = await conn.fetchrow("SELECT task, class_labels FROM model_refs WHERE model = $1", model)
    if ref is None:
        raise NotFound(f"model {model!r} has no production reference", field="model_name")
    rows = await conn.fetch(
        "SELECT c.outputs AS c_out, c.latency_ms AS c_ms, c.at, p.outputs AS p_out, p.latency_ms AS p_ms,"
        " p.version AS p_version, l.label"
        " FROM (SELECT * FROM challenger_predictions WHERE model = $1 AND role = $2 AND version = $3"
        "       ORDER BY id DESC LIMIT $4) c"
        " JOIN LATERAL (SELECT outputs, latency_ms, version FROM predictions p WHERE p.model = $1"
        "       AND p.request_id = c.request_id AND p.row_index = c.row_index ORDER BY p.id DESC LIMIT 1) p ON true"
        " LEFT JOIN labels l ON l.model = $1 AND l.request_id = c.request_id AND l.row_index = c.row_index"
        " ORDER BY c.id",
        model,
        shadow,
        version,
        max_rows or DEFAULT_ROWS,
    )
    result = await asyncio.to_thread(_compare, rows, Task(ref["task"]), list(ref["class_labels"]))
    result.challenger.CopyFrom(common_pb2.ModelRef(name=model, version=version))
    if rows:
        versions = [r["p_version"] for r in rows]
        result.production.CopyFrom(common_pb2.ModelRef(name=model, version=max(set(versions), key=versions.count)))
        result.start.FromDatetime(min(r["at"] for r in rows).astimezone(UTC))
        result.end.FromDatetime(max(r["at"] for r in rows).astimezone(UTC))
    publish(result)
    return result


def _compare(rows: list[asyncpg.Record], task: Task, class_labels: list[str]) -> M.ShadowComparison:
    production, challenger = _side(rows, "p_out", "p_ms"), _side(rows, "c_out", "c_ms")
    labels = [json.loads(r["label"]) if r["label"] is not None else None for r in rows]
    return compare(task, class_labels, production, challenger, labels)


def publish(c: M.ShadowComparison) -> None:
    key = (c.challenger.name, str(c.challenger.version))
    figures = {"production_p50_ms": c.production_latency.p50_ms, "challenger_p50_ms": c.challenger_latency.p50_ms}
    if c.HasField("agreement"):
        figures["agreement"] = c.agreement
    if c.HasField("mean_abs_difference"):
        figures["mean_abs_difference"] = c.mean_abs_difference
    for side, metrics in (("production", c.production_quality), ("challenger", c.challenger_quality)):
        for m in metrics:
            figures[f"{side}_{m.name}"] = m.value
    for figure, value in figures.items():
        _last[(*key, figure)] = value


async def refresh(pool: asyncpg.Pool) -> None:
    """The metrics of every shadow that logged recently."""
    async with pool.acquire() as conn:
        live = await conn.fetch(
            "SELECT DISTINCT model, version FROM challenger_predictions WHERE role = $1"
            f" AND at > now() - interval '{RECENT}'",
            common_pb2.SERVING_ROLE_SHADOW,
        )
        for row in live:
            try:
                await comparison(conn, row["model"], row["version"], DEFAULT_ROWS)
            except NotFound:
                continue


MAX_CANARY_ROWS = 100_000  # each side of a canary report: its newest rows in the period


async def canary(
    conn: asyncpg.Connection, model: str, version: int, since: datetime, labels_since: datetime
) -> M.CanaryReport:
    """The canary `version` against production over the rows each logged since `since`, and each
    one's labelled rows logged since `labels_since`."""
    ref = await conn.fetchrow("SELECT version, task, class_labels FROM model_refs WHERE model = $1", model)
    if ref is None:
        raise NotFound(f"model {model!r} has no production reference", field="model_name")
    canary_rows = await conn.fetch(
        "SELECT outputs, latency_ms FROM challenger_predictions WHERE model = $1 AND role = $2 AND version = $3"
        " AND at >= $4 ORDER BY id DESC LIMIT $5",
        model, common_pb2.SERVING_ROLE_CANARY, version, since, MAX_CANARY_ROWS,
    )  # fmt: skip
    production_rows = await conn.fetch(
        "SELECT outputs, latency_ms FROM predictions WHERE model = $1 AND version = $2 AND at >= $3"
        " ORDER BY id DESC LIMIT $4",
        model, ref["version"], since, MAX_CANARY_ROWS,
    )  # fmt: skip
    canary_labels = await conn.fetch(
        "SELECT label, predicted FROM challenger_labels WHERE model = $1 AND version = $2 AND at >= $3"
        " ORDER BY at DESC LIMIT $4",
        model, version, labels_since, MAX_CANARY_ROWS,
    )  # fmt: skip
    production_labels = await conn.fetch(
        "SELECT l.label, l.predicted FROM labels l JOIN predictions p ON p.model = l.model"
        " AND p.request_id = l.request_id AND p.row_index = l.row_index AND p.version = l.version"
        " WHERE l.model = $1 AND l.version = $2 AND p.at >= $3 ORDER BY l.id DESC LIMIT $4",
        model, ref["version"], labels_since, MAX_CANARY_ROWS,
    )  # fmt: skip
    report = await asyncio.to_thread(
        _canary, canary_rows, production_rows, canary_labels, production_labels, Task(ref["task"]),
        list(ref["class_labels"]),
    )  # fmt: skip
    report.canary.CopyFrom(common_pb2.ModelRef(name=model, version=version))
    report.production.CopyFrom(common_pb2.ModelRef(name=model, version=ref["version"]))
    return report


def _side(rows: list[asyncpg.Record], outputs: str = "outputs", latency: str = "latency_ms") -> Side:
    import numpy as np

    return Side([stored_object(r[outputs]) for r in rows], np.array([r[latency] for r in rows], dtype=np.float64))


def _labelled(rows: list[asyncpg.Record]) -> tuple[list[dict[str, Any]], list[Any]]:
    return [stored_object(r["predicted"]) for r in rows], [json.loads(r["label"]) for r in rows]


def _canary(
    canary_rows: list[asyncpg.Record],
    production_rows: list[asyncpg.Record],
    canary_labels: list[asyncpg.Record],
    production_labels: list[asyncpg.Record],
    task: Task,
    class_labels: list[str],
) -> M.CanaryReport:
    return canary_report(
        task, class_labels, _side(canary_rows), _side(production_rows), _labelled(canary_labels),
        _labelled(production_labels),
    )  # fmt: skip
