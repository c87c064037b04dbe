"""Level-triggered recovery: a dataset version that no run has seen (a lost or missed
data.versioned) gets its run anyway, so a dropped event delays the loop but never breaks it."""

from __future__ import annotations

import asyncio

from flywheel.app import ServiceContext
from flywheel.errors import NotFound, Unavailable
from flywheel.logging import get_logger
from flywheel.retry import Backoff
from flywheel.v1 import training_pb2
from services.training import ingestion_client
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
        backoff.reset()
        await asyncio.sleep(INTERVAL_S)


async def reconcile_once(ctx: ServiceContext) -> int:
    async with ctx.pool.acquire() as conn:
        rows = await conn.fetch("SELECT DISTINCT ON (name) spec, created_at FROM specs ORDER BY name, version DESC")
    queued = 0
    for row in rows:
        spec = training_pb2.TrainingSpec.FromString(row["spec"])
        if not spec.triggers.on_data_versioned:
            continue
        try:
            data = await ingestion_client.get_data_version(ctx.settings, spec.dataset)
        except NotFound:
            continue  # no version yet
        async with ctx.pool.acquire() as conn, conn.transaction():
            if await covering_run(conn, spec, data):  # any run of this spec on this data counts
                continue
            run_id, created = await enqueue_run(conn, spec, data, trigger=training_pb2.RUN_TRIGGER_DATA_VERSIONED)
        if created:
            queued += 1
            log.info("reconcile: queued a run for an unseen dataset version", run_id=run_id, spec=spec.name)
    return queued
