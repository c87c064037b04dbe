"""Training on Ray (FLYWHEEL_TRAINING_BACKEND=ray) against a real local Ray cluster.

A Ray head (`ray start --head`, its own ports and temp dir, 2 CPUs) and two `flywheel up` stacks:
one with the local backend, one whose training service is a Ray driver on that head. The same CSV,
spec (a grid of 8 gradient-boosting trials) and seed go through each stack's whole path, StartRun ->
trials -> refit -> ONNX -> registration; the Ray stack must register the same best trial, params,
metrics and artifact (the registry's sha256) as the local one. Then a Ray worker is SIGKILLed while
it runs a trial: Ray retries the task, and the run still registers that same model. Last, CancelRun on
a run whose trials take minutes stops their Ray workers within seconds, and the next run succeeds.
"""

from __future__ import annotations

import functools
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import psutil
import pytest

from flywheel.stack.procs import free_port
from flywheel.v1 import common_pb2, ingestion_pb2, registry_pb2, training_pb2
from tests.e2e.clients import Clients, ingest_requests, make_csv, schema
from tests.e2e.hostile import log_tail
from tests.e2e.stack import UpProcess
from tests.polling import wait_until

pytest.importorskip("ray", reason="the Ray backend needs the `ray` extra (make test-scale installs it)")

T = training_pb2
DATASET = "ray-data"
SPEC = "ray-search"
MODEL = "ray-model"
SEED = 20261201
LEARNING_RATES = [0.02, 0.05, 0.08, 0.1, 0.15, 0.2, 0.3, 0.5]  # a grid of 8 trials
RAY_CPUS = 2


@dataclass(frozen=True)
class Trained:
    run: T.Run
    model: registry_pb2.ModelVersion
    seconds: float  # StartRun to the run's end, as a caller sees it


@dataclass(frozen=True)
class RayHead:
    address: str
    proc: subprocess.Popen[bytes]
    temp_dir: Path

    def trial_workers(self) -> list[psutil.Process]:
        """Ray worker processes of this head running a trial task now (Ray titles them ray::trial)."""
        found = []
        for p in psutil.Process(self.proc.pid).children(recursive=True):
            try:
                if " ".join(p.cmdline()).startswith("ray::trial"):
                    found.append(p)
            except psutil.Error:
                continue
        return found


@functools.cache
def _ray_env() -> dict[str, str]:
    """Token authentication with a token of this test's own, for the head and its driver (the training
    service): nothing from ~/.ray on this machine is used or left behind."""
    return {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(16)}


