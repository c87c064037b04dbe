"""Monitoring domain: drift statistics against scipy and a reference PSI, window evaluation, quality, segments."""

from __future__ import annotations

import asyncio
import math
from typing import Any, cast

import numpy as np
import pyarrow as pa
import pytest
from scipy import stats

from flywheel.v1 import common_pb2, monitoring_pb2
from services.ingestion.profile import bin_index, build_profile
from services.monitoring import drift
from services.monitoring.quality import quality_report, segment_report
from services.monitoring.windows import DEFAULTS, WindowInput, evaluate_window, to_category, to_numeric

F = common_pb2.Field
FLOAT = common_pb2.FIELD_TYPE_FLOAT
CLASSIFICATION = common_pb2.TASK_CLASSIFICATION
REGRESSION = common_pb2.TASK_REGRESSION
DATA = common_pb2.DRIFT_KIND_DATA_DRIFT
PREDICTION = common_pb2.DRIFT_KIND_PREDICTION_DRIFT
INTEGRITY = common_pb2.DRIFT_KIND_INTEGRITY
COLORS = ["blue", "green", "red"]
COLOR_P = [0.5, 0.3, 0.2]
LABELS = ["a", "b", "c"]
LABEL_P = [0.6, 0.3, 0.1]
REF_ROWS = 20_000


# ---------------------------------------------------------------------------------------------- statistics


def reference_psi(expected: list[float], actual: list[float], eps: float = 1e-4) -> float:
    """PSI written out plainly, bin by bin, as the textbook gives it."""
    e_total, a_total = sum(expected), sum(actual)
    total = 0.0
    for e, a in zip(expected, actual, strict=True):
        pe = max(e / e_total, eps)
        pa_ = max(a / a_total, eps)
        total += (pa_ - pe) * math.log(pa_ / pe)
    return total


def _ks_cases() -> list[tuple[str, np.ndarray, np.ndarray]]:
    rng = np.random.default_rng(7)
    return [
        ("tiny", np.array([0.1, 0.5, 0.9]), np.array([0.2, 0.3, 0.4, 0.95])),
        ("small-exact", rng.normal(size=40), rng.normal(0.3, size=55)),
        ("equal-sizes-exact", rng.normal(size=300), rng.normal(0.1, size=300)),
        ("sample-vs-window-exact", rng.normal(size=5000), rng.normal(0.05, 1.1, size=2000)),
        ("ties-exact", rng.integers(0, 5, 800).astype(float), rng.integers(0, 6, 600).astype(float)),
        ("large-asymptotic", rng.normal(size=5000), rng.normal(0.02, size=50_000)),
        ("ties-asymptotic", np.round(rng.normal(size=12_000), 1), np.round(rng.normal(0.1, size=20_000), 1)),
        ("identical", np.arange(100.0), np.arange(100.0)),
        ("disjoint", np.arange(50.0), np.arange(50.0) + 100),
    ]


@pytest.mark.parametrize(("name", "a", "b"), _ks_cases(), ids=[c[0] for c in _ks_cases()])
def test_ks_2samp_equals_scipy(name: str, a: np.ndarray, b: np.ndarray) -> None:
    expected = stats.ks_2samp(a, b)
    statistic, p_value = drift.ks_2samp(a, b)
    assert statistic == pytest.approx(expected.statistic, abs=1e-9)
    assert p_value == pytest.approx(expected.pvalue, abs=1e-9)
    # Symmetric, and the sorted variant is the same computation.
    assert drift.ks_2samp(b, a) == pytest.approx((statistic, p_value), abs=1e-12)
    assert drift.ks_2samp_sorted(np.sort(a), np.sort(b)) == (statistic, p_value)


def test_ks_2samp_nan_and_empty_follow_scipy() -> None:
    s, p = drift.ks_2samp(np.array([1.0, np.nan]), np.array([1.0, 2.0]))
    assert math.isnan(s) and math.isnan(p)
    with pytest.raises(ValueError):
        drift.ks_2samp(np.array([]), np.array([1.0]))


