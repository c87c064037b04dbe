"""Training-spec validation: everything CreateSpec refuses, named by the field at fault.

A spec that passes can be queued: its estimator is allowed, its task and metric agree with it, and
every search-space value is one the estimator's sklearn parameters accept (the rules `search`
expands spaces by). Builds on `estimators` and `search_space`; `search` and the service build on it.
Plain Python, and CPU-bound for large spaces (every value is checked by sklearn): the service runs
it off the event loop.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

from flywheel.errors import InvalidArgument
from flywheel.v1 import common_pb2, training_pb2
from services.training import estimators
from services.training.estimators import MAX_PARAM_NAME_CHARS, E, Estimator, EstimatorInfo
from services.training.search_space import GRID, MAX_TRIALS, RANDOM, choices_of, fixed_params, strategy_of

MAX_CV_FOLDS = 20
MAX_CHOICES = MAX_TRIALS  # more choices than a search has trials could never all be tried
MAX_FEATURES = 1_000  # a dataset has at most 1,000 fields
MAX_NAME_CHARS = 256  # dataset and feature names, as ingestion caps them
MAX_METRIC_CHARS = 64
# What the registry accepts with a model version (services/registry/rules.py): a spec that breaks these
# would train for nothing and fail at registration, so CreateSpec refuses it. One tag is training's own
# ("trigger").
MAX_TAGS = 63
MAX_TAG_KEY_CHARS = 128
MAX_TAG_VALUE_CHARS = 1_024
MAX_DESCRIPTION_CHARS = 4_096
MAX_MIN_IMPROVEMENT = 1e6
MAX_COOLDOWN_S = 365 * 24 * 3600


def validate_spec(spec: training_pb2.TrainingSpec, field_prefix: str = "") -> None:
    """Raises InvalidArgument naming the TrainingSpec field at fault (prefixed, e.g. "spec.")."""
    entry = estimators.info(spec.estimator, field=f"{field_prefix}estimator")
    if spec.task and spec.task != entry.task:
        asked = common_pb2.Task.Name(spec.task) if spec.task in common_pb2.Task.values() else str(spec.task)
        raise InvalidArgument(
            f"{E.Name(spec.estimator)} is a {common_pb2.Task.Name(entry.task)} estimator, not {asked}",
            field=f"{field_prefix}task",
        )
    _validate_metric(spec, field_prefix)
    if not (spec.parity_tolerance >= 0 and math.isfinite(spec.parity_tolerance)):
        raise InvalidArgument("must be a finite number >= 0", field=f"{field_prefix}parity_tolerance")
    _validate_sizes(spec, field_prefix)
    validate_space(spec.search_space, spec.estimator, f"{field_prefix}search_space")


def _validate_sizes(spec: training_pb2.TrainingSpec, field_prefix: str) -> None:
    """The spec's free-form fields: what they may hold, and what the registry will accept of them."""
    if len(spec.dataset) > MAX_NAME_CHARS:
        raise InvalidArgument(f"at most {MAX_NAME_CHARS} characters", field=f"{field_prefix}dataset")
    if len(spec.feature_fields) > MAX_FEATURES:
        raise InvalidArgument(f"at most {MAX_FEATURES:,} features", field=f"{field_prefix}feature_fields")
    if any(len(name) > MAX_NAME_CHARS for name in spec.feature_fields):
        raise InvalidArgument(f"names of at most {MAX_NAME_CHARS} characters", field=f"{field_prefix}feature_fields")
    if len(spec.description) > MAX_DESCRIPTION_CHARS:
        raise InvalidArgument(f"at most {MAX_DESCRIPTION_CHARS:,} characters", field=f"{field_prefix}description")
    if len(spec.tags) > MAX_TAGS:
        raise InvalidArgument(f"at most {MAX_TAGS} tags", field=f"{field_prefix}tags")
    for key, value in spec.tags.items():
        if not 0 < len(key) <= MAX_TAG_KEY_CHARS:
            raise InvalidArgument(f"tag keys are 1-{MAX_TAG_KEY_CHARS} characters", field=f"{field_prefix}tags")
        if len(value) > MAX_TAG_VALUE_CHARS:
            raise InvalidArgument(
                f"tag values are at most {MAX_TAG_VALUE_CHARS:,} characters", field=f"{field_prefix}tags"
            )
    if spec.HasField("promotion_policy"):
        policy, where = spec.promotion_policy, f"{field_prefix}promotion_policy"
        if len(policy.metric) > MAX_TAG_KEY_CHARS:
            raise InvalidArgument(f"at most {MAX_TAG_KEY_CHARS} characters", field=f"{where}.metric")
        if not (math.isfinite(policy.min_improvement) and 0 <= policy.min_improvement <= MAX_MIN_IMPROVEMENT):
            raise InvalidArgument(f"must be a number in [0, {MAX_MIN_IMPROVEMENT:g}]", field=f"{where}.min_improvement")
    cooldown = spec.triggers.cooldown
    if not (0 <= cooldown.seconds <= MAX_COOLDOWN_S and 0 <= cooldown.nanos < 1_000_000_000):
        raise InvalidArgument(
            f"must be between 0 and {MAX_COOLDOWN_S:,} seconds (365 days)", field=f"{field_prefix}triggers.cooldown"
        )


