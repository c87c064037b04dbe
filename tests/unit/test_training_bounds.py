"""Training's work bounds (issue 12): the upper bound of every hyperparameter and of the search, the
spec's free-form fields, NaN and infinities, how much a run may use (memory), how a cancellation
reaches a run's worker, and the background loops that go on past an item they cannot handle."""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import re
import subprocess
import sys
import time
import types
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from flywheel.cli import runs
from flywheel.config import Settings
from flywheel.errors import FailedPrecondition, InvalidArgument, NotFound, Unavailable
from flywheel.v1 import training_pb2
from services.training import (
    cancel,
    estimators,
    handlers,
    jobs,
    lease,
    metrics,
    reconcile,
    search,
    service,
    spec_validation,
    trainer,
)
from tests.unit.cli_helpers import parse, render

E = training_pb2
REPO = Path(__file__).resolve().parents[2]


def _spec(estimator: E.Estimator.ValueType = E.ESTIMATOR_LOGISTIC_REGRESSION, **kw: Any) -> E.TrainingSpec:
    return E.TrainingSpec(name="s", estimator=estimator, **kw)


def _refusal(spec: E.TrainingSpec) -> InvalidArgument:
    with pytest.raises(InvalidArgument) as err:
        spec_validation.validate_spec(spec, field_prefix="spec.")
    return err.value


# --- hyperparameters -----------------------------------------------------------------------------------


def _numeric_params() -> list[tuple[E.Estimator.ValueType, str]]:
    return [
        (est, name)
        for est, entry in estimators.ESTIMATORS.items()
        for name, kind in entry.params.items()
        if kind in estimators.NUMERIC_KINDS
    ]


def test_every_numeric_hyperparameter_of_every_estimator_has_an_upper_bound():
    missing = sorted({name for _, name in _numeric_params() if name not in estimators.UPPER_BOUNDS})
    assert not missing, f"no upper bound for {missing}"
    assert all(math.isfinite(b) and b > 0 for b in estimators.UPPER_BOUNDS.values())


@pytest.mark.parametrize(("estimator", "name"), _numeric_params())
def test_a_value_over_the_bound_is_refused_naming_the_field_and_the_bound(estimator, name):
    bound = estimators.UPPER_BOUNDS[name]
    estimators.coerce_param(estimator, name, float(bound), "f")  # the bound itself is allowed
    with pytest.raises(InvalidArgument) as err:
        estimators.coerce_param(estimator, name, float(bound) * 2 + 1, "search_space.params[x]")
    assert err.value.field == "search_space.params[x]"
    assert f"{name} must be at most {bound:,}" in str(err.value)


@pytest.mark.parametrize(("estimator", "name"), _numeric_params())
@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
def test_nan_and_infinities_are_refused_for_every_numeric_hyperparameter(estimator, name, value):
    with pytest.raises(InvalidArgument, match=f"{name} must be a finite number"):
        estimators.coerce_param(estimator, name, value, "f")


@pytest.mark.parametrize(
    ("build", "field", "says"),
    [
        (lambda s: s.fixed_params.update({"n_estimators": 1e9}), "fixed_params.n_estimators", "at most 5,000"),
        (lambda s: s.params["n_estimators"].choices.extend([10, 5001]), "params[n_estimators]", "at most 5,000"),
        (
            lambda s: s.params["n_estimators"].range.CopyFrom(E.ParamDistribution.Range(low=10, high=1e7)),
            "params[n_estimators]",
            "at most 5,000",
        ),
        (
            lambda s: s.params["max_depth"].range.CopyFrom(E.ParamDistribution.Range(low=1, high=1e4, log=True)),
            "params[max_depth]",
            "at most 1,000",
        ),
        (
            lambda s: s.params["ccp_alpha"].range.CopyFrom(E.ParamDistribution.Range(low=0, high=1e12)),
            "params[ccp_alpha]",
            "at most 1,000,000,000",
        ),
        (
            lambda s: s.params["min_impurity_decrease"].choices.extend([math.nan]),
            "params[min_impurity_decrease]",
            "finite",
        ),
        (lambda s: s.params["max_features"].choices.extend([10**6]), "params[max_features]", "at most 100,000"),
    ],
)
def test_bounds_hold_in_fixed_params_choices_and_ranges(build, field, says):
    spec = _spec(E.ESTIMATOR_RANDOM_FOREST_REGRESSOR)
    build(spec.search_space)
    err = _refusal(spec)
    assert err.field == f"spec.search_space.{field}" and says in str(err)


