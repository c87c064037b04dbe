"""One monitoring window, judged against the reference profile: per-feature drift, prediction drift,
data integrity and latency, as a monitoring_pb2.WindowReport. Pure computation (no I/O), vectorised.

Value rules (the window's arrays come from JSON-ish prediction logs, so they are checked, not trusted):
- numeric (FLOAT/INT) fields take numbers, or text that parses as one; None/NaN is null; anything
  else (bools, non-numeric text, lists, objects) is a type mismatch; an INT field also rejects
  non-integral numbers. Mismatches are left out of the drift statistics and are not nulls.
- CATEGORICAL fields take text; numbers and bools are read as their text ("3", "true"), as ingestion
  reads JSON; lists/objects are mismatches. BOOL fields take bools, 0/1, and true/false/yes/no text
  in any case, as "true"/"false" (the reference's spelling); anything else is a mismatch.
- A field no row carried is a missing field (and all-null); a key the schema lacks is an extra field.
  The schema's key field and the label field are not features.
Windows smaller than the minimum size are reported in full but breach nothing.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, TypeAlias

import numpy as np
import pandas as pd
from pandas.api.types import infer_dtype

from flywheel.v1 import common_pb2, monitoring_pb2
from services.monitoring import drift

Task: TypeAlias = common_pb2.Task.ValueType
FieldType: TypeAlias = common_pb2.FieldType.ValueType
DriftThreshold: TypeAlias = Literal["psi", "ks_statistic", "chi2_p_value"]
IntegrityLimit: TypeAlias = Literal[
    "max_null_rate", "max_out_of_range_rate", "max_unseen_category_rate", "max_type_mismatch_rate"
]
NUMERIC: tuple[FieldType, ...] = (common_pb2.FIELD_TYPE_FLOAT, common_pb2.FIELD_TYPE_INT)
CLASS_OUTPUT = "class"
VARIABLE_OUTPUT = "variable"
_BOOL_TEXT = {"true": "true", "1": "true", "yes": "true", "false": "false", "0": "false", "no": "false"}
_NUMBER_KINDS = {"floating", "integer", "mixed-integer-float", "decimal", "empty"}


@dataclass(frozen=True)
class Defaults:
    """Every policy default of monitoring, in one place (a policy field left unset takes these)."""

    psi: float = 0.2  # feature/prediction PSI >= this breaches
    ks_statistic: float = 0.15  # KS statistic >= this breaches
    chi2_p_value: float = 0.01  # chi-square p-value < this breaches
    null_rate_excess: float = 0.1  # null rate > the reference's null rate + this breaches
    out_of_range_rate: float = 0.01  # share of values outside the schema's [min, max]
    unseen_category_rate: float = 0.05  # share of values outside allowed_values (or the reference's categories)
    type_mismatch_rate: float = 0.01  # share of values of the wrong type
    min_rows: int = 100  # smaller windows are evaluated but never breach
    min_labelled_rows: int = 50  # quality verdicts need this many labelled rows
    max_quality_drop: float = 0.05  # quality breaches when worse than the test metric by more than this
    segment_min_rows: int = 30  # segments with fewer labelled rows are neither judged nor ranked


DEFAULTS = Defaults()


@dataclass
class WindowInput:
    """A window's rows, column-wise. Every array has one entry per row (latency_ms may be empty).

    features: input name -> values (float64 with NaN for null, or object/str for categorical; may hold
    junk, which is counted as type mismatches). outputs: "class" (predicted class labels, text) for
    classification, "variable" for regression. field_counts: input key -> how many rows carried it.
    """

    features: dict[str, np.ndarray]
    outputs: dict[str, np.ndarray]
    latency_ms: np.ndarray
    field_counts: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        lengths = {len(a) for a in (*self.features.values(), *self.outputs.values())}
        if len(self.latency_ms):
            lengths.add(len(self.latency_ms))
        if len(lengths) > 1:
            raise ValueError(f"window arrays differ in length: {sorted(lengths)}")

    @property
    def rows(self) -> int:
        for a in (*self.features.values(), *self.outputs.values()):
            return len(a)
        return len(self.latency_ms)


def _flags_for(values: np.ndarray, condition: Any) -> np.ndarray:
    """Per-element check for mixed-type object arrays: the junk path only (a clean column never gets here)."""
    return np.fromiter((condition(v) for v in values), dtype=bool, count=len(values))


def to_numeric(values: Any) -> tuple[np.ndarray, np.ndarray]:
    """(float64 values with NaN for null or mismatch, mismatch mask) of a numeric column."""
    arr = np.asarray(values)
    n = len(arr)
    if arr.dtype.kind in "fiu":
        return arr.astype(np.float64, copy=False), np.zeros(n, dtype=bool)
    if arr.dtype.kind == "b":
        return np.full(n, np.nan), np.ones(n, dtype=bool)  # true/false is not a number
    if arr.dtype.kind == "O" and infer_dtype(arr, skipna=True) in _NUMBER_KINDS:
        # Numbers and nulls only (the usual JSON case): one C-level conversion, nothing to flag.
        return pd.to_numeric(pd.Series(arr, copy=False), errors="coerce").to_numpy(np.float64), np.zeros(n, bool)
    obj = arr.astype(object, copy=False)
    nulls = pd.isna(obj)
    parsed = pd.to_numeric(pd.Series(obj, copy=False), errors="coerce").to_numpy(np.float64, copy=True)
    mismatch = ~nulls & np.isnan(parsed)
    if arr.dtype.kind == "O":
        is_bool = _flags_for(obj, lambda v: isinstance(v, bool | np.bool_))  # pandas reads True as 1
        mismatch |= is_bool
        parsed[is_bool] = np.nan
    return parsed, mismatch


def _number_text(values: np.ndarray) -> np.ndarray:
    """Numbers as category text: integral values without ".0" ("3"), others shortest round-trip ("2.5")."""
    out = values.astype(str).astype(object)
    integral = np.isfinite(values) & (values == np.round(values))
    out[integral] = values[integral].astype(np.int64).astype(str)
    out[np.isnan(values)] = None
    return out


def _cell_text(v: Any) -> tuple[str | None, bool]:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return None, False
    if isinstance(v, str):
        return v, False
    if isinstance(v, bool | np.bool_):
        return ("true" if v else "false"), False
    if isinstance(v, int | float | np.integer | np.floating):
        return str(_number_text(np.array([float(v)]))[0]), False
    return None, True  # lists, objects, bytes: no category


def to_category(values: Any, bool_field: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """(object array of category text with None for null or mismatch, mismatch mask) of a column."""
    arr = np.asarray(values)
    n = len(arr)
    mismatch = np.zeros(n, dtype=bool)
    if arr.dtype.kind == "b":
        text = np.where(arr, "true", "false").astype(object)
    elif arr.dtype.kind in "fiu":
        text = _number_text(arr.astype(np.float64, copy=False))
    elif arr.dtype.kind in "US":
        text = arr.astype(object)
    else:
        kind = infer_dtype(arr, skipna=True)
        if kind in ("string", "empty"):
            text = arr.copy()
            text[pd.isna(arr)] = None  # NaN and None alike
        elif kind == "boolean":
            nulls = pd.isna(arr)
            text = np.where(arr == True, "true", "false").astype(object)  # noqa: E712 - elementwise
            text[nulls] = None
        else:  # mixed types: the junk path, one Python call per value
            cells = [_cell_text(v) for v in arr]
            text = np.empty(n, dtype=object)
            text[:] = [c[0] for c in cells]
            mismatch = np.fromiter((c[1] for c in cells), dtype=bool, count=n)
    if bool_field:
        present = ~pd.isna(text)
        lowered = pd.Series(text[present], dtype=object).str.strip().str.lower()
        mapped = lowered.map(_BOOL_TEXT).to_numpy(dtype=object)
        bad = pd.isna(mapped)
        text = text.copy()
        text[present] = np.where(bad, None, mapped)
        mismatch[np.flatnonzero(present)[bad]] = True
    return text, mismatch


def _threshold(name: DriftThreshold, *sources: monitoring_pb2.FeatureThresholds | None) -> float:
    for source in sources:
        if source is not None and source.HasField(name):
            return float(getattr(source, name))
    return float(getattr(DEFAULTS, name))


def _score(
    feature: str, statistic: str, score: float, threshold: float, breached: bool, judged: bool, p_value: float = 0.0
) -> common_pb2.FeatureScore:
    return common_pb2.FeatureScore(
        feature=feature,
        statistic=statistic,
        score=float(score),
        threshold=float(threshold),
        p_value=float(p_value),
        breached=bool(judged and breached),
    )


@dataclass
class _Thresholds:
    psi: float
    ks_statistic: float
    chi2_p_value: float
    ignore: bool


def _feature_thresholds(policy: monitoring_pb2.MonitoringPolicy, name: str) -> _Thresholds:
    specific = policy.feature_thresholds.get(name) if name in policy.feature_thresholds else None
    default = policy.default_thresholds if policy.HasField("default_thresholds") else None
    return _Thresholds(
        psi=_threshold("psi", specific, default),
        ks_statistic=_threshold("ks_statistic", specific, default),
        chi2_p_value=_threshold("chi2_p_value", specific, default),
        ignore=specific.ignore if specific is not None else bool(default and default.ignore),
    )


def _numeric_drift(
    name: str, ref: Mapping[str, Any], present: np.ndarray, t: _Thresholds, judged: bool
) -> list[common_pb2.FeatureScore]:
    """PSI on the profile's bins and KS against its sample; `present` is sorted and NaN-free."""
    scores: list[common_pb2.FeatureScore] = []
    if len(present) == 0:
        return scores
    edges, hist = ref.get("bin_edges") or [], ref.get("histogram") or []
    if len(edges) >= 2 and len(hist):
        value = drift.psi(np.asarray(hist, dtype=np.float64), drift.histogram_sorted(edges, present))
        scores.append(_score(name, "psi", value, t.psi, value >= t.psi, judged))
    sample = np.sort(np.asarray(ref.get("sample") or [], dtype=np.float64))
    sample = sample[: np.searchsorted(sample, np.nan, side="left")]  # sort puts NaN last
    if len(sample):
        stat, p = drift.ks_2samp_sorted(sample, present)
        scores.append(_score(name, "ks", stat, t.ks_statistic, stat >= t.ks_statistic, judged, p_value=p))
    return scores


