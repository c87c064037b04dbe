"""Hyperparameter search spaces -> the list of trial parameter dicts (grid or random), deterministic.

Rules (spec_validation.validate_space enforces them; `trials` validates the space first):
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

from flywheel.v1 import training_pb2
from services.training import estimators
from services.training.estimators import Estimator
from services.training.search_space import (
    DEFAULT_RANDOM_TRIALS,
    GRID,
    MAX_TRIALS,
    choices_of,
    coerced_choices,
    fixed_params,
    strategy_of,
)
from services.training.spec_validation import validate_space

_MAX_PERMUTATION = 1_000_000  # above this many grid points, sample distinct points by rejection


def trials(space: training_pb2.SearchSpace, estimator: Estimator, seed: int | None = None) -> list[dict[str, Any]]:
    """The trials' sklearn-ready parameter dicts. `seed` overrides space.seed (StartRun's seed)."""
    validate_space(space, estimator)
    fixed = fixed_params(space, estimator, "search_space.fixed_params")
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


def _grid(space: training_pb2.SearchSpace, estimator: Estimator, names: list[str]) -> list[dict[str, Any]]:
    columns = [coerced_choices(space, estimator, n) for n in names]
    limit = space.trial_budget or MAX_TRIALS
    return [dict(zip(names, combo, strict=True)) for combo in itertools.islice(itertools.product(*columns), limit)]


def _random(
    space: training_pb2.SearchSpace, estimator: Estimator, names: list[str], rng: np.random.Generator
) -> list[dict[str, Any]]:
    budget = space.trial_budget or DEFAULT_RANDOM_TRIALS
    if all(space.params[n].WhichOneof("kind") == "choices" for n in names):
        return _random_choices(space, estimator, names, budget, rng)
    out = []
    for _ in range(budget):
        out.append({n: _sample(space.params[n], estimator, n, rng) for n in names})
    return out


def _random_choices(
    space: training_pb2.SearchSpace, estimator: Estimator, names: list[str], budget: int, rng: np.random.Generator
) -> list[dict[str, Any]]:
    """Distinct grid points in random order: re-running an identical trial teaches nothing."""
    columns = [coerced_choices(space, estimator, n) for n in names]
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


def _sample(dist: training_pb2.ParamDistribution, estimator: Estimator, name: str, rng: np.random.Generator) -> Any:
    field = f"search_space.params[{name}]"
    if dist.WhichOneof("kind") == "choices":
        values = choices_of(dist)
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
