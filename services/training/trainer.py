"""One training run, start to finish, as a plain function the service runs in a process pool.

train(job) loads the dataset version's Parquet, runs the hyperparameter search on the train split,
refits the best parameters on the whole train split, exports ONNX, checks ONNX Runtime against the
estimator on the test split and returns everything the service records. Inputs and outputs are
picklable; progress goes to an optional queue-like object (a multiprocessing Manager queue proxy).
Its steps (load, search_folds, run_trial, best_of, finish) are public so that the Ray backend
(services/training/ray_tasks.py) runs exactly the same code, one Ray task per trial.

Data rules (this version):
- Features: numeric and bool columns only, as a float32 matrix in `feature_fields` order; bool ->
  0/1; nulls stay NaN for the pipeline's mean imputer. A string (categorical) feature is
  InvalidArgument(field="feature_fields"): categorical encoding is not supported yet.
- Rows with a null label are dropped from both splits (they can be neither fitted nor scored).
- Classification labels: the sorted unique str() forms of the train split's label values, encoded
  0..k-1; the signature's class_labels and the ONNX outputs use that order. A label value that
  occurs only in the test split fails the run (the model could never predict it).
- The recorded test evaluation is computed from the exported ONNX model's outputs (after parity
  passed), so the registered artifact reproduces it exactly.
"""

from __future__ import annotations

import contextlib
import math
import resource
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, TypeAlias

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from google.protobuf import duration_pb2, struct_pb2
from sklearn.exceptions import ConvergenceWarning
from sklearn.model_selection import KFold, StratifiedKFold, train_test_split
from sklearn.pipeline import Pipeline

from flywheel import evaluation
from flywheel.errors import InvalidArgument
from flywheel.v1 import common_pb2, training_pb2
from services.training import estimators, packaging, search
from services.training.estimators import Estimator, Task
from services.training.spec_validation import validate_spec

OUT_OF_MEMORY = "out of memory"
SPLIT_COLUMN = "__split"
CALIBRATION_MAX_ROWS = 20_000  # test rows in a model's calibration sample (a few hundred KiB at most)
VALIDATION_FRACTION = 0.2
MAX_ERROR_CHARS = 2000
Stage = training_pb2.RunStage
StageValue: TypeAlias = training_pb2.RunStage.ValueType
CLASSIFICATION = common_pb2.TASK_CLASSIFICATION


@dataclass(frozen=True)
class TrainJob:
    run_id: str
    spec: training_pb2.TrainingSpec
    data_path: str  # Parquet with every row and a "__split" column ("train"/"test")
    label_field: str
    feature_fields: list[str]  # in input-tensor column order
    seed: int  # search seed, holdout/CV shuffling and estimator random_state (mod 2**32)


@dataclass
class TrainResult:
    trials: list[training_pb2.Trial]
    best_trial: int  # Trial.number (0-based, = index in trials)
    best_params: dict[str, Any]  # JSON-friendly (lists, not tuples), ready for Struct.update
    evaluation: training_pb2.Evaluation  # test split, from the ONNX model's outputs
    signature: common_pb2.ModelSignature
    parity: training_pb2.ParityCheck
    onnx: bytes
    calibration: bytes = b""  # classifiers: a CalibrationSample of the test split (monitoring's CBPE)


class TrainingFailed(Exception):
    """A run failed at `stage` for `reason`; carries what was learnt before (trials, parity)."""

    def __init__(
        self,
        stage: StageValue,
        reason: str,
        trials: list[training_pb2.Trial] | None = None,
        parity: training_pb2.ParityCheck | None = None,
    ) -> None:
        self.stage = stage
        self.reason = reason
        self.trials = list(trials or [])
        self.parity = parity
        super().__init__(f"{Stage.Name(stage)}: {reason}")

    def __reduce__(self) -> tuple[Any, ...]:
        # default exception pickling would call __init__ with the formatted message only
        return (TrainingFailed, (self.stage, self.reason, self.trials, self.parity))


# --- feature selection (for the service, before a run is queued) ------------------------------------

_NUMERIC_FIELD_TYPES = (common_pb2.FIELD_TYPE_FLOAT, common_pb2.FIELD_TYPE_INT, common_pb2.FIELD_TYPE_BOOL)


