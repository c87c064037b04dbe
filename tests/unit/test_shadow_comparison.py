"""The live shadow comparison's arithmetic (services/monitoring/comparison.py): agreement or mean
absolute difference on paired rows, both latencies, and both models' quality on the labelled pairs,
checked against direct computations; stored junk counts as a disagreement, never as an error."""

from __future__ import annotations

import math

import numpy as np
import pytest

from flywheel.v1 import common_pb2
from services.monitoring.comparison import Side, canary_report, compare, predicted_class, predicted_value
from services.monitoring.drift import psi

LABELS = ["no", "yes"]


def test_classification_agreement_latency_and_live_quality_on_the_same_rows() -> None:
    rng = np.random.default_rng(4)
    n = 400
    prod = rng.integers(0, 2, n)
    chal = np.where(rng.random(n) < 0.8, prod, 1 - prod)  # agrees on about 80% of rows
    truth = np.where(rng.random(n) < 0.7, chal, 1 - chal)  # the challenger is right about 70% of the time
    labelled = rng.random(n) < 0.5
    p_ms, c_ms = rng.gamma(2.0, 0.5, n), rng.gamma(2.0, 0.9, n)
    production = Side([{"label": int(v), "class": str(v)} for v in prod], p_ms)
    challenger = Side([{"label": [int(v)]} for v in chal], c_ms)  # index only, nested: the class is looked up
    labels = [float(t) if keep else None for t, keep in zip(truth, labelled, strict=True)]
    c = compare(common_pb2.TASK_CLASSIFICATION, ["0", "1"], production, challenger, labels)

    assert c.rows == n and c.agreement == pytest.approx(np.mean(prod == chal))
    assert not c.HasField("mean_abs_difference")
    assert c.production_latency.p50_ms == pytest.approx(np.percentile(p_ms, 50))
    assert c.challenger_latency.p99_ms == pytest.approx(np.percentile(c_ms, 99))
    assert c.labelled_rows == labelled.sum()
    acc = {m.name: m.value for m in c.challenger_quality}["accuracy"]
    assert acc == pytest.approx(np.mean(chal[labelled] == truth[labelled]))
    prod_acc = {m.name: m.value for m in c.production_quality}["accuracy"]
    assert prod_acc == pytest.approx(np.mean(prod[labelled] == truth[labelled]))


def test_regression_mean_absolute_difference_skips_rows_without_a_number() -> None:
    production = Side([{"variable": [1.0]}, {"variable": 2.0}, {"variable": "x"}], np.ones(3))
    challenger = Side([{"variable": [1.5]}, {"variable": 1.0}, {"variable": 3.0}], np.ones(3))
    c = compare(common_pb2.TASK_REGRESSION, [], production, challenger, [None, 4.0, None])
    assert c.mean_abs_difference == pytest.approx((0.5 + 1.0) / 2)
    assert not c.HasField("agreement") and c.labelled_rows == 1
    assert {m.name: m.value for m in c.challenger_quality}["mae"] == pytest.approx(3.0)


def test_junk_outputs_disagree_and_no_rows_is_an_empty_comparison() -> None:
    assert predicted_class({"class": {"a": 1}}, LABELS) is None
    assert predicted_class({"label": 7}, LABELS) is None and predicted_class({"label": True}, LABELS) is None
    assert predicted_class({"label": 1.0}, LABELS) == "yes"
    assert math.isnan(predicted_value({"variable": float("inf")}))
    junk = Side([{"class": None}, {}], np.ones(2))
    c = compare(common_pb2.TASK_CLASSIFICATION, LABELS, junk, junk, [None, None])
    assert c.agreement == 0.0, "no class on either side is not agreement"
    empty = compare(common_pb2.TASK_CLASSIFICATION, LABELS, Side([], np.empty(0)), Side([], np.empty(0)), [])
    assert empty.rows == 0 and not empty.HasField("agreement") and empty.production_latency.p50_ms == 0


def test_a_canary_report_counts_each_sides_predicted_classes_and_its_psi_is_over_those_counts() -> None:
    """The per-class counts are what the PSI gate judged, so an abort on it explains itself: here a
    fifth of the canary's answers name no class of the signature, which alone gives a PSI above 1."""
    production = Side([{"class": "no"}] * 60 + [{"class": "yes"}] * 40, np.ones(100))
    canary = Side([{"class": "no"}] * 20 + [{"label": 1}] * 12 + [{"class": "maybe"}] * 5 + [{}] * 5, np.ones(42))
    report = canary_report(common_pb2.TASK_CLASSIFICATION, LABELS, canary, production, ([], []), ([], []))
    assert dict(report.production_classes) == {"no": 60, "yes": 40}
    assert dict(report.canary_classes) == {"no": 20, "yes": 12, "": 10}
    assert report.prediction_psi == pytest.approx(psi(np.array([60, 40, 0]), np.array([20, 12, 10])))
    assert report.prediction_psi > 1
    regression = canary_report(common_pb2.TASK_REGRESSION, [], Side([{"variable": 1.0}], np.ones(1)),
                               Side([{"variable": 2.0}], np.ones(1)), ([], []), ([], []))  # fmt: skip
    assert not regression.canary_classes and not regression.production_classes
