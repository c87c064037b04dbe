"""Work bounds of training against real processes (issue 12): specs asking for unbounded work, runs
that train too long or allocate too much, cancellation (by the API, the CLI and another replica's
write to the database), and a run row no worker can read. Each test asserts what the caller sees
(status code, the run's status and reason in GetRun/WatchRun), that training's process survived
(same PID) and that a good spec or run right after it succeeds.

One `flywheel up` for the module, with a short run timeout and a memory limit measured for this
machine, so both are cheap to reach.
"""

from __future__ import annotations

import asyncio
import math
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import grpc
import psutil
import pytest

from flywheel.stack.procs import pid_alive
from flywheel.v1 import ingestion_pb2, registry_pb2, training_pb2
from tests.polling import wait_until

from .clients import Clients, ingest_requests, make_csv, schema
from .hostile import assert_same_process, log_tail, refusal, service_pid
from .stack import UpProcess

T = training_pb2
CODE = grpc.StatusCode
REPO = Path(__file__).resolve().parents[2]

DATASET = "hostile-train"
GOOD = "hostile-good"  # a spec that trains in a second or two
LONG = "hostile-long"  # a search of minutes: stopped by the timeout or cancelled
HUNGRY = "hostile-hungry"  # an MLP within the spec bounds whose weights need ~2.5 GiB to initialise
RUN_TIMEOUT_S = 15
HEARTBEAT_S = 0.5  # how often a worker renews its lease, and so reads a cancellation
MEMORY_MARGIN_MB = 1024  # over what the training process takes once imported: room for a small run


def _training_process_mb() -> int:
    """Address space a training process takes before its first run (imports, BLAS threads), on this
    machine: the memory limit is set this much plus a margin, so a small run fits and HUNGRY does not."""
    probe = (
        "import numpy as np, services.training.child; a = np.ones((256, 256)); a @ a;"
        "print(next(int(l.split()[1]) for l in open('/proc/self/status') if l.startswith('VmPeak')))"
    )
    out = subprocess.run([sys.executable, "-c", probe], cwd=REPO, capture_output=True, text=True, check=True)
    return math.ceil(int(out.stdout) / 1024)


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[UpProcess]:
    env = {
        "FLYWHEEL_TRAINING_RUN_TIMEOUT_S": str(RUN_TIMEOUT_S),
        "FLYWHEEL_TRAINING_MEMORY_MB": str(_training_process_mb() + MEMORY_MARGIN_MB),
        "FLYWHEEL_TRAINING_HEARTBEAT_S": str(HEARTBEAT_S),
    }
    up = UpProcess(tmp_path_factory.mktemp("hostile_training") / "home", env=env)
    up.start()
    yield up
    up.kill_all()


@pytest.fixture(scope="module")
def ready(stack: UpProcess, api: Clients) -> Clients:
    """The dataset and the specs every test uses."""
    api.ingestion.CreateDataset(
        ingestion_pb2.CreateDatasetRequest(dataset=ingestion_pb2.Dataset(name=DATASET, schema=schema()))
    )
    api.ingestion.IngestDataset(ingest_requests(DATASET, make_csv(400, seed=12)))
    api.training.CreateSpec(T.CreateSpecRequest(spec=_spec(GOOD, T.ESTIMATOR_LOGISTIC_REGRESSION)))
    long = _spec(LONG, T.ESTIMATOR_GRADIENT_BOOSTING_CLASSIFIER)
    long.search_space.fixed_params.update({"n_estimators": 5000, "max_depth": 8})
    long.search_space.params["learning_rate"].choices.extend([0.01 * i for i in range(1, 21)])
    api.training.CreateSpec(T.CreateSpecRequest(spec=long))
    hungry = _spec(HUNGRY, T.ESTIMATOR_MLP_CLASSIFIER)
    hungry.search_space.fixed_params.update({"hidden_layer_sizes": [16384, 6103], "max_iter": 1})
    api.training.CreateSpec(T.CreateSpecRequest(spec=hungry))
    return api


