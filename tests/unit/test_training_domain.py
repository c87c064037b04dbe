"""The training service's core: search spaces, spec validation, metrics, ONNX packaging, train(),
and the rules of a run's lease (its heartbeat against a fake database)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import pickle
import queue
import time
from collections.abc import AsyncIterator

import asyncpg
import numpy as np
import onnxruntime as ort
import pandas as pd
import pytest

from flywheel import evaluation
from flywheel.config import Settings
from flywheel.errors import InvalidArgument
from flywheel.v1 import common_pb2, training_pb2
from services.training import estimators, lease, packaging, search, spec_validation, trainer

E = training_pb2
FEATURES = ["a", "b", "c", "flag"]


# --- fixtures ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def data_path(tmp_path_factory: pytest.TempPathFactory) -> str:
    """Noisy synthetic rows: a string class label, a numeric target, nulls, a bool and an int feature."""
    rng = np.random.default_rng(0)
    n = 500
    df = pd.DataFrame(
        {
            "id": np.arange(n),
            "a": rng.normal(size=n),
            "b": rng.normal(size=n),
            "c": rng.integers(0, 5, n),
            "flag": rng.random(n) > 0.5,
            "city": rng.choice(["x", "y"], n),
        }
    )
    df.loc[::11, "a"] = np.nan
    noise = rng.normal(scale=0.7, size=n)
    df["y"] = np.where(df["a"].fillna(0) + df["b"] + noise > 0, "yes", "no")
    df["t"] = 3 * df["b"] + df["c"] + df["flag"] + rng.normal(scale=0.3, size=n)
    df["__split"] = np.where(rng.random(n) < 0.8, "train", "test")
    path = tmp_path_factory.mktemp("training") / "data.parquet"
    df.to_parquet(path)
    return str(path)


def _choices(space: training_pb2.SearchSpace, name: str, values: list) -> None:
    space.params[name].choices.extend(values)


def _range(space: training_pb2.SearchSpace, name: str, low: float, high: float, **flags: bool) -> None:
    space.params[name].range.CopyFrom(training_pb2.ParamDistribution.Range(low=low, high=high, **flags))


def _test_rows(path: str, label: str) -> tuple[np.ndarray, np.ndarray]:
    df = pd.read_parquet(path)
    test = df[df["__split"] == "test"]
    X = test[FEATURES].astype("float32").to_numpy()
    return X, test[label].to_numpy()


def _metric(ev: training_pb2.Evaluation, name: str) -> float:
    return evaluation.score(ev, name)


# --- search -----------------------------------------------------------------------------------------


def test_grid_is_the_cartesian_product_in_name_order_capped_by_budget():
    space = training_pb2.SearchSpace(strategy=E.SEARCH_STRATEGY_GRID)
    _choices(space, "n_estimators", [10, 20])
    _choices(space, "max_depth", [2, None, 4])
    got = search.trials(space, E.ESTIMATOR_RANDOM_FOREST_CLASSIFIER)
    assert got == [{"max_depth": d, "n_estimators": n} for d in (2, None, 4) for n in (10, 20)]
    assert all(type(t["n_estimators"]) is int for t in got)  # Struct doubles -> int where sklearn needs it
    space.trial_budget = 4
    assert search.trials(space, E.ESTIMATOR_RANDOM_FOREST_CLASSIFIER) == got[:4]


def test_random_search_is_deterministic_per_seed_and_honours_flags():
    space = training_pb2.SearchSpace(strategy=E.SEARCH_STRATEGY_RANDOM, seed=42, trial_budget=8)
    _range(space, "learning_rate", 0.001, 0.5, log=True)
    _range(space, "n_estimators", 10, 60)  # int parameter: sampled as integers
    _range(space, "subsample", 0.5, 1.0)
    _choices(space, "max_depth", [2, 3])
    space.fixed_params.update({"min_samples_leaf": 2})
    est = E.ESTIMATOR_GRADIENT_BOOSTING_REGRESSOR
    first = search.trials(space, est)
    assert first == search.trials(space, est)
    assert len(first) == 8
    assert search.trials(space, est, seed=7) != first
    for t in first:
        assert 0.001 <= t["learning_rate"] <= 0.5
        assert type(t["n_estimators"]) is int and 10 <= t["n_estimators"] <= 60
        assert 0.5 <= t["subsample"] <= 1.0
        assert t["max_depth"] in (2, 3) and t["min_samples_leaf"] == 2


def test_random_over_choices_draws_distinct_points_and_empty_space_is_one_default_trial():
    space = training_pb2.SearchSpace(strategy=E.SEARCH_STRATEGY_RANDOM, seed=1, trial_budget=50)
    _choices(space, "C", [0.1, 1, 10])
    _choices(space, "fit_intercept", [True, False])
    got = search.trials(space, E.ESTIMATOR_LOGISTIC_REGRESSION)
    assert len(got) == 6 and len({tuple(sorted(t.items())) for t in got}) == 6
    assert search.trials(training_pb2.SearchSpace(), E.ESTIMATOR_LOGISTIC_REGRESSION) == [{}]
    layers = training_pb2.SearchSpace()
    _choices(layers, "hidden_layer_sizes", [[16, 8], 4])
    assert search.trials(layers, E.ESTIMATOR_MLP_CLASSIFIER) == [
        {"hidden_layer_sizes": (16, 8)},
        {"hidden_layer_sizes": (4,)},
    ]


# --- spec validation --------------------------------------------------------------------------------


def _spec(**kw) -> training_pb2.TrainingSpec:
    spec = training_pb2.TrainingSpec(name="s", estimator=E.ESTIMATOR_LOGISTIC_REGRESSION)
    for key, value in kw.items():
        setattr(spec, key, value)
    return spec


def _with_space(build) -> training_pb2.TrainingSpec:
    spec = _spec()
    build(spec.search_space)
    return spec


@pytest.mark.parametrize(
    ("spec", "field"),
    [
        (_spec(estimator=E.ESTIMATOR_UNSPECIFIED), "estimator"),
        (_spec(task=common_pb2.TASK_REGRESSION), "task"),
        (_spec(metric="rmse"), "metric"),
        (_spec(metric="bogus"), "metric"),
        (_spec(parity_tolerance=-1.0), "parity_tolerance"),
        (_with_space(lambda s: _choices(s, "n_jobs", [2])), "search_space.params[n_jobs]"),
        (_with_space(lambda s: _choices(s, "C", [-1.0])), "search_space.params[C]"),
        (_with_space(lambda s: _choices(s, "C", [])), "search_space.params[C]"),
        (_with_space(lambda s: s.fixed_params.update({"random_state": 1})), "search_space.fixed_params.random_state"),
        (_with_space(lambda s: _range(s, "C", 5, 1)), "search_space.params[C]"),
        (_with_space(lambda s: _range(s, "C", 0, 1, log=True)), "search_space.params[C]"),
        (_with_space(lambda s: _range(s, "solver", 0, 1)), "search_space.params[solver]"),
        (_with_space(lambda s: setattr(s, "trial_budget", -1)), "search_space.trial_budget"),
        (_with_space(lambda s: setattr(s, "cv_folds", -2)), "search_space.cv_folds"),
        (
            _with_space(lambda s: (setattr(s, "strategy", E.SEARCH_STRATEGY_GRID), _range(s, "C", 0.1, 1))),
            "search_space.params[C]",
        ),
    ],
)
def test_validate_spec_names_the_field(spec: training_pb2.TrainingSpec, field: str):
    with pytest.raises(InvalidArgument) as err:
        spec_validation.validate_spec(spec)
    assert err.value.field == field
    with pytest.raises(InvalidArgument) as prefixed:
        spec_validation.validate_spec(spec, field_prefix="spec.")
    assert prefixed.value.field == f"spec.{field}"


def test_valid_specs_pass_and_defaults_apply():
    spec = _spec()
    _range(spec.search_space, "C", 0.01, 10, log=True)
    spec_validation.validate_spec(spec)
    assert estimators.effective_task(spec) == common_pb2.TASK_CLASSIFICATION
    assert estimators.effective_metric(spec) == "f1"
    reg = _spec(estimator=E.ESTIMATOR_LINEAR_REGRESSION, metric="MAE")
    spec_validation.validate_spec(reg)
    assert estimators.effective_metric(reg) == "mae"
    assert evaluation.default_direction("mae") == common_pb2.METRIC_DIRECTION_MINIMIZE
    assert evaluation.default_direction("r2") == common_pb2.METRIC_DIRECTION_MAXIMIZE
    ridge = estimators.build_pipeline(E.ESTIMATOR_LINEAR_REGRESSION, {"alpha": 2.0}, seed=1)
    assert type(ridge[-1]).__name__ == "Ridge"
    assert [name for name, _ in ridge.steps] == ["impute", "scale", "model"]


# --- metrics ----------------------------------------------------------------------------------------


def test_classification_metrics_multiclass_and_one_class():
    y_true = np.array([0, 0, 1, 1, 2, 2])
    y_pred = np.array([0, 1, 1, 1, 2, 0])
    proba = np.eye(3)[y_pred] * 0.8 + 0.2 / 3
    ev = evaluation.classification_metrics(y_true, y_pred, proba, ["a", "b", "c"])
    assert ev.split == common_pb2.SPLIT_TEST and ev.rows == 6
    assert _metric(ev, "accuracy") == pytest.approx(4 / 6)
    assert _metric(ev, "recall") == pytest.approx(np.mean([0.5, 1.0, 0.5]))
    assert 0 < _metric(ev, "roc_auc") <= 1
    per_class = {(m.name, m.class_label): m.value for m in ev.metrics if m.class_label}
    assert per_class[("precision", "b")] == pytest.approx(2 / 3)
    assert [list(r.counts) for r in ev.confusion_matrix.rows] == [[1, 1, 0], [0, 2, 0], [1, 0, 1]]
    assert list(ev.confusion_matrix.labels) == ["a", "b", "c"]
    one = evaluation.classification_metrics(np.array([1, 1]), np.array([1, 0]), np.eye(2)[[1, 0]], ["n", "y"])
    assert "roc_auc" not in evaluation.aggregate(one) and np.isnan(evaluation.score(one, "roc_auc"))


def test_regression_metrics_and_better():
    ev = evaluation.regression_metrics(np.array([1.0, 2.0, 3.0]), np.array([1.0, 2.0, 5.0]))
    assert _metric(ev, "mae") == pytest.approx(2 / 3)
    assert _metric(ev, "rmse") == pytest.approx(np.sqrt(4 / 3))
    assert "r2" in evaluation.aggregate(ev)
    assert evaluation.better(0.1, 0.2, common_pb2.METRIC_DIRECTION_MINIMIZE)
    assert evaluation.better(0.3, 0.2, common_pb2.METRIC_DIRECTION_MAXIMIZE)
    assert evaluation.better(0.3, float("nan"), common_pb2.METRIC_DIRECTION_MAXIMIZE)
    assert not evaluation.better(float("nan"), 0.2, common_pb2.METRIC_DIRECTION_MAXIMIZE)


# --- train() end to end -----------------------------------------------------------------------------


def _logistic_job(data_path: str, **spec_kw) -> trainer.TrainJob:
    spec = _spec(task=common_pb2.TASK_CLASSIFICATION, metric="accuracy", **spec_kw)
    _choices(spec.search_space, "C", [0.01, 1.0])
    return trainer.TrainJob("run-1", spec, data_path, "y", FEATURES, seed=7)


def _drain(q: queue.Queue) -> list[dict]:
    out = []
    while not q.empty():
        out.append(q.get_nowait())
    return out


def test_train_logistic_regression_end_to_end(data_path: str):
    progress: queue.Queue = queue.Queue()
    result = trainer.train(_logistic_job(data_path), progress)

    assert [t.number for t in result.trials] == [0, 1]
    assert all(t.status == E.RUN_STATUS_SUCCEEDED and t.metrics for t in result.trials)
    assert result.best_params == {"C": result.trials[result.best_trial].params["C"]}
    assert result.parity.passed and result.parity.rows_checked == result.evaluation.rows
    assert result.parity.label_agreement >= 0.999

    sig = result.signature
    assert [(i.name, i.datatype, list(i.shape)) for i in sig.inputs] == [("input", "FP32", [-1, 4])]
    assert [(o.name, o.datatype, list(o.shape)) for o in sig.outputs] == [
        ("label", "INT64", [-1]),
        ("probabilities", "FP32", [-1, 2]),
    ]
    assert list(sig.class_labels) == ["no", "yes"] and list(sig.feature_names) == FEATURES

    # a fresh session on the test rows reproduces the recorded accuracy
    X, y = _test_rows(data_path, "y")
    session = ort.InferenceSession(result.onnx, providers=["CPUExecutionProvider"])
    label, proba = session.run(None, {"input": X})
    predicted = np.array(sig.class_labels)[label]
    assert _metric(result.evaluation, "accuracy") == pytest.approx(np.mean(predicted == y), abs=1e-12)
    assert 0.6 < _metric(result.evaluation, "accuracy") < 1.0  # noisy labels: a real, non-trivial score
    assert proba.shape == (len(y), 2)
    # the calibration sample monitoring estimates performance from: the same test rows, ONNX's probabilities
    sample = common_pb2.CalibrationSample.FromString(result.calibration)
    assert list(sample.class_labels) == ["no", "yes"]
    assert np.array(sig.class_labels)[list(sample.labels)].tolist() == list(y)
    assert np.asarray(sample.probabilities).reshape(-1, 2) == pytest.approx(proba, abs=1e-7)

    messages = _drain(progress)
    assert messages[0]["best_score"] == 0.0  # nothing scored yet; never NaN
    for m in messages:  # the service stores progress as JSON (jsonb rejects NaN)
        json.dumps({k: v for k, v in m.items() if k != "last_trial"}, allow_nan=False)
    stages = [m["stage"] for m in messages]
    for stage in (
        E.RUN_STAGE_LOADING_DATA,
        E.RUN_STAGE_SEARCHING,
        E.RUN_STAGE_EVALUATING,
        E.RUN_STAGE_EXPORTING,
        E.RUN_STAGE_PARITY_CHECK,
    ):
        assert stage in stages
    assert stages == sorted(stages)
    trial_messages = [m for m in messages if m["last_trial"] is not None]
    assert [m["trials_completed"] for m in trial_messages] == [1, 2]
    assert all(m["trials_total"] == 2 for m in trial_messages)
    assert training_pb2.Trial.FromString(trial_messages[-1]["last_trial"]).number == 1
    assert messages[-1]["best_score"] == pytest.approx(_trial_score(result, result.best_trial))


def _trial_score(result: trainer.TrainResult, number: int) -> float:
    return next(m.value for m in result.trials[number].metrics if m.name == "accuracy")


def test_train_gradient_boosting_regressor_with_cv(data_path: str):
    spec = _spec(estimator=E.ESTIMATOR_GRADIENT_BOOSTING_REGRESSOR, task=common_pb2.TASK_REGRESSION)
    spec.search_space.cv_folds = 3
    spec.search_space.fixed_params.update({"n_estimators": 30, "max_depth": 2})
    job = trainer.TrainJob("run-2", spec, data_path, "t", FEATURES, seed=3)
    result = trainer.train(job)

    assert len(result.trials) == 1 and result.best_params == {"max_depth": 2, "n_estimators": 30}
    assert result.parity.passed
    sig = result.signature
    assert [(i.name, i.datatype, list(i.shape)) for i in sig.inputs] == [("input", "FP32", [-1, 4])]
    assert [(o.name, o.datatype, list(o.shape)) for o in sig.outputs] == [("variable", "FP32", [-1, 1])]
    assert list(sig.class_labels) == [] and result.calibration == b"", "a regressor has nothing to calibrate"

    X, y = _test_rows(data_path, "t")
    session = ort.InferenceSession(result.onnx, providers=["CPUExecutionProvider"])
    (pred,) = session.run(None, {"input": X})
    rmse = float(np.sqrt(np.mean((pred.reshape(-1).astype(np.float64) - y) ** 2)))
    assert _metric(result.evaluation, "rmse") == pytest.approx(rmse, rel=1e-9)
    assert _metric(result.evaluation, "r2") > 0.8


def test_failed_parity_raises_with_stage_and_reason(data_path: str, monkeypatch: pytest.MonkeyPatch):
    real_export = packaging.export_onnx

    def export_a_different_model(pipeline, n_features):
        # the same pipeline shape fitted on shuffled labels: valid ONNX, wrong predictions
        X = np.random.default_rng(1).normal(size=(200, n_features)).astype(np.float32)
        y = np.random.default_rng(2).integers(0, 2, 200)
        other = estimators.build_pipeline(E.ESTIMATOR_LOGISTIC_REGRESSION, {}, seed=0).fit(X, y)
        return real_export(other, n_features)

    monkeypatch.setattr(packaging, "export_onnx", export_a_different_model)
    with pytest.raises(trainer.TrainingFailed) as err:
        trainer.train(_logistic_job(data_path))
    failed = err.value
    assert failed.stage == E.RUN_STAGE_PARITY_CHECK
    assert "label agreement" in failed.reason or "probability" in failed.reason
    assert failed.parity is not None and not failed.parity.passed and failed.parity.reason == failed.reason
    assert len(failed.trials) == 2
    # it crosses the process-pool boundary intact
    again = pickle.loads(pickle.dumps(failed))
    assert (again.stage, again.reason, again.parity) == (failed.stage, failed.reason, failed.parity)


def test_parity_check_fails_on_negative_tolerance(data_path: str):
    X, _ = _test_rows(data_path, "t")
    y = X[:, 1] * 2
    pipeline = estimators.build_pipeline(E.ESTIMATOR_LINEAR_REGRESSION, {}, seed=0).fit(X, y)
    onnx_bytes = packaging.export_onnx(pipeline, X.shape[1])
    ok = packaging.parity_check(onnx_bytes, pipeline, X, common_pb2.TASK_REGRESSION, 0.0)
    assert ok.passed and ok.tolerance >= packaging.DEFAULT_REGRESSION_TOLERANCE
    bad = packaging.parity_check(onnx_bytes, pipeline, X, common_pb2.TASK_REGRESSION, -1.0)
    assert not bad.passed and "tolerance" in bad.reason


def test_all_trials_failing_fails_the_search(data_path: str):
    job = _logistic_job(data_path)
    job.spec.search_space.fixed_params.update({"solver": "lbfgs", "l1_ratio": 1.0})  # lbfgs cannot do L1
    with pytest.raises(trainer.TrainingFailed) as err:
        trainer.train(job)
    assert err.value.stage == E.RUN_STAGE_SEARCHING
    assert [t.status for t in err.value.trials] == [E.RUN_STATUS_FAILED] * 2
    assert "l1" in err.value.trials[0].error


def test_categorical_and_missing_features_are_invalid(data_path: str):
    job = _logistic_job(data_path)
    for features in (["a", "city"], ["a", "nope"]):
        bad = trainer.TrainJob(job.run_id, job.spec, data_path, "y", features, seed=1)
        with pytest.raises(InvalidArgument) as err:
            trainer.train(bad)
        assert err.value.field == "feature_fields"


def test_resolve_feature_fields_from_schema():
    schema = common_pb2.Schema(label_field="y", key_field="id")
    for name, typ in [
        ("id", common_pb2.FIELD_TYPE_INT),
        ("a", common_pb2.FIELD_TYPE_FLOAT),
        ("city", common_pb2.FIELD_TYPE_CATEGORICAL),
        ("flag", common_pb2.FIELD_TYPE_BOOL),
        ("y", common_pb2.FIELD_TYPE_CATEGORICAL),
    ]:
        schema.fields.add(name=name, type=typ)
    assert trainer.resolve_feature_fields(_spec(), schema) == ["a", "flag"]
    spec = _spec()
    spec.feature_fields.extend(["flag", "a"])
    assert trainer.resolve_feature_fields(spec, schema) == ["flag", "a"]
    spec.feature_fields.append("city")
    with pytest.raises(InvalidArgument) as err:
        trainer.resolve_feature_fields(spec, schema)
    assert err.value.field == "feature_fields"


def test_a_calibration_sample_is_capped_and_drawn_by_the_seed() -> None:
    rows = trainer.CALIBRATION_MAX_ROWS + 500
    proba = np.column_stack([np.linspace(0, 1, rows), 1 - np.linspace(0, 1, rows)])
    y = np.arange(rows) % 2
    first = trainer.calibration_sample(proba, y, ["a", "b"], seed=4)
    sample = common_pb2.CalibrationSample.FromString(first)
    assert len(sample.labels) == trainer.CALIBRATION_MAX_ROWS
    assert len(sample.probabilities) == 2 * trainer.CALIBRATION_MAX_ROWS
    assert first == trainer.calibration_sample(proba, y, ["a", "b"], seed=4), "a retried run writes the same object"
    assert first != trainer.calibration_sample(proba, y, ["a", "b"], seed=5)


def test_results_pickle(data_path: str):
    spec = _spec(estimator=E.ESTIMATOR_RANDOM_FOREST_CLASSIFIER)
    spec.search_space.fixed_params.update({"n_estimators": 5, "max_depth": 3})
    job = trainer.TrainJob("run-3", spec, data_path, "y", FEATURES, seed=5)
    result = pickle.loads(pickle.dumps(trainer.train(pickle.loads(pickle.dumps(job)))))
    assert result.parity.passed and result.onnx and "f1" in evaluation.aggregate(result.evaluation)


def test_parity_excuses_label_ties_but_not_real_disagreement(data_path: str):
    X, y = _test_rows(data_path, "y")
    labels = (y == "yes").astype(int)
    # two trees: many 50/50 rows, whose argmax may break either way in float32
    pipeline = estimators.build_pipeline(E.ESTIMATOR_RANDOM_FOREST_CLASSIFIER, {"n_estimators": 2}, seed=0)
    pipeline.fit(X, labels)
    onnx_bytes = packaging.export_onnx(pipeline, X.shape[1])
    assert packaging.parity_check(onnx_bytes, pipeline, X, common_pb2.TASK_CLASSIFICATION, 0.0).passed
    other = estimators.build_pipeline(E.ESTIMATOR_RANDOM_FOREST_CLASSIFIER, {"n_estimators": 2}, seed=1)
    other.fit(X, 1 - labels)
    check = packaging.parity_check(onnx_bytes, other, X, common_pb2.TASK_CLASSIFICATION, 0.0)
    assert not check.passed and check.label_agreement < 0.5 and "label agreement" in check.reason


# --- module layering --------------------------------------------------------------------------------


def _training_imports(module: str) -> set[str]:
    import ast
    from pathlib import Path

    import services.training

    tree = ast.parse((Path(services.training.__file__).parent / f"{module}.py").read_text())
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module == "services.training":
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("services.training."):
            found.add(node.module.rsplit(".", 1)[1])
    return found


def test_rule_modules_import_only_downward():
    """estimators <- search_space <- spec_validation <- search: no cycle, no import at call time."""
    assert _training_imports("estimators") == set()
    assert _training_imports("search_space") == {"estimators"}
    assert _training_imports("spec_validation") == {"estimators", "search_space"}
    assert _training_imports("search") == {"estimators", "search_space", "spec_validation"}


# --- the run's lease --------------------------------------------------------------------------------


class _Conn:
    """Answers the lease renewal: an exception to raise, or what fetchval returns (True = renewed)."""

    def __init__(self, answers: list[object]) -> None:
        self.answers = answers
        self.renewals = 0

    async def fetchval(self, sql: str, *args: object) -> object:
        answer = self.answers.pop(0) if self.answers else True
        if isinstance(answer, BaseException):
            raise answer
        self.renewals += answer is True
        return answer


class _Pool:
    def __init__(self, conn: _Conn) -> None:
        self.conn = conn

    @contextlib.asynccontextmanager
    async def acquire(self) -> AsyncIterator[_Conn]:
        yield self.conn


def _lease(conn: _Conn, lease_s: float) -> lease.Lease:
    settings = Settings(training_lease_s=lease_s, training_heartbeat_s=0.01, retry_base_s=0.01, retry_max_s=0.02)
    return lease.Lease(_Pool(conn), settings, "run-1", 1, time.monotonic())  # a fake pool: only acquire() is used


def _dropped() -> BaseException:
    return asyncpg.exceptions.ConnectionDoesNotExistError("terminating connection due to administrator command")


async def test_heartbeat_retries_database_errors_and_keeps_beating():
    conn = _Conn([_dropped(), _dropped(), OSError("connection refused"), True, _dropped()])
    held = _lease(conn, lease_s=5.0)
    beats: list[int] = []

    async def beat() -> None:
        beats.append(1)

    async with held.kept(beat):
        assert await held.hold(asyncio.sleep(0.3, result="trained")) == "trained"
    assert not conn.answers, "every failure was retried"
    assert not held.lost and conn.renewals >= 3 and beats


async def test_a_lease_not_renewed_before_it_lapses_is_lost_and_the_work_cancelled():
    conn = _Conn([_dropped()] * 1000)
    held = _lease(conn, lease_s=0.2)
    cancelled = asyncio.Event()

    async def train() -> None:
        try:
            await asyncio.sleep(30)
        finally:
            cancelled.set()

    async def beat() -> None:
        pass

    started = time.monotonic()
    async with held.kept(beat):
        with pytest.raises(lease.LeaseLost):
            await held.hold(train())
    assert cancelled.is_set() and time.monotonic() - started < 5
    assert "0.2s lease" in held.lost_reason


async def test_a_run_claimed_again_ends_the_lease_at_the_next_renewal():
    held = _lease(_Conn([None]), lease_s=5.0)  # no row: another attempt owns the run

    async def beat() -> None:
        pass

    async with held.kept(beat):
        with pytest.raises(lease.LeaseLost):
            await held.hold(asyncio.sleep(30))
    assert "claimed again" in held.lost_reason
