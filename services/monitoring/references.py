"""What monitoring compares production against: the promoted version's training data profile,
asked of the registry (lineage, task, recorded metrics) and ingestion (profile, schema)."""

from __future__ import annotations

import asyncio
import json

import asyncpg
from google.protobuf.message import DecodeError

from flywheel import clients, confirm
from flywheel.app import ServiceContext
from flywheel.errors import FlywheelError
from flywheel.logging import get_logger
from flywheel.v1 import common_pb2, events_pb2, registry_pb2
from services.monitoring import estimation, guard
from services.monitoring.evaluator import load_policy

log = get_logger(__name__)


async def follow_production(
    ctx: ServiceContext,
    conn: asyncpg.Connection,
    model: str,
    version: int,
    promotion: events_pb2.ModelPromoted | None = None,
) -> str:
    """Makes `version` the model's reference if the registry has it in production now; returns why
    not ("" when it is the reference). Every replica's model.promoted handler and start-up reconcile
    come through here, one at a time per model (an advisory lock held to the transaction's end), and
    each asks the registry under that lock: a reconcile that read an older production list can never
    overwrite the reference a newer promotion just set."""
    async with conn.transaction():  # a savepoint inside a handler's transaction; the lock lasts to its commit
        await conn.execute("SELECT pg_advisory_xact_lock(hashtext($1))", f"monitoring.model_refs:{model}")
        production = await confirm.registry_version(ctx.settings, model, alias="production")
        why = confirm.promotion_verdict(version, production)
        if why:
            return why
        if await conn.fetchval("SELECT version FROM model_refs WHERE model = $1", model) != version:
            await load_reference(ctx, conn, model, version, production)
        if promotion is not None:  # the promotion itself (not a reconcile): the guard starts watching
            await guard.arm(conn, promotion, await load_policy(conn, model))
        return ""


async def load_reference(
    ctx: ServiceContext,
    conn: asyncpg.Connection,
    model: str,
    version: int,
    mv: registry_pb2.ModelVersion | None = None,
) -> None:
    """Records `version` as the model's reference; `mv` is the registry's record of it, when the caller has it."""
    if mv is None or mv.ref.name != model or mv.ref.version != version:
        mv = await clients.model_version(ctx.settings, model, version)
    dataset = mv.lineage.dataset
    if not dataset.name:
        log.warning("reference: model has no dataset lineage; not monitored", model=model, version=version)
        return
    dv = await clients.dataset_version(ctx.settings, dataset)
    profile = await ctx.artifacts.get_bytes(dv.profile_uri.removeprefix("sha256:"))
    recorded = {m.name: m.value for m in mv.metrics if not m.class_label}
    calibration = await _calibration(ctx, mv)
    staging = mv.staging.sample_predictions
    await conn.execute(
        "INSERT INTO model_refs (model, version, dataset, dataset_version, profile, schema, task, class_labels,"
        " recorded, calibration, staging_predictions) VALUES ($1,$2,$3,$4,$5::jsonb,$6,$7,$8,$9::jsonb,$10::jsonb,$11)"
        " ON CONFLICT (model) DO UPDATE SET version = $2, dataset = $3, dataset_version = $4, profile = $5::jsonb,"
        " schema = $6, task = $7, class_labels = $8, recorded = $9::jsonb, calibration = $10::jsonb,"
        " staging_predictions = $11, guard_until = NULL, guard_previous = 0, guard_baseline = NULL,"
        " guard_previous_p99 = NULL, updated_at = now()",
        model,
        version,
        dataset.name,
        dataset.version,
        profile.decode(),
        dv.schema.SerializeToString(),
        mv.task or common_pb2.TASK_CLASSIFICATION,
        list(mv.signature.class_labels),
        json.dumps(recorded),
        calibration,
        staging.SerializeToString() if staging.counts else None,
    )
    log.info(
        "reference loaded", model=model, version=version, dataset=dataset.name, dataset_version=dataset.version,
        calibrated=calibration is not None,
    )  # fmt: skip


async def _calibration(ctx: ServiceContext, mv: registry_pb2.ModelVersion) -> str | None:
    """The version's calibration (JSON), fitted on its calibration sample; None when it has none or
    the sample is unusable (logged: estimation is then off for the model, the rest of monitoring is not)."""
    uri = mv.calibration_uri
    if not uri or mv.task == common_pb2.TASK_REGRESSION:
        return None
    try:
        data = bytearray()
        async for chunk in ctx.artifacts.get(uri.removeprefix("sha256:")):
            data += chunk
            if len(data) > estimation.MAX_SAMPLE_BYTES:
                raise estimation.CalibrationError(f"the sample is over {estimation.MAX_SAMPLE_BYTES} bytes")
        fitted = await asyncio.to_thread(_fit, bytes(data), list(mv.signature.class_labels))
    except (estimation.CalibrationError, DecodeError, FlywheelError) as exc:
        log.warning(
            "calibration sample unusable; no performance estimate without labels", model=mv.ref.name,
            version=mv.ref.version, error=str(exc)[:300],
        )  # fmt: skip
        return None
    return json.dumps(fitted.to_json())


def _fit(data: bytes, class_labels: list[str]) -> estimation.Calibration:
    sample = common_pb2.CalibrationSample.FromString(data)
    if list(sample.class_labels) != class_labels:
        raise estimation.CalibrationError("its class labels are not the model signature's")
    proba, y = estimation.sample_arrays(sample.class_labels, sample.probabilities, sample.labels)
    return estimation.fit(sample.class_labels, proba, y)