@pytest.mark.parametrize(
    ("expected", "actual"),
    [
        ([10, 20, 30, 40], [12, 18, 33, 37]),
        ([100, 0, 50], [90, 5, 55]),  # an empty reference bin hits the eps floor
        ([1, 1, 1, 1, 1], [0, 0, 0, 0, 9]),
        ([0.25, 0.25, 0.5], [0.2, 0.3, 0.5]),  # proportions work as well as counts
    ],
)
def test_psi_equals_reference_implementation(expected: list[float], actual: list[float]) -> None:
    assert drift.psi(np.array(expected), np.array(actual)) == pytest.approx(reference_psi(expected, actual), rel=1e-12)


def test_psi_identical_is_zero_and_mismatched_bins_raise() -> None:
    assert drift.psi(np.array([3, 4, 5]), np.array([6, 8, 10])) == pytest.approx(0.0, abs=1e-15)
    assert math.isnan(drift.psi(np.array([1, 2]), np.array([0, 0])))
    with pytest.raises(ValueError):
        drift.psi(np.array([1, 2]), np.array([1, 2, 3]))


def _numeric_profile(values: np.ndarray) -> dict:
    schema = common_pb2.Schema(fields=[F(name="v", type=FLOAT, nullable=True)])
    return build_profile(pa.table({"v": values}), schema)["features"]["v"]


def test_psi_numeric_identical_near_zero_shifted_above_threshold() -> None:
    rng = np.random.default_rng(3)
    ref = rng.normal(size=50_000)
    p = _numeric_profile(ref)
    assert drift.psi_numeric(p["bin_edges"], p["histogram"], ref) == pytest.approx(0.0, abs=1e-12)
    same_dist = rng.normal(size=20_000)
    assert drift.psi_numeric(p["bin_edges"], p["histogram"], same_dist) < 0.01
    shifted = rng.normal(loc=1.0, size=20_000)
    assert drift.psi_numeric(p["bin_edges"], p["histogram"], shifted) > 0.2
    # NaN is ignored, not binned.
    with_nan = np.concatenate([same_dist, np.full(5000, np.nan)])
    assert drift.psi_numeric(p["bin_edges"], p["histogram"], with_nan) == pytest.approx(
        drift.psi_numeric(p["bin_edges"], p["histogram"], same_dist)
    )


def test_sorted_histogram_equals_bin_index_rule() -> None:
    rng = np.random.default_rng(4)
    edges = [-1.0, -0.5, 0.0, 0.0001, 1.0, 2.0]
    values = np.concatenate([rng.normal(size=10_000), edges, [-5.0, 9.0]])  # edges and outliers included
    expected = np.bincount(bin_index(edges, values), minlength=len(edges) - 1)
    assert drift.histogram_sorted(edges, np.sort(values)).tolist() == expected.tolist()


def test_categorical_psi_and_chi2_equal_reference_and_scipy() -> None:
    ref_freq = {"blue": 0.5, "green": 0.3, "red": 0.2}
    values = np.array(["blue"] * 480 + ["green"] * 330 + ["red"] * 190 + [None] * 7, dtype=object)
    counts = [480, 330, 190]
    assert drift.psi_categorical(ref_freq, values) == pytest.approx(
        reference_psi([0.5, 0.3, 0.2, 0.0], [*counts, 0]), rel=1e-12
    )
    statistic, p_value = drift.chi2_categorical(ref_freq, values)
    expected = stats.chisquare(counts, f_exp=np.array([0.5, 0.3, 0.2]) * 1000)
    assert statistic == pytest.approx(expected.statistic, rel=1e-12)
    assert p_value == pytest.approx(expected.pvalue, rel=1e-9)


