"""Model quality from feedback labels, and segment analysis (per-segment quality, prediction rates, gaps).

Metrics come from flywheel.evaluation, the same code that scored the model's test split, so a
window's accuracy/F1/MAE/RMSE means what the recorded test metric means.

Labels: for classification y_true/y_pred are class indices (integer arrays; negative or NaN = no
label) or class label text (None = no label); a label outside class_labels becomes an extra
"__other__" class, so it counts as a wrong prediction rather than vanishing. For regression they are
numbers, NaN = no label. Rows without a label still count in a segment's rows and prediction rates.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence

import numpy as np
import pandas as pd

from flywheel import evaluation
from flywheel.v1 import common_pb2, monitoring_pb2
from services.monitoring.drift import OTHER
from services.monitoring.windows import DEFAULTS, Task, to_category, to_numeric

NULL_SEGMENT = "__null__"
_UNSPECIFIED = common_pb2.SPLIT_UNSPECIFIED


def default_metric(task: Task) -> str:
    return "mae" if task == common_pb2.TASK_REGRESSION else "accuracy"


def _class_indices(values: np.ndarray, class_labels: Sequence[str]) -> np.ndarray:
    """Class index per row, -1 for no label, len(class_labels) for a label not among them."""
    arr = np.asarray(values)
    k = len(class_labels)
    if arr.dtype.kind in "iu":
        idx = arr.astype(np.int64)
        return np.where(idx >= k, k, idx)
    if arr.dtype.kind == "f":
        idx = np.where(np.isnan(arr), -1, arr).astype(np.int64)
        return np.where(idx >= k, k, idx)
    text, _ = to_category(arr)
    missing = pd.isna(text)
    idx = pd.Index(list(class_labels), dtype=object).get_indexer(text)
    unknown = (idx < 0) & ~missing
    if unknown.any():
        # Training names classes by str(value) ("True"); JSON feedback may spell it "true".
        lowered = pd.Index([c.lower() for c in class_labels], dtype=object)
        if lowered.is_unique:
            idx[unknown] = lowered.get_indexer(pd.Series(text[unknown], dtype=object).str.lower())
    idx[idx < 0] = k
    idx[missing] = -1
    return idx


def _encoded(
    task: Task, y_true: np.ndarray, y_pred: np.ndarray, class_labels: Sequence[str]
) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[str]]:
    """(y_true, y_pred, labelled mask, class labels incl. OTHER when used); numbers for regression."""
    if len(y_true) != len(y_pred):
        raise ValueError(f"y_true has {len(y_true)} rows, y_pred {len(y_pred)}")
    if task == common_pb2.TASK_REGRESSION:
        t, _ = to_numeric(y_true)
        p, _ = to_numeric(y_pred)
        return t, p, ~np.isnan(t) & ~np.isnan(p), []
    t = _class_indices(y_true, class_labels)
    p = _class_indices(y_pred, class_labels)
    labels = list(class_labels)
    p = np.where(p < 0, len(labels), p)  # no prediction is never right
    if (t == len(labels)).any() or (p == len(labels)).any():
        labels.append(OTHER)
    return t, p, t >= 0, labels


def _evaluate(
    task: Task, t: np.ndarray, p: np.ndarray, proba: np.ndarray | None, labels: list[str]
) -> list[common_pb2.Metric]:
    if task == common_pb2.TASK_REGRESSION:
        return list(evaluation.regression_metrics(t, p, split=_UNSPECIFIED).metrics)
    if proba is not None and proba.shape[1] < len(labels):  # OTHER was added: it has no probability
        proba = np.hstack([proba, np.zeros((len(proba), len(labels) - proba.shape[1]))])
    return list(evaluation.classification_metrics(t, p, proba, labels, split=_UNSPECIFIED).metrics)


def _value(metrics: list[common_pb2.Metric], name: str) -> float:
    return next((m.value for m in metrics if m.name == name and not m.class_label), math.nan)


def _worse_by(value: float, reference: float, metric: str) -> float:
    """How much worse `value` is than `reference` (positive = worse), in the metric's direction."""
    if evaluation.default_direction(metric) == evaluation.MINIMIZE:
        return value - reference
    return reference - value


def quality_report(
    task: Task,
    metric: str,
    y_true: np.ndarray,
    y_pred: np.ndarray,
    proba: np.ndarray | None,
    class_labels: Sequence[str],
    reference_value: float,
    threshold: monitoring_pb2.QualityThreshold,
) -> monitoring_pb2.QualityReport:
    """Quality of the labelled rows and its drop against the model's recorded test metric.

    The metric is threshold.metric, else `metric` (the training spec's), else accuracy/mae. It breaches
    when at least min_labelled_rows rows are labelled and the drop exceeds max_drop (0 = the default).
    value is NaN when the metric is undefined on the window (no labels; roc_auc without proba or with
    one class); a NaN value or reference never breaches.
    """
    name = threshold.metric or metric or default_metric(task)
    t, p, labelled, labels = _encoded(task, np.asarray(y_true), np.asarray(y_pred), class_labels)
    n = int(np.count_nonzero(labelled))
    report = monitoring_pb2.QualityReport(labelled_rows=n, metric=name, reference_value=float(reference_value))
    value = math.nan
    if n:
        probs = np.asarray(proba, dtype=np.float64)[labelled] if proba is not None else None
        metrics = _evaluate(task, t[labelled], p[labelled], probs, labels)
        report.metrics.extend(metrics)
        value = _value(metrics, name)
    report.value = value
    drop = _worse_by(value, reference_value, name)
    report.drop = drop
    min_rows = threshold.min_labelled_rows or DEFAULTS.min_labelled_rows
    max_drop = threshold.max_drop or DEFAULTS.max_quality_drop
    report.breached = bool(n >= min_rows and not math.isnan(drop) and drop > max_drop)
    return report