def resolve_feature_fields(spec: training_pb2.TrainingSpec, schema: common_pb2.Schema) -> list[str]:
    """spec.feature_fields, or every numeric/bool schema field except label and key, checked."""
    by_name = {f.name: f for f in schema.fields}
    excluded = {schema.label_field, schema.key_field}
    if not spec.feature_fields:
        names = [f.name for f in schema.fields if f.type in _NUMERIC_FIELD_TYPES and f.name not in excluded]
    else:
        names = list(spec.feature_fields)
        for name in names:
            _check_schema_feature(name, by_name.get(name), excluded)
        if len(set(names)) != len(names):
            raise InvalidArgument("feature names repeat", field="feature_fields")
    if not names:
        raise InvalidArgument("no numeric or bool feature fields to train on", field="feature_fields")
    return names


def _check_schema_feature(name: str, spec: common_pb2.Field | None, excluded: set[str]) -> None:
    if spec is None:
        raise InvalidArgument(f"{name!r} is not a field of the dataset", field="feature_fields")
    if name in excluded:
        raise InvalidArgument(f"{name!r} is the label or key field", field="feature_fields")
    if spec.type == common_pb2.FIELD_TYPE_CATEGORICAL:
        raise InvalidArgument(
            f"{name!r} is categorical; only numeric and bool features are supported", field="feature_fields"
        )


# --- data --------------------------------------------------------------------------------------------


@dataclass
class Dataset:
    X_train: np.ndarray  # float32 [n_train, n_features]
    y_train: np.ndarray  # int64 class indices, or float64 targets
    X_test: np.ndarray
    y_test: np.ndarray
    class_labels: list[str] = field(default_factory=list)  # classification only
    dropped_rows: int = 0  # null labels


def _check_columns(schema: pa.Schema, feature_fields: list[str], label_field: str) -> None:
    if not feature_fields:
        raise InvalidArgument("no feature fields", field="feature_fields")
    if len(set(feature_fields)) != len(feature_fields) or label_field in feature_fields:
        raise InvalidArgument("feature names repeat or include the label", field="feature_fields")
    for name in [*feature_fields, label_field, SPLIT_COLUMN]:
        if schema.get_field_index(name) < 0:
            where = "feature_fields" if name in feature_fields else "label_field"
            raise InvalidArgument(f"column {name!r} is not in the dataset", field=where)
    for name in feature_fields:
        _check_feature_type(name, schema.field(name).type)


def _check_feature_type(name: str, typ: pa.DataType) -> None:
    numeric = pa.types.is_integer(typ) or pa.types.is_floating(typ) or pa.types.is_decimal(typ)
    if numeric or pa.types.is_boolean(typ) or pa.types.is_null(typ):
        return
    if pa.types.is_string(typ) or pa.types.is_large_string(typ) or pa.types.is_dictionary(typ):
        raise InvalidArgument(
            f"{name!r} is categorical (string); only numeric and bool features are supported",
            field="feature_fields",
        )
    raise InvalidArgument(f"{name!r} has type {typ}, not numeric or bool", field="feature_fields")


def _features(table: pa.Table, names: list[str]) -> np.ndarray:
    X = np.empty((table.num_rows, len(names)), dtype=np.float32)
    for j, name in enumerate(names):
        X[:, j] = pc.cast(table.column(name), pa.float32()).to_numpy()  # nulls -> NaN, bool -> 0/1
    return X


def _regression_labels(column: pa.ChunkedArray) -> np.ndarray:
    typ = column.type
    if not (pa.types.is_integer(typ) or pa.types.is_floating(typ) or pa.types.is_decimal(typ)):
        raise InvalidArgument(f"a regression label must be numeric, not {typ}", field="label_field")
    return pc.cast(column, pa.float64()).to_numpy()


