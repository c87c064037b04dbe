"""Confidence-based performance estimation (CBPE): a classifier's accuracy, F1 and ROC AUC on rows
without labels, from its predicted probabilities. Plain NumPy (and scikit-learn's isotonic fit).

A calibrated probability is the chance the class is the true one, so the expected confusion matrix of
a window follows from the probabilities alone: a row predicted as c is right with probability p_c.
Calibration maps the model's raw scores to observed frequencies on the reference test split
(isotonic regression per class, one-vs-rest; multiclass rows renormalised to sum to 1), as NannyML's
CBPE does. The estimate holds under covariate shift (inputs move, P(y | x) does not); a changed
concept needs labels (quality windows), and the quality window reports the estimate next to what the
labels say so the two can be compared.

Metrics are defined as flywheel.evaluation defines the test metrics: F1 of class index 1 for two
classes, else the macro mean over classes present; ROC AUC of class 1, else one-vs-rest mean.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from sklearn.isotonic import IsotonicRegression

from flywheel.v1 import monitoring_pb2

METRICS = ("accuracy", "f1", "roc_auc")
MAX_SAMPLE_ROWS = 200_000
MAX_SAMPLE_VALUES = 5_000_000  # rows x classes in one calibration sample
MAX_SAMPLE_BYTES = 32 * 1024 * 1024  # its serialized size, read before parsing
MAX_CLASSES = 1_000
MAX_KNOTS = 10_000  # per class, in a stored calibration


class CalibrationError(ValueError):
    """A calibration sample or stored calibration that cannot be used (says why)."""


@dataclass(frozen=True)
class Calibration:
    """Per class, the isotonic map from raw probability to observed frequency (knots, interpolated)."""

    class_labels: tuple[str, ...]
    knots: tuple[tuple[np.ndarray, np.ndarray], ...]  # (x, y) per class; one (class 1) for two classes

    def to_json(self) -> dict[str, Any]:
        return {
            "class_labels": list(self.class_labels),
            "knots": [[x.tolist(), y.tolist()] for x, y in self.knots],
        }

    @classmethod
    def from_json(cls, data: Any) -> Calibration:
        """A stored calibration, checked (it is read by every later window)."""
        try:
            labels = tuple(str(c) for c in data["class_labels"])
            knots = tuple((np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)) for x, y in data["knots"])
        except (KeyError, TypeError, ValueError) as exc:
            raise CalibrationError(f"malformed calibration ({type(exc).__name__})") from exc
        k = len(labels)
        if not 2 <= k <= MAX_CLASSES or len(knots) != (1 if k == 2 else k):
            raise CalibrationError(f"{len(knots)} calibration curves for {k} classes")
        for x, y in knots:
            if x.ndim != 1 or x.shape != y.shape or not 1 <= len(x) <= MAX_KNOTS:
                raise CalibrationError("a calibration curve's knots are not two equal 1-D lists")
            if not (np.isfinite(x).all() and np.isfinite(y).all()) or (np.diff(x) < 0).any():
                raise CalibrationError("a calibration curve's knots are not finite and increasing")
        return cls(labels, knots)

    def apply(self, proba: np.ndarray) -> np.ndarray:
        """Calibrated probabilities, [rows, k], each row summing to 1."""
        if len(self.class_labels) == 2:
            x, y = self.knots[0]
            p1 = np.clip(np.interp(proba[:, 1], x, y), 0.0, 1.0)
            return np.column_stack([1.0 - p1, p1])
        cal = np.column_stack([np.interp(proba[:, c], x, y) for c, (x, y) in enumerate(self.knots)])
        cal = np.clip(cal, 0.0, 1.0)
        sums = cal.sum(axis=1, keepdims=True)
        uniform = np.full_like(cal, 1.0 / cal.shape[1])
        return np.where(sums > 0, cal / np.where(sums > 0, sums, 1.0), uniform)


def sample_arrays(class_labels: Sequence[str], probabilities: Sequence[float], labels: Sequence[int]) -> tuple[
    np.ndarray, np.ndarray
]:  # fmt: skip
    """A CalibrationSample's fields as ([rows, k] probabilities, [rows] class indices), checked."""
    k = len(class_labels)
    if not 2 <= k <= MAX_CLASSES:
        raise CalibrationError(f"{k} classes (2..{MAX_CLASSES} can be calibrated)")
    n = len(labels)
    if not 1 <= n <= MAX_SAMPLE_ROWS:
        raise CalibrationError(f"{n} rows (1..{MAX_SAMPLE_ROWS})")
    if n * k > MAX_SAMPLE_VALUES:
        raise CalibrationError(f"{n} rows of {k} classes is more than {MAX_SAMPLE_VALUES} values")
    if len(probabilities) != n * k:
        raise CalibrationError(f"{len(probabilities)} probabilities for {n} rows of {k} classes")
    proba = np.asarray(probabilities, dtype=np.float64).reshape(n, k)
    y = np.asarray(labels, dtype=np.int64)
    if not np.isfinite(proba).all() or (proba < 0).any() or (proba > 1).any():
        raise CalibrationError("probabilities must be finite and in [0, 1]")
    if (y < 0).any() or (y >= k).any():
        raise CalibrationError(f"labels must be class indices in [0, {k})")
    return proba, y


