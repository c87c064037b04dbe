"""Live comparisons of a challenger with production (plain Python and NumPy; the service reads the
rows and runs this off the event loop): a shadow on the same requests, a canary over the same period.

Rows are paired by (request_id, row_index): serving logs the challenger's answer under the request
id of production's. Classification compares the predicted class ("class" output, else the class of
the "label" index), regression the "variable" output. Rows with a feedback label give both models'
live quality on exactly those rows, through the same code as quality windows (quality.py).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from flywheel import histograms
from flywheel.v1 import common_pb2, monitoring_pb2
from services.monitoring.drift import psi
from services.monitoring.quality import quality_report
from services.monitoring.windows import Task

M = monitoring_pb2
DEFAULT_ROWS = 10_000
MAX_ROWS = 100_000


@dataclass(frozen=True)
class Side:
    """One model's answers to the paired rows, in pair order."""

    outputs: Sequence[dict[str, Any]]
    latency_ms: np.ndarray


def predicted_class(output: dict[str, Any], class_labels: Sequence[str]) -> str | None:
    """The class a stored output names: its "class", else the class of its "label" index."""
    value = output.get("class")
    while isinstance(value, list) and len(value) == 1:
        value = value[0]
    if isinstance(value, str):
        return value
    label = output.get("label")
    while isinstance(label, list) and len(label) == 1:
        label = label[0]
    if isinstance(label, int | float) and not isinstance(label, bool) and float(label).is_integer():
        index = int(label)
        return class_labels[index] if 0 <= index < len(class_labels) else None
    return None


def predicted_value(output: dict[str, Any]) -> float:
    """The "variable" output as a float; NaN when it is not one finite number."""
    v = output.get("variable")
    while isinstance(v, list) and len(v) == 1:
        v = v[0]
    if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
        return math.nan
    return float(v)


def label_text(v: Any) -> str:
    """A feedback label as a class name: JSON's 1.0 and 1 name the same class (as quality windows read it)."""
    if isinstance(v, float) and v.is_integer():
        return str(int(v))
    return str(v)


def latency(ms: np.ndarray) -> M.LatencySummary:
    if len(ms) == 0:
        return M.LatencySummary()
    return M.LatencySummary(
        p50_ms=float(np.percentile(ms, 50)), p99_ms=float(np.percentile(ms, 99)), mean_ms=float(ms.mean())
    )


def compare(
    task: Task, class_labels: Sequence[str], production: Side, challenger: Side, labels: Sequence[Any]
) -> M.ShadowComparison:
    """The comparison of paired rows (`labels`: the feedback label per pair, None where there is none)."""
    n = len(production.outputs)
    out = M.ShadowComparison(
        rows=n, production_latency=latency(production.latency_ms), challenger_latency=latency(challenger.latency_ms)
    )
    if task == common_pb2.TASK_REGRESSION:
        p = np.array([predicted_value(o) for o in production.outputs], dtype=np.float64)
        c = np.array([predicted_value(o) for o in challenger.outputs], dtype=np.float64)
        both = ~np.isnan(p) & ~np.isnan(c)
        if both.any():
            out.mean_abs_difference = float(np.abs(c[both] - p[both]).mean())
        preds: tuple[np.ndarray, np.ndarray] = (p, c)
    else:
        pc = [predicted_class(o, class_labels) for o in production.outputs]
        cc = [predicted_class(o, class_labels) for o in challenger.outputs]
        if n:
            out.agreement = sum(a is not None and a == b for a, b in zip(pc, cc, strict=True)) / n
        preds = (np.array(pc, dtype=object), np.array(cc, dtype=object))
    labelled = np.array([label is not None for label in labels], dtype=bool)
    out.labelled_rows = int(labelled.sum())
    if out.labelled_rows:
        given = [label for label in labels if label is not None]
        if task == common_pb2.TASK_REGRESSION:
            y = np.array([predicted_value({"variable": v}) for v in given], dtype=np.float64)
        else:
            y = np.array([label_text(v) for v in given], dtype=object)
        threshold = M.QualityThreshold()
        for side, target in ((preds[0], out.production_quality), (preds[1], out.challenger_quality)):
            report = quality_report(task, "", y, side[labelled], None, class_labels, math.nan, threshold)
            target.extend(m for m in report.metrics if not m.class_label)
    return out


