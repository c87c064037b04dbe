"""Performance estimation without labels (services/monitoring/estimation.py): on a synthetic covariate
shift whose answer is known (inputs move, the concept P(y | x) does not), the estimate from the
calibrated probabilities lands within 0.03 of what the labels say; calibration is what makes an
over-confident model's estimate right; hostile samples, stored calibrations and outputs are refused
or skipped, never trusted."""

from __future__ import annotations

import math

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import accuracy_score, f1_score, roc_auc_score

from flywheel.v1 import common_pb2
from services.monitoring import estimation as E
from services.training.trainer import calibration_sample

WEIGHTS = np.array([1.5, 0.5, -0.5, -1.0])


def _draw(rng: np.random.Generator, n: int, scale: float = 1.0, shift: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """x ~ N(shift, scale^2); y ~ the same noisy linear concept wherever x lies."""
    x = rng.normal(size=(n, 4)) * scale
    x[:, 0] += shift
    y = ((x @ WEIGHTS + rng.normal(size=n)) > 0).astype(int)
    return x, y


def _calibrated(model: LogisticRegression, x: np.ndarray, y: np.ndarray, labels: list[str]) -> E.Calibration:
    """Through the same CalibrationSample bytes training writes and monitoring reads."""
    raw = calibration_sample(model.predict_proba(x), y, labels, seed=7)
    sample = common_pb2.CalibrationSample.FromString(raw)
    proba, classes = E.sample_arrays(sample.class_labels, sample.probabilities, sample.labels)
    return E.Calibration.from_json(E.fit(sample.class_labels, proba, classes).to_json())


@pytest.mark.parametrize(("scale", "shift"), [(1.0, 0.0), (0.35, 0.0), (0.3, 0.3), (1.0, 1.5)])
def test_binary_estimate_tracks_realized_under_covariate_shift(scale: float, shift: float) -> None:
    rng = np.random.default_rng(11)
    model = LogisticRegression().fit(*_draw(rng, 5000))
    x_ref, y_ref = _draw(rng, 5000)
    calibration = _calibrated(model, x_ref, y_ref, ["0", "1"])
    reference_accuracy = accuracy_score(y_ref, model.predict(x_ref))

    x, y = _draw(rng, 5000, scale, shift)
    proba, predicted = model.predict_proba(x), model.predict(x)
    est = E.estimate(calibration, proba, predicted)
    realized = {
        "accuracy": accuracy_score(y, predicted),
        "f1": f1_score(y, predicted),
        "roc_auc": roc_auc_score(y, proba[:, 1]),
    }
    for metric, value in realized.items():
        assert abs(est[metric] - value) <= 0.03, (metric, est[metric], value)
    if scale < 1:  # inputs crowd the decision boundary: the model really got worse, and the estimate says so
        assert reference_accuracy - realized["accuracy"] > 0.08
        assert reference_accuracy - est["accuracy"] > 0.08


def test_multiclass_estimate_tracks_realized_under_covariate_shift() -> None:
    rng = np.random.default_rng(5)
    w = rng.normal(size=(4, 3)) * 1.5

    def draw(n: int, scale: float) -> tuple[np.ndarray, np.ndarray]:
        x = rng.normal(size=(n, 4)) * scale
        return x, (x @ w + rng.gumbel(size=(n, 3))).argmax(axis=1)

    model = LogisticRegression().fit(*draw(6000, 1.0))
    calibration = _calibrated(model, *draw(6000, 1.0), ["a", "b", "c"])
    for scale in (1.0, 0.4):
        x, y = draw(6000, scale)
        proba, predicted = model.predict_proba(x), model.predict(x)
        est = E.estimate(calibration, proba, predicted)
        assert abs(est["accuracy"] - accuracy_score(y, predicted)) <= 0.03
        assert abs(est["f1"] - f1_score(y, predicted, average="macro")) <= 0.03
        realized_auc = np.mean([roc_auc_score(y == c, proba[:, c]) for c in range(3)])
        assert abs(est["roc_auc"] - realized_auc) <= 0.03


def test_calibration_corrects_an_over_confident_model() -> None:
    rng = np.random.default_rng(3)
    model = LogisticRegression().fit(*_draw(rng, 5000))

    def over_confident(x: np.ndarray) -> np.ndarray:
        p1 = model.predict_proba(x)[:, 1]
        sharp = p1**4 / (p1**4 + (1 - p1) ** 4)  # same ranking, far more sure of itself
        return np.column_stack([1 - sharp, sharp])

    x_ref, y_ref = _draw(rng, 5000)
    proba_ref = over_confident(x_ref)
    calibration = E.fit(["0", "1"], proba_ref, y_ref)
    x, y = _draw(rng, 5000, scale=0.5)
    proba = over_confident(x)
    predicted = proba.argmax(axis=1)
    realized = accuracy_score(y, predicted)
    naive = float(proba.max(axis=1).mean())  # the uncalibrated confidence
    assert naive - realized > 0.1, "the raw probabilities overstate accuracy"
    assert abs(E.estimate(calibration, proba, predicted)["accuracy"] - realized) <= 0.03


def test_report_breaches_only_past_the_drop_and_never_on_unknowns() -> None:
    est = {"accuracy": 0.80, "f1": 0.7, "roc_auc": math.nan}
    r = E.report(est, 500, "accuracy", 0.90, 0.05)
    assert r.breached and r.drop == pytest.approx(0.10) and r.rows == 500
    assert [m.name for m in r.metrics] == ["accuracy", "f1"], "a metric the rows cannot give is left out"
    assert not E.report(est, 500, "accuracy", 0.84, 0.05).breached
    assert not E.report(est, 500, "accuracy", math.nan, 0.05).breached
    assert not E.report(est, 500, "roc_auc", 0.95, 0.05).breached
    assert E.report(est, 500, "accuracy", 0.9, 0.05, realized=0.79).realized == pytest.approx(0.79)


def test_decode_outputs_keeps_only_rows_with_k_probabilities() -> None:
    outputs = [
        {"label": 1, "probabilities": [0.2, 0.8]},
        {"label": [0], "probabilities": [[0.9, 0.1]]},  # one row of a batch, nested
        {"probabilities": [0.3, 0.7]},  # no label: the most probable class
        {"label": 7, "probabilities": [0.6, 0.4]},  # a label out of range: the most probable class
        {"label": 1, "probabilities": [0.5, 0.5, 0.0]},  # wrong width
        {"label": 1, "probabilities": [1.5, -0.5]},  # not probabilities
        {"label": 1, "probabilities": ["0.5", 0.5]},
        {"label": 1, "probabilities": [True, False]},
        {"class": "1"},
    ]
    proba, predicted, kept = E.decode_outputs(outputs, 2)
    assert kept.tolist() == [0, 1, 2, 3]
    assert predicted.tolist() == [1, 0, 1, 0]
    assert proba.shape == (4, 2)
    empty = E.decode_outputs([{"class": "x"}], 2)
    assert empty[0].shape == (0, 2) and len(empty[1]) == 0


@pytest.mark.parametrize(
    ("labels", "probabilities", "classes", "why"),
    [
        (["a"], [1.0], [0], "classes"),
        (["a", "b"], [0.5, 0.5, 0.5], [0, 1], "probabilities for"),
        (["a", "b"], [0.5, math.nan], [0], "finite"),
        (["a", "b"], [0.5, 1.5], [0], "finite"),
        (["a", "b"], [0.5, 0.5], [2], "class indices"),
        (["a", "b"], [], [], "rows"),
    ],
)
def test_a_hostile_calibration_sample_is_refused(labels, probabilities, classes, why) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(E.CalibrationError, match=why):
        E.sample_arrays(labels, probabilities, classes)


def test_a_sample_too_large_to_hold_is_refused_before_it_is_built() -> None:
    class Huge(list):  # type: ignore[type-arg]
        def __len__(self) -> int:
            return E.MAX_SAMPLE_ROWS

    with pytest.raises(E.CalibrationError, match="values"):
        E.sample_arrays([str(i) for i in range(100)], [], Huge())


@pytest.mark.parametrize(
    "stored",
    [
        None,
        {},
        {"class_labels": ["a", "b"], "knots": []},
        {"class_labels": ["a", "b"], "knots": [[[0.0, 1.0], [0.0]]]},
        {"class_labels": ["a", "b"], "knots": [[[1.0, 0.0], [0.0, 1.0]]]},
        {"class_labels": ["a", "b"], "knots": [[[0.0, "x"], [0.0, 1.0]]]},
        {"class_labels": ["a", "b"], "knots": [[[0.0, float("inf")], [0.0, 1.0]]]},
        {"class_labels": ["a", "b", "c"], "knots": [[[0.0], [0.0]]]},
    ],
)
def test_a_malformed_stored_calibration_is_refused(stored) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(E.CalibrationError):
        E.Calibration.from_json(stored)


def test_estimates_on_no_rows_or_one_expected_class_are_unknown_not_errors() -> None:
    calibration = E.fit(["0", "1"], np.array([[0.9, 0.1], [0.2, 0.8]] * 50), np.array([0, 1] * 50))
    assert all(math.isnan(v) for v in E.estimate(calibration, np.empty((0, 2)), np.empty(0, dtype=int)).values())
    sure = E.estimate(calibration, np.array([[0.0, 1.0]] * 10), np.ones(10, dtype=int))
    assert math.isnan(sure["roc_auc"]) and sure["accuracy"] == pytest.approx(1.0)
