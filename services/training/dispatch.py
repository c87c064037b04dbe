"""A run's search as tasks on a cluster: the rules, with the cluster behind a small interface.

services/training/ray_trials.py implements `Cluster` with Ray; the unit tests with an in-process
fake. The run goes:
1. the Parquet bytes go into the cluster's object store once (`put`);
2. one `prepare` task decodes them into arrays and folds, kept in the object store, and returns
   the list of trials;
3. one `trial` task per parameter combination, all submitted at once (the cluster queues them by
   their CPU and memory requests), each reading the prepared data from the object store;
4. as each trial ends, its result goes to the run's progress (trials completed, best score, the
   trial itself), exactly as the local backend reports them; the best trial is chosen in trial
   order once every trial has ended, so completion order never changes it;
5. one `finish` task refits the best trial's parameters, exports ONNX and checks parity.

Failures:
- a trial whose worker or node was lost, after the cluster's own retries, is a FAILED trial with
  the reason (the search goes on, as with a parameter combination that fails);
- an error the task raised (TrainingFailed, InvalidArgument: the data or spec does not fit, or a
  task out of memory) fails the run, as the local backend does;
- a lost `prepare` or `finish` task, lost inputs, or the cluster itself gone is WorkerLost: the
  worker requeues the run (the next claim counts as an attempt), as when the local training
  process dies;
- the run cancelled (CancelRun, its lease lost, its timeout, the service stopping) cancels every
  task of the run that has not ended.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from flywheel.errors import InvalidArgument
from flywheel.v1 import training_pb2
from services.training import trainer
from services.training.ray_tasks import Plan
from services.training.trainer import Reporter, TrainingFailed, TrainJob, TrainResult

Stage = training_pb2.RunStage
MAX_ERROR_CHARS = trainer.MAX_ERROR_CHARS


class TaskLost(Exception):
    """The worker or node running a task was lost, and the cluster's retries were used up."""


class WorkerLost(Exception):
    """The run cannot go on on this attempt (a lost prepare or finish task, lost inputs, the cluster
    gone): the worker requeues it, like a training process that died."""


class Cluster(Protocol):
    """Submits the three kinds of task and waits for their results. `result` returns the task's
    value, or raises the exception the task raised, TaskLost, or WorkerLost."""

    def put(self, value: bytes) -> Any: ...

    def prepare(self, job: TrainJob, data: Any) -> tuple[Any, Any]:
        """(the Plan's ref, the Prepared data's ref)"""
        ...

    def trial(self, number: int, params: dict[str, Any], job: TrainJob, prepared: Any) -> Any: ...

    def finish(
        self, job: TrainJob, prepared: Any, best: int, params: dict[str, Any], trials: list[training_pb2.Trial]
    ) -> Any: ...

    async def result(self, ref: Any) -> Any: ...

    def cancel(self, refs: list[Any]) -> None: ...