def _fmt(x: float) -> str:
    return f"{x:g}"


def _segment_codes(config: monitoring_pb2.SegmentConfig, column: np.ndarray) -> tuple[list[str], np.ndarray]:
    """(segment names, segment index per row) for one configured field; nulls form NULL_SEGMENT."""
    if config.bucket_edges:
        edges = np.unique(np.asarray(config.bucket_edges, dtype=np.float64))
        names = [f"< {_fmt(edges[0])}"]
        names += [f"[{_fmt(lo)}, {_fmt(hi)})" for lo, hi in itertools.pairwise(edges)]
        names.append(f">= {_fmt(edges[-1])}")
        values, _ = to_numeric(column)
        codes = np.searchsorted(edges, values, side="right")  # 0: below e0, i: [e_{i-1}, e_i), k: >= e_{k-1}
        codes[np.isnan(values)] = len(names)
    else:
        text, _ = to_category(column)
        codes, uniques = pd.factorize(pd.Series(text, dtype=object), sort=True, use_na_sentinel=True)
        names = [str(u) for u in uniques]
        codes = np.where(codes < 0, len(names), codes)
    return [*names, NULL_SEGMENT], np.asarray(codes, dtype=np.int64)


def _rates(task: Task, p: np.ndarray, labels: list[str], k: int) -> list[common_pb2.Metric]:
    """Prediction rates of a segment: per class (and "positive_rate" when binary), or the mean prediction."""
    if not len(p):
        return []
    if task == common_pb2.TASK_REGRESSION:
        present = p[~np.isnan(p)]
        return [common_pb2.Metric(name="mean_prediction", value=float(np.mean(present)))] if len(present) else []
    shares = np.bincount(p, minlength=len(labels)) / len(p)
    out = [
        common_pb2.Metric(name="prediction_rate", value=float(s), class_label=c)
        for c, s in zip(labels, shares, strict=True)
    ]
    if k == 2:
        out.insert(0, common_pb2.Metric(name="positive_rate", value=float(shares[1])))
    return out


def segment_report(
    configs: Sequence[monitoring_pb2.SegmentConfig],
    values: dict[str, np.ndarray],
    y_true: np.ndarray,
    y_pred: np.ndarray,
    task: Task,
    class_labels: Sequence[str],
) -> tuple[list[monitoring_pb2.SegmentStats], list[monitoring_pb2.SegmentGap]]:
    """Per configured field: one segment per value (or bucket), its quality and prediction rates; the gap.

    A segment is judged (breached, ranked for the gap) when it has at least min_rows labelled rows
    (default 30) and its metric is defined: breached when the metric is below min_value (above it for
    error metrics). gap = best - worst metric among judged segments (>= 2 of them), breached above max_gap.
    Fields absent from `values` are skipped.
    """
    t, p, labelled, labels = _encoded(task, np.asarray(y_true), np.asarray(y_pred), class_labels)
    segments: list[monitoring_pb2.SegmentStats] = []
    gaps: list[monitoring_pb2.SegmentGap] = []
    for config in configs:
        column = values.get(config.field)
        if column is None:
            continue
        if len(column) != len(p):
            raise ValueError(f"segment field {config.field!r} has {len(column)} rows, predictions {len(p)}")
        metric = config.metric or default_metric(task)
        min_rows = config.min_rows or DEFAULTS.segment_min_rows
        names, codes = _segment_codes(config, np.asarray(column))
        # Group rows by segment once (stable sort), then every segment is a slice.
        order = np.argsort(codes, kind="stable")
        bounds = np.concatenate([[0], np.cumsum(np.bincount(codes, minlength=len(names)))])
        judged: list[tuple[float, common_pb2.Segment]] = []
        for i, name in enumerate(names):
            rows = order[bounds[i] : bounds[i + 1]]
            if not len(rows):
                continue
            segment = common_pb2.Segment(field=config.field, value=name)
            stats = monitoring_pb2.SegmentStats(segment=segment, rows=len(rows))
            scored = rows[labelled[rows]]
            stats.labelled_rows = len(scored)
            value = math.nan
            if len(scored):
                value = _value(_evaluate(task, t[scored], p[scored], None, labels), metric)
                if not math.isnan(value):
                    stats.metrics.append(common_pb2.Metric(name=metric, value=value))
            stats.metrics.extend(_rates(task, p[rows], labels, len(class_labels)))
            if len(scored) >= min_rows and not math.isnan(value):
                judged.append((value, segment))
                if config.HasField("min_value"):
                    stats.breached = _worse_by(value, config.min_value, metric) > 0
            segments.append(stats)
        if len(judged) >= 2:
            minimize = evaluation.default_direction(metric) == evaluation.MINIMIZE
            ranked = sorted(judged, key=lambda vs: vs[0], reverse=not minimize)  # best first
            (best, best_seg), (worst, worst_seg) = ranked[0], ranked[-1]
            gap = abs(best - worst)
            gaps.append(
                monitoring_pb2.SegmentGap(
                    field=config.field,
                    metric=metric,
                    gap=gap,
                    best=best_seg,
                    worst=worst_seg,
                    breached=config.HasField("max_gap") and gap > config.max_gap,
                )
            )
    return segments, gaps