def _encode_labels(train: list[Any], test: list[Any]) -> tuple[np.ndarray, np.ndarray, list[str]]:
    train_str = [str(v) for v in train]
    test_str = [str(v) for v in test]
    labels = sorted(set(train_str))
    unseen = sorted(set(test_str) - set(labels))
    if unseen:
        raise TrainingFailed(Stage.RUN_STAGE_LOADING_DATA, f"label values only in the test split: {unseen[:10]}")
    if len(labels) < 2:
        raise TrainingFailed(Stage.RUN_STAGE_LOADING_DATA, f"classification needs >= 2 classes, got {labels}")
    index = {label: i for i, label in enumerate(labels)}
    y_train = np.fromiter((index[v] for v in train_str), dtype=np.int64, count=len(train_str))
    y_test = np.fromiter((index[v] for v in test_str), dtype=np.int64, count=len(test_str))
    return y_train, y_test, labels


def _parquet(source: str | bytes) -> str | pa.BufferReader:
    """A path, or a fresh reader over the file's bytes (the Ray backend's data comes from the object store)."""
    return pa.BufferReader(source) if isinstance(source, bytes) else source


def load_dataset(source: str | bytes, feature_fields: list[str], label_field: str, task: Task) -> Dataset:
    _check_columns(pq.read_schema(_parquet(source)), feature_fields, label_field)
    table = pq.read_table(_parquet(source), columns=[*feature_fields, label_field, SPLIT_COLUMN])
    labelled = table.filter(pc.is_valid(table.column(label_field)))
    split = labelled.column(SPLIT_COLUMN)
    train = labelled.filter(pc.equal(split, "train"))
    test = labelled.filter(pc.equal(split, "test"))
    if train.num_rows < 2 or test.num_rows < 1:
        raise TrainingFailed(
            Stage.RUN_STAGE_LOADING_DATA,
            f"need >= 2 labelled train rows and >= 1 test row, got {train.num_rows} and {test.num_rows}",
        )
    data = Dataset(
        _features(train, feature_fields),
        np.empty(0),
        _features(test, feature_fields),
        np.empty(0),
        dropped_rows=table.num_rows - labelled.num_rows,
    )
    if task == CLASSIFICATION:
        data.y_train, data.y_test, data.class_labels = _encode_labels(
            train.column(label_field).to_pylist(), test.column(label_field).to_pylist()
        )
    else:
        data.y_train = _regression_labels(train.column(label_field))
        data.y_test = _regression_labels(test.column(label_field))
    return data


# --- progress ---------------------------------------------------------------------------------------


class Reporter:
    """Best-effort progress: a watcher that went away must never fail the run."""

    def __init__(self, queue: Any | None) -> None:
        self.queue = queue
        self.stage = Stage.RUN_STAGE_QUEUED
        self.completed = 0
        self.total = 0
        self.best_score = math.nan

    def emit(self, message: str, stage: StageValue | None = None, last_trial: training_pb2.Trial | None = None) -> None:
        if stage is not None:
            self.stage = stage
        if self.queue is None:
            return
        payload = {
            "stage": int(self.stage),
            "trials_completed": self.completed,
            "trials_total": self.total,
            "last_trial": last_trial.SerializeToString() if last_trial is not None else None,
            # 0.0 (the proto default) until a trial scores: NaN is not valid JSON, and progress is stored as JSON
            "best_score": self.best_score if math.isfinite(self.best_score) else 0.0,
            "message": message,
        }
        with contextlib.suppress(Exception):
            self.queue.put(payload)


@contextlib.contextmanager
def _stage(stage: StageValue, trials: list[training_pb2.Trial] | None = None) -> Iterator[None]:
    """Unexpected errors inside a stage become TrainingFailed(stage) with the error as reason."""
    try:
        yield
    except (TrainingFailed, InvalidArgument):
        raise
    except MemoryError as exc:
        raise TrainingFailed(stage, out_of_memory(exc), trials) from exc
    except Exception as exc:
        raise TrainingFailed(stage, _describe(exc), trials) from exc


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"[:MAX_ERROR_CHARS]


def out_of_memory(exc: MemoryError) -> str:
    """The reason a run that ran out of memory failed, naming this process's limit when it has one."""
    soft, _ = resource.getrlimit(resource.RLIMIT_AS)
    limit = (
        ""
        if soft == resource.RLIM_INFINITY
        else f" (its training process may use {soft // 2**20:,} MiB: FLYWHEEL_TRAINING_MEMORY_MB)"
    )
    return f"{OUT_OF_MEMORY}{limit}: {_describe(exc)}"[:MAX_ERROR_CHARS]