def _categorical_drift(
    name: str, ref_freq: Mapping[str, float], counts: np.ndarray, expected: np.ndarray, t: _Thresholds, judged: bool
) -> list[common_pb2.FeatureScore]:
    if not ref_freq or counts.sum() == 0:
        return []
    value = drift.psi(expected, counts)
    stat, p = drift.chi2_counts(counts, expected)
    return [
        _score(name, "psi", value, t.psi, value >= t.psi, judged),
        _score(name, "chi2", stat, t.chi2_p_value, p < t.chi2_p_value, judged, p_value=p),
    ]


@dataclass
class _Integrity:
    nulls: int = 0
    out_of_range: int = 0
    unseen: int = 0
    mismatches: int = 0


def _numeric_feature(
    f: common_pb2.Field, raw: np.ndarray, ref: Mapping[str, Any] | None, t: _Thresholds, judged: bool
) -> tuple[_Integrity, list[common_pb2.FeatureScore]]:
    values, mismatch = to_numeric(raw)
    if f.type == common_pb2.FIELD_TYPE_INT:
        fractional = np.isfinite(values) & (values != np.floor(values))
        if fractional.any():
            mismatch = mismatch | fractional
            values = np.where(fractional, np.nan, values)
    # One sort per column serves every statistic: NaN sorts last, bins and range are binary searches.
    ordered = np.sort(values)
    n_present = int(np.searchsorted(ordered, np.nan, side="left"))  # NaN sorts (and searches) last
    present = ordered[:n_present]
    mismatches = int(np.count_nonzero(mismatch))
    out_of_range = 0
    if f.HasField("min"):
        out_of_range += int(np.searchsorted(present, f.min, side="left"))
    if f.HasField("max"):
        out_of_range += n_present - int(np.searchsorted(present, f.max, side="right"))
    integrity = _Integrity(nulls=len(values) - n_present - mismatches, out_of_range=out_of_range, mismatches=mismatches)
    scores = _numeric_drift(f.name, ref, present, t, judged) if ref is not None and not t.ignore else []
    return integrity, scores