def _spec(name: str, estimator: T.Estimator.ValueType) -> T.TrainingSpec:
    return T.TrainingSpec(
        name=name, dataset=DATASET, model_name=f"{name}-model", estimator=estimator, metric="accuracy"
    )


def _start(api: Clients, spec: str) -> str:
    return str(api.training.StartRun(T.StartRunRequest(spec_name=spec, request_id=str(uuid.uuid4()))).run.run_id)


def _run(api: Clients, run_id: str) -> T.Run:
    return api.training.GetRun(T.GetRunRequest(run_id=run_id)).run


def _ended(api: Clients, stack: UpProcess, run_id: str, timeout_s: float) -> T.Run:
    def ended() -> T.Run | None:
        run = _run(api, run_id)
        return run if run.status in (T.RUN_STATUS_SUCCEEDED, T.RUN_STATUS_FAILED, T.RUN_STATUS_CANCELLED) else None

    try:
        return wait_until(ended, timeout_s, f"run {run_id} to end")  # type: ignore[no-any-return]
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n{log_tail(stack, 'training')}") from None


def _running(api: Clients, run_id: str, stage: T.RunStage.ValueType = T.RUN_STAGE_SEARCHING) -> None:
    def there() -> bool:
        run = _run(api, run_id)
        assert run.status in (T.RUN_STATUS_QUEUED, T.RUN_STATUS_RUNNING), run.error
        return run.status == T.RUN_STATUS_RUNNING and run.stage == stage

    wait_until(there, 60, f"run {run_id} to reach {T.RunStage.Name(stage)}", interval_s=0.1)


def _assert_good_run(api: Clients, stack: UpProcess) -> None:
    run = _ended(api, stack, _start(api, GOOD), 90)
    assert run.status == T.RUN_STATUS_SUCCEEDED, run.error
    assert run.registered_model.name == f"{GOOD}-model"


def _last_progress(api: Clients, run_id: str) -> T.RunProgress:
    return list(api.training.WatchRun(T.WatchRunRequest(run_id=run_id), timeout=30))[-1].progress


def _models(api: Clients) -> set[str]:
    return {m.name for m in api.registry.ListModels(registry_pb2.ListModelsRequest()).models}


def _training_children(stack: UpProcess, training_pid: int) -> list[int]:
    """The training processes the service runs its runs in (multiprocessing spawn children)."""
    return [
        p.pid
        for p in psutil.Process(training_pid).children()
        if "spawn_main" in " ".join(p.cmdline()) and pid_alive(p.pid)
    ]


