"""The estimator allow-list, hyperparameter coercion and the pipelines built from them.

Only estimators skl2onnx can export are allowed, and only the hyperparameters listed here: anything
that would change the ONNX graph in unsupported ways (custom losses, `init` estimators) or the
process model (`n_jobs`, `random_state`, `verbose`, `warm_start`) stays out.

LINEAR_REGRESSION is `LinearRegression`; when a trial sets `alpha` it becomes `Ridge(alpha=...)`
(L2-regularised least squares), so a search can tune regularisation for the linear baseline too.

The bottom layer of training's rules: `search_space`, `spec_validation` and `search` build on this
module, and it imports none of them.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Any, TypeAlias

from sklearn.base import BaseEstimator
from sklearn.ensemble import (
    GradientBoostingClassifier,
    GradientBoostingRegressor,
    RandomForestClassifier,
    RandomForestRegressor,
)
from sklearn.impute import SimpleImputer
from sklearn.linear_model import LinearRegression, LogisticRegression, Ridge
from sklearn.neural_network import MLPClassifier, MLPRegressor
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler

from flywheel.errors import InvalidArgument
from flywheel.v1 import common_pb2, training_pb2

Estimator: TypeAlias = training_pb2.Estimator.ValueType
Task: TypeAlias = common_pb2.Task.ValueType
E = training_pb2.Estimator
CLASSIFICATION = common_pb2.TASK_CLASSIFICATION
REGRESSION = common_pb2.TASK_REGRESSION

CLASSIFICATION_METRICS = ("accuracy", "precision", "recall", "f1", "roc_auc")
REGRESSION_METRICS = ("mae", "rmse", "r2")

# How a JSON (Struct) value becomes the Python value sklearn wants. Struct numbers are all doubles.
INT = "int"  # whole numbers -> int (n_estimators, max_depth, ...)
FLOAT = "float"
# int count, or float fraction in (0, 1]: whole numbers > 1 -> int, so 1.0 stays "100%"
COUNT_OR_FRACTION = "count_or_fraction"
STR = "str"
BOOL = "bool"
LAYERS = "layers"  # hidden_layer_sizes: a number or a list of numbers -> tuple[int, ...]
CLASS_WEIGHT = "class_weight"  # "balanced" / "balanced_subsample" / null only (labels are re-encoded)
NUMERIC_KINDS = (INT, FLOAT, COUNT_OR_FRACTION)

_TREE = {
    "n_estimators": INT,
    "criterion": STR,
    "max_depth": INT,
    "min_samples_split": COUNT_OR_FRACTION,
    "min_samples_leaf": INT,
    "min_weight_fraction_leaf": FLOAT,
    "max_features": COUNT_OR_FRACTION,
    "max_leaf_nodes": INT,
    "min_impurity_decrease": FLOAT,
    "ccp_alpha": FLOAT,
}
_FOREST = {**_TREE, "bootstrap": BOOL, "max_samples": COUNT_OR_FRACTION}
_BOOSTING = {
    **_TREE,
    "learning_rate": FLOAT,
    "subsample": FLOAT,
    "validation_fraction": FLOAT,
    "n_iter_no_change": INT,
    "tol": FLOAT,
}
_MLP = {
    "hidden_layer_sizes": LAYERS,
    "activation": STR,
    "solver": STR,
    "alpha": FLOAT,
    "batch_size": INT,
    "learning_rate": STR,
    "learning_rate_init": FLOAT,
    "power_t": FLOAT,
    "max_iter": INT,
    "shuffle": BOOL,
    "tol": FLOAT,
    "momentum": FLOAT,
    "nesterovs_momentum": BOOL,
    "early_stopping": BOOL,
    "validation_fraction": FLOAT,
    "beta_1": FLOAT,
    "beta_2": FLOAT,
    "epsilon": FLOAT,
    "n_iter_no_change": INT,
    "max_fun": INT,
}


@dataclass(frozen=True)
class EstimatorInfo:
    cls: type[BaseEstimator]
    task: Task
    params: dict[str, str]  # allowed hyperparameter -> coercion kind
    scale: bool  # StandardScaler in front (gradient-based and linear models need it)


ESTIMATORS: dict[Estimator, EstimatorInfo] = {
    E.ESTIMATOR_LOGISTIC_REGRESSION: EstimatorInfo(
        LogisticRegression,
        CLASSIFICATION,
        {
            "C": FLOAT,
            "l1_ratio": FLOAT,
            "solver": STR,
            "max_iter": INT,
            "tol": FLOAT,
            "fit_intercept": BOOL,
            "intercept_scaling": FLOAT,
            "class_weight": CLASS_WEIGHT,
        },
        True,
    ),
    E.ESTIMATOR_LINEAR_REGRESSION: EstimatorInfo(
        LinearRegression, REGRESSION, {"fit_intercept": BOOL, "positive": BOOL, "alpha": FLOAT}, True
    ),
    E.ESTIMATOR_RANDOM_FOREST_CLASSIFIER: EstimatorInfo(
        RandomForestClassifier, CLASSIFICATION, {**_FOREST, "class_weight": CLASS_WEIGHT}, False
    ),
    E.ESTIMATOR_RANDOM_FOREST_REGRESSOR: EstimatorInfo(RandomForestRegressor, REGRESSION, _FOREST, False),
    E.ESTIMATOR_GRADIENT_BOOSTING_CLASSIFIER: EstimatorInfo(
        GradientBoostingClassifier, CLASSIFICATION, _BOOSTING, False
    ),
    E.ESTIMATOR_GRADIENT_BOOSTING_REGRESSOR: EstimatorInfo(
        GradientBoostingRegressor, REGRESSION, {**_BOOSTING, "loss": STR, "alpha": FLOAT}, False
    ),
    E.ESTIMATOR_MLP_CLASSIFIER: EstimatorInfo(MLPClassifier, CLASSIFICATION, _MLP, True),
    E.ESTIMATOR_MLP_REGRESSOR: EstimatorInfo(MLPRegressor, REGRESSION, _MLP, True),
}


def info(estimator: Estimator, field: str = "estimator") -> EstimatorInfo:
    """The allow-list entry for an estimator enum value, or InvalidArgument."""
    found = ESTIMATORS.get(estimator)
    if found is None:
        allowed = ", ".join(E.Name(e) for e in ESTIMATORS)
        raise InvalidArgument(f"estimator {estimator} is not allowed; allowed: {allowed}", field=field)
    return found


def task_of(estimator: Estimator) -> Task:
    return info(estimator).task


def metrics_for(task: Task) -> tuple[str, ...]:
    return CLASSIFICATION_METRICS if task == CLASSIFICATION else REGRESSION_METRICS


def default_metric(task: Task) -> str:
    return "f1" if task == CLASSIFICATION else "rmse"


def effective_task(spec: training_pb2.TrainingSpec) -> Task:
    """spec.task, or the estimator's task when unspecified."""
    return spec.task or task_of(spec.estimator)