# --- search -----------------------------------------------------------------------------------------


def _folds(data: Dataset, cv_folds: int, seed: int, task: Task) -> list[tuple[np.ndarray, np.ndarray]]:
    """(fit rows, validation rows) pairs on the train split: k-fold when cv_folds > 1, else a 20% holdout."""
    n = len(data.y_train)
    rs = estimators.sklearn_seed(seed)
    stratify = task == CLASSIFICATION and np.bincount(data.y_train).min() >= max(2, cv_folds)
    if cv_folds > 1:
        if cv_folds > n:
            raise TrainingFailed(Stage.RUN_STAGE_SEARCHING, f"cv_folds {cv_folds} > {n} train rows")
        splitter = StratifiedKFold if stratify else KFold
        return list(splitter(n_splits=cv_folds, shuffle=True, random_state=rs).split(data.X_train, data.y_train))
    rows = np.arange(n)
    try:
        fit, val = train_test_split(
            rows, test_size=VALIDATION_FRACTION, random_state=rs, stratify=data.y_train if stratify else None
        )
    except ValueError:  # too few rows per class to stratify this small a holdout
        fit, val = train_test_split(rows, test_size=VALIDATION_FRACTION, random_state=rs)
    return [(np.sort(fit), np.sort(val))]


def _fit(estimator: Estimator, params: dict[str, Any], seed: int, X: np.ndarray, y: np.ndarray) -> Pipeline:
    pipeline = estimators.build_pipeline(estimator, params, seed)
    with warnings.catch_warnings():
        # an unconverged MLP/logistic fit is still a valid trial; the metric says how good it is
        warnings.simplefilter("ignore", ConvergenceWarning)
        pipeline.fit(X, y)
    return pipeline


def _validation_metrics(
    pipeline: Pipeline, X: np.ndarray, y: np.ndarray, task: Task, class_labels: list[str]
) -> dict[str, float]:
    if task != CLASSIFICATION:
        return evaluation.aggregate(evaluation.regression_metrics(y, pipeline.predict(X)))
    # a fold may miss a class: put each fitted class's probability in its global column
    proba = np.zeros((len(X), len(class_labels)))
    proba[:, pipeline.classes_.astype(np.int64)] = pipeline.predict_proba(X)
    ev = evaluation.classification_metrics(y, pipeline.predict(X), proba, class_labels)
    return evaluation.aggregate(ev)


def _mean_metrics(per_fold: list[dict[str, float]]) -> dict[str, float]:
    names = sorted({name for fold in per_fold for name in fold})
    return {name: float(np.mean([f[name] for f in per_fold if name in f])) for name in names}


def json_params(params: dict[str, Any]) -> dict[str, Any]:
    return {k: list(v) if isinstance(v, tuple) else v for k, v in params.items()}


def _run_trial(
    number: int,
    params: dict[str, Any],
    job: TrainJob,
    data: Dataset,
    folds: list[tuple[np.ndarray, np.ndarray]],
    task: Task,
) -> training_pb2.Trial:
    trial = training_pb2.Trial(number=number, params=_struct(json_params(params)))
    started = time.perf_counter()
    try:
        per_fold = []
        for fit_rows, val_rows in folds:
            pipeline = _fit(job.spec.estimator, params, job.seed, data.X_train[fit_rows], data.y_train[fit_rows])
            per_fold.append(
                _validation_metrics(pipeline, data.X_train[val_rows], data.y_train[val_rows], task, data.class_labels)
            )
        for name, value in _mean_metrics(per_fold).items():
            # validation rows come from the train split (holdout or CV mean)
            trial.metrics.add(name=name, value=value, split=common_pb2.SPLIT_TRAIN)
        trial.status = training_pb2.RUN_STATUS_SUCCEEDED
    except MemoryError:  # not this trial's parameters alone: the whole run is over its memory limit
        raise
    except Exception as exc:  # one bad parameter combination must not end the search
        trial.status = training_pb2.RUN_STATUS_FAILED
        trial.error = _describe(exc)
    trial.duration.CopyFrom(_duration(time.perf_counter() - started))
    return trial


