"""Hyperparameter search spaces -> the list of trial parameter dicts (grid or random), deterministic.

Rules (also what validate_space enforces):
- Strategy UNSPECIFIED means GRID when every parameter lists `choices`, RANDOM otherwise.
- GRID: the cartesian product of `choices` (parameters in name order, choices in given order);
  a `range` is an error. trial_budget > 0 keeps the first trial_budget combinations; with
  trial_budget 0 a grid larger than MAX_TRIALS is an error.
- RANDOM: trial_budget samples (default DEFAULT_RANDOM_TRIALS) from numpy's PCG64 seeded with the
  search seed. When every parameter lists choices, combinations are drawn without replacement
  (so at most the grid size trials). Ranges honour `log` and `integer`; parameters sklearn needs
  as int are sampled as integers even when `integer` is not set.
- `fixed_params` are merged into every trial; naming a parameter in both is an error.
- No parameters at all: one trial with the estimator's defaults (plus fixed_params).
"""

from __future__ import annotations

import itertools
import math
from typing import Any

import numpy as np
from google.protobuf import struct_pb2

from flywheel.errors import InvalidArgument
from flywheel.v1 import training_pb2
from services.training import estimators

GRID = training_pb2.SEARCH_STRATEGY_GRID
RANDOM = training_pb2.SEARCH_STRATEGY_RANDOM
DEFAULT_RANDOM_TRIALS = 10
MAX_TRIALS = 1000
_MAX_PERMUTATION = 1_000_000  # above this many grid points, sample distinct points by rejection


def value_to_py(value: struct_pb2.Value) -> Any:
    """A protobuf Value as plain Python (numbers stay float; coercion to int happens per parameter)."""
    kind = value.WhichOneof("kind")
    if kind == "list_value":
        return [value_to_py(v) for v in value.list_value.values]
    if kind == "struct_value":
        return {k: value_to_py(v) for k, v in value.struct_value.fields.items()}
    if kind in (None, "null_value"):
        return None
    return getattr(value, kind)


def strategy_of(space: training_pb2.SearchSpace) -> int:
    if space.strategy:
        return space.strategy
    all_choices = all(d.WhichOneof("kind") == "choices" for d in space.params.values())
    return GRID if all_choices else RANDOM


def trials(space: training_pb2.SearchSpace, estimator: int, seed: int | None = None) -> list[dict[str, Any]]:
    """The trials' sklearn-ready parameter dicts. `seed` overrides space.seed (StartRun's seed)."""
    validate_space(space, estimator)
    fixed = _fixed_params(space, estimator, "search_space.fixed_params")
    names = sorted(space.params)
    if not names:
        return [dict(fixed)]
    rng = np.random.default_rng(_rng_seed(space.seed if seed is None else seed))
    if strategy_of(space) == GRID:
        combos = _grid(space, estimator, names)
    else:
        combos = _random(space, estimator, names, rng)
    return [{**fixed, **combo} for combo in combos]


def _rng_seed(seed: int) -> int:
    return seed % (2**64)  # numpy seeds must be non-negative; int64 seeds map one-to-one


def _choices(space: training_pb2.SearchSpace, estimator: int, name: str) -> list[Any]:
    field = f"search_space.params[{name}]"
    values = [value_to_py(v) for v in space.params[name].choices.values]
    return [estimators.coerce_param(estimator, name, v, field) for v in values]


def _grid(space: training_pb2.SearchSpace, estimator: int, names: list[str]) -> list[dict[str, Any]]:
    columns = [_choices(space, estimator, n) for n in names]
    limit = space.trial_budget or MAX_TRIALS
    return [dict(zip(names, combo, strict=True)) for combo in itertools.islice(itertools.product(*columns), limit)]


def _random(
    space: training_pb2.SearchSpace, estimator: int, names: list[str], rng: np.random.Generator
) -> list[dict[str, Any]]:
    budget = space.trial_budget or DEFAULT_RANDOM_TRIALS
    if all(space.params[n].WhichOneof("kind") == "choices" for n in names):
        return _random_choices(space, estimator, names, budget, rng)
    out = []
    for _ in range(budget):
        out.append({n: _sample(space.params[n], estimator, n, rng) for n in names})
    return out