def _hostile_specs() -> list[tuple[str, T.TrainingSpec, str]]:
    """(what, spec, what the refusal's details must say): each asks for unbounded work or memory."""
    out: list[tuple[str, T.TrainingSpec, str]] = []

    def spec(what: str, estimator: T.Estimator.ValueType, expect: str) -> T.TrainingSpec:
        s = _spec("hostile-bounds", estimator)
        out.append((what, s, expect))
        return s

    s = spec(
        "a billion trees",
        T.ESTIMATOR_RANDOM_FOREST_CLASSIFIER,
        "fixed_params.n_estimators: n_estimators must be at most 5,000",
    )
    s.search_space.fixed_params.update({"n_estimators": 1e9})
    s = spec(
        "depth 10^6", T.ESTIMATOR_GRADIENT_BOOSTING_CLASSIFIER, "params[max_depth]: max_depth must be at most 1,000"
    )
    s.search_space.params["max_depth"].choices.extend([3, 1e6])
    s = spec(
        "a range up to 10^12 iterations",
        T.ESTIMATOR_LOGISTIC_REGRESSION,
        "params[max_iter]: max_iter must be at most 100,000",
    )
    s.search_space.params["max_iter"].range.CopyFrom(T.ParamDistribution.Range(low=100, high=1e12))
    s = spec("C = NaN", T.ESTIMATOR_LOGISTIC_REGRESSION, "params[C]: C must be a finite number")
    s.search_space.params["C"].choices.extend([1.0, math.nan])
    s = spec("C = inf", T.ESTIMATOR_LOGISTIC_REGRESSION, "fixed_params.C: C must be a finite number")
    s.search_space.fixed_params.update({"C": math.inf})
    s = spec("a 65,536-unit layer", T.ESTIMATOR_MLP_CLASSIFIER, "at most 16,384 units per layer")
    s.search_space.fixed_params.update({"hidden_layer_sizes": [65536]})
    s = spec("10,000 layers", T.ESTIMATOR_MLP_CLASSIFIER, "at most 32 layers")
    s.search_space.params["hidden_layer_sizes"].choices.append([8] * 10_000)
    s = spec("3 x 10^8 hidden weights", T.ESTIMATOR_MLP_CLASSIFIER, "at most 100,000,000 weights between hidden layers")
    s.search_space.fixed_params.update({"hidden_layer_sizes": [16384, 16384, 2]})
    s = spec("a million choices", T.ESTIMATOR_LOGISTIC_REGRESSION, "params[C]: at most 1,000 choices")
    s.search_space.params["C"].choices.extend([1.0 + i for i in range(1_000_000)])
    s = spec("10,000 folds", T.ESTIMATOR_LOGISTIC_REGRESSION, "search_space.cv_folds: must be between 0 and 20")
    s.search_space.cv_folds = 10_000
    s = spec("10^6 trials", T.ESTIMATOR_LOGISTIC_REGRESSION, "search_space.trial_budget: must be between 0 and 1000")
    s.search_space.trial_budget = 1_000_000
    s = spec("a megabyte parameter name", T.ESTIMATOR_LOGISTIC_REGRESSION, "hyperparameter names are at most 64")
    s.search_space.params["x" * 1_000_000].choices.extend([1])
    s = spec("cooldown of 10^12 s", T.ESTIMATOR_LOGISTIC_REGRESSION, "spec.triggers.cooldown: must be between 0 and")
    s.triggers.cooldown.seconds = 10**12
    s = spec("200 tags", T.ESTIMATOR_LOGISTIC_REGRESSION, "spec.tags: at most 63 tags")
    s.tags.update({f"t{i}": "v" for i in range(200)})
    return out


def test_specs_asking_for_unbounded_work_are_refused(stack: UpProcess, ready: Clients) -> None:
    api = ready
    pid = service_pid(stack, "training")
    for what, spec, expect in _hostile_specs():
        code, details = refusal(lambda spec=spec: api.training.CreateSpec(T.CreateSpecRequest(spec=spec), timeout=30))
        assert code == CODE.INVALID_ARGUMENT, (what, code, details)
        assert expect in details, (what, details)
        assert len(details) < 1_000, (what, "the refusal echoes the input")
    refused = refusal(lambda: api.training.StartRun(T.StartRunRequest(spec_name=GOOD, request_id="r" * 100_000)))
    assert refused[0] == CODE.INVALID_ARGUMENT and "request_id" in refused[1]
    refused = refusal(lambda: api.training.StartRun(T.StartRunRequest(spec_name="s" * 1_000_000)))
    assert refused[0] == CODE.NOT_FOUND and len(refused[1]) < 200
    many = T.CompareRunsRequest(run_ids=[str(i) for i in range(100_000)])
    refused = refusal(lambda: api.training.CompareRuns(many))
    assert refused[0] == CODE.INVALID_ARGUMENT and "run_ids: at most 100 runs" in refused[1]
    assert_same_process(stack, "training", pid)

    # A spec at the bounds is accepted, and a good one still trains.
    edge = _spec("hostile-edge", T.ESTIMATOR_RANDOM_FOREST_CLASSIFIER)
    edge.search_space.fixed_params.update({"n_estimators": 5000, "max_depth": 1000})
    edge.search_space.cv_folds = 20
    assert api.training.CreateSpec(T.CreateSpecRequest(spec=edge)).spec.version == 1
    _assert_good_run(api, stack)
    assert_same_process(stack, "training", pid)


