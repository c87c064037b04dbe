"""Registry rules: names, aliases, metric extraction for search. Plain Python, no gRPC or Kafka."""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping, Sequence

from flywheel.errors import FailedPrecondition, InvalidArgument
from flywheel.v1 import common_pb2
from services.registry import rollout

NAME = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,127}$")
ALIAS = re.compile(r"^[a-z][a-z0-9_-]{0,63}$")
PRODUCTION = "production"
GUARD_ACTOR = "guard"  # monitoring's post-promotion guard, in audit rows and events
KNOWN_ALIASES = ("production", "staging", "champion")
FORMATS = ("onnx",)
# What a version's metadata may hold: it is copied into model.registered and model.promoted events,
# which must stay far below the broker's message limit whatever a caller sends.
MAX_TAGS = 64
MAX_TAG_KEY_CHARS = 128
MAX_TAG_VALUE_CHARS = 1024
MAX_TEXT_CHARS = 4096
MAX_METRICS = 1000
MAX_IMPROVEMENT = 1e6


def check_name(name: str, field: str = "name") -> str:
    if not NAME.match(name or ""):
        raise InvalidArgument("not a valid model name ([a-z0-9][a-z0-9_.-]*, at most 128 characters)", field=field)
    return name


def check_alias(alias: str) -> str:
    if not ALIAS.match(alias or ""):
        raise InvalidArgument("not a valid alias ([a-z][a-z0-9_-]*, at most 64 characters)", field="alias")
    return alias


def check_format(fmt: str) -> str:
    fmt = fmt or "onnx"
    if fmt not in FORMATS:
        raise InvalidArgument(f"unsupported format; supported: {', '.join(FORMATS)}", field="format")
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


def check_tags(tags: Mapping[str, str], field: str = "tags") -> None:
    if len(tags) > MAX_TAGS:
        raise InvalidArgument(f"at most {MAX_TAGS} tags", field=field)
    for key, value in tags.items():
        if not 0 < len(key) <= MAX_TAG_KEY_CHARS:
            raise InvalidArgument(f"tag keys are 1-{MAX_TAG_KEY_CHARS} characters", field=field)
        if len(value) > MAX_TAG_VALUE_CHARS:
            raise InvalidArgument(f"tag {key!r}: at most {MAX_TAG_VALUE_CHARS} characters", field=field)


def check_text(text: str, field: str) -> None:
    if len(text) > MAX_TEXT_CHARS:
        raise InvalidArgument(f"at most {MAX_TEXT_CHARS} characters", field=field)


def check_metrics(metrics: Sequence[common_pb2.Metric], field: str = "metrics") -> None:
    if len(metrics) > MAX_METRICS:
        raise InvalidArgument(f"at most {MAX_METRICS} metrics", field=field)
    for i, m in enumerate(metrics):
        if not m.name or len(m.name) > MAX_TAG_KEY_CHARS:
            raise InvalidArgument(f"a metric needs a name of 1-{MAX_TAG_KEY_CHARS} characters", field=f"{field}[{i}]")
        if not math.isfinite(m.value):
            raise InvalidArgument("must be a finite number", field=f"{field}[{i}].value")


def check_policy(policy: common_pb2.PromotionPolicy, field: str = "policy") -> None:
    if not policy.metric:
        raise InvalidArgument("a policy needs a metric", field=f"{field}.metric")
    if len(policy.metric) > MAX_TAG_KEY_CHARS:
        raise InvalidArgument(f"at most {MAX_TAG_KEY_CHARS} characters", field=f"{field}.metric")
    if not (math.isfinite(policy.min_improvement) and 0 <= policy.min_improvement <= MAX_IMPROVEMENT):
        raise InvalidArgument(f"must be a number in [0, {MAX_IMPROVEMENT:g}]", field=f"{field}.min_improvement")
    if policy.HasField("rollout"):
        rollout.check(policy.rollout, f"{field}.rollout")
