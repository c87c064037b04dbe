"""Cancelling a run (CancelRun): who may be stopped, and how the request reaches the run's worker.

A queued run ends CANCELLED at once. A running one is flagged (cancel_requested_at, with who asked
and why) and keeps RUNNING until the worker that holds it, on whichever replica, reads the flag at its
next lease renewal, stops the training process and ends the run CANCELLED; a run whose worker died
is ended by the next claim that finds its lease lapsed (services/training/jobs.py). A run that is
registering its model can no longer be cancelled: the worker moves it there only while no
cancellation is asked for (Lease.advance), under the same row lock this takes, so a cancelled run never
registers a model.
"""

from __future__ import annotations

import asyncpg

from flywheel.errors import FailedPrecondition, InvalidArgument, NotFound
from flywheel.v1 import training_pb2
from services.training import store

T = training_pb2
MAX_REASON_CHARS = 1_024
MAX_ACTOR_CHARS = 256


def check_request(reason: str, actor: str) -> None:
    if len(reason) > MAX_REASON_CHARS:
        raise InvalidArgument(f"at most {MAX_REASON_CHARS:,} characters", field="reason")
    if len(actor) > MAX_ACTOR_CHARS:
        raise InvalidArgument(f"at most {MAX_ACTOR_CHARS} characters", field="actor")


async def request_cancel(conn: asyncpg.Connection, run_id: str, actor: str, reason: str) -> bool:
    """In the caller's transaction: ends a queued run or flags a running one. True when the run still
    has to be stopped by its worker. A repeated request for a run being stopped keeps the first's actor
    and reason."""
    row = await conn.fetchrow(
        "SELECT status, stage, cancel_requested_at FROM runs WHERE run_id = $1 FOR UPDATE", run_id
    )
    if row is None:
        raise NotFound(f"no run {store.shown(run_id)}", field="run_id")
    status = row["status"]
    if status in store.TERMINAL:
        raise FailedPrecondition(
            f"run {run_id} already ended ({T.RunStatus.Name(status)}); only queued or running runs can be cancelled",
            field="run_id",
        )
    if status == T.RUN_STATUS_RUNNING and row["stage"] >= T.RUN_STAGE_REGISTERING:
        raise FailedPrecondition(
            f"run {run_id} has trained and is registering its model; it can no longer be cancelled", field="run_id"
        )
    if row["cancel_requested_at"] is not None:
        return True
    await conn.execute(
        "UPDATE runs SET cancel_requested_at = now(), cancelled_by = $2, cancel_reason = $3 WHERE run_id = $1",
        run_id,
        actor,
        reason,
    )
    if status == T.RUN_STATUS_QUEUED:  # no worker has it: it ends here (its error reads the columns set above)
        await conn.execute(f"UPDATE runs SET {store.CANCELLED} WHERE run_id = $1", run_id)
        return False
    return True