@pytest.mark.parametrize(
    ("layers", "says"),
    [
        ([8] * 33, "at most 32 layers"),
        ([16385], "at most 16,384 units per layer"),
        ([16384, 16384], "at most 100,000,000 weights between hidden layers"),
        ([1e300], "at most 16,384 units per layer"),
        ([math.inf], "positive whole number"),
        ([0], "positive whole number"),
    ],
)
def test_hidden_layer_sizes_are_bounded_in_depth_width_and_weights(layers, says):
    with pytest.raises(InvalidArgument, match=says):
        estimators.coerce_param(E.ESTIMATOR_MLP_CLASSIFIER, "hidden_layer_sizes", layers, "f")


def test_hidden_layer_sizes_at_the_bounds_are_allowed():
    at_bounds = [16384, 6103] + [1] * 30  # 32 layers, the widest, 99,991,582 weights
    assert len(estimators.coerce_param(E.ESTIMATOR_MLP_REGRESSOR, "hidden_layer_sizes", at_bounds, "f")) == 32


def test_long_strings_and_parameter_names_are_refused_without_being_echoed():
    with pytest.raises(InvalidArgument) as err:
        estimators.coerce_param(E.ESTIMATOR_LOGISTIC_REGRESSION, "solver", "s" * 10_000, "f")
    assert "at most 64 characters" in str(err.value) and "sss" not in str(err.value)
    spec = _spec()
    spec.search_space.params["z" * 100_000].choices.extend([1])
    err = _refusal(spec)
    assert err.field == "spec.search_space.params" and len(str(err)) < 200
    spec = _spec()
    spec.search_space.fixed_params.update({f"p{i}": 1 for i in range(50)})
    assert "has only 8 hyperparameters" in str(_refusal(spec))


def test_sklearn_constraints_are_still_checked_value_by_value():
    """check_params checks only the given parameters against sklearn's constraint table (fast), and
    still refuses what sklearn would."""
    for estimator, params in [
        (E.ESTIMATOR_LOGISTIC_REGRESSION, {"C": -1.0}),
        (E.ESTIMATOR_LOGISTIC_REGRESSION, {"solver": "bogus"}),
        (E.ESTIMATOR_RANDOM_FOREST_CLASSIFIER, {"n_estimators": 0}),
        (E.ESTIMATOR_GRADIENT_BOOSTING_REGRESSOR, {"alpha": 1.5}),  # the quantile: (0, 1)
        (E.ESTIMATOR_LINEAR_REGRESSION, {"alpha": -1.0}),  # Ridge's
        (E.ESTIMATOR_MLP_CLASSIFIER, {"momentum": 2.0}),
    ]:
        with pytest.raises(InvalidArgument) as err:
            estimators.check_params(estimator, params, "f")
        assert err.value.field == "f"
    estimators.check_params(E.ESTIMATOR_LINEAR_REGRESSION, {"alpha": None, "fit_intercept": False}, "f")
    estimators.check_params(E.ESTIMATOR_MLP_CLASSIFIER, {"hidden_layer_sizes": (8, 4), "alpha": 1e-3}, "f")


