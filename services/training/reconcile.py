"""Level-triggered recovery: a dataset version that no run has seen (a lost or missed
data.versioned) gets its run anyway, so a dropped event delays the loop but never breaks it.

A spec the loop cannot handle (a stored spec that no longer decodes, a bug) is logged, counted
(flywheel.training.loop_errors) and skipped; the others are still reconciled, and the loop goes on.
An unreachable ingestion or database is retried with backoff instead."""

from __future__ import annotations

import asyncio

import asyncpg

from flywheel.app import ServiceContext
from flywheel.errors import NotFound, Unavailable
from flywheel.logging import get_logger
from flywheel.retry import Backoff
from flywheel.v1 import training_pb2
from services.training import ingestion_client, metrics
from services.training.queue import covering_run, enqueue_run
from services.training.store import DB_ERRORS

log = get_logger(__name__)
INTERVAL_S = 60.0
_RETRYABLE: tuple[type[BaseException], ...] = (Unavailable, *DB_ERRORS)


async def reconcile_forever(ctx: ServiceContext) -> None:
    backoff = Backoff.from_settings(ctx.settings)
    while True:
        try:
            await reconcile_once(ctx)
        except _RETRYABLE as exc:
            log.info("reconcile: ingestion or the database not reachable; retrying", error=repr(exc))
            await backoff.wait()
            continue
        except Exception:  # a bug must not end the loop: the next round may well succeed
            log.exception("reconcile: a round failed; trying again at the next")
            metrics.loop_errors.add(1, {"loop": "reconcile"})
        backoff.reset()
        await asyncio.sleep(INTERVAL_S)


async def reconcile_once(ctx: ServiceContext) -> int:
    async with ctx.pool.acquire() as conn:
        rows = await conn.fetch(
            "SELECT DISTINCT ON (name) name, spec, created_at FROM specs ORDER BY name, version DESC"
        )
    queued = 0
    for row in rows:
        try:
            queued += await _reconcile_spec(ctx, row)
        except _RETRYABLE:
            raise  # an outage, not this spec: the whole round is retried
        except Exception:
            log.exception("reconcile: a spec could not be reconciled; skipped", spec=row["name"])
            metrics.loop_errors.add(1, {"loop": "reconcile"})
    return queued


async def _reconcile_spec(ctx: ServiceContext, row: asyncpg.Record) -> int:
    """1 when a run was queued for the spec's newest dataset version, else 0."""
    spec = training_pb2.TrainingSpec.FromString(row["spec"])
    if not spec.triggers.on_data_versioned:
        return 0
    try:
        data = await ingestion_client.get_data_version(ctx.settings, spec.dataset)
    except NotFound:
        return 0  # no version yet
    async with ctx.pool.acquire() as conn, conn.transaction():
        if await covering_run(conn, spec, data):  # any run of this spec on this data counts
            return 0
        run_id, created = await enqueue_run(conn, spec, data, trigger=training_pb2.RUN_TRIGGER_DATA_VERSIONED)
    if not created:
        return 0
    log.info("reconcile: queued a run for an unseen dataset version", run_id=run_id, spec=spec.name)
    return 1
