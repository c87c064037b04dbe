"""Reading a SearchSpace message: its values as Python, the strategy in effect, its fixed params.

Shared by `spec_validation` (which checks a space) and `search` (which expands it into trials);
it builds only on `estimators`.
"""

from __future__ import annotations

from typing import Any, TypeAlias

from google.protobuf import struct_pb2

from flywheel.v1 import training_pb2
from services.training import estimators

Strategy: TypeAlias = training_pb2.SearchStrategy.ValueType
GRID = training_pb2.SEARCH_STRATEGY_GRID
RANDOM = training_pb2.SEARCH_STRATEGY_RANDOM
DEFAULT_RANDOM_TRIALS = 10
MAX_TRIALS = 1000


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


def strategy_of(space: training_pb2.SearchSpace) -> Strategy:
    """The strategy set, or GRID when every parameter lists `choices` and RANDOM otherwise."""
    if space.strategy:
        return space.strategy
    all_choices = all(d.WhichOneof("kind") == "choices" for d in space.params.values())
    return GRID if all_choices else RANDOM


def choices_of(dist: training_pb2.ParamDistribution) -> list[Any]:
    """A distribution's `choices` as plain Python, not yet coerced."""
    return [value_to_py(v) for v in dist.choices.values]


def coerced_choices(space: training_pb2.SearchSpace, estimator: estimators.Estimator, name: str) -> list[Any]:
    field = f"search_space.params[{name}]"
    return [estimators.coerce_param(estimator, name, v, field) for v in choices_of(space.params[name])]


def fixed_params(space: training_pb2.SearchSpace, estimator: estimators.Estimator, field: str) -> dict[str, Any]:
    """`fixed_params` coerced to what sklearn expects (InvalidArgument names `field`.<param>)."""
    return {
        name: estimators.coerce_param(estimator, name, value_to_py(value), f"{field}.{name}")
        for name, value in sorted(space.fixed_params.fields.items())
    }