# --- the search and the spec -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("build", "field", "says"),
    [
        (lambda s: setattr(s.search_space, "cv_folds", 21), "search_space.cv_folds", "between 0 and 20"),
        (lambda s: setattr(s.search_space, "trial_budget", 1001), "search_space.trial_budget", "between 0 and 1000"),
        (
            lambda s: s.search_space.params["C"].choices.extend([float(i + 1) for i in range(1001)]),
            "search_space.params[C]",
            "at most 1,000 choices",
        ),
        (lambda s: s.feature_fields.extend([f"f{i}" for i in range(1001)]), "feature_fields", "at most 1,000"),
        (lambda s: s.feature_fields.append("f" * 257), "feature_fields", "at most 256 characters"),
        (lambda s: setattr(s, "dataset", "d" * 257), "dataset", "at most 256 characters"),
        (lambda s: setattr(s, "description", "d" * 4097), "description", "at most 4,096 characters"),
        (lambda s: s.tags.update({f"k{i}": "v" for i in range(64)}), "tags", "at most 63 tags"),
        (lambda s: s.tags.update({"k": "v" * 1025}), "tags", "at most 1,024 characters"),
        (lambda s: s.tags.update({"k" * 129: "v"}), "tags", "1-128 characters"),
        (lambda s: setattr(s, "metric", "m" * 100_000), "metric", "at most 64 characters"),
        (
            lambda s: setattr(s.promotion_policy, "min_improvement", math.nan),
            "promotion_policy.min_improvement",
            "[0, 1e+06]",
        ),
        (lambda s: setattr(s.promotion_policy, "metric", "m" * 129), "promotion_policy.metric", "at most 128"),
        (lambda s: setattr(s.triggers.cooldown, "seconds", 10**12), "triggers.cooldown", "31,536,000 seconds"),
        (lambda s: setattr(s.triggers.cooldown, "seconds", -1), "triggers.cooldown", "between 0 and"),
        (lambda s: setattr(s, "task", 99), "task", "estimator, not 99"),  # an enum value no name has
    ],
)
def test_the_search_and_the_specs_free_form_fields_are_bounded(build, field, says):
    spec = _spec()
    build(spec)
    err = _refusal(spec)
    assert err.field == f"spec.{field}" and says in str(err), str(err)
    assert len(str(err)) < 300, "the refusal does not echo the input"


def test_a_spec_at_every_bound_is_accepted():
    spec = _spec(E.ESTIMATOR_GRADIENT_BOOSTING_CLASSIFIER, description="d" * 4096, dataset="d" * 256)
    spec.tags.update({f"k{i}": "v" * 1024 for i in range(63)})
    spec.search_space.cv_folds = 20
    spec.search_space.trial_budget = 1000
    spec.search_space.fixed_params.update({"n_estimators": 5000, "max_depth": 1000})
    spec.search_space.params["learning_rate"].choices.extend([0.001 * (i + 1) for i in range(1000)])
    spec.triggers.cooldown.seconds = 365 * 24 * 3600
    spec_validation.validate_spec(spec, field_prefix="spec.")