def fit(class_labels: Sequence[str], proba: np.ndarray, y: np.ndarray) -> Calibration:
    """Isotonic calibration of each class's probability on the reference rows (one curve for two classes)."""
    k = len(class_labels)
    classes = [1] if k == 2 else range(k)
    knots = []
    for c in classes:
        iso = IsotonicRegression(y_min=0.0, y_max=1.0, out_of_bounds="clip", increasing=True)
        iso.fit(proba[:, c], (y == c).astype(np.float64))
        x, fy = iso.X_thresholds_, iso.y_thresholds_
        if len(x) > MAX_KNOTS:  # thin a very fine curve evenly; it stays monotone
            keep = np.unique(np.linspace(0, len(x) - 1, MAX_KNOTS).round().astype(int))
            x, fy = x[keep], fy[keep]
        knots.append((np.asarray(x, dtype=np.float64), np.asarray(fy, dtype=np.float64)))
    return Calibration(tuple(class_labels), tuple(knots))


def estimate(calibration: Calibration, proba: np.ndarray, predicted: np.ndarray) -> dict[str, float]:
    """Expected accuracy, F1 and ROC AUC of rows with raw probabilities `proba` [rows, k] and predicted
    class indices `predicted`; NaN for a metric the rows cannot give (no rows, one expected class)."""
    if len(proba) == 0:
        return {m: math.nan for m in METRICS}
    cal = calibration.apply(proba)
    k = cal.shape[1]
    rows = np.arange(len(cal))
    right = cal[rows, predicted]  # P(the predicted class is the true one)
    out = {"accuracy": float(right.mean())}
    f1s, present = [], []
    for c in range(k):
        is_pred = predicted == c
        tp = cal[is_pred, c].sum()
        fp = is_pred.sum() - tp
        fn = cal[~is_pred, c].sum()
        f1s.append(2 * tp / (2 * tp + fp + fn) if tp + fp + fn > 0 else 0.0)
        present.append(is_pred.any() or cal[:, c].sum() >= 0.5)  # predicted, or expected at least once
    f1 = np.asarray(f1s)
    out["f1"] = float(f1[1]) if k == 2 else float(f1[np.asarray(present)].mean())
    if k == 2:
        out["roc_auc"] = _expected_auc(proba[:, 1], cal[:, 1])
    else:
        aucs = [_expected_auc(proba[:, c], cal[:, c]) for c in range(k) if present[c]]
        aucs = [a for a in aucs if not math.isnan(a)]
        out["roc_auc"] = float(np.mean(aucs)) if aucs else math.nan
    return out


def _expected_auc(score: np.ndarray, p: np.ndarray) -> float:
    """ROC AUC with each row a positive with probability p (its calibrated probability): the ROC curve
    of expected true and false positives as the threshold on `score` falls; tied scores move together."""
    positives, negatives = p.sum(), (1.0 - p).sum()
    if positives <= 0 or negatives <= 0:
        return math.nan
    order = np.argsort(-score, kind="stable")
    s, q = score[order], p[order]
    tp, fp = np.cumsum(q), np.cumsum(1.0 - q)
    last_of_tie = np.r_[np.flatnonzero(np.diff(s)), len(s) - 1]
    tpr = np.r_[0.0, tp[last_of_tie] / positives]
    fpr = np.r_[0.0, fp[last_of_tie] / negatives]
    return float(np.trapezoid(tpr, fpr))


def decode_outputs(outputs: Sequence[dict[str, Any]], k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Stored output objects as (probabilities [m, k], predicted class [m], the m rows' indexes): rows
    whose "probabilities" is not k numbers in [0, 1] are left out; the predicted class is the "label"
    output when it is a class index, else the most probable class."""
    kept, proba, predicted = [], [], []
    for i, out in enumerate(outputs):
        p = out.get("probabilities")
        if isinstance(p, list) and len(p) == 1 and isinstance(p[0], list):
            p = p[0]  # [[p0, p1]]: one row of a batch
        if not isinstance(p, list) or len(p) != k:
            continue
        if not all(isinstance(v, int | float) and not isinstance(v, bool) and 0.0 <= v <= 1.0 for v in p):
            continue
        label = out.get("label")
        while isinstance(label, list) and len(label) == 1:
            label = label[0]
        index = -1
        if isinstance(label, int | float) and not isinstance(label, bool) and float(label).is_integer():
            index = int(label) if 0 <= label < k else -1
        kept.append(i)
        proba.append(p)
        predicted.append(index)
    if not kept:
        return np.empty((0, k)), np.empty(0, dtype=np.int64), np.empty(0, dtype=np.int64)
    pa = np.asarray(proba, dtype=np.float64)
    pred = np.asarray(predicted, dtype=np.int64)
    pred = np.where(pred < 0, pa.argmax(axis=1), pred)
    return pa, pred, np.asarray(kept, dtype=np.int64)


def report(
    estimates: dict[str, float],
    rows: int,
    metric: str,
    reference_value: float,
    max_drop: float,
    realized: float | None = None,
) -> monitoring_pb2.PerformanceEstimate:
    """The window's estimate against the recorded test value; breached when it is worse by more than
    max_drop (never when either number is unknown)."""
    value = estimates.get(metric, math.nan)
    drop = reference_value - value  # every estimated metric is maximised
    out = monitoring_pb2.PerformanceEstimate(
        rows=rows,
        metric=metric,
        value=value,
        reference_value=reference_value,
        drop=drop if math.isfinite(drop) else 0.0,
        breached=math.isfinite(drop) and drop > max_drop,
    )
    for name in METRICS:
        if math.isfinite(estimates.get(name, math.nan)):
            out.metrics.add(name=name, value=estimates[name])
    if realized is not None:
        out.realized = realized
    return out