def _struct(values: dict[str, Any]) -> struct_pb2.Struct:
    s = struct_pb2.Struct()
    s.update(values)
    return s


def _duration(seconds: float) -> duration_pb2.Duration:
    d = duration_pb2.Duration()
    d.FromNanoseconds(int(seconds * 1e9))
    return d


def _trial_score(trial: training_pb2.Trial, metric: str) -> float:
    return next((m.value for m in trial.metrics if m.name == metric), math.nan)


class BestTrial:
    """The best successful trial so far by the spec's metric: ties keep the trial offered first, and a
    NaN score (the metric undefined on the holdout) never wins. Offered in trial-number order it picks
    the same trial whichever backend ran the trials."""

    def __init__(self, spec: training_pb2.TrainingSpec) -> None:
        self.metric = estimators.effective_metric(spec)
        self.direction = spec.direction or evaluation.default_direction(self.metric)
        self.number = -1
        self.score = math.nan

    def offer(self, trial: training_pb2.Trial) -> None:
        if trial.status != training_pb2.RUN_STATUS_SUCCEEDED:
            return
        score = _trial_score(trial, self.metric)
        if self.number < 0 or evaluation.better(score, self.score, self.direction):
            self.number, self.score = trial.number, score


def best_of(spec: training_pb2.TrainingSpec, trials: list[training_pb2.Trial]) -> int:
    """The best trial's number (`trials` in number order); TrainingFailed when every trial failed."""
    best = BestTrial(spec)
    for trial in trials:
        best.offer(trial)
    if best.number < 0:
        first_error = trials[0].error if trials else "no trials"
        raise TrainingFailed(
            Stage.RUN_STAGE_SEARCHING, f"all {len(trials)} trials failed; first: {first_error}", trials
        )
    return best.number


def search_folds(job: TrainJob, data: Dataset) -> list[tuple[np.ndarray, np.ndarray]]:
    """The (fit rows, validation rows) every trial of the run is scored on."""
    with _stage(Stage.RUN_STAGE_SEARCHING):
        return _folds(data, job.spec.search_space.cv_folds, job.seed, estimators.effective_task(job.spec))


def run_trial(
    number: int, params: dict[str, Any], job: TrainJob, data: Dataset, folds: list[tuple[np.ndarray, np.ndarray]]
) -> training_pb2.Trial:
    """One trial, scored on `folds`; a failing parameter combination is a FAILED trial, a MemoryError
    is raised (the whole run is over its memory limit)."""
    return _run_trial(number, params, job, data, folds, estimators.effective_task(job.spec))


def _search(
    job: TrainJob, data: Dataset, candidates: list[dict[str, Any]], reporter: Reporter
) -> tuple[list[training_pb2.Trial], int]:
    """Runs every trial in this process; returns them and the best successful trial's number."""
    folds = search_folds(job, data)
    trials: list[training_pb2.Trial] = []
    best = BestTrial(job.spec)
    with _stage(Stage.RUN_STAGE_SEARCHING):
        for number, params in enumerate(candidates):
            trial = run_trial(number, params, job, data, folds)
            trials.append(trial)
            best.offer(trial)
            reporter.completed, reporter.best_score = number + 1, best.score
            ok = trial.status == training_pb2.RUN_STATUS_SUCCEEDED
            reporter.emit(f"trial {number} {'done' if ok else 'failed'}", last_trial=trial)
    return trials, best_of(job.spec, trials)


# --- the run ----------------------------------------------------------------------------------------


def _onnx_evaluation(onnx_bytes: bytes, data: Dataset, task: Task, seed: int) -> tuple[
    training_pb2.Evaluation, bytes
]:  # fmt: skip
    """The test split's metrics from the ONNX model's outputs, and (classifiers) its calibration sample."""
    outputs = packaging.onnx_outputs(onnx_bytes, data.X_test)
    if task == CLASSIFICATION:
        ev = evaluation.classification_metrics(data.y_test, outputs[0], outputs[1], data.class_labels)
        return ev, calibration_sample(outputs[1], data.y_test, data.class_labels, seed)
    return evaluation.regression_metrics(data.y_test, outputs[0]), b""