def _largest_space() -> E.TrainingSpec:
    """Every MLP hyperparameter with as many distinct choices as a space may hold (20,000 values)."""
    spec = _spec(E.ESTIMATOR_MLP_CLASSIFIER)
    space = spec.search_space
    space.trial_budget = 1000
    n = spec_validation.MAX_CHOICES
    for name, kind in estimators.ESTIMATORS[E.ESTIMATOR_MLP_CLASSIFIER].params.items():
        choices = space.params[name].choices
        if kind == estimators.LAYERS:
            choices.extend([[i % 100 + 1, i // 100 + 1] for i in range(n)])
        elif kind == estimators.INT:
            choices.extend([i + 1 for i in range(n)])
        elif kind == estimators.FLOAT:
            choices.extend([(i + 1) / (n + 1) for i in range(n)])  # in (0, 1): valid for every float here
        elif kind == estimators.BOOL:
            choices.extend([bool(i % 2) for i in range(n)])
        else:
            options = {"activation": "relu", "solver": "adam", "learning_rate": "constant"}
            choices.extend([options[name]] * n)
    return spec


def test_the_largest_space_a_spec_may_hold_is_validated_and_expanded_quickly():
    spec = _largest_space()
    started = time.perf_counter()
    spec_validation.validate_spec(spec)
    assert len(search.trials(spec.search_space, spec.estimator)) == 1000
    # ~0.3 s here; validating each value by building an estimator took ~6 s (CreateSpec runs it in a thread)
    assert time.perf_counter() - started < 2.0


def test_create_spec_names_are_checked_without_being_echoed():
    long_name = E.TrainingSpec(name="a" * 1_000_000, model_name="m", estimator=E.ESTIMATOR_LOGISTIC_REGRESSION)
    trailing_newline = E.TrainingSpec(name="ok", model_name="ok\n", estimator=E.ESTIMATOR_LOGISTIC_REGRESSION)
    for field, spec in [("spec.name", long_name), ("spec.model_name", trailing_newline)]:
        with pytest.raises(InvalidArgument) as err:
            service._checked_spec(spec)
        assert err.value.field == field and len(str(err.value)) < 200


# --- a run's memory -------------------------------------------------------------------------------------


def test_the_training_process_memory_limit_turns_an_allocation_into_a_named_failure():
    probe = (
        "import numpy as np\n"
        "from services.training import child, trainer\n"
        "child.limit_memory(2048)\n"
        "try:\n"
        "    np.ones(2**32)\n"  # 32 GiB
        "except MemoryError as exc:\n"
        "    print(trainer.out_of_memory(exc))\n"
    )
    out = subprocess.run([sys.executable, "-c", probe], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("out of memory (its training process may use 2,048 MiB: FLYWHEEL_TRAINING_MEMORY_MB)")


@pytest.fixture(scope="module")
def data_path(tmp_path_factory: pytest.TempPathFactory) -> str:
    rng = np.random.default_rng(0)
    n = 200
    df = pd.DataFrame({"a": rng.normal(size=n), "b": rng.normal(size=n)})
    df["y"] = np.where(df["a"] + df["b"] > 0, "yes", "no")
    df["__split"] = np.where(rng.random(n) < 0.8, "train", "test")
    path = tmp_path_factory.mktemp("bounds") / "data.parquet"
    df.to_parquet(path)
    return str(path)


def test_running_out_of_memory_fails_the_run_not_just_a_trial(data_path: str, monkeypatch: pytest.MonkeyPatch):
    def fit(*args: Any) -> None:
        raise MemoryError("Unable to allocate 763. MiB")

    monkeypatch.setattr(trainer, "_fit", fit)
    spec = _spec()
    spec.search_space.params["C"].choices.extend([0.1, 1.0, 10.0])
    with pytest.raises(trainer.TrainingFailed) as err:
        trainer.train(trainer.TrainJob("r", spec, data_path, "y", ["a", "b"], seed=1))
    assert err.value.stage == E.RUN_STAGE_SEARCHING
    assert err.value.reason.startswith("out of memory") and "Unable to allocate" in err.value.reason


# --- cancellation: the lease --------------------------------------------------------------------------


class _Conn:
    """Answers fetchval: what the UPDATE returns (True = renewed/moved, False = cancel asked, None = not ours)."""

    def __init__(self, answers: list[object]) -> None:
        self.answers = answers

    async def fetchval(self, sql: str, *args: object) -> object:
        return self.answers.pop(0) if self.answers else True


class _Pool:
    def __init__(self, conn: object) -> None:
        self.conn = conn

    @contextlib.asynccontextmanager
    async def acquire(self) -> AsyncIterator[object]:
        yield self.conn

    async def release(self, conn: object) -> None:
        pass


def _lease(answers: list[object]) -> lease.Lease:
    settings = Settings(training_lease_s=5.0, training_heartbeat_s=0.01, retry_base_s=0.01, retry_max_s=0.02)
    return lease.Lease(_Pool(_Conn(answers)), settings, "run-1", 1, time.monotonic())  # type: ignore[arg-type]


async def _beat() -> None:
    pass


async def test_a_renewal_that_reads_a_cancellation_stops_the_work():
    held = _lease([True, False])
    stopped = asyncio.Event()

    async def train() -> None:
        try:
            await asyncio.sleep(30)
        finally:
            stopped.set()

    async with held.kept(_beat):
        with pytest.raises(lease.RunCancelled):
            await held.hold(train())
    assert stopped.is_set() and held.cancel_requested and not held.lost


async def test_advancing_to_registering_is_where_a_cancellation_last_takes_effect():
    with pytest.raises(lease.RunCancelled):
        await _lease([False]).advance(E.RUN_STAGE_REGISTERING)
    with pytest.raises(lease.LeaseLost):
        await _lease([None]).advance(E.RUN_STAGE_REGISTERING)
    past = _lease([True, False, False])  # moved; then renewals that read a (too late) cancellation
    await past.advance(E.RUN_STAGE_REGISTERING)
    async with past.kept(_beat):
        assert await past.hold(asyncio.sleep(0.1, result="registered")) == "registered"
    assert not past.cancel_requested


# --- cancellation: the request ---------------------------------------------------------------------------


class _RunRow:
    """A fake connection holding one run row (or none) for cancel.request_cancel."""

    def __init__(self, row: dict[str, object] | None) -> None:
        self.row = row
        self.executed: list[str] = []

    async def fetchrow(self, sql: str, *args: object) -> dict[str, object] | None:
        assert "FOR UPDATE" in sql
        return self.row

    async def execute(self, sql: str, *args: object) -> None:
        self.executed.append(sql)


def _row(status: int, stage: int = E.RUN_STAGE_SEARCHING, requested: object = None) -> dict[str, object]:
    return {"status": status, "stage": stage, "cancel_requested_at": requested}


async def test_cancel_ends_a_queued_run_at_once_and_flags_a_running_one():
    queued = _RunRow(_row(E.RUN_STATUS_QUEUED, E.RUN_STAGE_QUEUED))
    assert await cancel.request_cancel(queued, "r", "admin", "why") is False  # type: ignore[arg-type]
    assert len(queued.executed) == 2 and f"status = {E.RUN_STATUS_CANCELLED}" in queued.executed[1]
    running = _RunRow(_row(E.RUN_STATUS_RUNNING))
    assert await cancel.request_cancel(running, "r", "admin", "why") is True  # type: ignore[arg-type]
    assert len(running.executed) == 1 and "cancel_requested_at = now()" in running.executed[0]
    asked = _RunRow(_row(E.RUN_STATUS_RUNNING, requested="earlier"))
    assert await cancel.request_cancel(asked, "r", "someone else", "") is True  # type: ignore[arg-type]
    assert not asked.executed, "the first request's actor and reason stand"


@pytest.mark.parametrize(
    ("row", "error", "says"),
    [
        (None, NotFound, "no run"),
        (_row(E.RUN_STATUS_SUCCEEDED, E.RUN_STAGE_DONE), FailedPrecondition, "already ended (RUN_STATUS_SUCCEEDED)"),
        (_row(E.RUN_STATUS_FAILED), FailedPrecondition, "already ended"),
        (_row(E.RUN_STATUS_CANCELLED), FailedPrecondition, "already ended"),
        (_row(E.RUN_STATUS_RUNNING, E.RUN_STAGE_REGISTERING), FailedPrecondition, "can no longer be cancelled"),
    ],
)
async def test_cancel_refuses_unknown_finished_and_registering_runs(row, error, says):
    conn = _RunRow(row)
    with pytest.raises(error, match=re.escape(says)):
        await cancel.request_cancel(conn, "r", "admin", "")  # type: ignore[arg-type]
    assert not conn.executed


def test_cancel_requests_are_bounded():
    with pytest.raises(InvalidArgument, match="reason"):
        cancel.check_request("r" * 1025, "admin")
    with pytest.raises(InvalidArgument, match="actor"):
        cancel.check_request("", "a" * 257)
    cancel.check_request("r" * 1024, "admin")


# --- background loops go on ----------------------------------------------------------------------------


class _Count:
    def __init__(self) -> None:
        self.loops: list[str] = []

    def add(self, amount: int, attributes: dict[str, str]) -> None:
        self.loops.append(attributes["loop"])


@pytest.fixture
def loop_errors(monkeypatch: pytest.MonkeyPatch) -> _Count:
    count = _Count()
    monkeypatch.setattr(metrics, "loop_errors", count)
    return count


class _Listener:
    def is_closed(self) -> bool:
        return False

    async def remove_listener(self, *args: object) -> None:
        pass


async def test_the_worker_goes_on_after_a_run_it_cannot_handle(loop_errors: _Count):
    worker = jobs.TrainingWorker.__new__(jobs.TrainingWorker)  # no process pool: nothing here trains
    worker._settings = Settings(retry_base_s=0.01, retry_max_s=0.02)
    worker._backend = "local"
    worker._ctx = types.SimpleNamespace(pool=_Pool(None))  # type: ignore[assignment]
    worker._wake = asyncio.Event()
    worker._executor = types.SimpleNamespace(shutdown=lambda **_: None)  # type: ignore[assignment]
    claims = [("row-1", "lease-1"), ("row-2", "lease-2")]
    executed: list[str] = []
    done = asyncio.Event()

    async def listen(old: object) -> _Listener:
        return _Listener()

    async def claim() -> tuple[str, str] | None:
        if claims:
            return claims.pop(0)
        await asyncio.Event().wait()  # nothing more to claim
        return None

    async def execute(row: str, held: str) -> None:
        executed.append(row)
        if row == "row-1":
            raise RuntimeError("a bug while handling row-1")
        done.set()

    worker._listen = listen  # type: ignore[method-assign]
    worker._claim = claim  # type: ignore[method-assign,assignment]
    worker._execute = execute  # type: ignore[method-assign,assignment]
    task = asyncio.create_task(worker.run())
    await asyncio.wait_for(done.wait(), 10)
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    assert executed == ["row-1", "row-2"] and loop_errors.loops == ["worker"]


async def test_a_run_claimed_again_after_its_time_ran_out_fails_at_once():
    worker = jobs.TrainingWorker.__new__(jobs.TrainingWorker)
    worker._settings = Settings(training_run_timeout_s=10, training_max_attempts=3)
    held = types.SimpleNamespace(attempt=2, run_id="r")
    row = {"stage": E.RUN_STAGE_SEARCHING, "previous_error": "", "elapsed_s": 10.5}
    with pytest.raises(jobs.RunTimedOut, match=r"timed out: stopped after 10 s \(FLYWHEEL_TRAINING_RUN_TIMEOUT_S\)"):
        await worker._attempt(row, held)  # type: ignore[arg-type]
    held.attempt = 4  # and one claimed too often says how the last attempt ended
    row["previous_error"] = "the training process died (killed by signal 9; ...)"
    with pytest.raises(trainer.TrainingFailed, match="gave up after 3 attempts; the last: the training process died"):
        await worker._attempt(row, held)  # type: ignore[arg-type]


def test_a_run_whose_stored_trace_context_is_not_one_starts_a_trace_of_its_own():
    for stored in ['"not a carrier"', "[1, 2]", "{not json"]:
        assert jobs._parent({"trace_context": stored}) is None  # type: ignore[arg-type]
    assert jobs._parent({"trace_context": json.dumps({})}) is not None  # type: ignore[arg-type]


class _SpecsConn:
    def __init__(self, rows: list[dict[str, object]]) -> None:
        self.rows = rows

    async def fetch(self, sql: str, *args: object) -> list[dict[str, object]]:
        return self.rows


async def test_reconcile_skips_a_spec_it_cannot_handle_and_does_the_others(
    monkeypatch: pytest.MonkeyPatch, loop_errors: _Count
):
    async def one(ctx: object, row: dict[str, object]) -> int:
        if row["name"] == "broken":
            raise ValueError("no longer decodes")
        return 1

    monkeypatch.setattr(reconcile, "_reconcile_spec", one)
    ctx = types.SimpleNamespace(pool=_Pool(_SpecsConn([{"name": "broken"}, {"name": "good"}, {"name": "also"}])))
    assert await reconcile.reconcile_once(ctx) == 2  # type: ignore[arg-type]
    assert loop_errors.loops == ["reconcile"]

    async def outage(ctx: object, row: dict[str, object]) -> int:
        raise Unavailable("ingestion is away")

    monkeypatch.setattr(reconcile, "_reconcile_spec", outage)
    with pytest.raises(Unavailable):  # an outage is retried as a whole round, with backoff
        await reconcile.reconcile_once(ctx)  # type: ignore[arg-type]


async def test_the_reconcile_loop_outlives_a_failing_round(monkeypatch: pytest.MonkeyPatch, loop_errors: _Count):
    rounds: list[int] = []
    second = asyncio.Event()

    async def once(ctx: object) -> int:
        rounds.append(1)
        if len(rounds) == 1:
            raise RuntimeError("a bug")
        second.set()
        return 0

    monkeypatch.setattr(reconcile, "reconcile_once", once)
    monkeypatch.setattr(reconcile, "INTERVAL_S", 0.0)
    task = asyncio.create_task(reconcile.reconcile_forever(types.SimpleNamespace(settings=Settings())))  # type: ignore[arg-type]
    await asyncio.wait_for(second.wait(), 10)
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    assert loop_errors.loops == ["reconcile"]


class _TxConn:
    """Savepoints and the decisions recorded, for handlers._isolated."""

    def __init__(self) -> None:
        self.decisions: list[tuple[object, ...]] = []
        self.rolled_back = 0

    @contextlib.asynccontextmanager
    async def transaction(self) -> AsyncIterator[None]:
        try:
            yield
        except BaseException:
            self.rolled_back += 1
            raise

    async def execute(self, sql: str, *args: object) -> None:
        assert sql.startswith("INSERT INTO trigger_decisions")
        self.decisions.append(args)


async def test_a_specs_failing_reaction_to_an_event_is_recorded_and_the_others_go_on(loop_errors: _Count):
    conn = _TxConn()
    spec = E.TrainingSpec(name="s", model_name="m")

    async def broken() -> None:
        raise KeyError("a bug")

    async def fine() -> None:
        pass

    await handlers._isolated(conn, spec, E.RUN_TRIGGER_DATA_VERSIONED, "ev-1", broken())  # type: ignore[arg-type]
    await handlers._isolated(conn, spec, E.RUN_TRIGGER_DATA_VERSIONED, "ev-1", fine())  # type: ignore[arg-type]
    assert conn.rolled_back == 1 and loop_errors.loops == ["triggers"]
    [(name, _model, _trigger, event_id, decision, reason, run_id)] = conn.decisions
    assert (name, event_id, decision, run_id) == ("s", "ev-1", "error", "")
    assert reason == "KeyError: 'a bug'"

    async def outage() -> None:
        raise Unavailable("ingestion is away")

    with pytest.raises(Unavailable):  # the event is retried by its consumer
        await handlers._isolated(conn, spec, E.RUN_TRIGGER_DATA_VERSIONED, "ev-2", outage())  # type: ignore[arg-type]


# --- the CLI ---------------------------------------------------------------------------------------------


def test_runs_cancel_parses_and_a_cancelled_run_shows_who_and_why():
    args = parse("runs", "cancel", "r1", "--reason", "not needed", "--json")
    assert (args.func, args.run_id, args.reason, args.json) == (runs.cmd_cancel, "r1", "not needed", True)
    assert parse("runs", "cancel", "r1").reason is None
    run = E.Run(run_id="r1", status=E.RUN_STATUS_CANCELLED, stage=E.RUN_STAGE_SEARCHING, cancelled_by="admin")
    run.cancel_reason, run.error = "not needed", "cancelled by admin: not needed"
    shown = render(runs.run_detail(run))
    assert "cancelled" in shown and "cancelled by admin: not needed" in shown and "error" not in shown
    stopping = E.Run(run_id="r2", status=E.RUN_STATUS_RUNNING, cancelled_by="admin", cancel_reason="why")
    assert "asked by admin: why" in render(runs.run_detail(stopping))
    assert "cancelled" in runs.final_line(run) and "not needed" in runs.final_line(run)