def effective_metric(spec: training_pb2.TrainingSpec) -> str:
    return spec.metric.strip().lower() or default_metric(effective_task(spec))


# --- hyperparameter values -------------------------------------------------------------------------


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _whole(value: float) -> bool:
    return math.isfinite(value) and float(value).is_integer()


def coerce_param(estimator: Estimator, name: str, value: Any, field: str) -> Any:
    """Turns a JSON-ish value (from a Struct/ListValue) into what the sklearn parameter expects."""
    kind = info(estimator).params.get(name)
    if kind is None:
        raise InvalidArgument(_unknown_param(estimator, name), field=field)
    if value is None:
        return None
    if kind == LAYERS:
        return _coerce_layers(value, field)
    if kind == CLASS_WEIGHT:
        if value not in ("balanced", "balanced_subsample"):
            # labels are re-encoded to 0..k-1 at training time, so per-label dicts cannot be honoured
            raise InvalidArgument(f"{name} must be 'balanced', 'balanced_subsample' or null", field=field)
        return value
    if isinstance(value, list | tuple | dict):
        raise InvalidArgument(f"{name} takes a single value, got {type(value).__name__}", field=field)
    if _is_number(value) and kind == INT and _whole(value):
        return int(value)
    if _is_number(value) and kind == COUNT_OR_FRACTION and _whole(value) and value > 1:
        return int(value)
    if _is_number(value) and kind in (FLOAT, COUNT_OR_FRACTION):
        return float(value)
    return value  # str/bool or a mismatched type: sklearn's own validation names the problem


def _coerce_layers(value: Any, field: str) -> tuple[int, ...]:
    sizes = list(value) if isinstance(value, list | tuple) else [value]
    if not sizes or not all(_is_number(s) and _whole(s) and s >= 1 for s in sizes):
        raise InvalidArgument("hidden_layer_sizes must be a positive whole number or a list of them", field=field)
    return tuple(int(s) for s in sizes)


def _unknown_param(estimator: Estimator, name: str) -> str:
    allowed = ", ".join(sorted(info(estimator).params))
    return f"unknown hyperparameter {name!r} for {E.Name(estimator)}; allowed: {allowed}"


def check_params(estimator: Estimator, params: dict[str, Any], field: str) -> None:
    """Rejects values sklearn's own parameter constraints reject, before any run is queued."""
    model = make_estimator(estimator, params, seed=0)
    validate = getattr(model, "_validate_params", None)
    if validate is None:  # private sklearn API; without it bad values surface as failed trials instead
        return
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # deprecation chatter is not a validation result
            validate()
    except (ValueError, TypeError) as exc:
        raise InvalidArgument(str(exc), field=field) from exc


# --- pipelines ---------------------------------------------------------------------------------------


def make_estimator(estimator: Estimator, params: dict[str, Any], seed: int) -> BaseEstimator:
    entry = info(estimator)
    cls = entry.cls
    if estimator == E.ESTIMATOR_LINEAR_REGRESSION and params.get("alpha") is not None:
        cls = Ridge
    elif estimator == E.ESTIMATOR_LINEAR_REGRESSION:
        params = {k: v for k, v in params.items() if k != "alpha"}
    model = cls(**params)
    if "random_state" in model.get_params():
        model.set_params(random_state=sklearn_seed(seed))
    return model


def sklearn_seed(seed: int) -> int:
    """sklearn wants a seed in [0, 2**32); run seeds are any int64."""
    return seed % (2**32)


def build_pipeline(estimator: Estimator, params: dict[str, Any], seed: int) -> Pipeline:
    """SimpleImputer(mean) [+ StandardScaler] + the estimator: every step has an skl2onnx converter."""
    # keep_empty_features: an all-null column still occupies its slot, so the ONNX input keeps n features
    steps: list[tuple[str, BaseEstimator]] = [("impute", SimpleImputer(strategy="mean", keep_empty_features=True))]
    if info(estimator).scale:
        steps.append(("scale", StandardScaler()))
    steps.append(("model", make_estimator(estimator, params, seed)))
    return Pipeline(steps)
