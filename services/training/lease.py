"""A worker's hold on a claimed run: the lease, the heartbeat that renews it, and losing it.

Claiming a run sets `runs.lease_until` and increments `runs.attempt`; that attempt number fences
every later write. The renewal, progress, the stage and the run's outcome are written only while
`attempt` is still the one this worker claimed, so once another worker has reclaimed the run the
old one can no longer change it.

The heartbeat renews the lease every `training_heartbeat_s` to `training_lease_s` ahead. A
database error does not stop it: it is logged and the renewal retried with the one backoff
(flywheel.retry) until it succeeds. The lease is lost when no renewal succeeds before it would
lapse (counted from when the last good renewal was sent, so never later than the database's own
`lease_until`) or when a renewal finds the run claimed again. Then `Lease.hold` cancels the work
it runs and raises LeaseLost, and the worker abandons the attempt: it stops the training process,
registers nothing and writes no outcome. Whichever worker claims the run next (perhaps the same
one, once the database is back) trains it as a new attempt. A registration in flight when the
lease was lost cannot make a second version either: the registry is idempotent on the run id.

Every renewal also reads the run's cancel flag (set by CancelRun on whichever replica received the
call): once it is set, `Lease.hold` cancels the work and raises RunCancelled, and the worker ends the
run CANCELLED. `Lease.advance` is the last point a cancellation can take effect: it moves the run to
the registering stage only while no cancellation was asked for, and CancelRun refuses a run already
there, so a cancelled run never registers a model.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from typing import Any, TypeVar

import asyncpg

from flywheel.config import Settings
from flywheel.logging import get_logger
from flywheel.retry import Backoff, retry
from flywheel.telemetry import untraced
from flywheel.v1 import training_pb2
from services.training.store import DB_ERRORS

log = get_logger(__name__)
T = TypeVar("T")
_RUNNING = training_pb2.RUN_STATUS_RUNNING


class LeaseLost(Exception):
    """This worker no longer owns the run: it must neither register a model nor finish the run."""


class RunCancelled(Exception):
    """CancelRun asked for the run to stop: the worker stops it and ends it CANCELLED."""


class Lease:
    """One claimed attempt of one run: `kept` runs its heartbeat, `hold` runs work under it."""

    def __init__(self, pool: asyncpg.Pool, settings: Settings, run_id: str, attempt: int, sent_at: float) -> None:
        """`sent_at`: time.monotonic() when the claim that set the lease was sent."""
        self.run_id = run_id
        self.attempt = attempt
        self.lost_reason = ""
        self._pool = pool
        self._settings = settings
        self._valid_until = sent_at + settings.training_lease_s
        self._lost = asyncio.Event()
        self._cancel = asyncio.Event()
        self._past_cancelling = False  # set once `advance` moved the run to where it may not be cancelled
        self._stopping = False  # set when the block holding the lease ends

    def remaining_s(self) -> float:
        return self._valid_until - time.monotonic()

    @property
    def lost(self) -> bool:
        return self._lost.is_set()

    @property
    def cancel_requested(self) -> bool:
        return self._cancel.is_set()

    def lose(self, reason: str) -> None:
        if self.lost:
            return
        self.lost_reason = reason
        self._lost.set()
        log.error(
            "lease lost; abandoning the run to whoever claims it next",
            run_id=self.run_id,
            attempt=self.attempt,
            reason=reason,
        )

    async def update(self, assignments: str, *args: Any) -> bool:
        """`UPDATE runs SET <assignments>` (parameters from $3) while this attempt owns the run, retrying
        database errors. False, and the lease lost, when another attempt owns it now."""

        async def once() -> bool:
            async with self._pool.acquire() as conn:
                status = await conn.execute(
                    f"UPDATE runs SET {assignments} WHERE run_id = $1 AND attempt = $2",
                    self.run_id,
                    self.attempt,
                    *args,
                )
            return bool(status != "UPDATE 0")

        owned = await retry(once, backoff=self._backoff(), what=f"update run {self.run_id}", retry_on=DB_ERRORS)
        if not owned:
            self.lose(f"attempt {self.attempt} is no longer the run's current attempt")
        return owned

    async def advance(self, stage: int) -> None:
        """Moves the run to `stage` unless a cancellation was asked for (RunCancelled) or another attempt
        owns the run (LeaseLost). Serialised with CancelRun by the row's lock, so exactly one wins."""

        async def once() -> bool | None:
            async with self._pool.acquire() as conn:
                moved: bool | None = await conn.fetchval(
                    "UPDATE runs SET stage = CASE WHEN cancel_requested_at IS NULL THEN $3 ELSE stage END"
                    " WHERE run_id = $1 AND attempt = $2 RETURNING cancel_requested_at IS NULL",
                    self.run_id,
                    self.attempt,
                    stage,
                )
            return moved

        moved = await retry(once, backoff=self._backoff(), what=f"update run {self.run_id}", retry_on=DB_ERRORS)
        if moved is None:
            self.lose(f"attempt {self.attempt} is no longer the run's current attempt")
            raise LeaseLost(self.lost_reason)
        if not moved:
            self._cancel.set()
            raise RunCancelled()
        self._past_cancelling = True

    async def renew(self) -> None:
        """Extends the lease by training_lease_s, or raises LeaseLost when the run is no longer ours.
        Notes a cancellation asked for since the last renewal (`hold` then stops the work)."""
        sent_at = time.monotonic()
        async with self._pool.acquire() as conn:
            with untraced():
                # None: not ours any more; False: ours, but CancelRun asked for it to stop.
                not_cancelled = await conn.fetchval(
                    "UPDATE runs SET lease_until = now() + make_interval(secs => $3)"
                    " WHERE run_id = $1 AND attempt = $2 AND status = $4 RETURNING cancel_requested_at IS NULL",
                    self.run_id,
                    self.attempt,
                    self._settings.training_lease_s,
                    _RUNNING,
                )
        if not_cancelled is None:
            raise LeaseLost(f"the run was claimed again (attempt {self.attempt} is no longer current)")
        self._valid_until = sent_at + self._settings.training_lease_s
        if not not_cancelled and not self._cancel.is_set() and not self._past_cancelling:
            log.info("cancellation asked for; stopping the run", run_id=self.run_id, attempt=self.attempt)
            self._cancel.set()

    @contextlib.asynccontextmanager
    async def kept(self, on_beat: Callable[[], Awaitable[None]]) -> AsyncIterator[Lease]:
        """Renews the lease (and calls `on_beat` after each renewal) for as long as the block runs."""
        self._stopping = False
        heartbeat = asyncio.create_task(self._heartbeat(on_beat), name=f"lease heartbeat {self.run_id}")
        try:
            yield self
        finally:  # the task is this block's: cancelled and awaited here, never left running
            # The flag as well as the cancel: Python 3.11's wait_for can swallow a cancellation that
            # lands as its inner call completes, and the loop must still end.
            self._stopping = True
            heartbeat.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await heartbeat

    async def hold(self, work: Coroutine[Any, Any, T]) -> T:
        """`work`'s result, unless the lease is lost or the run cancelled first: then `work` is cancelled
        and LeaseLost or RunCancelled raised."""
        task = asyncio.create_task(work, name=f"run {self.run_id}")
        lost = asyncio.create_task(self._lost.wait(), name=f"lease watch {self.run_id}")
        cancel = asyncio.create_task(self._cancel.wait(), name=f"cancel watch {self.run_id}")
        try:
            await asyncio.wait((task, lost, cancel), return_when=asyncio.FIRST_COMPLETED)
        finally:  # the tasks are this call's: cancelled and awaited before it returns
            for t in (task, lost, cancel):
                t.cancel()
            await asyncio.gather(task, lost, cancel, return_exceptions=True)
        if task.cancelled() and self.lost:
            raise LeaseLost(self.lost_reason)
        if task.cancelled() and self.cancel_requested:
            raise RunCancelled()
        return task.result()

    async def _heartbeat(self, on_beat: Callable[[], Awaitable[None]]) -> None:
        backoff = self._backoff()
        try:
            while not self.lost and not self._stopping:
                await asyncio.sleep(self._settings.training_heartbeat_s)
                try:
                    await asyncio.wait_for(
                        retry(
                            self.renew,
                            backoff=backoff,
                            what=f"lease heartbeat of run {self.run_id}",
                            retry_on=DB_ERRORS,
                        ),
                        timeout=max(self.remaining_s(), 0.0),
                    )
                except TimeoutError:
                    self.lose(f"no renewal succeeded within the {self._settings.training_lease_s:g}s lease")
                    return
                backoff.reset()
                try:  # bounded: a progress write stuck on the database must not hold up the next renewal
                    await asyncio.wait_for(on_beat(), timeout=self._settings.training_heartbeat_s)
                except Exception:  # progress is best-effort; the lease is what must not lapse
                    log.warning("heartbeat: progress not recorded", run_id=self.run_id, exc_info=True)
        except LeaseLost as exc:
            self.lose(str(exc))
        except Exception as exc:  # a heartbeat must never end unnoticed: whatever stopped it ends the lease
            log.exception("lease heartbeat failed", run_id=self.run_id)
            self.lose(f"heartbeat failed: {type(exc).__name__}: {exc}")

    def _backoff(self) -> Backoff:
        return Backoff.from_settings(self._settings)
