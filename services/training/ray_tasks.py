"""What runs inside Ray workers for the Ray training backend (services/training/ray_trials.py).

Plain functions of the same trainer steps the local backend runs in its process, so a search gives
the same trials, the same best trial and the same model on either backend with the same seed:
- `prepare` reads the data once per run (the Parquet bytes the service put in the object store)
  and returns a small Plan for the service and the decoded arrays and folds, which stay in the
  object store for every trial task to read (zero-copy on the node that holds them);
- `trial` scores one parameter combination;
- `finish` refits the best one on the train split, exports ONNX and checks it.

Nothing here imports ray: the service wraps these with ray.remote, and Ray pickles them by
reference, so a worker needs this package installed (the Flywheel image) at the service's version.

Memory: Ray's `memory` request only places a task; it does not bound it. Each function therefore
caps its worker's address space at what the worker already uses plus `memory_mb` while it runs,
and lifts the cap again afterwards (Ray reuses workers). A task over it fails with MemoryError,
which fails the run "out of memory", as the local backend's RLIMIT_AS does.
"""

from __future__ import annotations

import contextlib
import os
import resource
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from flywheel.v1 import training_pb2
from services.training import trainer
from services.training.trainer import OUT_OF_MEMORY, Dataset, TrainingFailed, TrainJob, TrainResult

Stage = training_pb2.RunStage
MEMORY_SETTING = "FLYWHEEL_TRAINING_RAY_TRIAL_MEMORY_MB"


@dataclass(frozen=True)
class Plan:
    """What the service needs to dispatch the search: the trials' parameters and a progress line."""

    candidates: list[dict[str, Any]]
    message: str


@dataclass(frozen=True)
class Prepared:
    """What every trial of a run reads: the decoded data and the folds it is scored on."""

    data: Dataset
    folds: list[tuple[np.ndarray, np.ndarray]]


def prepare(job: TrainJob, parquet: bytes, memory_mb: int) -> tuple[Plan, Prepared]:
    with _guarded(memory_mb):
        data, candidates = trainer.load(job, trainer.Reporter(None), parquet)
        folds = trainer.search_folds(job, data)
    return Plan(candidates, trainer.searching_message(data, candidates)), Prepared(data, folds)


def trial(number: int, params: dict[str, Any], job: TrainJob, prepared: Prepared, memory_mb: int) -> training_pb2.Trial:
    with _guarded(memory_mb, Stage.RUN_STAGE_SEARCHING):
        return trainer.run_trial(number, params, job, prepared.data, prepared.folds)


def finish(
    job: TrainJob,
    prepared: Prepared,
    best: int,
    params: dict[str, Any],
    trials: list[training_pb2.Trial],
    memory_mb: int,
) -> TrainResult:
    with _guarded(memory_mb):
        return trainer.finish(job, prepared.data, best, params, trials, trainer.Reporter(None))


@contextlib.contextmanager
def _guarded(memory_mb: int, stage: trainer.StageValue = Stage.RUN_STAGE_UNSPECIFIED) -> Iterator[None]:
    """Runs the block under the address-space cap; running out of memory there fails the run with a
    reason naming the Ray setting (the trainer's own reason names the local backend's)."""
    with address_space_cap(memory_mb):
        try:
            yield
        except MemoryError as exc:  # a trial's MemoryError is not one parameter combination's failure
            raise TrainingFailed(stage, out_of_memory(memory_mb, exc)) from None
        except TrainingFailed as exc:
            if not isinstance(exc.__cause__, MemoryError):
                raise
            raise TrainingFailed(exc.stage, out_of_memory(memory_mb, exc.__cause__), exc.trials, exc.parity) from None


def out_of_memory(memory_mb: int, exc: MemoryError) -> str:
    reason = f"{OUT_OF_MEMORY} (a Ray task may use {memory_mb:,} MiB: {MEMORY_SETTING}): {type(exc).__name__}: {exc}"
    return reason[: trainer.MAX_ERROR_CHARS]


@contextlib.contextmanager
def address_space_cap(memory_mb: int) -> Iterator[None]:
    """Lowers RLIMIT_AS (soft) to this process's current address space plus `memory_mb` MiB for the
    block, never above a limit already in force, and restores it after. No cap for 0 or where the
    current size cannot be read."""
    used = _address_space_bytes()
    if memory_mb <= 0 or used is None:
        yield
        return
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    limit = used + memory_mb * 2**20
    for bound in (soft, hard):
        if bound != resource.RLIM_INFINITY:
            limit = min(limit, bound)
    resource.setrlimit(resource.RLIMIT_AS, (limit, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))


def _address_space_bytes() -> int | None:
    try:
        with open("/proc/self/statm") as f:
            pages = int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return None
    return pages * os.sysconf("SC_PAGE_SIZE")
