"""What monitoring does on its own: catch up with the registry's production models at start, and a
ticker that closes time-based windows and forgets predictions too old for any label to join."""

from __future__ import annotations

import asyncio
import time

from flywheel import clients
from flywheel.app import ServiceContext
from flywheel.logging import get_logger
from flywheel.retry import Backoff, retry
from flywheel.telemetry import meter
from services.monitoring import challenger_reads, evaluator, guard
from services.monitoring.references import follow_production

log = get_logger(__name__)
KEEP_PREDICTIONS = "7 days"  # long enough for late labels to join; older rows are deleted
PRUNE_EVERY_S = 600.0
_meter = meter("flywheel.monitoring")
ticker_failures = _meter.create_counter("flywheel.monitoring.ticker_failures", unit="{failure}")
reconcile_failures = _meter.create_counter("flywheel.monitoring.reconcile_failures", unit="{model}")


async def reconcile(ctx: ServiceContext) -> None:
    """Start monitoring whatever the registry has in production (a missed model.promoted or a restart)."""
    # In the background: monitoring need not wait for the registry to report SERVING.
    ctx.tasks.spawn(_load_production_references(ctx), name="monitoring reconcile")


async def _load_production_references(ctx: ServiceContext) -> None:
    models = await retry(
        lambda: clients.production_models(ctx.settings),
        backoff=Backoff.from_settings(ctx.settings),
        what="registry: production models",
    )
    for model in models:
        # One model's trouble (the registry, ingestion or its profile) must not keep the others unmonitored.
        try:
            await _reconcile_one(ctx, model.name, model.aliases.get("production"))
        except Exception as exc:
            log.warning("reconcile: reference not loaded", model=model.name, error=repr(exc)[:300])
            reconcile_failures.add(1, {"model": model.name})


async def _reconcile_one(ctx: ServiceContext, model: str, version: int | None) -> None:
    if not version:
        return
    async with ctx.pool.acquire() as conn:
        if await conn.fetchval("SELECT version FROM model_refs WHERE model = $1", model) == version:
            return  # the usual restart: nothing moved
        why = await follow_production(ctx, conn, model, version)
    if why:
        log.info("reconcile: production moved on since it was listed", model=model, version=version, reason=why)


async def close_due_windows(ctx: ServiceContext) -> None:
    """Time-based windows: close a window whose oldest row is older than the policy's duration
    (and, now and then, forget predictions too old for any label to join). A failure is logged and
    counted, and the ticker goes on: one model's trouble must not stop the others' windows."""
    last_prune = last_shadow = last_errors = time.monotonic()
    while True:
        await asyncio.sleep(ctx.settings.monitoring_tick_s)
        if time.monotonic() - last_prune >= PRUNE_EVERY_S:
            last_prune = time.monotonic()
            try:
                await _prune(ctx)
            except Exception as exc:
                _failed("prune", "", exc)
        if time.monotonic() - last_errors >= guard.ERRORS_EVERY_S:
            last_errors = time.monotonic()
            try:
                await guard.watch_errors(ctx.pool, ctx.settings, evaluator.load_policy)
            except Exception as exc:
                _failed("guard error rate", "", exc)
        try:
            await guard.carry_out(ctx.pool, ctx.settings)
        except Exception as exc:
            _failed("guard rollback", "", exc)
        if time.monotonic() - last_shadow >= challenger_reads.REFRESH_S:
            last_shadow = time.monotonic()
            try:
                await challenger_reads.refresh(ctx.pool)
            except Exception as exc:
                _failed("shadow comparison", "", exc)
        try:
            due = await _models_with_open_rows(ctx)
        except Exception as exc:
            _failed("list models", "", exc)
            continue
        for model, age_s in due:
            try:
                await _close_if_due(ctx, model, age_s)
            except Exception as exc:
                _failed("close window", model, exc)


def _failed(step: str, model: str, exc: Exception) -> None:
    log.warning("window ticker: failed", step=step, model=model, error=repr(exc))
    ticker_failures.add(1, {"step": step, "model": model})


async def _prune(ctx: ServiceContext) -> None:
    async with ctx.pool.acquire() as conn:
        await conn.execute(
            f"DELETE FROM predictions WHERE window_id IS NOT NULL AND at < now() - interval '{KEEP_PREDICTIONS}'"
        )
        await conn.execute(f"DELETE FROM challenger_predictions WHERE at < now() - interval '{KEEP_PREDICTIONS}'")


async def _models_with_open_rows(ctx: ServiceContext) -> list[tuple[str, float]]:
    """(model, age in seconds of its oldest open row) for each model with a reference and open rows."""
    async with ctx.pool.acquire() as conn:
        rows = await conn.fetch(
            "SELECT r.model, extract(epoch FROM now() - min(p.at))::float8 AS age FROM model_refs r"
            " JOIN predictions p ON p.model = r.model AND p.version = r.version AND p.window_id IS NULL"
            " GROUP BY r.model"
        )
    return [(r["model"], r["age"]) for r in rows]


async def _close_if_due(ctx: ServiceContext, model: str, age_s: float) -> None:
    async with ctx.pool.acquire() as conn, conn.transaction():
        policy = await evaluator.load_policy(conn, model)
        if policy.enabled and age_s >= policy.window.duration.ToTimedelta().total_seconds():
            await evaluator.close_drift_window(conn, model)