def test_unseen_categories_land_in_other_and_are_drift() -> None:
    ref_freq = {"blue": 0.5, "green": 0.3, "red": 0.2}
    values = np.array(["blue"] * 450 + ["green"] * 300 + ["red"] * 200 + ["purple"] * 50, dtype=object)
    buckets, counts, expected = drift.category_counts(ref_freq, values)
    assert buckets == ["blue", "green", "red", drift.OTHER]
    assert counts.tolist() == [450, 300, 200, 50]
    statistic, p_value = drift.chi2_categorical(ref_freq, values)
    scipy_result = stats.chisquare(counts, f_exp=drift.chi2_expected(counts, expected))
    assert (statistic, p_value) == pytest.approx((scipy_result.statistic, scipy_result.pvalue))
    assert p_value < 1e-10
    assert drift.psi_categorical(ref_freq, values) > 0.2


def test_to_numeric_flags_type_mismatches() -> None:
    raw = np.array([1.5, "2.5", None, "abc", True, {"a": 1}, float("nan"), 3], dtype=object)
    values, mismatch = to_numeric(raw)
    assert mismatch.tolist() == [False, False, False, True, True, True, False, False]
    assert values[[0, 1, 7]].tolist() == [1.5, 2.5, 3.0]
    assert np.isnan(values[[2, 3, 4, 5, 6]]).all()
    clean, none = to_numeric(np.array([1.0, np.nan]))
    assert not none.any() and np.isnan(clean[1])


def test_to_category_reads_json_values_like_ingestion() -> None:
    text, mismatch = to_category(np.array(["x", None, 3.0, 2.5, True, [1]], dtype=object))
    assert text.tolist() == ["x", None, "3", "2.5", "true", None]
    assert mismatch.tolist() == [False, False, False, False, False, True]
    flags, bad = to_category(np.array([True, "YES", "0", 1.0, "maybe", None], dtype=object), bool_field=True)
    assert flags.tolist() == ["true", "true", "false", "true", None, None]
    assert bad.tolist() == [False, False, False, False, True, False]


# ---------------------------------------------------------------------------------------------- windows


def _schema() -> common_pb2.Schema:
    return common_pb2.Schema(
        fields=[
            F(name="id", type=common_pb2.FIELD_TYPE_INT),
            F(name="x0", type=FLOAT, nullable=True, min=-10, max=10),
            F(name="x1", type=FLOAT, nullable=True),
            F(name="x2", type=FLOAT, nullable=True),
            F(name="x3", type=FLOAT, nullable=True),
            F(name="count", type=common_pb2.FIELD_TYPE_INT, min=0),
            F(name="color", type=common_pb2.FIELD_TYPE_CATEGORICAL, allowed_values=COLORS),
            F(name="flag", type=common_pb2.FIELD_TYPE_BOOL),
            F(name="label", type=common_pb2.FIELD_TYPE_CATEGORICAL),
        ],
        key_field="id",
        label_field="label",
    )


def _draw(rng: np.random.Generator, n: int) -> dict[str, np.ndarray]:
    return {
        "x0": rng.normal(0.0, 1.0, n),
        "x1": rng.normal(5.0, 2.0, n),
        "x2": rng.exponential(1.0, n),
        "x3": rng.uniform(-1.0, 1.0, n),
        "count": rng.poisson(3.0, n).astype(np.float64),
        "color": np.asarray(COLORS, dtype=object)[rng.choice(3, n, p=COLOR_P)],
        "flag": rng.random(n) < 0.3,
        "label": np.asarray(LABELS, dtype=object)[rng.choice(3, n, p=LABEL_P)],
    }


@pytest.fixture(scope="module")
def reference() -> dict[str, np.ndarray]:
    return _draw(np.random.default_rng(11), REF_ROWS)


@pytest.fixture(scope="module")
def profile(reference: dict[str, np.ndarray]) -> dict:
    cols = dict(reference, count=reference["count"].astype(np.int64))
    return build_profile(pa.table({"id": np.arange(REF_ROWS), **cols}), _schema())