@pytest.fixture(scope="module")
def ray_head() -> Iterator[RayHead]:
    # Ray's unix sockets live under the temp dir: a short path keeps them under the OS's length limit.
    temp_dir = Path(tempfile.mkdtemp(prefix="fwray-", dir="/tmp"))
    port = free_port()
    ray_bin = Path(sys.executable).parent / "ray"
    env = {**os.environ, **_ray_env(), "RAY_USAGE_STATS_ENABLED": "0"}
    # A loaded machine can take longer than Ray's default 30 s to start the head's agents.
    env["RAY_agent_register_timeout_ms"] = "180000"
    log = (temp_dir / "head.out").open("wb")
    proc = subprocess.Popen(
        [
            str(ray_bin), "start", "--head", "--block", f"--port={port}", f"--num-cpus={RAY_CPUS}",
            f"--temp-dir={temp_dir}", "--include-dashboard=false", "--disable-usage-stats",
            f"--ray-client-server-port={free_port()}", f"--node-manager-port={free_port()}",
            f"--object-manager-port={free_port()}", f"--dashboard-agent-listen-port={free_port()}",
            f"--metrics-export-port={free_port()}",
        ],
        env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip
    head = RayHead(f"127.0.0.1:{port}", proc, temp_dir)
    try:
        out = temp_dir / "head.out"
        wait_until(
            lambda: proc.poll() is not None or "Ray runtime started" in out.read_text(errors="replace"),
            180,
            "the Ray head to start",
            interval_s=0.5,
        )
        assert proc.poll() is None, out.read_text(errors="replace")
        yield head
    finally:
        _stop_ray(proc)
        log.close()
        shutil.rmtree(temp_dir, ignore_errors=True)


def _running(process: psutil.Process) -> bool:
    try:
        return process.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:  # gone
        return False


def _stop_ray(proc: subprocess.Popen[bytes]) -> None:
    """Stops the head and every process it started (each by its pid)."""
    try:
        started = psutil.Process(proc.pid).children(recursive=True)
    except psutil.Error:
        started = []
    proc.send_signal(signal.SIGTERM)  # `ray start --block` stops its processes on SIGTERM
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()
    for p in started:
        try:
            p.kill()
        except psutil.Error:
            pass


def _spec() -> T.TrainingSpec:
    spec = T.TrainingSpec(
        name=SPEC,
        dataset=DATASET,
        model_name=MODEL,
        estimator=T.ESTIMATOR_GRADIENT_BOOSTING_CLASSIFIER,
        metric="accuracy",
    )
    spec.search_space.strategy = T.SEARCH_STRATEGY_GRID
    spec.search_space.cv_folds = 2
    spec.search_space.fixed_params.update({"n_estimators": 60, "max_depth": 3})
    spec.search_space.params["learning_rate"].choices.extend(LEARNING_RATES)
    return spec


def _prepare(api: Clients) -> None:
    api.ingestion.CreateDataset(
        ingestion_pb2.CreateDatasetRequest(dataset=ingestion_pb2.Dataset(name=DATASET, schema=schema()))
    )
    api.ingestion.IngestDataset(ingest_requests(DATASET, make_csv(2000, seed=14)))
    api.training.CreateSpec(T.CreateSpecRequest(spec=_spec()))


def _train(api: Clients, stack: UpProcess, *, during: Callable[[str], None] | None = None) -> Trained:
    """One run of the spec with SEED, to its end; `during(run_id)` is called while it runs."""
    started = time.monotonic()
    run_id = api.training.StartRun(
        T.StartRunRequest(spec_name=SPEC, request_id=str(uuid.uuid4()), seed=SEED)
    ).run.run_id
    if during is not None:
        during(run_id)

    def ended() -> T.Run | None:
        run = api.training.GetRun(T.GetRunRequest(run_id=run_id)).run
        return run if run.status in (T.RUN_STATUS_SUCCEEDED, T.RUN_STATUS_FAILED, T.RUN_STATUS_CANCELLED) else None

    try:
        run: T.Run = wait_until(ended, 240, f"run {run_id} to end", interval_s=0.2)
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n{log_tail(stack, 'training')}") from None
    seconds = time.monotonic() - started
    assert run.status == T.RUN_STATUS_SUCCEEDED, f"{run.error}\n{log_tail(stack, 'training')}"
    model = api.registry.GetModelVersion(
        registry_pb2.GetModelVersionRequest(name=run.registered_model.name, version=run.registered_model.version)
    ).version
    return Trained(run, model, seconds)


def _stack(home: Path, **env: str) -> UpProcess:
    return UpProcess(home, env={"FLYWHEEL_TRAINING_HEARTBEAT_S": "0.5", **env})


@pytest.fixture(scope="module")
def local(tmp_path_factory: pytest.TempPathFactory) -> Trained:
    """The reference: the same search on a stack with the default, local backend."""
    stack = _stack(tmp_path_factory.mktemp("ray-local") / "home")
    stack.start()
    try:
        api = Clients(stack)
        try:
            _prepare(api)
            return _train(api, stack)
        finally:
            api.close()
    finally:
        stack.kill_all()


@pytest.fixture(scope="module")
def ray_stack(ray_head: RayHead, tmp_path_factory: pytest.TempPathFactory) -> Iterator[UpProcess]:
    stack = _stack(
        tmp_path_factory.mktemp("ray-backend") / "home",
        **_ray_env(),
        FLYWHEEL_TRAINING_BACKEND="ray",
        FLYWHEEL_TRAINING_RAY_ADDRESS=ray_head.address,
        FLYWHEEL_TRAINING_RAY_TRIAL_CPUS="1",
        FLYWHEEL_TRAINING_RAY_TRIAL_MEMORY_MB="2048",
    )
    stack.start()
    yield stack
    stack.kill_all()


@pytest.fixture(scope="module")
def ray_api(ray_stack: UpProcess) -> Iterator[Clients]:
    api = Clients(ray_stack)
    _prepare(api)
    yield api
    api.close()


def _comparable(model: registry_pb2.ModelVersion) -> tuple[object, ...]:
    """What the registry holds of a trained model, less what differs by run (its id, version, times)."""
    metrics = sorted((m.name, m.class_label, m.split, m.value) for m in model.metrics)
    return model.checksum, model.size_bytes, metrics, dict(model.params.items()), model.signature.SerializeToString()


def _assert_same_model(got: Trained, want: Trained) -> None:
    assert got.run.best_trial == want.run.best_trial
    assert dict(got.run.best_params.items()) == dict(want.run.best_params.items())
    assert [(t.number, t.status, dict(t.params.items())) for t in got.run.trials] == [
        (t.number, t.status, dict(t.params.items())) for t in want.run.trials
    ]
    for a, b in zip(got.run.trials, want.run.trials, strict=True):
        assert list(a.metrics) == list(b.metrics), f"trial {a.number}"
    assert got.run.evaluation == want.run.evaluation
    assert _comparable(got.model) == _comparable(want.model)  # the same ONNX bytes (sha256), metrics, params


@pytest.mark.timeout(600)
def test_a_search_on_ray_registers_the_same_best_model_as_the_local_backend(
    local: Trained, ray_stack: UpProcess, ray_api: Clients
) -> None:
    assert len(local.run.trials) == len(LEARNING_RATES) >= 8
    assert all(t.status == T.RUN_STATUS_SUCCEEDED for t in local.run.trials)

    on_ray = _train(ray_api, ray_stack)

    _assert_same_model(on_ray, local)
    assert on_ray.model.lineage.seed == local.model.lineage.seed == SEED
    progress = list(ray_api.training.WatchRun(T.WatchRunRequest(run_id=on_ray.run.run_id), timeout=30))[-1]
    assert (progress.progress.trials_completed, progress.progress.trials_total) == (8, 8)
    assert "joined the Ray cluster" in (ray_stack.home / "log" / "training.log").read_text(errors="replace")
    print(f"\nsearch of 8 trials, StartRun to the run's end: local {local.seconds:.1f} s, Ray {on_ray.seconds:.1f} s")


@pytest.mark.timeout(600)
def test_a_ray_worker_killed_mid_trial_is_retried_and_the_run_registers_the_same_model(
    local: Trained, ray_head: RayHead, ray_stack: UpProcess, ray_api: Clients
) -> None:
    killed: list[int] = []

    def kill_a_trial_worker(run_id: str) -> None:
        workers = wait_until(ray_head.trial_workers, 120, "a Ray worker running a trial", interval_s=0.05)
        victim = workers[0]
        victim.send_signal(signal.SIGKILL)
        killed.append(victim.pid)

    after = _train(ray_api, ray_stack, during=kill_a_trial_worker)

    assert killed, "no trial worker was killed"
    assert all(t.status == T.RUN_STATUS_SUCCEEDED for t in after.run.trials)  # the lost trial ran again
    assert after.run.registered_model.version != 0
    _assert_same_model(after, local)
    assert after.model.lineage.run_id == after.run.run_id  # a run of its own, registered once
    versions = ray_api.registry.ListModelVersions(registry_pb2.ListModelVersionsRequest(name=MODEL)).versions
    assert sorted(v.lineage.run_id for v in versions).count(after.run.run_id) == 1
    assert common_pb2.SPLIT_TEST in {m.split for m in after.model.metrics}


@pytest.mark.timeout(600)
def test_cancelling_a_run_on_ray_stops_its_trials_on_the_cluster(
    ray_head: RayHead, ray_stack: UpProcess, ray_api: Clients
) -> None:
    long = _spec()
    long.name, long.model_name = f"{SPEC}-long", f"{MODEL}-long"
    long.search_space.fixed_params.update({"n_estimators": 5000, "max_depth": 8})  # minutes per trial
    ray_api.training.CreateSpec(T.CreateSpecRequest(spec=long))
    run_id = ray_api.training.StartRun(T.StartRunRequest(spec_name=long.name, request_id=str(uuid.uuid4()))).run.run_id
    busy = wait_until(ray_head.trial_workers, 180, "the run's trials running on Ray", interval_s=0.1)

    run = ray_api.training.CancelRun(T.CancelRunRequest(run_id=run_id, reason="not on Ray"), timeout=30).run

    assert run.status == T.RUN_STATUS_CANCELLED, (T.RunStatus.Name(run.status), run.error)
    # The trials' workers are stopped (force-cancelled), not left to run their minutes out.
    wait_until(
        lambda: not any(_running(p) for p in busy),
        30,
        "the cancelled trials' Ray workers to stop",
    )
    wait_until(lambda: not ray_head.trial_workers(), 30, "no trial running on the cluster")
    assert not run.HasField("registered_model")
    # The cluster is still good for the next run.
    again = _train(ray_api, ray_stack)
    assert again.run.status == T.RUN_STATUS_SUCCEEDED
