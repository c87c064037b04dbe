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

import itertools
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

try:  # private sklearn API (as is _validate_params, the fallback): checks single parameters cheaply
    from sklearn.utils._param_validation import validate_parameter_constraints as _validate_constraints
except ImportError:  # pragma: no cover - an sklearn that moved it
    _validate_constraints = None

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


# Inclusive upper bounds of every numeric hyperparameter of the allow-list (a unit test checks that each
# has one). Generous for any tabular problem, finite so that a spec cannot ask for unbounded work or
# memory; the run's timeout and memory limit bound what is left. Lower bounds, and the tighter upper
# bounds some parameters have (fractions, momentum, the quantile loss's alpha), are sklearn's own checks.
MAX_SAMPLE_COUNT = 100_000_000  # sample counts; ingestion caps one version at 50,000,000 rows
UPPER_BOUNDS: dict[str, float] = {
    # trees and ensembles
    "n_estimators": 5_000,
    "max_depth": 1_000,
    "min_samples_split": MAX_SAMPLE_COUNT,  # as a count; a fraction is at most 1
    "min_samples_leaf": MAX_SAMPLE_COUNT,
    "min_weight_fraction_leaf": 0.5,
    "max_features": 100_000,  # as a count; a dataset has at most 1,000 fields
    "max_leaf_nodes": 10_000_000,
    "min_impurity_decrease": 1_000_000_000,
    "ccp_alpha": 1_000_000_000,
    "max_samples": MAX_SAMPLE_COUNT,
    "learning_rate": 1_000,  # gradient boosting's (the MLP's is a string)
    "subsample": 1,
    "validation_fraction": 1,
    "n_iter_no_change": 100_000,
    "tol": 1_000_000_000,
    "alpha": 1_000_000_000,  # the L2 penalty of Ridge and the MLPs
    # linear models
    "C": 1_000_000_000,
    "l1_ratio": 1,
    "max_iter": 100_000,
    "intercept_scaling": 1_000_000_000,
    # MLPs
    "batch_size": 1_000_000,
    "learning_rate_init": 1_000,
    "power_t": 1_000,
    "momentum": 1,
    "beta_1": 1,
    "beta_2": 1,
    "epsilon": 1_000,
    "max_fun": 1_000_000,
}
# hidden_layer_sizes: layers, units per layer, and weights between hidden layers (sum of the products of
# adjacent widths: what the MLP allocates, several times over, before its first step).
MAX_LAYERS = 32
MAX_LAYER_WIDTH = 16_384
MAX_HIDDEN_WEIGHTS = 100_000_000
MAX_STR_CHARS = 64  # a string hyperparameter (solver, criterion, ...) names one of a few options
MAX_PARAM_NAME_CHARS = 64


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
    """Turns a JSON-ish value (from a Struct/ListValue) into what the sklearn parameter expects,
    refusing NaN, infinities and values above the parameter's bound (UPPER_BOUNDS)."""
    kind = info(estimator).params.get(name)
    if kind is None:
        raise InvalidArgument(_unknown_param(estimator, name), field=field)
    if value is None:
        return None
    if kind == LAYERS:
        return _coerce_layers(value, field)
    if isinstance(value, str) and len(value) > MAX_STR_CHARS:
        raise InvalidArgument(f"{name}: a string of at most {MAX_STR_CHARS} characters", field=field)
    if kind == CLASS_WEIGHT:
        if value not in ("balanced", "balanced_subsample"):
            # labels are re-encoded to 0..k-1 at training time, so per-label dicts cannot be honoured
            raise InvalidArgument(f"{name} must be 'balanced', 'balanced_subsample' or null", field=field)
        return value
    if isinstance(value, list | tuple | dict):
        raise InvalidArgument(f"{name} takes a single value, got {type(value).__name__}", field=field)
    if _is_number(value):
        check_bound(name, value, field)
    if _is_number(value) and kind == INT and _whole(value):
        return int(value)
    if _is_number(value) and kind == COUNT_OR_FRACTION and _whole(value) and value > 1:
        return int(value)
    if _is_number(value) and kind in (FLOAT, COUNT_OR_FRACTION):
        return float(value)
    return value  # str/bool or a mismatched type: sklearn's own validation names the problem


