"""The Ray backend's rules (services/training/dispatch.py) over an in-process fake cluster: the same
trainer steps as Ray tasks would run, with the completion order, lost workers and hanging tasks under
the test's control. Needs no Ray (tests/scale/test_training_ray.py runs a real Ray cluster)."""

from __future__ import annotations

import asyncio
import hashlib
import io
import os
import queue
import resource
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from flywheel.config import Settings
from flywheel.errors import StartupError
from flywheel.v1 import common_pb2, training_pb2
from services.training import dispatch, jobs, ray_tasks, trainer
from services.training.dispatch import TaskLost, WorkerLost

E = training_pb2
FEATURES = ["a", "b"]
C_VALUES = [0.001, 0.01, 0.1, 1.0, 10.0, 0.003, 0.03, 0.3]  # 8 trials, more than one equally good


@pytest.fixture(scope="module")
def parquet(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, bytes]:
    rng = np.random.default_rng(6)  # a draw where trials 2, 3, 4, 6 and 7 tie for the best accuracy
    n = 240
    a, b = rng.normal(size=n), rng.normal(size=n)
    y = np.where(a + b + rng.normal(scale=0.8, size=n) > 0, "yes", "no")
    table = pa.table({"a": a, "b": b, "y": y, "__split": np.where(rng.random(n) < 0.8, "train", "test")})
    sink = io.BytesIO()
    pq.write_table(table, sink)
    path = tmp_path_factory.mktemp("ray") / "data.parquet"
    path.write_bytes(sink.getvalue())
    return str(path), sink.getvalue()


def _job(path: str, *, seed: int = 11) -> trainer.TrainJob:
    spec = E.TrainingSpec(
        name="s", estimator=E.ESTIMATOR_LOGISTIC_REGRESSION, task=common_pb2.TASK_CLASSIFICATION, metric="accuracy"
    )
    spec.search_space.strategy = E.SEARCH_STRATEGY_GRID
    spec.search_space.params["C"].choices.extend(C_VALUES)
    return trainer.TrainJob("run-r", spec, path, "y", FEATURES, seed=seed)


@dataclass(eq=False)
class FakeTask:
    kind: str
    number: int
    compute: Callable[[], Any]
    value: Any = None
    done: bool = False


@dataclass
class FakeCluster:
    """Runs the ray_tasks functions in this process. Trial `n` ends after `delay(n)` seconds; numbers in
    `lost` lose their worker (TaskLost); `hang` trials never end; `lose_finish` loses the refit."""

    delay: Callable[[int], float] = lambda n: 0.0
    lost: set[int] = field(default_factory=set)
    hang: bool = False
    lose_finish: bool = False
    cancelled: list[FakeTask] = field(default_factory=list)
    submitted: list[FakeTask] = field(default_factory=list)
    started: asyncio.Event = field(default_factory=asyncio.Event)

    def put(self, value: bytes) -> bytes:
        return value

    def prepare(self, job: trainer.TrainJob, data: Any) -> tuple[FakeTask, FakeTask]:
        plan, prepared = ray_tasks.prepare(job, data, 0)
        return self._add(FakeTask("plan", -1, lambda: plan)), self._add(FakeTask("prepared", -1, lambda: prepared))

    def trial(self, number: int, params: dict[str, Any], job: trainer.TrainJob, prepared: Any) -> FakeTask:
        assert isinstance(prepared, FakeTask) and prepared.kind == "prepared"
        return self._add(FakeTask("trial", number, lambda: ray_tasks.trial(number, params, job, prepared.compute(), 0)))

    def finish(
        self, job: trainer.TrainJob, prepared: Any, best: int, params: dict[str, Any], trials: list[E.Trial]
    ) -> FakeTask:
        return self._add(
            FakeTask("finish", best, lambda: ray_tasks.finish(job, prepared.compute(), best, params, trials, 0))
        )

    async def result(self, task: Any) -> Any:
        assert isinstance(task, FakeTask)
        if task.kind == "trial":
            self.started.set()
            if self.hang:
                await asyncio.Event().wait()
            await asyncio.sleep(self.delay(task.number))
            if task.number in self.lost:
                raise TaskLost(f"worker of trial {task.number} died (after 3 retries)")
        if task.kind == "finish" and self.lose_finish:
            raise TaskLost("the node went away")
        task.value = task.compute()
        task.done = True
        return task.value

    def cancel(self, tasks: list[Any]) -> None:
        self.cancelled += tasks

    def _add(self, task: FakeTask) -> FakeTask:
        self.submitted.append(task)
        return task


