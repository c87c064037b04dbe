"""The Ray training backend (FLYWHEEL_TRAINING_BACKEND=ray): services/training/dispatch.py's `Cluster`
over a Ray cluster.

The service process is a Ray driver: `connect` joins the cluster at FLYWHEEL_TRAINING_RAY_ADDRESS
(`ray://host:10001`, `host:6379`, or `auto` for the node's own cluster), or starts a local head
when the address is empty. Each task of a run asks Ray for FLYWHEEL_TRAINING_RAY_TRIAL_CPUS CPUs and
FLYWHEEL_TRAINING_RAY_TRIAL_MEMORY_MB of memory (Ray places it on a node with both free; the task
also caps its own address space at that, services/training/ray_tasks.py). Ray retries a task whose
worker or node died `TASK_RETRIES` times; after that, and for the other failures, errors map to
dispatch's rules:

- the task raised (RayTaskError): its own exception (TrainingFailed, InvalidArgument);
- its worker crashed or its node died, retries used up: TaskLost (a FAILED trial, or WorkerLost for
  the run's prepare and finish tasks);
- Ray's memory monitor killed it, retries used up: the run fails "out of memory";
- an object lost for good, the cluster unreachable, anything else of Ray's: WorkerLost (the run is
  requeued, as when the local training process dies).

Ray is an optional dependency (the `ray` extra); only this module imports it, and only the Ray
backend imports this module.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

import ray
import ray.exceptions as rex

from flywheel.config import Settings
from flywheel.logging import get_logger
from flywheel.v1 import training_pb2
from services.training import ray_tasks
from services.training.dispatch import TaskLost, WorkerLost
from services.training.trainer import MAX_ERROR_CHARS, OUT_OF_MEMORY, StageValue, TrainingFailed, TrainJob

log = get_logger(__name__)
Stage = training_pb2.RunStage
TASK_RETRIES = 3  # a task whose worker or node died runs again this many times before it counts as lost
NAMESPACE = "flywheel"

# Ray calls the functions by reference (module and name), so a worker imports this package.
_prepare = ray.remote(num_returns=2)(ray_tasks.prepare)
_trial = ray.remote(ray_tasks.trial)
_finish = ray.remote(ray_tasks.finish)

_connecting = asyncio.Lock()


@dataclass(frozen=True, eq=False)
class RayTask:
    """A submitted task's result and what the run was doing, which names the stage of a failure."""

    ref: Any  # ray.ObjectRef
    stage: StageValue
    what: str


class RayCluster:
    """dispatch.Cluster on the Ray cluster this process is connected to (see `connect`)."""

    def __init__(self, settings: Settings) -> None:
        self._memory_mb = settings.training_ray_trial_memory_mb
        self._options: dict[str, Any] = {
            "num_cpus": settings.training_ray_trial_cpus,
            "max_retries": TASK_RETRIES,
            "retry_exceptions": False,  # a task's own error is the run's, never worth repeating
        }
        if self._memory_mb > 0:
            self._options["memory"] = self._memory_mb * 2**20

    def put(self, value: bytes) -> Any:
        return ray.put(value)

    def prepare(self, job: TrainJob, data: Any) -> tuple[RayTask, RayTask]:
        refs: Any = _prepare.options(**self._options).remote(job, data, self._memory_mb)  # num_returns=2
        plan, prepared = refs
        return (
            RayTask(plan, Stage.RUN_STAGE_LOADING_DATA, "reading the data"),
            RayTask(prepared, Stage.RUN_STAGE_LOADING_DATA, "reading the data"),
        )

    def trial(self, number: int, params: dict[str, Any], job: TrainJob, prepared: Any) -> RayTask:
        ref = _trial.options(**self._options).remote(number, params, job, _ref(prepared), self._memory_mb)
        return RayTask(ref, Stage.RUN_STAGE_SEARCHING, f"trial {number}")

    def finish(
        self, job: TrainJob, prepared: Any, best: int, params: dict[str, Any], trials: list[training_pb2.Trial]
    ) -> RayTask:
        ref = _finish.options(**self._options).remote(job, _ref(prepared), best, params, trials, self._memory_mb)
        return RayTask(ref, Stage.RUN_STAGE_EVALUATING, "refitting the best trial")

    async def result(self, task: Any) -> Any:
        assert isinstance(task, RayTask)
        try:
            return await task.ref
        except rex.RayTaskError as exc:  # the task raised: its own exception is the outcome
            cause = exc.cause
            if isinstance(cause, Exception):
                raise cause from None
            raise TrainingFailed(task.stage, _reason(f"{task.what}: {exc}")) from None
        except (rex.WorkerCrashedError, rex.NodeDiedError) as exc:
            raise TaskLost(_reason(f"{task.what}: {type(exc).__name__}: {exc}")) from None
        except rex.OutOfMemoryError as exc:
            raise TrainingFailed(
                task.stage, _reason(f"{OUT_OF_MEMORY} (Ray's memory monitor stopped {task.what}): {exc}")
            ) from None
        except (rex.RayError, ConnectionError) as exc:  # lost objects, the cluster gone, a cancel from outside
            raise WorkerLost(_reason(f"{task.what}: {type(exc).__name__}: {exc}")) from None

    def cancel(self, tasks: list[Any]) -> None:
        # force: a trial inside sklearn's native code never sees a KeyboardInterrupt; its worker is killed
        # (Ray starts another). A task that already ended is left alone by Ray.
        seen: set[Any] = set()
        for task in tasks:
            ref = _ref(task)
            if ref in seen:
                continue
            seen.add(ref)
            try:
                ray.cancel(ref, force=True)
            except Exception as exc:  # best-effort: the run is over either way
                log.warning("a Ray task could not be cancelled", task=getattr(task, "what", ""), error=repr(exc))


def _ref(task: Any) -> Any:
    return task.ref if isinstance(task, RayTask) else task


def _reason(text: str) -> str:
    return text[:MAX_ERROR_CHARS]


async def connect(settings: Settings) -> RayCluster:
    """Joins the Ray cluster once per process (a local head for an empty address); WorkerLost when the
    cluster cannot be reached, so the run is requeued rather than failed."""
    async with _connecting:
        if not ray.is_initialized():
            address = settings.training_ray_address.strip() or None
            try:
                # In a thread: joining takes seconds (a local head tens). Off the main thread Ray also
                # leaves the service's own SIGTERM handling alone.
                await asyncio.to_thread(_init, address)
            except Exception as exc:
                where = address or "a new local head"
                raise WorkerLost(
                    _reason(f"cannot reach the Ray cluster ({where}): {type(exc).__name__}: {exc}")
                ) from exc
            log.info("joined the Ray cluster", address=address or "a new local head")
    return RayCluster(settings)


def _init(address: str | None) -> None:
    # A local head's workers run this interpreter, which imports flywheel and services; on a remote
    # cluster the workers are the Flywheel image's (deploy/k8s/examples/raycluster.yaml).
    extra: dict[str, Any] = {"include_dashboard": False} if address is None else {}
    ray.init(
        address=address,
        namespace=NAMESPACE,
        log_to_driver=False,  # the workers' output stays in Ray's logs, not the service's
        configure_logging=False,
        **extra,
    )


def shutdown() -> None:
    """Leaves the cluster (and stops the local head this process started)."""
    if ray.is_initialized():
        ray.shutdown()