def _categorical_feature(
    f: common_pb2.Field, raw: np.ndarray, ref: Mapping[str, Any] | None, t: _Thresholds, judged: bool
) -> tuple[_Integrity, list[common_pb2.FeatureScore]]:
    text, mismatch = to_category(raw, bool_field=f.type == common_pb2.FIELD_TYPE_BOOL)
    valid = ~pd.isna(text)
    present = text[valid]
    mismatches = int(np.count_nonzero(mismatch))
    ref_freq: Mapping[str, float] = (ref or {}).get("category_frequencies") or {}
    _, counts, expected = drift.category_counts(ref_freq, present)
    if f.allowed_values:
        allowed = list(f.allowed_values)
        unseen = int(np.count_nonzero(drift.category_codes(allowed, present) == len(allowed)))
    else:
        unseen = int(counts[-1]) if ref_freq else 0  # the OTHER bucket
    integrity = _Integrity(nulls=len(text) - len(present) - mismatches, unseen=unseen, mismatches=mismatches)
    scores = _categorical_drift(f.name, ref_freq, counts, expected, t, judged) if not t.ignore else []
    return integrity, scores


def _integrity_scores(
    name: str,
    kind: FieldType,
    counts: _Integrity,
    rows: int,
    ref: Mapping[str, Any] | None,
    limits: monitoring_pb2.IntegrityThresholds,
    judged: bool,
) -> list[common_pb2.FeatureScore]:
    def rate(n: int) -> float:
        return n / rows if rows else 0.0

    def limit(field_name: IntegrityLimit, default: float) -> float:
        return float(getattr(limits, field_name)) if limits.HasField(field_name) else default

    ref_null = float((ref or {}).get("null_rate") or 0.0)
    checks = [("null_rate", counts.nulls, limit("max_null_rate", min(1.0, ref_null + DEFAULTS.null_rate_excess)))]
    if kind in NUMERIC:
        checks.append(
            ("out_of_range_rate", counts.out_of_range, limit("max_out_of_range_rate", DEFAULTS.out_of_range_rate))
        )
    else:
        checks.append(
            ("unseen_category_rate", counts.unseen, limit("max_unseen_category_rate", DEFAULTS.unseen_category_rate))
        )
    checks.append(
        ("type_mismatch_rate", counts.mismatches, limit("max_type_mismatch_rate", DEFAULTS.type_mismatch_rate))
    )
    return [_score(name, stat, rate(n), lim, rate(n) > lim, judged) for stat, n, lim in checks]