def _messages(q: queue.Queue[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    while not q.empty():
        out.append(q.get_nowait())
    return out


def _accuracy(trial: E.Trial) -> float:
    return next(m.value for m in trial.metrics if m.name == "accuracy")


def _same_trials(a: list[E.Trial], b: list[E.Trial]) -> None:
    """Equal but for the time each took."""
    assert len(a) == len(b)
    for x, y in zip(a, b, strict=True):
        x2, y2 = E.Trial(), E.Trial()
        x2.CopyFrom(x)
        y2.CopyFrom(y)
        x2.ClearField("duration")
        y2.ClearField("duration")
        assert x2 == y2


async def test_the_search_as_tasks_gives_the_local_backends_result_whatever_order_trials_end(
    parquet: tuple[str, bytes],
) -> None:
    path, data = parquet
    job = _job(path)
    local = trainer.train(job)
    # the best trial ties with others on accuracy: only trial order may break the tie
    assert sum(_accuracy(t) == _accuracy(local.trials[local.best_trial]) for t in local.trials) >= 2

    for delay in (lambda n: 0.0, lambda n: 0.002 * (8 - n), lambda n: 0.002 * ((n * 5) % 8)):
        progress: queue.Queue[dict[str, Any]] = queue.Queue()
        result = await dispatch.run_search(FakeCluster(delay=delay), job, data, trainer.Reporter(progress))

        assert result.best_trial == local.best_trial
        assert result.best_params == local.best_params
        _same_trials(result.trials, local.trials)
        assert result.evaluation == local.evaluation and result.signature == local.signature
        assert result.onnx == local.onnx  # the same registered artifact, byte for byte

        messages = _messages(progress)
        per_trial = [m for m in messages if m["last_trial"] is not None]
        assert [m["trials_completed"] for m in per_trial] == list(range(1, 9))
        assert all(m["trials_total"] == 8 for m in per_trial)
        ended = [E.Trial.FromString(m["last_trial"]).number for m in per_trial]
        assert sorted(ended) == list(range(8))
        assert per_trial[-1]["best_score"] == pytest.approx(_accuracy(local.trials[local.best_trial]))
        stages = [m["stage"] for m in messages]
        assert stages == sorted(stages) and stages[-1] == E.RUN_STAGE_PARITY_CHECK


async def test_a_trial_that_lost_its_worker_is_a_failed_trial_and_the_search_goes_on(
    parquet: tuple[str, bytes],
) -> None:
    path, data = parquet
    job = _job(path)
    local = trainer.train(job)
    lost = {local.best_trial, 2}

    result = await dispatch.run_search(FakeCluster(lost=lost), job, data, trainer.Reporter(None))

    for trial in result.trials:
        if trial.number in lost:
            assert trial.status == E.RUN_STATUS_FAILED and "lost its Ray worker" in trial.error
            assert trial.params["C"] == C_VALUES[trial.number]  # the run's record says which combination
        else:
            assert trial.status == E.RUN_STATUS_SUCCEEDED
    assert result.best_trial not in lost
    survivors = [t for t in local.trials if t.number not in lost]
    assert result.best_trial == trainer.best_of(job.spec, survivors)


async def test_every_trial_lost_fails_the_run_at_searching(parquet: tuple[str, bytes]) -> None:
    path, data = parquet
    with pytest.raises(trainer.TrainingFailed) as failed:
        await dispatch.run_search(FakeCluster(lost=set(range(8))), _job(path), data, trainer.Reporter(None))
    assert failed.value.stage == E.RUN_STAGE_SEARCHING and "all 8 trials failed" in failed.value.reason


async def test_a_lost_refit_requeues_the_run(parquet: tuple[str, bytes]) -> None:
    path, data = parquet
    with pytest.raises(WorkerLost, match="refitting the best trial was lost: the node went away"):
        await dispatch.run_search(FakeCluster(lose_finish=True), _job(path), data, trainer.Reporter(None))


async def test_a_cancelled_run_cancels_every_task_that_has_not_ended(parquet: tuple[str, bytes]) -> None:
    path, data = parquet
    cluster = FakeCluster(hang=True)
    run = asyncio.create_task(dispatch.run_search(cluster, _job(path), data, trainer.Reporter(None)))
    await asyncio.wait_for(cluster.started.wait(), 10)
    run.cancel()  # what CancelRun, a lost lease or the run's timeout do to the attempt
    with pytest.raises(asyncio.CancelledError):
        await run

    trials = [t for t in cluster.submitted if t.kind == "trial"]
    assert len(trials) == 8
    assert {id(t) for t in cluster.cancelled} == {id(t) for t in trials}  # prepare had ended: left alone


async def test_a_trial_out_of_memory_fails_the_run_and_cancels_the_rest(parquet: tuple[str, bytes]) -> None:
    path, data = parquet

    class OneOutOfMemory(FakeCluster):
        async def result(self, task: Any) -> Any:
            if isinstance(task, FakeTask) and task.kind == "trial" and task.number == 0:
                raise trainer.TrainingFailed(E.RUN_STAGE_SEARCHING, ray_tasks.out_of_memory(64, MemoryError()))
            if isinstance(task, FakeTask) and task.kind == "trial":
                await asyncio.Event().wait()
            return await super().result(task)

    cluster = OneOutOfMemory()
    with pytest.raises(trainer.TrainingFailed, match=r"out of memory.*FLYWHEEL_TRAINING_RAY_TRIAL_MEMORY_MB"):
        await dispatch.run_search(cluster, _job(path), data, trainer.Reporter(None))
    assert {t.number for t in cluster.cancelled if t.kind == "trial"} == set(range(1, 8))


def test_the_exported_model_is_the_same_bytes_in_any_process(parquet: tuple[str, bytes]) -> None:
    """A Ray worker is another process with another hash seed: the ONNX it exports must still be the
    bytes the local backend's process exports, or the registry would hold a different artifact."""
    path, _ = parquet
    script = (
        "import hashlib, sys; sys.path.insert(0, 'tests/unit'); import test_training_ray as t;"
        "from services.training import trainer;"
        f"print(hashlib.sha256(trainer.train(t._job({path!r})).onnx).hexdigest())"
    )
    repo = Path(__file__).resolve().parents[2]
    # Two other hash seeds, exporting side by side (each process imports scikit-learn: seconds).
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", script],
            cwd=repo,
            env={**os.environ, "PYTHONHASHSEED": seed},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for seed in ("1", "2")
    ]
    digests = set()
    for proc in procs:
        out, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err[-2000:]
        digests.add(out.strip())
    assert digests == {hashlib.sha256(trainer.train(_job(path)).onnx).hexdigest()}


def test_a_task_over_its_memory_cap_raises_memory_error_and_the_cap_is_lifted_after() -> None:
    before = resource.getrlimit(resource.RLIMIT_AS)
    with pytest.raises(MemoryError), ray_tasks.address_space_cap(64):
        np.ones(2**30, dtype=np.uint8)  # 1 GiB past a 64 MiB allowance
    assert resource.getrlimit(resource.RLIMIT_AS) == before  # Ray reuses the worker for the next task
    np.ones(2**27, dtype=np.uint8)


def test_a_bad_backend_stops_the_service_at_start(monkeypatch: pytest.MonkeyPatch) -> None:
    assert jobs.backend(Settings(training_backend="local")) == "local"
    with pytest.raises(StartupError, match="'slurm' is not a training backend"):
        jobs.backend(Settings(training_backend="slurm"))
    with pytest.raises(StartupError, match="must not be negative"):
        jobs.backend(Settings(training_backend="ray", training_ray_trial_cpus=-1))
    monkeypatch.setitem(sys.modules, "services.training.ray_trials", None)  # as if Ray were not installed
    with pytest.raises(StartupError, match="needs Ray: install the `ray` extra"):
        jobs.backend(Settings(training_backend="ray"))


def test_the_kuberay_example_matches_the_pinned_ray_and_the_trial_requests() -> None:
    """The RayCluster example (a CRD: Kubernetes's schemas do not cover it) against what it must agree
    with: the Ray version the service is pinned to, the Flywheel image, and room for its trials."""
    repo = Path(__file__).resolve().parents[2]
    docs = list(yaml.safe_load_all((repo / "deploy/k8s/examples/raycluster.yaml").read_text()))
    (cluster,) = [d for d in docs if d["kind"] == "RayCluster"]
    pins = dict(line.split("==", 1) for line in (repo / "constraints.txt").read_text().splitlines() if "==" in line)
    assert cluster["apiVersion"] == "ray.io/v1" and cluster["spec"]["rayVersion"] == pins["ray"]

    settings = Settings()
    training = [d for d in yaml.safe_load_all((repo / "deploy/k8s/training.yaml").read_text()) if d]
    (deployment,) = [d for d in training if d["kind"] == "Deployment"]
    image = deployment["spec"]["template"]["spec"]["containers"][0]["image"]
    groups = [cluster["spec"]["headGroupSpec"], *cluster["spec"]["workerGroupSpecs"]]
    for group in groups:
        (container,) = group["template"]["spec"]["containers"]
        assert container["image"] == image  # the driver's Flywheel is the workers'
        assert group["template"]["spec"]["securityContext"]["runAsNonRoot"] is True
    for group in cluster["spec"]["workerGroupSpecs"]:
        cpus = float(group["rayStartParams"]["num-cpus"])
        (container,) = group["template"]["spec"]["containers"]
        memory_gib = int(container["resources"]["limits"]["memory"].removesuffix("Gi"))
        trials = cpus / settings.training_ray_trial_cpus
        assert memory_gib * 1024 > trials * settings.training_ray_trial_memory_mb, group["groupName"]
