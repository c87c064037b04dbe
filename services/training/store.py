"""Training tables: specs and runs, read back as protobuf messages."""

from __future__ import annotations

import json

import asyncpg

from flywheel.errors import NotFound
from flywheel.pbutil import timestamp
from flywheel.v1 import common_pb2, training_pb2

T = training_pb2
TERMINAL = (T.RUN_STATUS_SUCCEEDED, T.RUN_STATUS_FAILED, T.RUN_STATUS_CANCELLED)
RUN_NOTIFY = "flywheel_runs"
# What a database that is restarting, failing over or dropping connections raises: worth retrying.
DB_ERRORS: tuple[type[BaseException], ...] = (asyncpg.PostgresError, asyncpg.InterfaceError, OSError, TimeoutError)


async def get_spec(conn: asyncpg.Connection, name: str, version: int = 0) -> training_pb2.TrainingSpec:
    if version:
        row = await conn.fetchrow("SELECT spec, created_at FROM specs WHERE name = $1 AND version = $2", name, version)
    else:
        row = await conn.fetchrow(
            "SELECT spec, created_at FROM specs WHERE name = $1 ORDER BY version DESC LIMIT 1", name
        )
    if row is None:
        what = f"version {version}" if version else "any version"
        raise NotFound(f"no spec {shown(name)} ({what})", field="spec_name" if not version else "spec_version")
    return to_spec(row)


def to_spec(row: asyncpg.Record) -> training_pb2.TrainingSpec:
    spec = training_pb2.TrainingSpec.FromString(row["spec"])
    spec.create_time.FromDatetime(row["created_at"])
    return spec


async def latest_specs_for(conn: asyncpg.Connection, dataset: str) -> list[training_pb2.TrainingSpec]:
    rows = await conn.fetch(
        "SELECT DISTINCT ON (name) spec, created_at FROM specs WHERE dataset = $1 ORDER BY name, version DESC", dataset
    )
    return [to_spec(r) for r in rows]


RUN_COLUMNS = (
    "run_id, spec_name, spec_version, dataset, dataset_version, dataset_hash, trigger, trigger_event_id, status,"
    " stage, error, seed, code_version, attempt, progress, result, registered_name, registered_version,"
    " created_at, started_at, ended_at, cancelled_by, cancel_reason"
)
# The assignments that end a run CANCELLED, its error saying who cancelled it and why (what GetRun,
# WatchRun's message and the CLI show), from the columns CancelRun set.
CANCELLED = (
    f"status = {T.RUN_STATUS_CANCELLED}, ended_at = now(), lease_until = NULL,"
    " error = 'cancelled by ' || cancelled_by || CASE WHEN cancel_reason = '' THEN '' ELSE ': ' || cancel_reason END"
)


def to_run(row: asyncpg.Record) -> training_pb2.Run:
    run = training_pb2.Run.FromString(row["result"]) if row["result"] else training_pb2.Run()
    run.run_id = row["run_id"]
    run.spec_name = row["spec_name"]
    run.spec_version = row["spec_version"]
    run.dataset.CopyFrom(
        common_pb2.DatasetRef(name=row["dataset"], version=row["dataset_version"], content_hash=row["dataset_hash"])
    )
    run.trigger = row["trigger"]
    run.trigger_event_id = row["trigger_event_id"]
    run.status = row["status"]
    run.stage = row["stage"]
    run.error = row["error"]
    run.seed = row["seed"]
    run.code_version = row["code_version"]
    run.attempt = row["attempt"]
    run.cancelled_by = row["cancelled_by"]
    run.cancel_reason = row["cancel_reason"]
    for field, column in (("create_time", "created_at"), ("start_time", "started_at"), ("end_time", "ended_at")):
        if row[column] is not None:
            getattr(run, field).CopyFrom(timestamp(row[column]))
    if row["registered_version"]:
        run.registered_model.CopyFrom(
            common_pb2.ModelRef(name=row["registered_name"], version=row["registered_version"])
        )
    return run


def to_progress(row: asyncpg.Record) -> training_pb2.RunProgress:
    p = json.loads(row["progress"])
    progress = training_pb2.RunProgress(
        run_id=row["run_id"],
        status=row["status"],
        stage=row["stage"],
        trials_completed=p.get("trials_completed", 0),
        trials_total=p.get("trials_total", 0),
        best_score=p.get("best_score", 0.0),
        message=row["error"] or p.get("message", ""),
    )
    if p.get("last_trial"):
        progress.last_trial.CopyFrom(training_pb2.Trial.FromString(bytes.fromhex(p["last_trial"])))
    return progress


async def get_run(conn: asyncpg.Connection, run_id: str) -> asyncpg.Record:
    row = await conn.fetchrow(f"SELECT {RUN_COLUMNS} FROM runs WHERE run_id = $1", run_id)
    if row is None:
        raise NotFound(f"no run {shown(run_id)}", field="run_id")
    return row


def shown(name: str) -> str:
    """A caller's name or id as messages show it: as given when it could be one, never a long string."""
    return repr(name) if len(name) <= 128 else f"of {len(name)} characters"
