"""Registry rules: names, aliases, metric extraction for search. Plain Python, no gRPC or Kafka."""

from __future__ import annotations

import re
from collections.abc import Iterable

from flywheel.errors import FailedPrecondition, InvalidArgument
from flywheel.v1 import common_pb2

NAME = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,127}$")
ALIAS = re.compile(r"^[a-z][a-z0-9_-]{0,63}$")
PRODUCTION = "production"
KNOWN_ALIASES = ("production", "staging", "champion")
FORMATS = ("onnx",)


def check_name(name: str, field: str = "name") -> str:
    if not NAME.match(name or ""):
        raise InvalidArgument(f"{name!r} is not a valid model name ([a-z0-9][a-z0-9_.-]*)", field=field)
    return name


def check_alias(alias: str) -> str:
    if not ALIAS.match(alias or ""):
        raise InvalidArgument(f"{alias!r} is not a valid alias ([a-z][a-z0-9_-]*)", field="alias")
    return alias


def check_format(fmt: str) -> str:
    fmt = fmt or "onnx"
    if fmt not in FORMATS:
        raise InvalidArgument(f"unsupported format {fmt!r}; supported: {', '.join(FORMATS)}", field="format")
    return fmt


def check_signature(signature: common_pb2.ModelSignature) -> None:
    if not signature.inputs:
        raise InvalidArgument("a model needs at least one input tensor", field="signature.inputs")
    if not signature.outputs:
        raise InvalidArgument("a model needs at least one output tensor", field="signature.outputs")


def metric_values(metrics: Iterable[common_pb2.Metric]) -> dict[str, float]:
    """Aggregate metrics by name for search and ordering; the test split wins over others."""
    values: dict[str, float] = {}
    for m in metrics:
        if m.class_label:
            continue
        if m.name not in values or m.split == common_pb2.SPLIT_TEST:
            values[m.name] = m.value
    return values


def check_archivable(aliases: list[str]) -> None:
    if PRODUCTION in aliases:
        raise FailedPrecondition(
            "the version holds the production alias; move or delete the alias first", field="version"
        )