def _class_frequencies(label_ref: Mapping[str, Any]) -> dict[str, float]:
    """Reference class frequencies: the label's category frequencies, or (numeric label) its sample's."""
    if label_ref.get("category_frequencies"):
        return dict(label_ref["category_frequencies"])
    sample = np.asarray(label_ref.get("sample") or [], dtype=np.float64)
    text = _number_text(sample[~np.isnan(sample)])
    if not len(text):
        return {}
    keys, counts = np.unique(text.astype(str), return_counts=True)
    return {str(k): float(c) / len(text) for k, c in zip(keys, counts, strict=True)}


def _class_text(classes: np.ndarray, label_type: str) -> np.ndarray:
    """Predicted class labels spelled as the reference spells the label's values.

    Training names classes by str(value) ("True", "1.0" for a float label); the profile spells them as
    Arrow's text cast ("true", "1"), so bool and numeric labels are normalised before they are compared.
    """
    if label_type == "FIELD_TYPE_BOOL":
        return to_category(classes, bool_field=True)[0]
    text, _ = to_category(classes)
    if label_type in ("FIELD_TYPE_FLOAT", "FIELD_TYPE_INT"):
        numbers, _ = to_numeric(text)
        return _number_text(numbers)
    return text


def _prediction_scores(
    profile: Mapping[str, Any],
    policy: monitoring_pb2.MonitoringPolicy,
    window: WindowInput,
    task: Task,
    label_field: str,
    judged: bool,
) -> list[common_pb2.FeatureScore]:
    label_ref = profile.get("features", {}).get(label_field)
    limits = policy.prediction_thresholds if policy.HasField("prediction_thresholds") else None
    if label_ref is None or (limits is not None and limits.ignore):
        return []
    t = _Thresholds(
        psi=_threshold("psi", limits),
        ks_statistic=_threshold("ks_statistic", limits),
        chi2_p_value=_threshold("chi2_p_value", limits),
        ignore=False,
    )
    if task == common_pb2.TASK_REGRESSION:
        if VARIABLE_OUTPUT not in window.outputs or len(label_ref.get("bin_edges") or []) < 2:
            return []
        values, _ = to_numeric(window.outputs[VARIABLE_OUTPUT])
        value = drift.psi_numeric(label_ref["bin_edges"], label_ref["histogram"], values)
        if math.isnan(value):
            return []
        return [_score(VARIABLE_OUTPUT, "psi", value, t.psi, value >= t.psi, judged)]
    if CLASS_OUTPUT not in window.outputs:
        return []
    ref_freq = _class_frequencies(label_ref)
    text = _class_text(window.outputs[CLASS_OUTPUT], str(label_ref.get("type", "")))
    _, counts, expected = drift.category_counts(ref_freq, text)
    return _categorical_drift(CLASS_OUTPUT, ref_freq, counts, expected, t, judged)