def check_bound(name: str, value: float, field: str) -> None:
    """InvalidArgument unless `value` is finite and within the parameter's upper bound."""
    if not math.isfinite(value):
        raise InvalidArgument(f"{name} must be a finite number", field=field)
    bound = UPPER_BOUNDS.get(name)
    if bound is not None and value > bound:
        raise InvalidArgument(f"{name} must be at most {bound:,}", field=field)


def _coerce_layers(value: Any, field: str) -> tuple[int, ...]:
    sizes = list(value) if isinstance(value, list | tuple) else [value]
    if len(sizes) > MAX_LAYERS:
        raise InvalidArgument(f"hidden_layer_sizes: at most {MAX_LAYERS} layers", field=field)
    if not sizes or not all(_is_number(s) and _whole(s) and s >= 1 for s in sizes):
        raise InvalidArgument("hidden_layer_sizes must be a positive whole number or a list of them", field=field)
    widths = [int(s) for s in sizes]
    if max(widths) > MAX_LAYER_WIDTH:
        raise InvalidArgument(f"hidden_layer_sizes: at most {MAX_LAYER_WIDTH:,} units per layer", field=field)
    if sum(a * b for a, b in itertools.pairwise(widths)) > MAX_HIDDEN_WEIGHTS:
        raise InvalidArgument(
            f"hidden_layer_sizes: at most {MAX_HIDDEN_WEIGHTS:,} weights between hidden layers"
            " (the sum of the products of adjacent widths)",
            field=field,
        )
    return tuple(widths)


def _unknown_param(estimator: Estimator, name: str) -> str:
    allowed = ", ".join(sorted(info(estimator).params))
    shown = repr(name) if len(name) <= MAX_PARAM_NAME_CHARS else f"of {len(name)} characters"
    return f"unknown hyperparameter {shown} for {E.Name(estimator)}; allowed: {allowed}"


def check_params(estimator: Estimator, params: dict[str, Any], field: str) -> None:
    """Rejects values sklearn's own parameter constraints reject, before any run is queued.

    Only the given parameters are checked (the others keep sklearn's defaults, which are valid), against
    the class's constraint table: about 2 µs a value rather than 150 µs for building and validating a
    whole estimator, so the largest space a spec may hold is checked in well under a second."""
    cls = _model_class(estimator, params)
    if estimator == E.ESTIMATOR_LINEAR_REGRESSION and params.get("alpha") is None:
        params = {k: v for k, v in params.items() if k != "alpha"}
    constraints = getattr(cls, "_parameter_constraints", None)  # private sklearn API, like the fallback
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # deprecation chatter is not a validation result
            if _validate_constraints is not None and isinstance(constraints, dict):
                checked = {k: constraints[k] for k in params if k in constraints}
                _validate_constraints(checked, params, caller_name=cls.__name__)
                return
            validate = getattr(cls(**params), "_validate_params", None)
            if validate is not None:  # without it bad values surface as failed trials instead
                validate()
    except (ValueError, TypeError) as exc:
        raise InvalidArgument(str(exc), field=field) from exc


# --- pipelines ---------------------------------------------------------------------------------------


def _model_class(estimator: Estimator, params: dict[str, Any]) -> type[BaseEstimator]:
    if estimator == E.ESTIMATOR_LINEAR_REGRESSION and params.get("alpha") is not None:
        return Ridge
    return info(estimator).cls


def make_estimator(estimator: Estimator, params: dict[str, Any], seed: int) -> BaseEstimator:
    cls = _model_class(estimator, params)
    if estimator == E.ESTIMATOR_LINEAR_REGRESSION and params.get("alpha") is None:
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