def calibration_sample(proba: np.ndarray, y: np.ndarray, class_labels: list[str], seed: int) -> bytes:
    """At most CALIBRATION_MAX_ROWS test rows' probabilities and true classes, drawn with the run's seed."""
    rows = np.arange(len(y))
    if len(rows) > CALIBRATION_MAX_ROWS:
        rows = np.sort(np.random.default_rng(seed).choice(rows, CALIBRATION_MAX_ROWS, replace=False))
    sample = common_pb2.CalibrationSample(
        class_labels=class_labels,
        probabilities=np.asarray(proba, dtype=np.float32)[rows].clip(0.0, 1.0).ravel().tolist(),
        labels=np.asarray(y, dtype=np.int64)[rows].tolist(),
    )
    return sample.SerializeToString(deterministic=True)


def load(job: TrainJob, reporter: Reporter, source: str | bytes) -> tuple[Dataset, list[dict[str, Any]]]:
    """Checks the spec, reads the data (a Parquet path or its bytes) and lists the search's trials."""
    spec = job.spec
    validate_spec(spec)
    task = estimators.effective_task(spec)
    reporter.emit(f"loading {len(job.feature_fields)} features", Stage.RUN_STAGE_LOADING_DATA)
    with _stage(Stage.RUN_STAGE_LOADING_DATA):
        data = load_dataset(source, job.feature_fields, job.label_field, task)
        candidates = search.trials(spec.search_space, spec.estimator, seed=job.seed)
    return data, candidates


def searching_message(data: Dataset, candidates: list[dict[str, Any]]) -> str:
    return (
        f"{len(data.y_train)} train rows, {len(data.y_test)} test rows, {data.dropped_rows} unlabelled rows "
        f"dropped; {len(candidates)} trials"
    )


def finish(
    job: TrainJob,
    data: Dataset,
    best: int,
    params: dict[str, Any],
    trials: list[training_pb2.Trial],
    reporter: Reporter,
) -> TrainResult:
    """Refits trial `best`'s `params` on the whole train split, exports ONNX and checks it."""
    spec = job.spec
    task = estimators.effective_task(spec)
    reporter.emit(f"refitting trial {best} on the train split", Stage.RUN_STAGE_EVALUATING)
    with _stage(Stage.RUN_STAGE_EVALUATING, trials):
        pipeline = _fit(spec.estimator, params, job.seed, data.X_train, data.y_train)
    reporter.emit("exporting ONNX", Stage.RUN_STAGE_EXPORTING)
    with _stage(Stage.RUN_STAGE_EXPORTING, trials):
        onnx_bytes = packaging.export_onnx(pipeline, len(job.feature_fields))
        signature = packaging.signature_from_onnx(onnx_bytes, job.feature_fields, data.class_labels)
    reporter.emit("checking ONNX Runtime against the estimator", Stage.RUN_STAGE_PARITY_CHECK)
    with _stage(Stage.RUN_STAGE_PARITY_CHECK, trials):
        parity = packaging.parity_check(onnx_bytes, pipeline, data.X_test, task, spec.parity_tolerance)
        if not parity.passed:
            raise TrainingFailed(Stage.RUN_STAGE_PARITY_CHECK, parity.reason, trials, parity)
        test_eval, calibration = _onnx_evaluation(onnx_bytes, data, task, job.seed)
    reporter.emit("parity passed", Stage.RUN_STAGE_PARITY_CHECK)
    return TrainResult(
        trials=trials,
        best_trial=best,
        best_params=json_params(params),
        evaluation=test_eval,
        signature=signature,
        parity=parity,
        onnx=onnx_bytes,
        calibration=calibration,
    )


def train(job: TrainJob, progress: Any | None = None) -> TrainResult:
    """Runs the whole job in this process (the local backend). Raises TrainingFailed(stage, reason) or
    InvalidArgument (bad spec/columns). The Ray backend runs the same steps as tasks
    (services/training/ray_tasks.py)."""
    reporter = Reporter(progress)
    data, candidates = load(job, reporter, job.data_path)
    reporter.total = len(candidates)
    reporter.emit(searching_message(data, candidates), Stage.RUN_STAGE_SEARCHING)
    trials, best = _search(job, data, candidates, reporter)
    return finish(job, data, best, candidates[best], trials, reporter)