def _latency(latency_ms: np.ndarray) -> monitoring_pb2.LatencySummary:
    lat = np.asarray(latency_ms, dtype=np.float64)
    lat = lat[~np.isnan(lat)]
    if not len(lat):
        return monitoring_pb2.LatencySummary()
    p50, p99 = np.percentile(lat, [50, 99])
    return monitoring_pb2.LatencySummary(p50_ms=float(p50), p99_ms=float(p99), mean_ms=float(np.mean(lat)))


def evaluate_window(
    profile: Mapping[str, Any],
    schema: common_pb2.Schema,
    policy: monitoring_pb2.MonitoringPolicy,
    window: WindowInput,
    *,
    task: Task,
    label_field: str,
) -> monitoring_pb2.WindowReport:
    """Drift, prediction drift, integrity and latency of a window; the caller sets ids, model and times.

    feature_scores: per feature "psi" and "ks" (numeric) or "psi" and "chi2" (categorical/bool).
    prediction_scores: "class" psi + chi2 against the label's reference frequencies (classification),
    "variable" psi on the label's reference bins (regression). integrity.scores: per feature null,
    out-of-range or unseen-category, and type-mismatch rates, plus "missing_field"/"extra_field".
    """
    rows = window.rows
    report = monitoring_pb2.WindowReport(rows=rows)
    judged = rows >= (policy.window.min_rows or DEFAULTS.min_rows)
    references: Mapping[str, Any] = profile.get("features", {})
    integrity = report.integrity
    for f in schema.fields:
        if f.name in (schema.key_field, label_field):
            continue
        raw = window.features.get(f.name)
        if raw is None:
            raw = np.full(rows, None, dtype=object)  # no row carried it: all null (and a missing field)
        ref = references.get(f.name)
        t = _feature_thresholds(policy, f.name)
        handler = _numeric_feature if f.type in NUMERIC else _categorical_feature
        counts, scores = handler(f, raw, ref, t, judged)
        report.feature_scores.extend(scores)
        integrity.features.add(
            feature=f.name,
            nulls=counts.nulls,
            out_of_range=counts.out_of_range,
            unseen_categories=counts.unseen,
            type_mismatches=counts.mismatches,
        )
        integrity.scores.extend(_integrity_scores(f.name, f.type, counts, rows, ref, policy.integrity, judged))
    known = {f.name for f in schema.fields}
    features = [f.name for f in schema.fields if f.name not in (schema.key_field, label_field)]
    if rows:
        integrity.missing_fields.extend(name for name in features if window.field_counts.get(name, 0) == 0)
    integrity.extra_fields.extend(sorted(k for k, n in window.field_counts.items() if k not in known and n > 0))
    for name in integrity.missing_fields:
        integrity.scores.append(_score(name, "missing_field", 1.0, 0.0, True, judged))
    for name in integrity.extra_fields:
        share = window.field_counts[name] / rows if rows else 0.0
        integrity.scores.append(_score(name, "extra_field", share, 0.0, True, judged))
    report.prediction_scores.extend(_prediction_scores(profile, policy, window, task, label_field, judged))
    report.latency.CopyFrom(_latency(window.latency_ms))
    for kind, kind_scores in (
        (common_pb2.DRIFT_KIND_DATA_DRIFT, report.feature_scores),
        (common_pb2.DRIFT_KIND_PREDICTION_DRIFT, report.prediction_scores),
        (common_pb2.DRIFT_KIND_INTEGRITY, integrity.scores),
    ):
        if any(s.breached for s in kind_scores):
            report.breached.append(kind)
    return report