def _random_choices(
    space: training_pb2.SearchSpace, estimator: int, names: list[str], budget: int, rng: np.random.Generator
) -> list[dict[str, Any]]:
    """Distinct grid points in random order: re-running an identical trial teaches nothing."""
    columns = [_choices(space, estimator, n) for n in names]
    sizes = [len(c) for c in columns]
    total = math.prod(sizes)
    count = min(budget, total)
    if total <= _MAX_PERMUTATION:
        flat = [int(i) for i in rng.permutation(total)[:count]]
    else:
        seen: dict[int, None] = {}  # insertion-ordered set
        while len(seen) < count:
            seen.setdefault(int(rng.integers(total)), None)
        flat = list(seen)
    return [_decode(i, names, columns, sizes) for i in flat]


def _decode(index: int, names: list[str], columns: list[list[Any]], sizes: list[int]) -> dict[str, Any]:
    """Mixed-radix index -> one value per parameter (last parameter varies fastest, like the grid)."""
    picked: list[Any] = []
    for column, size in zip(reversed(columns), reversed(sizes), strict=True):
        index, digit = divmod(index, size)
        picked.append(column[digit])
    return dict(zip(names, reversed(picked), strict=True))


def _sample(dist: training_pb2.ParamDistribution, estimator: int, name: str, rng: np.random.Generator) -> Any:
    field = f"search_space.params[{name}]"
    if dist.WhichOneof("kind") == "choices":
        values = _choices_of(dist)
        return estimators.coerce_param(estimator, name, values[int(rng.integers(len(values)))], field)
    r = dist.range
    integer = r.integer or estimators.info(estimator).params[name] == estimators.INT
    if r.log:
        value = math.exp(rng.uniform(math.log(r.low), math.log(r.high)))
        if integer:
            value = min(max(round(value), math.ceil(r.low)), math.floor(r.high))
    elif integer:
        value = int(rng.integers(math.ceil(r.low), math.floor(r.high) + 1))
    else:
        value = float(rng.uniform(r.low, r.high))
    if integer:  # an integer range means counts, even for count-or-fraction parameters (1 = one)
        return int(value)
    return estimators.coerce_param(estimator, name, float(value), field)


def _choices_of(dist: training_pb2.ParamDistribution) -> list[Any]:
    return [value_to_py(v) for v in dist.choices.values]


def _fixed_params(space: training_pb2.SearchSpace, estimator: int, field: str) -> dict[str, Any]:
    return {
        name: estimators.coerce_param(estimator, name, value_to_py(value), f"{field}.{name}")
        for name, value in sorted(space.fixed_params.fields.items())
    }


# --- validation -------------------------------------------------------------------------------------


def validate_space(space: training_pb2.SearchSpace, estimator: int, field: str = "search_space") -> None:
    """Raises InvalidArgument naming the search_space field at fault."""
    estimators.info(estimator)
    if space.strategy not in (0, GRID, RANDOM):
        raise InvalidArgument(f"unknown strategy {space.strategy}", field=f"{field}.strategy")
    if not 0 <= space.trial_budget <= MAX_TRIALS:
        raise InvalidArgument(f"must be between 0 and {MAX_TRIALS}", field=f"{field}.trial_budget")
    if space.cv_folds < 0:
        raise InvalidArgument("must be >= 0 (0 or 1 = a 20% holdout)", field=f"{field}.cv_folds")
    fixed = _fixed_params(space, estimator, f"{field}.fixed_params")
    estimators.check_params(estimator, fixed, f"{field}.fixed_params")
    for name in sorted(space.params):
        where = f"{field}.params[{name}]"
        if name in fixed:
            raise InvalidArgument(f"{name} is also in fixed_params; set it in one place", field=where)
        _validate_distribution(space, estimator, name, where)
    _validate_grid_size(space, f"{field}.trial_budget")


def _validate_distribution(space: training_pb2.SearchSpace, estimator: int, name: str, field: str) -> None:
    dist = space.params[name]
    kind = dist.WhichOneof("kind")
    if kind is None:
        raise InvalidArgument("set choices or range", field=field)
    if kind == "range":
        _validate_range(space, estimator, name, field)
        return
    values = [estimators.coerce_param(estimator, name, v, field) for v in _choices_of(dist)]
    if not values:
        raise InvalidArgument("choices is empty", field=field)
    for value in values:
        estimators.check_params(estimator, {name: value}, field)


def _validate_range(space: training_pb2.SearchSpace, estimator: int, name: str, field: str) -> None:
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