def _window(
    reference: dict[str, np.ndarray], rng: np.random.Generator, n: int = 3000, **changes: np.ndarray
) -> WindowInput:
    """Rows drawn (with replacement) from the reference itself, so every statistic's null hypothesis holds."""
    rows = rng.integers(0, REF_ROWS, n)
    cols = {k: v[rows] for k, v in reference.items()}
    predicted = cols.pop("label")
    cols.update(changes)
    return WindowInput(
        features=cols,
        outputs={"class": predicted},
        latency_ms=rng.gamma(2.0, 2.0, n),
        field_counts=dict.fromkeys(cols, n),
    )


def _evaluate(profile: dict, window: WindowInput, policy: monitoring_pb2.MonitoringPolicy | None = None):
    return evaluate_window(
        profile,
        _schema(),
        policy or monitoring_pb2.MonitoringPolicy(),
        window,
        task=CLASSIFICATION,
        label_field="label",
    )


def _breached_features(report: monitoring_pb2.WindowReport) -> set[str]:
    return {s.feature for s in report.feature_scores if s.breached}


def test_window_from_the_reference_distribution_breaches_nothing(profile: dict, reference: dict) -> None:
    report = _evaluate(profile, _window(reference, np.random.default_rng(21)))
    assert list(report.breached) == []
    assert report.rows == 3000
    by_feature: dict[str, set[str]] = {}
    for s in report.feature_scores:
        by_feature.setdefault(s.feature, set()).add(s.statistic)
        assert not s.breached
    assert by_feature == {
        "x0": {"psi", "ks"},
        "x1": {"psi", "ks"},
        "x2": {"psi", "ks"},
        "x3": {"psi", "ks"},
        "count": {"psi", "ks"},
        "color": {"psi", "chi2"},
        "flag": {"psi", "chi2"},
    }
    ks = next(s for s in report.feature_scores if s.feature == "x1" and s.statistic == "ks")
    assert ks.threshold == DEFAULTS.ks_statistic and 0 < ks.p_value <= 1
    assert {(s.feature, s.statistic) for s in report.prediction_scores} == {("class", "psi"), ("class", "chi2")}
    assert not any(s.breached for s in report.integrity.scores)
    assert list(report.integrity.missing_fields) == [] and list(report.integrity.extra_fields) == []
    assert 0 < report.latency.p50_ms < report.latency.p99_ms


def test_two_shifted_features_breach_by_name(profile: dict, reference: dict) -> None:
    rng = np.random.default_rng(22)
    n = 3000
    shifted = {
        "x1": rng.normal(7.0, 2.0, n),  # one standard deviation up
        "color": np.asarray(COLORS, dtype=object)[rng.choice(3, n, p=[0.2, 0.3, 0.5])],
    }
    report = _evaluate(profile, _window(reference, rng, n, **shifted))
    assert _breached_features(report) == {"x1", "color"}
    assert list(report.breached) == [DATA]
    x1 = {s.statistic: s for s in report.feature_scores if s.feature == "x1"}
    assert x1["psi"].breached and x1["ks"].breached and x1["ks"].p_value < 1e-10


def test_prediction_drift_when_predicted_classes_flip(profile: dict, reference: dict) -> None:
    rng = np.random.default_rng(23)
    window = _window(reference, rng)
    flipped = {"a": "c", "c": "a", "b": "b"}
    window.outputs["class"] = np.array([flipped[c] for c in window.outputs["class"]], dtype=object)
    report = _evaluate(profile, window)
    assert list(report.breached) == [PREDICTION]
    assert {s.statistic for s in report.prediction_scores if s.breached} == {"psi", "chi2"}


def test_regression_prediction_drift_uses_the_label_bins() -> None:
    rng = np.random.default_rng(24)
    schema = common_pb2.Schema(fields=[F(name="x", type=FLOAT), F(name="y", type=FLOAT)], label_field="y", key_field="")
    prof = build_profile(pa.table({"x": rng.normal(size=5000), "y": rng.normal(10, 3, 5000)}), schema)
    policy = monitoring_pb2.MonitoringPolicy()

    def run(pred: np.ndarray) -> monitoring_pb2.WindowReport:
        window = WindowInput({"x": rng.normal(size=1000)}, {"variable": pred}, np.array([]), {"x": 1000})
        return evaluate_window(prof, schema, policy, window, task=REGRESSION, label_field="y")

    calm = run(rng.normal(10, 3, 1000))
    assert [(s.feature, s.statistic, s.breached) for s in calm.prediction_scores] == [("variable", "psi", False)]
    assert list(run(rng.normal(16, 3, 1000)).breached) == [PREDICTION]