def _validate_metric(spec: training_pb2.TrainingSpec, field_prefix: str) -> None:
    if len(spec.metric) > MAX_METRIC_CHARS:
        raise InvalidArgument(f"at most {MAX_METRIC_CHARS} characters", field=f"{field_prefix}metric")
    task = estimators.effective_task(spec)
    metric = estimators.effective_metric(spec)
    if metric not in estimators.metrics_for(task):
        raise InvalidArgument(
            f"metric {metric!r} is not valid for {common_pb2.Task.Name(task)}; "
            f"use one of {', '.join(estimators.metrics_for(task))}",
            field=f"{field_prefix}metric",
        )
    if spec.direction not in common_pb2.MetricDirection.values():
        raise InvalidArgument(f"unknown direction {spec.direction}", field=f"{field_prefix}direction")


def validate_space(space: training_pb2.SearchSpace, estimator: Estimator, field: str = "search_space") -> None:
    """Raises InvalidArgument naming the search_space field at fault."""
    entry = estimators.info(estimator)
    if space.strategy not in (0, GRID, RANDOM):
        raise InvalidArgument(f"unknown strategy {space.strategy}", field=f"{field}.strategy")
    if not 0 <= space.trial_budget <= MAX_TRIALS:
        raise InvalidArgument(f"must be between 0 and {MAX_TRIALS}", field=f"{field}.trial_budget")
    if not 0 <= space.cv_folds <= MAX_CV_FOLDS:
        raise InvalidArgument(
            f"must be between 0 and {MAX_CV_FOLDS} (0 or 1 = a 20% holdout)", field=f"{field}.cv_folds"
        )
    # Names end up in field paths and messages: bounded before they are used there.
    _check_names(space.params, entry, estimator, f"{field}.params")
    _check_names(space.fixed_params.fields, entry, estimator, f"{field}.fixed_params")
    fixed = fixed_params(space, estimator, f"{field}.fixed_params")
    estimators.check_params(estimator, fixed, f"{field}.fixed_params")
    for name in sorted(space.params):
        where = f"{field}.params[{name}]"
        if name in fixed:
            raise InvalidArgument(f"{name} is also in fixed_params; set it in one place", field=where)
        _validate_distribution(space, estimator, name, where)
    _validate_grid_size(space, f"{field}.trial_budget")


def _check_names(names: Iterable[str], entry: EstimatorInfo, estimator: Estimator, field: str) -> None:
    names = list(names)
    if len(names) > len(entry.params):
        raise InvalidArgument(f"{E.Name(estimator)} has only {len(entry.params)} hyperparameters", field=field)
    if any(len(name) > MAX_PARAM_NAME_CHARS for name in names):
        raise InvalidArgument(f"hyperparameter names are at most {MAX_PARAM_NAME_CHARS} characters", field=field)


def _validate_distribution(space: training_pb2.SearchSpace, estimator: Estimator, name: str, field: str) -> None:
    dist = space.params[name]
    kind = dist.WhichOneof("kind")
    if kind is None:
        raise InvalidArgument("set choices or range", field=field)
    if kind == "range":
        _validate_range(space, estimator, name, field)
        return
    if len(dist.choices.values) > MAX_CHOICES:
        raise InvalidArgument(f"at most {MAX_CHOICES:,} choices", field=field)
    values = [estimators.coerce_param(estimator, name, v, field) for v in choices_of(dist)]
    if not values:
        raise InvalidArgument("choices is empty", field=field)
    for value in values:
        estimators.check_params(estimator, {name: value}, field)


def _validate_range(space: training_pb2.SearchSpace, estimator: Estimator, name: str, field: str) -> None:
    if strategy_of(space) == GRID:
        raise InvalidArgument("grid search takes choices, not a range", field=field)
    kind = estimators.info(estimator).params.get(name)
    if kind is None:
        estimators.coerce_param(estimator, name, None, field)  # raises: unknown hyperparameter
    if kind not in estimators.NUMERIC_KINDS:
        raise InvalidArgument(f"{name} is not numeric; use choices", field=field)
    r = space.params[name].range
    if not (math.isfinite(r.low) and math.isfinite(r.high) and r.low <= r.high):
        raise InvalidArgument("range needs finite low <= high", field=field)
    if r.log and r.low <= 0:
        raise InvalidArgument("a log range needs low > 0", field=field)
    integer = r.integer or kind == estimators.INT
    if integer and math.ceil(r.low) > math.floor(r.high):
        raise InvalidArgument("an integer range must contain a whole number", field=field)
    if integer:
        ends: list[Any] = [math.ceil(r.low), math.floor(r.high)]
        for end in ends:
            estimators.check_bound(name, end, field)
    else:
        ends = [estimators.coerce_param(estimator, name, float(v), field) for v in (r.low, r.high)]
    for end in ends:
        estimators.check_params(estimator, {name: end}, field)


def _validate_grid_size(space: training_pb2.SearchSpace, field: str) -> None:
    if strategy_of(space) != GRID or space.trial_budget:
        return
    size = math.prod(len(d.choices.values) for d in space.params.values())
    if size > MAX_TRIALS:
        raise InvalidArgument(
            f"the grid has {size} combinations, more than {MAX_TRIALS}; set trial_budget", field=field
        )