async def run_search(cluster: Cluster, job: TrainJob, data: bytes, reporter: Reporter) -> TrainResult:
    """Trains `job` on `cluster` (see the module's docstring); progress goes to `reporter`."""
    submitted: list[Any] = []
    finished: set[int] = set()  # ids of refs whose task ended

    async def outcome(ref: Any) -> Any:
        try:
            value = await cluster.result(ref)
        except asyncio.CancelledError:  # no longer waited for: the task itself may still run
            raise
        except Exception:
            finished.add(id(ref))
            raise
        finished.add(id(ref))
        return value

    try:
        reporter.emit(f"loading {len(job.feature_fields)} features", Stage.RUN_STAGE_LOADING_DATA)
        plan_ref, prepared = cluster.prepare(job, cluster.put(data))
        submitted += [plan_ref, prepared]
        plan = await _essential(outcome(plan_ref), "reading the data")
        finished.add(id(prepared))  # the same task
        if not isinstance(plan, Plan):
            raise TypeError(f"prepare returned {type(plan).__name__}, not a Plan")
        reporter.total = len(plan.candidates)
        reporter.emit(plan.message, Stage.RUN_STAGE_SEARCHING)
        refs = [cluster.trial(n, params, job, prepared) for n, params in enumerate(plan.candidates)]
        submitted += refs
        trials = await _gather_trials(refs, plan.candidates, outcome, job, reporter)
        best = trainer.best_of(job.spec, trials)
        reporter.emit(
            f"refitting trial {best} on the train split, exporting ONNX and checking parity",
            Stage.RUN_STAGE_EVALUATING,
        )
        final = cluster.finish(job, prepared, best, plan.candidates[best], trials)
        submitted.append(final)
        result = await _essential(outcome(final), "refitting the best trial")
        if not isinstance(result, TrainResult):
            raise TypeError(f"finish returned {type(result).__name__}, not a TrainResult")
        reporter.emit("parity passed", Stage.RUN_STAGE_PARITY_CHECK)
        return result
    finally:
        # Cancelled (CancelRun, the lease lost, the timeout), failed, or done: nothing of this run
        # may keep a worker busy. A task that ended is not cancelled again.
        pending = [r for r in submitted if id(r) not in finished]
        if pending:
            with contextlib.suppress(Exception):
                cluster.cancel(pending)


async def _essential(result: Any, doing: str) -> Any:
    """A task the run cannot do without: its loss requeues the run."""
    try:
        return await result
    except TaskLost as exc:
        raise WorkerLost(f"the Ray task {doing} was lost: {exc}"[:MAX_ERROR_CHARS]) from exc


async def _gather_trials(
    refs: list[Any],
    candidates: list[dict[str, Any]],
    outcome: Callable[[Any], Awaitable[Any]],
    job: TrainJob,
    reporter: Reporter,
) -> list[training_pb2.Trial]:
    """Every trial, in trial order, reporting each as it ends (in whatever order they end)."""
    waiting = {asyncio.ensure_future(outcome(ref)): n for n, ref in enumerate(refs)}
    trials: list[training_pb2.Trial | None] = [None] * len(refs)
    best = trainer.BestTrial(job.spec)
    try:
        while waiting:
            done, _ = await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
            for future in sorted(done, key=waiting.__getitem__):
                number = waiting.pop(future)
                trial = _trial(number, candidates[number], future)
                trials[number] = trial
                best.offer(trial)
                reporter.completed += 1
                reporter.best_score = best.score
                ok = trial.status == training_pb2.RUN_STATUS_SUCCEEDED
                reporter.emit(f"trial {number} {'done' if ok else 'failed'}", last_trial=trial)
    finally:
        for future in waiting:
            future.cancel()
        if waiting:
            await asyncio.gather(*waiting, return_exceptions=True)
    return [t for t in trials if t is not None]


def _trial(number: int, params: dict[str, Any], future: asyncio.Future[Any]) -> training_pb2.Trial:
    """The trial a task returned; a FAILED trial for a lost worker; the task's own error fails the run."""
    try:
        trial = future.result()
    except TaskLost as exc:
        failed = training_pb2.Trial(
            number=number, status=training_pb2.RUN_STATUS_FAILED, error=f"lost its Ray worker: {exc}"[:MAX_ERROR_CHARS]
        )
        failed.params.update(trainer.json_params(params))
        return failed
    except (TrainingFailed, InvalidArgument, WorkerLost):
        raise
    except Exception as exc:  # nothing else escapes a trial (it records its own errors): a bug, or a worker's
        raise TrainingFailed(
            Stage.RUN_STAGE_SEARCHING, f"trial {number}: {type(exc).__name__}: {exc}"[:MAX_ERROR_CHARS]
        ) from exc
    if not isinstance(trial, training_pb2.Trial) or trial.number != number:
        raise TrainingFailed(Stage.RUN_STAGE_SEARCHING, f"trial {number}: the task returned something else")
    return trial