def test_integrity_counts_each_kind_of_problem(profile: dict, reference: dict) -> None:
    rng = np.random.default_rng(25)
    n = 2000
    window = _window(reference, rng, n)
    x0 = window.features["x0"].copy()
    x0[:300] = np.nan  # 15% nulls (reference has none)
    x0[300:340] = 50.0  # 2% above max=10
    x0[340:350] = -11.0  # and below min=-10
    x2 = window.features["x2"].astype(object)
    x2[:100] = "abc"  # 5% type mismatches
    color = window.features["color"].copy()
    color[:200] = "purple"  # 10% outside allowed_values
    count = window.features["count"].copy()
    count[:30] = 2.5  # not an integer
    window.features.update(x0=x0, x2=x2, color=color, count=count)
    del window.features["x3"]
    del window.field_counts["x3"]
    window.field_counts["surprise"] = 12
    report = _evaluate(profile, window)

    per = {f.feature: f for f in report.integrity.features}
    assert (per["x0"].nulls, per["x0"].out_of_range) == (300, 50)
    assert (per["x2"].type_mismatches, per["x2"].nulls) == (100, 0)
    assert per["color"].unseen_categories == 200
    assert per["count"].type_mismatches == 30
    assert per["x3"].nulls == n
    assert list(report.integrity.missing_fields) == ["x3"]
    assert list(report.integrity.extra_fields) == ["surprise"]
    breached = {(s.feature, s.statistic) for s in report.integrity.scores if s.breached}
    assert breached == {
        ("x0", "null_rate"),
        ("x0", "out_of_range_rate"),
        ("x2", "type_mismatch_rate"),
        ("color", "unseen_category_rate"),
        ("count", "type_mismatch_rate"),
        ("x3", "null_rate"),
        ("x3", "missing_field"),
        ("surprise", "extra_field"),
    }
    assert INTEGRITY in report.breached
    null_rate = next(s for s in report.integrity.scores if s.feature == "x0" and s.statistic == "null_rate")
    assert null_rate.score == pytest.approx(0.15) and null_rate.threshold == pytest.approx(DEFAULTS.null_rate_excess)


def test_small_windows_are_reported_but_never_breach(profile: dict, reference: dict) -> None:
    rng = np.random.default_rng(26)
    window = _window(reference, rng, 60, x1=rng.normal(20.0, 2.0, 60))
    report = _evaluate(profile, window)
    x1_psi = next(s for s in report.feature_scores if s.feature == "x1" and s.statistic == "psi")
    assert x1_psi.score > 1.0 and not x1_psi.breached
    assert list(report.breached) == []
    policy = monitoring_pb2.MonitoringPolicy(window=monitoring_pb2.WindowPolicy(min_rows=50))
    # Judged now (PSI on 60 rows is noisy, which is what min_rows guards against): x1 among the breaches.
    assert "x1" in _breached_features(_evaluate(profile, window, policy))


def test_policy_overrides_per_feature(profile: dict, reference: dict) -> None:
    rng = np.random.default_rng(27)
    window = _window(reference, rng, 3000, x1=rng.normal(7.0, 2.0, 3000), x2=rng.exponential(1.15, 3000))
    policy = monitoring_pb2.MonitoringPolicy(
        default_thresholds=monitoring_pb2.FeatureThresholds(psi=0.01),
        feature_thresholds={
            "x1": monitoring_pb2.FeatureThresholds(ignore=True),
            "x0": monitoring_pb2.FeatureThresholds(psi=5.0, ks_statistic=0.9),
        },
    )
    report = _evaluate(profile, window, policy)
    assert "x1" not in {s.feature for s in report.feature_scores}
    x0_psi = next(s for s in report.feature_scores if s.feature == "x0" and s.statistic == "psi")
    assert x0_psi.threshold == 5.0
    x2_psi = next(s for s in report.feature_scores if s.feature == "x2" and s.statistic == "psi")
    assert x2_psi.threshold == pytest.approx(0.01) and x2_psi.breached  # the tighter default catches x2


