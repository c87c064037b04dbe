"""Staging checks for a registered candidate: it loads, its signature fits production's, its
outputs on the test split reproduce the metrics recorded at training, and its latency.

The production version is scored on the same rows, so the registry compares champion and
challenger on equal ground.
"""

from __future__ import annotations

import asyncio
import time

import numpy as np
import pyarrow as pa

from flywheel import clients, evaluation, histograms
from flywheel.config import Settings
from flywheel.logging import get_logger
from flywheel.v1 import common_pb2, events_pb2, registry_pb2
from services.serving.deadlines import RunTimedOut
from services.serving.models import ModelManager, Slot

log = get_logger(__name__)
R = registry_pb2


def _check(name: str, passed: bool, detail: str) -> registry_pb2.StagingCheck:
    return R.StagingCheck(name=name, passed=passed, detail=detail)


def signature_problems(candidate: Slot, production: Slot) -> list[str]:
    """Inputs and outputs must match by name and datatype, and in every dimension but the batch."""
    problems = []
    for kind, cand, prod in (
        ("input", candidate.model.inputs, production.model.inputs),
        ("output", candidate.model.outputs, production.model.outputs),
    ):
        by_name = {t.name: t for t in prod}
        for t in cand:
            p = by_name.pop(t.name, None)
            if p is None:
                problems.append(f"{kind} {t.name!r} is new")
            elif t.datatype != p.datatype:
                problems.append(f"{kind} {t.name!r} is {t.datatype}, production has {p.datatype}")
            elif list(t.shape[1:]) != list(p.shape[1:]):
                problems.append(f"{kind} {t.name!r} has shape {list(t.shape)}, production {list(p.shape)}")
        problems += [f"{kind} {n!r} is missing" for n in by_name]
    return problems


def score(
    slot: Slot, x: np.ndarray, labels: np.ndarray, task: int
) -> tuple[list[common_pb2.Metric], common_pb2.PredictionHistogram]:
    """Metrics of `slot` on rows `x` with true `labels`, computed as training computes them, and the
    histogram of its predictions on those rows."""
    input_name = slot.model.inputs[0].name
    out = slot.model.run({input_name: x})
    if task == common_pb2.TASK_REGRESSION:
        predicted = out["variable"].reshape(-1)
        ev = evaluation.regression_metrics(labels.astype(np.float64), predicted)
        histogram = value_histogram(predicted)
    else:
        classes = list(slot.signature.class_labels)
        index = {c: i for i, c in enumerate(classes)}
        y = np.array([index.get(str(v), -1) for v in labels])
        keep = y >= 0  # labels unseen at training cannot be scored
        ev = evaluation.classification_metrics(y[keep], out["label"][keep], out["probabilities"][keep], classes)
        histogram = class_histogram(out["label"].reshape(-1), classes)
    return [m for m in ev.metrics if not m.class_label], histogram


def class_histogram(predicted: np.ndarray, classes: list[str]) -> common_pb2.PredictionHistogram:
    """Rows per predicted class index (indices outside the classes are not counted)."""
    idx = predicted.astype(np.int64)
    idx = idx[(idx >= 0) & (idx < len(classes))]
    counts = np.bincount(idx, minlength=len(classes))
    return common_pb2.PredictionHistogram(classes=classes, counts=[int(c) for c in counts])


def value_histogram(predicted: np.ndarray) -> common_pb2.PredictionHistogram:
    """Counts of the predicted values in bins between their deciles (NaN not counted)."""
    edges = histograms.decile_edges(predicted)
    if len(edges) == 0:
        return common_pb2.PredictionHistogram()
    counts = histograms.bin_counts(edges, predicted)
    return common_pb2.PredictionHistogram(edges=[float(e) for e in edges], counts=[int(c) for c in counts])


