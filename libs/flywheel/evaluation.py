"""Model evaluation metrics, shared by training (test split) and serving (staging sample).

Test-split evaluation: classification and regression metrics as training_pb2.Evaluation.

Classification: labels are class indices 0..k-1 in `class_labels` order. Binary precision/recall/f1
take class index 1 as positive; multiclass ones are macro averages over the classes present in
y_true or y_pred (sklearn's default). roc_auc: binary from proba[:, 1]; multiclass one-vs-rest
macro over the classes present in y_true; left out when y_true holds a single class.
Regression: mae, rmse, r2 (r2 left out below two rows). Metrics never carry NaN.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from sklearn.metrics import (
    confusion_matrix,
    mean_absolute_error,
    mean_squared_error,
    precision_recall_fscore_support,
    r2_score,
    roc_auc_score,
)

from flywheel.v1 import common_pb2, training_pb2

MAXIMIZE = common_pb2.METRIC_DIRECTION_MAXIMIZE
MINIMIZE = common_pb2.METRIC_DIRECTION_MINIMIZE
_MINIMIZED = {"mae", "rmse"}


def default_direction(metric: str) -> common_pb2.MetricDirection.ValueType:
    """Errors are minimised; scores (accuracy, precision, recall, f1, roc_auc, r2) maximised."""
    return MINIMIZE if metric in _MINIMIZED else MAXIMIZE


def _metric(name: str, value: float, split: common_pb2.Split.ValueType, class_label: str = "") -> common_pb2.Metric:
    return common_pb2.Metric(name=name, value=float(value), split=split, class_label=class_label)


def classification_metrics(
    y_true_idx: np.ndarray,
    y_pred_idx: np.ndarray,
    proba: np.ndarray | None,
    class_labels: Sequence[str],
    split: common_pb2.Split.ValueType = common_pb2.SPLIT_TEST,
) -> training_pb2.Evaluation:
    y_true = np.asarray(y_true_idx, dtype=np.int64)
    y_pred = np.asarray(y_pred_idx, dtype=np.int64)
    k = len(class_labels)
    ev = training_pb2.Evaluation(split=split, rows=len(y_true))
    if len(y_true) == 0:
        return ev
    labels = list(range(k))
    prec, rec, f1, _ = precision_recall_fscore_support(y_true, y_pred, labels=labels, zero_division=0)
    ev.metrics.append(_metric("accuracy", np.mean(y_true == y_pred), split))
    for name, per_class in (("precision", prec), ("recall", rec), ("f1", f1)):
        ev.metrics.append(_metric(name, _average(per_class, y_true, y_pred, k), split))
    auc = _roc_auc(y_true, proba, k)
    if auc is not None:
        ev.metrics.append(_metric("roc_auc", auc, split))
    for i, label in enumerate(class_labels):
        for name, per_class in (("precision", prec), ("recall", rec), ("f1", f1)):
            ev.metrics.append(_metric(name, per_class[i], split, class_label=label))
    ev.confusion_matrix.CopyFrom(_confusion(y_true, y_pred, class_labels))
    return ev


def _average(per_class: np.ndarray, y_true: np.ndarray, y_pred: np.ndarray, k: int) -> float:
    if k == 2:
        return float(per_class[1])
    present = np.union1d(y_true, y_pred)
    return float(np.mean(per_class[present]))


def _roc_auc(y_true: np.ndarray, proba: np.ndarray | None, k: int) -> float | None:
    if proba is None or len(np.unique(y_true)) < 2:
        return None
    if k == 2:
        return float(roc_auc_score(y_true, proba[:, 1]))
    # one-vs-rest per present class, by hand: sklearn's multiclass path insists every label occurs
    scores = [roc_auc_score(y_true == c, proba[:, c]) for c in np.unique(y_true)]
    return float(np.mean(scores))


def _confusion(y_true: np.ndarray, y_pred: np.ndarray, class_labels: Sequence[str]) -> training_pb2.ConfusionMatrix:
    counts = confusion_matrix(y_true, y_pred, labels=list(range(len(class_labels))))
    cm = training_pb2.ConfusionMatrix(labels=list(class_labels))
    for row in counts:
        cm.rows.add(counts=[int(c) for c in row])
    return cm


def regression_metrics(
    y_true: np.ndarray, y_pred: np.ndarray, split: common_pb2.Split.ValueType = common_pb2.SPLIT_TEST
) -> training_pb2.Evaluation:
    t = np.asarray(y_true, dtype=np.float64)
    p = np.asarray(y_pred, dtype=np.float64).reshape(-1)
    ev = training_pb2.Evaluation(split=split, rows=len(t))
    if len(t) == 0:
        return ev
    ev.metrics.append(_metric("mae", mean_absolute_error(t, p), split))
    ev.metrics.append(_metric("rmse", math.sqrt(mean_squared_error(t, p)), split))
    if len(t) >= 2:
        ev.metrics.append(_metric("r2", r2_score(t, p), split))
    return ev


def aggregate(evaluation: training_pb2.Evaluation) -> dict[str, float]:
    """The aggregate (not per-class) metrics by name."""
    return {m.name: m.value for m in evaluation.metrics if not m.class_label}


def score(evaluation: training_pb2.Evaluation, metric_name: str) -> float:
    """The aggregate metric's value; NaN when the evaluation lacks it (e.g. roc_auc on one class)."""
    return aggregate(evaluation).get(metric_name, math.nan)


def better(a: float, b: float, direction: int) -> bool:
    """Whether score a is strictly better than b. NaN is worse than any number."""
    if math.isnan(a):
        return False
    if math.isnan(b):
        return True
    return a < b if direction == MINIMIZE else a > b