def test_window_arrays_must_agree_in_length() -> None:
    with pytest.raises(ValueError):
        WindowInput({"a": np.zeros(3)}, {"class": np.zeros(4)}, np.array([]), {})


# ---------------------------------------------------------------------------------------------- quality


def test_quality_report_drop_and_breach() -> None:
    rng = np.random.default_rng(31)
    y_true = rng.integers(0, 2, 200)
    y_pred = np.where(rng.random(200) < 0.7, y_true, 1 - y_true)  # about 70% accurate
    accuracy = float(np.mean(y_true == y_pred))
    threshold = monitoring_pb2.QualityThreshold()
    report = quality_report(CLASSIFICATION, "accuracy", y_true, y_pred, None, ["no", "yes"], 0.9, threshold)
    assert report.labelled_rows == 200 and report.metric == "accuracy"
    assert report.value == pytest.approx(accuracy)
    assert report.drop == pytest.approx(0.9 - accuracy)
    assert report.breached
    assert {m.name for m in report.metrics if not m.class_label} >= {"accuracy", "f1"}
    # Too few labels: the same drop does not breach.
    few = quality_report(CLASSIFICATION, "accuracy", y_true[:40], y_pred[:40], None, ["no", "yes"], 0.9, threshold)
    assert not few.breached
    # Within max_drop: no breach.
    ok = quality_report(CLASSIFICATION, "accuracy", y_true, y_pred, None, ["no", "yes"], accuracy + 0.04, threshold)
    assert not ok.breached


def test_quality_report_labels_as_text_and_regression_direction() -> None:
    y_true = np.array(["yes", "no", None, "maybe", "yes"] * 20, dtype=object)
    y_pred = np.array(["yes", "no", "yes", "no", "no"] * 20, dtype=object)
    report = quality_report(
        CLASSIFICATION,
        "",
        y_true,
        y_pred,
        None,
        ["no", "yes"],
        0.9,
        monitoring_pb2.QualityThreshold(min_labelled_rows=10),
    )
    assert report.labelled_rows == 80  # None is unlabelled; "maybe" is a real (unpredictable) label
    assert report.value == pytest.approx(0.5)
    assert report.breached
    rng = np.random.default_rng(32)
    t = rng.normal(size=100)
    p = t + rng.normal(0, 0.5, 100)
    mae = float(np.mean(np.abs(t - p)))
    reg = quality_report(REGRESSION, "mae", t, p, None, [], 0.2, monitoring_pb2.QualityThreshold())
    assert reg.value == pytest.approx(mae) and reg.drop == pytest.approx(mae - 0.2) and reg.breached