def _psi(task: Task, class_labels: Sequence[str], canary: Side, production: Side) -> float:
    """PSI of the canary's predictions against production's: over the classes (and "no class"), or
    over the bins of production's deciles (flywheel.histograms)."""
    if task == common_pb2.TASK_REGRESSION:
        p = np.array([predicted_value(o) for o in production.outputs], dtype=np.float64)
        c = np.array([predicted_value(o) for o in canary.outputs], dtype=np.float64)
        p, c = p[~np.isnan(p)], c[~np.isnan(c)]
        if len(p) == 0 or len(c) == 0:
            return math.nan
        edges = histograms.decile_edges(p)
        return psi(histograms.bin_counts(edges, p), histograms.bin_counts(edges, c))
    buckets = [*class_labels, ""]
    expected, actual = class_counts(class_labels, production), class_counts(class_labels, canary)
    return psi(np.array([expected.get(b, 0) for b in buckets]), np.array([actual.get(b, 0) for b in buckets]))


def class_counts(class_labels: Sequence[str], side: Side) -> dict[str, int]:
    """Rows per predicted class of the side's answers ("" = no class of the signature could be read)."""
    known = set(class_labels)
    counts: dict[str, int] = {}
    for o in side.outputs:
        c = predicted_class(o, class_labels)
        key = c if c in known else ""
        counts[key] = counts.get(key, 0) + 1
    return counts


def _quality(task: Task, class_labels: Sequence[str], outputs: Sequence[dict[str, Any]], labels: Sequence[Any]) -> list[
    common_pb2.Metric
]:  # fmt: skip
    if not outputs:
        return []
    if task == common_pb2.TASK_REGRESSION:
        y = np.array([predicted_value({"variable": v}) for v in labels], dtype=np.float64)
        pred = np.array([predicted_value(o) for o in outputs], dtype=np.float64)
    else:
        y = np.array([label_text(v) for v in labels], dtype=object)
        pred = np.array([predicted_class(o, class_labels) for o in outputs], dtype=object)
    report = quality_report(task, "", y, pred, None, class_labels, math.nan, M.QualityThreshold())
    return [m for m in report.metrics if not m.class_label]


def canary_report(
    task: Task,
    class_labels: Sequence[str],
    canary: Side,
    production: Side,
    canary_labelled: tuple[Sequence[dict[str, Any]], Sequence[Any]],
    production_labelled: tuple[Sequence[dict[str, Any]], Sequence[Any]],
) -> M.CanaryReport:
    """A canary against production over one period: they answered different requests, so predictions
    compare as distributions (PSI) and quality on each one's own labelled rows ((outputs, labels))."""
    out = M.CanaryReport(
        canary_rows=len(canary.outputs), production_rows=len(production.outputs),
        canary_latency=latency(canary.latency_ms), production_latency=latency(production.latency_ms),
        canary_labelled_rows=len(canary_labelled[0]), production_labelled_rows=len(production_labelled[0]),
    )  # fmt: skip
    out.prediction_psi = _psi(task, class_labels, canary, production) if canary.outputs and production.outputs else 0.0
    if task != common_pb2.TASK_REGRESSION:
        out.canary_classes.update(class_counts(class_labels, canary))
        out.production_classes.update(class_counts(class_labels, production))
    out.canary_quality.extend(_quality(task, class_labels, *canary_labelled))
    out.production_quality.extend(_quality(task, class_labels, *production_labelled))
    return out