def test_a_run_past_its_timeout_is_stopped_and_failed(stack: UpProcess, ready: Clients) -> None:
    api = ready
    pid = service_pid(stack, "training")
    run_id = _start(api, LONG)
    _running(api, run_id)
    child = _training_children(stack, pid)
    run = _ended(api, stack, run_id, RUN_TIMEOUT_S + 30)
    assert run.status == T.RUN_STATUS_FAILED
    assert "timed out" in run.error and "FLYWHEEL_TRAINING_RUN_TIMEOUT_S" in run.error, run.error
    assert run.end_time.ToSeconds() - run.start_time.ToSeconds() < RUN_TIMEOUT_S + 10
    progress = _last_progress(api, run_id)
    assert progress.status == T.RUN_STATUS_FAILED and "timed out" in progress.message
    wait_until(lambda: not any(pid_alive(c) for c in child), 10, "the timed-out training process to be gone")
    assert f"{LONG}-model" not in _models(api)
    assert_same_process(stack, "training", pid)
    _assert_good_run(api, stack)
    assert_same_process(stack, "training", pid)


def test_a_run_over_its_memory_limit_fails_out_of_memory(stack: UpProcess, ready: Clients) -> None:
    api = ready
    pid = service_pid(stack, "training")
    run = _ended(api, stack, _start(api, HUNGRY), 90)
    assert run.status == T.RUN_STATUS_FAILED, run.error
    assert run.error.startswith("out of memory") and "FLYWHEEL_TRAINING_MEMORY_MB" in run.error, run.error
    assert "out of memory" in _last_progress(api, run.run_id).message
    assert f"{HUNGRY}-model" not in _models(api)
    assert_same_process(stack, "training", pid)
    _assert_good_run(api, stack)
    assert_same_process(stack, "training", pid)


def test_cancel_stops_queued_and_running_runs(stack: UpProcess, ready: Clients) -> None:
    api = ready
    pid = service_pid(stack, "training")
    running = _start(api, LONG)
    _running(api, running)
    child = _training_children(stack, pid)
    assert child, "the run trains in a child process"
    queued = _start(api, GOOD)  # behind the long run: the one worker is busy
    assert _run(api, queued).status == T.RUN_STATUS_QUEUED

    # Queued: cancelled at once, by the CLI, with who and why.
    cli = stack.cli("runs", "cancel", queued, "--reason", "not needed")
    assert cli.returncode == 0, cli.stderr
    said = " ".join(cli.stdout.split())  # rich wraps lines at the terminal's width
    assert "cancelled at stage queued by admin: not needed" in said, cli.stdout
    run = _run(api, queued)
    assert run.status == T.RUN_STATUS_CANCELLED and run.stage == T.RUN_STAGE_QUEUED and run.attempt == 0
    assert (run.cancelled_by, run.cancel_reason) == ("admin", "not needed")
    assert run.error == "cancelled by admin: not needed"

    # Running: its training process is stopped and the run ends CANCELLED, within the call.
    run = api.training.CancelRun(T.CancelRunRequest(run_id=running, reason="taking too long"), timeout=30).run
    assert run.status == T.RUN_STATUS_CANCELLED, (T.RunStatus.Name(run.status), run.error)
    assert run.cancelled_by == "admin" and run.error == "cancelled by admin: taking too long"
    assert run.stage == T.RUN_STAGE_SEARCHING and run.HasField("end_time")
    wait_until(lambda: not any(pid_alive(c) for c in child), 10, "the cancelled run's training process to be gone")
    progress = _last_progress(api, running)
    assert progress.status == T.RUN_STATUS_CANCELLED and "taking too long" in progress.message
    listed = api.training.ListRuns(T.ListRunsRequest(status=T.RUN_STATUS_CANCELLED)).runs
    assert {r.run_id for r in listed} >= {queued, running}
    shown = stack.cli("runs", "show", running)
    assert shown.returncode == 0 and "cancelled by admin: taking too long" in " ".join(shown.stdout.split())

    # Finished and unknown runs.
    code, details = refusal(lambda: api.training.CancelRun(T.CancelRunRequest(run_id=running)))
    assert code == CODE.FAILED_PRECONDITION and "already ended" in details
    again = stack.cli("runs", "cancel", queued)
    assert again.returncode == 1 and "FAILED_PRECONDITION" in again.stderr
    code, details = refusal(lambda: api.training.CancelRun(T.CancelRunRequest(run_id="no-such-run")))
    assert code == CODE.NOT_FOUND
    code, details = refusal(lambda: api.training.CancelRun(T.CancelRunRequest(run_id="x" * 100_000)))
    assert code == CODE.NOT_FOUND and len(details) < 200
    code, details = refusal(lambda: api.training.CancelRun(T.CancelRunRequest(run_id=queued, reason="r" * 2000)))
    assert code == CODE.INVALID_ARGUMENT and "reason" in details

    # Nothing registered for either; the worker goes on with the next run.
    assert f"{LONG}-model" not in _models(api)
    assert_same_process(stack, "training", pid)
    _assert_good_run(api, stack)
    assert_same_process(stack, "training", pid)