def test_segments_by_category_and_bucket_with_gap() -> None:
    rng = np.random.default_rng(33)
    n = 600
    region = np.asarray(["north", "south", "east"], dtype=object)[np.arange(n) % 3]
    age = np.tile([15.0, 25.0, 35.0, 45.0, 55.0, 65.0], n // 6)
    y_true = rng.integers(0, 2, n)
    correct = np.where(region == "south", rng.random(n) < 0.5, rng.random(n) < 0.95)
    y_pred = np.where(correct, y_true, 1 - y_true)
    configs = [
        monitoring_pb2.SegmentConfig(field="region", min_value=0.7, max_gap=0.2),
        monitoring_pb2.SegmentConfig(field="age", bucket_edges=[20, 30, 60], min_rows=30),
        monitoring_pb2.SegmentConfig(field="absent"),
    ]
    stats_, gaps = segment_report(configs, {"region": region, "age": age}, y_true, y_pred, CLASSIFICATION, ["0", "1"])
    by = {(s.segment.field, s.segment.value): s for s in stats_}
    assert set(by) == {
        ("region", "east"),
        ("region", "north"),
        ("region", "south"),
        ("age", "< 20"),
        ("age", "[20, 30)"),
        ("age", "[30, 60)"),
        ("age", ">= 60"),
    }
    assert by[("age", "[30, 60)")].rows == 300 and by[("age", "< 20")].rows == 100
    assert [k for k, s in by.items() if s.breached] == [("region", "south")]
    south = {m.name: m.value for m in by[("region", "south")].metrics if not m.class_label}
    assert south["accuracy"] < 0.7 and 0 <= south["positive_rate"] <= 1
    region_gap = next(g for g in gaps if g.field == "region")
    assert region_gap.worst.value == "south" and region_gap.metric == "accuracy"
    assert region_gap.gap > 0.2 and region_gap.breached
    age_gap = next(g for g in gaps if g.field == "age")
    assert not age_gap.breached  # no max_gap configured


def test_regression_segments_use_mae_and_flag_high_error() -> None:
    rng = np.random.default_rng(34)
    n = 300
    group = np.asarray(["a", "b"], dtype=object)[np.arange(n) % 2]
    y_true = rng.normal(size=n)
    y_pred = y_true + np.where(group == "b", 2.0, 0.1)
    configs = [monitoring_pb2.SegmentConfig(field="group", min_value=1.0, max_gap=0.5)]
    stats_, gaps = segment_report(configs, {"group": group}, y_true, y_pred, REGRESSION, [])
    mae = {s.segment.value: next(m.value for m in s.metrics if m.name == "mae") for s in stats_}
    assert mae == pytest.approx({"a": 0.1, "b": 2.0})
    assert [s.segment.value for s in stats_ if s.breached] == ["b"]
    assert gaps[0].best.value == "a" and gaps[0].gap == pytest.approx(1.9) and gaps[0].breached


# ---------------------------------------------------------------------------------------------- background work


async def test_window_ticker_goes_on_past_a_failing_model(monkeypatch: pytest.MonkeyPatch) -> None:
    from types import SimpleNamespace

    from flywheel.config import Settings
    from services.monitoring import background

    closed: list[str] = []
    two_rounds = asyncio.Event()

    async def models(ctx: object) -> list[tuple[str, float]]:
        return [("broken", 99.0), ("fine", 99.0)]

    async def close(ctx: object, model: str, age_s: float) -> None:
        if model == "broken":
            raise RuntimeError("one model's trouble")
        closed.append(model)
        if len(closed) >= 2:
            two_rounds.set()

    monkeypatch.setattr(background, "_models_with_open_rows", models)
    monkeypatch.setattr(background, "_close_if_due", close)
    ctx = SimpleNamespace(settings=Settings(monitoring_tick_s=0.01))
    ticker = asyncio.create_task(background.close_due_windows(cast(Any, ctx)))
    try:
        await asyncio.wait_for(two_rounds.wait(), 5)
        assert not ticker.done(), "the ticker outlives a failing model"
    finally:
        ticker.cancel()
    assert closed[:2] == ["fine", "fine"]


async def test_a_label_backlog_is_judged_in_bounded_windows(monkeypatch: pytest.MonkeyPatch) -> None:
    from services.monitoring import evaluator

    open_labels = [2 * evaluator.QUALITY_WINDOW_MAX_ROWS + 70]

    async def close_one(conn: object, model: str) -> monitoring_pb2.WindowReport | None:
        rows = min(open_labels[0], evaluator.QUALITY_WINDOW_MAX_ROWS)  # the query's LIMIT
        if rows < 50:
            return None
        open_labels[0] -= rows
        return monitoring_pb2.WindowReport(rows=rows)

    monkeypatch.setattr(evaluator, "close_quality_window", close_one)
    reports = await evaluator.close_quality_windows(cast(Any, None), "m")
    assert [r.rows for r in reports] == [evaluator.QUALITY_WINDOW_MAX_ROWS] * 2 + [70]
    assert open_labels == [0]