async def run_checks(
    manager: ModelManager,
    settings: Settings,
    event: events_pb2.ModelRegistered,
    mv: registry_pb2.ModelVersion | None = None,
) -> registry_pb2.StagingReport:
    """Checks the candidate `event` describes; `mv` is the registry's record of it, when the caller has it."""
    name, version = event.model.name, event.model.version
    report = R.StagingReport(reporter="serving")
    try:
        slot = await manager.stage(name, version, mv)
    except Exception as exc:
        report.checks.append(_check("loads", False, f"{type(exc).__name__}: {exc}"))
        return _finish(report)
    report.checks.append(_check("loads", True, f"provider {slot.model.provider}"))
    try:
        production = manager.production(name)
        if production is not None and production.version != version:
            problems = signature_problems(slot, production)
            report.checks.append(
                _check("signature", not problems, "; ".join(problems) or f"matches v{production.version}")
            )
        else:
            production = None
            report.checks.append(_check("signature", True, "no production version to compare with"))
        await _sample_checks(report, slot, production, settings, event)
        await _latency(report, slot, settings.serving_staging_latency_calls)
    except RunTimedOut as exc:  # the candidate's own verdict (a retry of the event would wait it out again)
        report.checks.append(_check("runs_in_time", False, str(exc)))
    finally:
        await manager.drop_staging(name, version)
    return _finish(report)


async def _sample_checks(
    report: registry_pb2.StagingReport,
    slot: Slot,
    production: Slot | None,
    settings: Settings,
    event: events_pb2.ModelRegistered,
) -> None:
    dataset = event.lineage.dataset
    features = list(slot.signature.feature_names)
    if not dataset.name or not features:
        report.checks.append(_check("sample_metrics", False, "the model has no dataset lineage or feature names"))
        return
    version = await clients.dataset_version(settings, dataset)
    label = version.schema.label_field
    table = await clients.test_split(settings, dataset, [*features, label], settings.serving_staging_sample_rows)
    if table.num_rows == 0:
        report.checks.append(_check("sample_metrics", False, "the dataset version has no test rows"))
        return
    x = _matrix(table, features)
    labels = table[label].to_numpy(zero_copy_only=False)
    sample, histogram = await asyncio.to_thread(score, slot, x, labels, event.task)
    report.sample_metrics.extend(sample)
    report.sample_predictions.CopyFrom(histogram)
    if production is not None and not [c for c in report.checks if c.name == "signature" and not c.passed]:
        champion, _ = await asyncio.to_thread(score, production, x, labels, event.task)
        report.champion_metrics.extend(champion)
        report.champion_version = production.version
    recorded = {m.name: m.value for m in event.metrics if not m.class_label}
    tolerance = settings.serving_staging_tolerance
    gaps = {m.name: abs(m.value - recorded[m.name]) for m in sample if m.name in recorded}
    off = {n: g for n, g in gaps.items() if g > tolerance}
    detail = (
        f"{len(gaps)} metrics within {tolerance} of training on {table.num_rows} test rows"
        if not off
        else "differs from training: " + ", ".join(f"{n} by {g:.4f}" for n, g in sorted(off.items()))
    )
    report.checks.append(_check("sample_metrics", bool(gaps) and not off, detail))


def _matrix(table: pa.Table, features: list[str]) -> np.ndarray:
    cols = [table[f].to_numpy(zero_copy_only=False).astype(np.float32) for f in features]
    return np.column_stack(cols) if cols else np.empty((table.num_rows, 0), np.float32)


async def _latency(report: registry_pb2.StagingReport, slot: Slot, calls: int) -> None:
    """p50/p99 of single-row calls through the slot's batcher (the path a request takes)."""
    spec = slot.model.inputs[0]
    width = spec.shape[1] if len(spec.shape) > 1 and spec.shape[1] > 0 else 1
    row = {spec.name: np.zeros((1, width), np.float32)}
    times = []
    for _ in range(calls):
        start = time.perf_counter()
        await slot.infer(row)
        times.append((time.perf_counter() - start) * 1000)
    report.latency_p50_ms = float(np.percentile(times, 50))
    report.latency_p99_ms = float(np.percentile(times, 99))
    report.latency_calls = calls
    report.checks.append(
        _check("latency", True, f"p50 {report.latency_p50_ms:.3f} ms, p99 {report.latency_p99_ms:.3f} ms over {calls}")
    )


def _finish(report: registry_pb2.StagingReport) -> registry_pb2.StagingReport:
    report.passed = all(c.passed for c in report.checks)
    report.report_time.GetCurrentTime()
    return report