def test_a_cancellation_written_by_another_replica_stops_the_run(stack: UpProcess, ready: Clients) -> None:
    """Another training replica's CancelRun is a write to the shared database, nothing else: the worker
    holding the run must see it there."""
    api = ready
    pid = service_pid(stack, "training")
    run_id = _start(api, LONG)
    _running(api, run_id)
    child = _training_children(stack, pid)

    async def cancel_elsewhere() -> None:
        conn = await asyncpg.connect(stack.dsn)
        try:
            await conn.execute(
                "UPDATE training.runs SET cancel_requested_at = now(), cancelled_by = 'replica-2',"
                " cancel_reason = 'from the other replica' WHERE run_id = $1",
                run_id,
            )
        finally:
            await conn.close()

    asyncio.run(cancel_elsewhere())
    run = _ended(api, stack, run_id, 15)
    assert run.status == T.RUN_STATUS_CANCELLED
    assert run.error == "cancelled by replica-2: from the other replica"
    wait_until(lambda: not any(pid_alive(c) for c in child), 10, "the cancelled run's training process to be gone")
    assert f"{LONG}-model" not in _models(api)
    assert_same_process(stack, "training", pid)
    _assert_good_run(api, stack)


def test_a_run_row_no_worker_can_read_fails_alone(stack: UpProcess, ready: Clients) -> None:
    """A queued run whose stored trace context and schema are garbage (a corrupted row, or one another
    version wrote): the worker fails that run with a reason and goes on."""
    api = ready
    pid = service_pid(stack, "training")
    good = _run(api, _start(api, GOOD))  # a row to copy the dataset reference from

    async def insert() -> None:
        conn = await asyncpg.connect(stack.dsn)
        try:
            await conn.execute(
                "INSERT INTO training.runs (run_id, dedup_key, spec_name, spec_version, dataset, dataset_version,"
                " dataset_hash, data_uri, schema, trigger, status, stage, seed, trace_context)"
                " VALUES ('corrupt-run', 'corrupt-run', $1, 1, $2, $3, $4, 'sha256:0', '\\xffffffff'::bytea,"
                " $5, $6, $7, 0, '\"not a carrier\"'::jsonb)",
                GOOD,
                good.dataset.name,
                good.dataset.version,
                good.dataset.content_hash,
                T.RUN_TRIGGER_MANUAL,
                T.RUN_STATUS_QUEUED,
                T.RUN_STAGE_QUEUED,
            )
            await conn.execute("SELECT pg_notify('flywheel_runs', 'corrupt-run')")
        finally:
            await conn.close()

    asyncio.run(insert())
    run = _ended(api, stack, "corrupt-run", 60)
    assert run.status == T.RUN_STATUS_FAILED and run.error, run
    assert_same_process(stack, "training", pid)
    _assert_good_run(api, stack)
    assert_same_process(stack, "training", pid)
