"""The closed loop with every service a real process: production inputs shift, monitoring
names the shifted features, training retrains on the newest data, the registry promotes the
better model and serving swaps to it, with no call from the test after the traffic began, and
one trace links the alert, the run, the registration, the checks, the promotion and the swap."""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
import threading
import time

import grpc
import numpy as np
import onnxruntime as ort
import pytest
import tritonclient.grpc as triton
from aiokafka import AIOKafkaProducer
from google.protobuf.duration_pb2 import Duration

from flywheel import evaluation
from flywheel.bus.topics import Topics
from flywheel.predictions import logged_rows
from flywheel.telemetry import read_spans
from flywheel.v1 import (
    common_pb2,
    events_pb2,
    ingestion_pb2,
    monitoring_pb2,
    registry_pb2,
    serving_pb2,
    training_pb2,
)
from tests.polling import wait_until

from .clients import Clients, create_dataset, ingest_requests, read_split, read_topic
from .loop_helpers import (
    concept_csv,
    faulty_classifier,
    production_version,
    send_traffic,
    shifted,
    spec,
    wait_served,
)

T = training_pb2
M = monitoring_pb2
K = common_pb2


@pytest.fixture(scope="module")
def infer(stack):
    client = stack.triton()
    yield client
    client.close()


@pytest.fixture(scope="module")
def headers(stack) -> dict[str, str]:
    """tritonclient's calls carry the admin token `flywheel up` wrote, as the README shows."""
    return stack.headers


def _policy(api: Clients, model: str, *, cooldown_s: int, **extra) -> None:  # type: ignore[no-untyped-def]
    policy = M.MonitoringPolicy(
        model_name=model,
        enabled=True,
        window=M.WindowPolicy(size_rows=300, min_rows=100, duration=Duration(seconds=3600)),
        consecutive_breaches=1,
        cooldown=Duration(seconds=cooldown_s),
        **extra,
    )
    api.monitoring.SetMonitoringPolicy(M.SetMonitoringPolicyRequest(policy=policy))


def _windows(api: Clients, model: str) -> list[M.WindowReport]:
    return list(api.monitoring.GetDriftReport(M.GetDriftReportRequest(model_name=model, window_count=50)).windows)


def _alerts(api: Clients, model: str, kind: int = 0) -> list[M.Alert]:
    return list(api.monitoring.ListAlerts(M.ListAlertsRequest(model_name=model, kind=kind)).alerts)


def _bootstrap(api: Clients, infer, headers, dataset: str, model: str, spec_msg: T.TrainingSpec) -> None:  # type: ignore[no-untyped-def]
    """Version 1 of the data, a model trained on it, promoted and served."""
    create_dataset(api, dataset)
    api.ingestion.IngestDataset(ingest_requests(dataset, concept_csv(4000, seed=1, start_id=0)))
    api.training.CreateSpec(T.CreateSpecRequest(spec=spec_msg))
    if not spec_msg.triggers.on_data_versioned:
        api.training.StartRun(T.StartRunRequest(spec_name=spec_msg.name))
    wait_until(lambda: production_version(api, model) == 1, 120, f"{model} v1 in production")
    wait_served(infer, model, 1, headers)


def test_drift_retrains_promotes_and_serves_in_one_trace(stack, api, infer, headers):
    model = "loop-model"
    _bootstrap(
        api, infer, headers, "loop", model, spec("loop-lr", "loop", model, on_data=False, margin=0.01, cooldown_s=600)
    )
    _policy(api, model, cooldown_s=600)

    # Reference traffic: nothing to report.
    send_traffic(infer, model, shifted(600, seed=2, shift=0.0), headers, prefix="ref")
    wait_until(lambda: len(_windows(api, model)) >= 2, 60, "two reference windows")
    assert _alerts(api, model) == []
    assert all(not w.breached for w in _windows(api, model))

    # New data with a new concept arrives first (no run: the spec does not follow data.versioned) ...
    new = concept_csv(4000, seed=3, start_id=100_000, shift=2.0, weights=(-1.0, 1.0, 1.0, 0.5))
    header = ingestion_pb2.IngestHeader(dataset="loop", mode=K.WRITE_MODE_REPLACE, format=ingestion_pb2.DATA_FORMAT_CSV)
    requests = [ingestion_pb2.IngestDatasetRequest(header=header), ingestion_pb2.IngestDatasetRequest(chunk=new)]
    assert api.ingestion.IngestDataset(iter(requests)).version.ref.version == 2

    # ... then shifted traffic. From here on the test only watches.
    send_traffic(infer, model, shifted(600, seed=4, shift=2.0), headers, prefix="shift")
    alerts = wait_until(lambda: _alerts(api, model, K.DRIFT_KIND_DATA_DRIFT), 60, "a data drift alert")
    named = {s.feature for s in alerts[-1].scores if s.breached}
    assert {"f0", "f1"} <= named and not named & {"f2", "f3"}, alerts[-1]
    wait_until(lambda: production_version(api, model) == 2, 180, "the retrained model in production")
    wait_served(infer, model, 2, headers)

    runs = api.training.ListRuns(T.ListRunsRequest(spec_name="loop-lr")).runs
    drift_run = next(r for r in runs if r.trigger == T.RUN_TRIGGER_DRIFT_DETECTED)
    assert drift_run.dataset.version == 2 and drift_run.registered_model.version == 2
    promoted = api.registry.GetModelVersion(registry_pb2.GetModelVersionRequest(name=model, version=2)).version
    assert promoted.promotion.state == registry_pb2.PROMOTION_STATE_PROMOTED
    assert promoted.staging.champion_version == 1, "compared with production on the same rows"

    # One trace: from the window that raised the alert to serving's swap.
    spans_file = stack.home / "spans.jsonl"

    def chain() -> dict[str, set[str]] | None:
        spans = read_spans(spans_file)
        drift = [s for s in spans if s["attributes"].get("flywheel.event_id") == drift_run.trigger_event_id]
        if not drift:
            return None
        trace = drift[0]["trace_id"]
        names = {(s["service"], s["name"]) for s in spans if s["trace_id"] == trace}
        wanted = {
            ("flywheel-monitoring", "flywheel.predictions.logged process"),
            ("flywheel-training", "flywheel.drift.detected process"),
            ("flywheel-training", "training run"),
            ("flywheel-registry", "/flywheel.v1.RegistryService/RegisterModel"),
            ("flywheel-serving", "flywheel.model.registered process"),
            ("flywheel-registry", "/flywheel.v1.RegistryService/ReportStagingChecks"),
            ("flywheel-serving", "flywheel.model.promoted process"),
        }
        return {"missing": wanted - names} if wanted <= names else None

    wait_until(chain, 30, "the whole chain in one trace")
    alerting = [
        s for s in read_spans(spans_file)
        if s["attributes"].get("flywheel.alert_id") == alerts[-1].alert_id and s["name"] == "alert raised"
    ]  # fmt: skip
    assert alerting and alerting[0]["trace_id"] == next(
        s["trace_id"] for s in read_spans(spans_file)
        if s["attributes"].get("flywheel.event_id") == drift_run.trigger_event_id
    )  # fmt: skip


def test_a_burst_of_drift_is_one_retraining_and_a_worse_model_stays_out(stack, api, infer, headers):
    model = "burst-model"
    _bootstrap(
        api,
        infer,
        headers,
        "burst",
        model,
        spec("burst-lr", "burst", model, on_data=False, margin=0.05, cooldown_s=600),
    )
    _policy(api, model, cooldown_s=0)  # every drifting window alerts: the guard rails are training's
    # More data of the same concept: a retrained model is no better by the 0.05 margin.
    api.ingestion.IngestDataset(ingest_requests("burst", concept_csv(2000, seed=5, start_id=50_000)))

    send_traffic(infer, model, shifted(1500, seed=6, shift=2.0), headers, prefix="burst")
    wait_until(lambda: len(_alerts(api, model, K.DRIFT_KIND_DATA_DRIFT)) >= 4, 90, "a burst of drift alerts")

    def decided() -> registry_pb2.ModelVersion | None:
        try:
            mv = api.registry.GetModelVersion(registry_pb2.GetModelVersionRequest(name=model, version=2)).version
        except grpc.RpcError:
            return None
        return mv if mv.promotion.state not in (0, registry_pb2.PROMOTION_STATE_PENDING_CHECKS) else None

    mv = wait_until(decided, 180, "the retrained version's promotion decision")
    assert mv.promotion.state == registry_pb2.PROMOTION_STATE_NOT_PROMOTED
    audit = api.registry.ListAuditEvents(registry_pb2.ListAuditEventsRequest(name=model, version=2)).events
    why = [e.reason for e in audit if e.action == registry_pb2.AUDIT_ACTION_NOT_PROMOTED]
    assert why and "not better by the margin" in why[0] and "0.05" in why[0], why
    assert production_version(api, model) == 1

    runs = api.training.ListRuns(T.ListRunsRequest(spec_name="burst-lr")).runs
    assert len([r for r in runs if r.trigger == T.RUN_TRIGGER_DRIFT_DETECTED]) == 1, "one retraining"

    def drift_decisions() -> list[T.TriggerDecision] | None:
        found = api.training.ListTriggerDecisions(T.ListTriggerDecisionsRequest(spec_name="burst-lr")).decisions
        drift = [d for d in found if d.trigger == T.RUN_TRIGGER_DRIFT_DETECTED]
        return drift if len(drift) >= 4 else None

    decisions = wait_until(drift_decisions, 60, "training's decision on every drift event")
    kinds = [d.decision for d in decisions]
    assert kinds.count("queued") == 1 and len(kinds) >= 4, kinds
    assert all(d.reason for d in decisions), "every automatic decision says why"


def test_feedback_raises_quality_and_segment_alerts_and_bad_messages_go_to_the_dlq(stack, api, infer, headers):
    model = "quality-model"
    _bootstrap(api, infer, headers, "quality", model, spec("quality-lr", "quality", model, on_data=True, margin=0.0))
    _policy(
        api, model, cooldown_s=0,
        quality=M.QualityThreshold(metric="accuracy", max_drop=0.05, min_labelled_rows=200),
        segments=[M.SegmentConfig(field="f3", bucket_edges=[0.0], metric="accuracy", min_value=0.7, min_rows=20)],
    )  # fmt: skip

    async def garbage() -> None:
        producer = AIOKafkaProducer(bootstrap_servers=stack.bootstrap)
        await producer.start()
        try:
            await producer.send_and_wait(Topics.PREDICTIONS_LOGGED, b"\x00not an event", key=model.encode())
            await producer.send_and_wait(
                Topics.FEEDBACK, b'{"modelName": ', key=model.encode(), headers=[("content-type", b"application/json")]
            )
        finally:
            await producer.stop()

    asyncio.run(garbage())

    x = shifted(200, seed=7, shift=0.0)
    ids = send_traffic(infer, model, x, headers, batch=1, prefix="q")
    # Labels: right where f3 >= 0, wrong where f3 < 0 (the model is good overall, bad on one segment).
    truth = (x @ [1.5, 0.5, -0.5, -1.0] > 0).astype(int)
    wrong = x[:, 3] < 0
    labels = [
        M.FeedbackLabel(request_id=rid, row_index=0, label=_value(1 - t if w else t))
        for rid, t, w in zip(ids, truth, wrong, strict=True)
    ]

    def recorded() -> bool:
        # Labels join once their prediction reached monitoring; re-sending the joined ones changes nothing.
        api.monitoring.RecordFeedback(M.RecordFeedbackRequest(model_name=model, labels=labels))
        return _alerts(api, model, K.DRIFT_KIND_QUALITY) != []

    wait_until(recorded, 60, "all labels joined and a quality alert")
    quality = _alerts(api, model, K.DRIFT_KIND_QUALITY)[0]
    assert quality.scores[0].feature == "accuracy" and quality.scores[0].score > 0.05
    segment = wait_until(lambda: _alerts(api, model, K.DRIFT_KIND_SEGMENT), 30, "a segment alert")
    assert any(a.segment.field == "f3" and a.segment.value == "< 0" for a in segment), segment
    report = api.monitoring.GetSegmentReport(M.GetSegmentReportRequest(model_name=model, field="f3"))
    by_value = {s.segment.value: s for s in report.segments}
    assert by_value["< 0"].breached and not by_value[">= 0"].breached

    def parked_by_monitoring(topic: str) -> list:  # type: ignore[type-arg]
        # Each consumer group parks what it cannot read (ingestion reads flywheel.feedback too).
        return [
            r for r in read_topic(stack.bootstrap, f"{topic}.dlq")
            if r.key == model.encode() and ("error.consumer", b"flywheel-monitoring") in list(r.headers)
        ]  # fmt: skip

    for topic in (Topics.PREDICTIONS_LOGGED, Topics.FEEDBACK):
        parked = parked_by_monitoring(topic)
        assert len(parked) == 1, (topic, parked)
        assert dict(parked[0].headers)["error.type"] == b"MalformedEvent"
    # Monitoring kept going past the bad messages: the predictions sent after them were consumed and
    # joined (the quality alert above needed all 200).


def test_an_estimated_performance_drop_retrains_before_any_label_and_labels_confirm_it(stack, api, infer, headers):
    """Traffic crowds the decision boundary (the concept is unchanged): the model's calibrated
    probabilities say it got worse, monitoring alerts with no label sent, and training retrains on
    that alert as on any drift; labels sent afterwards land near the estimate."""
    model = "estimate-model"
    _bootstrap(
        api, infer, headers, "estimate", model,
        spec("estimate-lr", "estimate", model, on_data=False, margin=0.5, cooldown_s=600),  # v2 stays out
    )  # fmt: skip
    assert api.registry.GetModelVersion(
        registry_pb2.GetModelVersionRequest(name=model, version=1)
    ).version.calibration_uri.startswith("sha256:"), "training recorded the test split's calibration sample"
    # Only the estimate can alert: drift checks off, the quality window waits for all the labels.
    _policy(
        api, model, cooldown_s=600,
        default_thresholds=M.FeatureThresholds(ignore=True),
        prediction_thresholds=M.FeatureThresholds(psi=1e6, chi2_p_value=0.0),
        estimated_performance=M.EstimatedPerformanceThreshold(metric="accuracy", max_drop=0.05),
        quality=M.QualityThreshold(metric="accuracy", max_drop=0.05, min_labelled_rows=900),
    )  # fmt: skip
    rng = np.random.default_rng(21)
    x = rng.normal(size=(900, 4)) * 0.15  # same distribution's centre, squeezed onto the boundary
    truth = ((x @ [1.5, 0.5, -0.5, -1.0] + rng.normal(scale=0.3, size=900)) > 0).astype(int)
    ids = send_traffic(infer, model, x, headers, batch=20, prefix="est")

    # Each of the three windows breaches; the first alert goes out, the cooldown holds back the others.
    alert = wait_until(
        lambda: [a for a in _alerts(api, model, K.DRIFT_KIND_ESTIMATED_PERFORMANCE) if not a.suppressed],
        60, "an estimated-performance alert",
    )[-1]  # fmt: skip
    assert alert.event_id
    assert alert.scores[0].feature == "accuracy" and alert.scores[0].score > 0.05, alert
    assert {a.kind for a in _alerts(api, model)} == {K.DRIFT_KIND_ESTIMATED_PERFORMANCE}
    estimated = [w.estimated for w in _windows(api, model) if w.HasField("estimated")]
    assert estimated and all(e.rows == 300 and e.value < e.reference_value - 0.05 for e in estimated), estimated

    def drift_run() -> T.Run | None:
        runs = api.training.ListRuns(T.ListRunsRequest(spec_name="estimate-lr")).runs
        return next((r for r in runs if r.trigger == T.RUN_TRIGGER_DRIFT_DETECTED), None)

    run = wait_until(drift_run, 60, "a retraining started by the estimated-performance alert")
    assert run.trigger_event_id == alert.event_id

    # Labels arrive later: the quality window puts the estimate next to what they say.
    labels = [
        M.FeedbackLabel(request_id=ids[i // 20], row_index=i % 20, label=_value(int(t))) for i, t in enumerate(truth)
    ]

    def judged() -> M.WindowReport | None:
        api.monitoring.RecordFeedback(M.RecordFeedbackRequest(model_name=model, labels=labels))
        return next((w for w in _windows(api, model) if w.HasField("quality")), None)

    window = wait_until(judged, 60, "a quality window over the labelled rows")
    est = window.estimated
    assert est.HasField("realized") and est.rows == 900
    predicted = (x @ [1.5, 0.5, -0.5, -1.0] > 0).astype(int)  # near enough the model's own boundary
    assert abs(est.realized - window.quality.value) < 1e-9 and abs(np.mean(predicted == truth) - est.realized) < 0.1
    assert abs(est.value - est.realized) <= 0.05, est


def test_the_guard_rolls_back_a_promotion_whose_live_quality_collapses_and_retraining_cannot_undo_it(
    stack, api, infer, headers
):
    """v2, trained on a new concept, wins on its own test split and is promoted; live traffic still
    follows the old concept and its labels show it. The post-promotion guard rolls production back to
    v1 (actor "guard") with no failed request, and retraining reproduces v2's artifact, which the
    registry refuses to promote again."""
    model = "guard-model"
    _bootstrap(api, infer, headers, "guard", model, spec("guard-lr", "guard", model, on_data=True, margin=0.0))
    _policy(
        api, model, cooldown_s=0,
        default_thresholds=M.FeatureThresholds(ignore=True),
        prediction_thresholds=M.FeatureThresholds(psi=1e6, chi2_p_value=0.0),
        quality=M.QualityThreshold(metric="accuracy", max_drop=0.05, min_labelled_rows=200),
        # The live checks too, out of reach: each window of v2 shows them, none decides here.
        guard=M.GuardPolicy(max_p99_latency_ratio=1e6, max_staging_psi=1e6),
    )  # fmt: skip
    # One drift window of v1: the guard's latency baseline is the median p99 of v1's last windows.
    send_traffic(infer, model, shifted(300, seed=7, shift=0.0), headers, batch=20, prefix="guard-v1")
    wait_until(lambda: any(w.model.version == 1 for w in _windows(api, model)), 60, "a drift window of v1")
    new = concept_csv(4000, seed=3, start_id=100_000, weights=(-1.0, 1.0, 1.0, 0.5))
    csv = ingestion_pb2.DATA_FORMAT_CSV
    header = ingestion_pb2.IngestHeader(dataset="guard", mode=K.WRITE_MODE_REPLACE, format=csv)
    api.ingestion.IngestDataset(
        iter([ingestion_pb2.IngestDatasetRequest(header=header), ingestion_pb2.IngestDatasetRequest(chunk=new)])
    )
    wait_until(lambda: production_version(api, model) == 2, 180, "v2 (the new concept) in production")
    wait_served(infer, model, 2, headers)

    # Steady traffic on its own connection for the rest of the test: no request may fail.
    stop, seen, failures = threading.Event(), [], []

    def steady() -> None:
        client = stack.triton()
        try:
            while not stop.is_set():
                inp = triton.InferInput("input", [1, 4], "FP32")
                inp.set_data_from_numpy(np.random.default_rng(len(seen)).normal(size=(1, 4)).astype(np.float32))
                try:
                    seen.append(client.infer(model, [inp], headers=headers).get_response().model_version)
                except Exception as exc:
                    failures.append(repr(exc))
                time.sleep(0.01)
        finally:
            client.close()

    traffic = threading.Thread(target=steady, daemon=True)
    traffic.start()
    try:
        x = shifted(300, seed=8, shift=0.0)
        ids = send_traffic(infer, model, x, headers, batch=20, prefix="guard")
        truth = (x @ [1.5, 0.5, -0.5, -1.0] > 0).astype(int)  # the old concept, still the truth
        labels = [
            M.FeedbackLabel(request_id=ids[i // 20], row_index=i % 20, label=_value(int(t)))
            for i, t in enumerate(truth)
        ]

        guarded_window = wait_until(
            lambda: next((w for w in _windows(api, model) if w.model.version == 2 and w.guard_checks), None),
            60, "a drift window of v2 with the guard's live checks",
        )  # fmt: skip

        def rolled_back() -> bool:
            api.monitoring.RecordFeedback(M.RecordFeedbackRequest(model_name=model, labels=labels))
            return production_version(api, model) == 1

        wait_until(rolled_back, 90, "the guard's rollback to v1")
        wait_served(infer, model, 1, headers)
        time.sleep(0.5)
    finally:
        stop.set()
        traffic.join(10)
    assert failures == [], failures[:5]
    assert "2" in seen and seen[-1] == "1", "steady traffic was served by v2, then by v1"

    audit = api.registry.ListAuditEvents(registry_pb2.ListAuditEventsRequest(name=model)).events
    rollback = [e for e in audit if e.action == registry_pb2.AUDIT_ACTION_ROLLED_BACK]
    assert len(rollback) == 1 and rollback[0].actor == "guard", rollback
    _traced(stack, "guard rollback", {"flywheel.model": model, "flywheel.version": 2},
            ("flywheel-registry", "/flywheel.v1.RegistryService/Rollback"))  # fmt: skip
    assert "accuracy" in rollback[0].reason and "rolled back to v1" in rollback[0].reason, rollback[0].reason
    promoted = [r for r in read_topic(stack.bootstrap, Topics.MODEL_PROMOTED) if r.key == model.encode()]
    assert promoted, "model.promoted events for the model"
    quality = _alerts(api, model, K.DRIFT_KIND_QUALITY)
    assert quality and quality[0].scores[0].score > 0.05, "the window's own alert"
    checks = {c.statistic: c for c in guarded_window.guard_checks}
    assert set(checks) == {"p99_latency_ratio", "staging_psi"}, guarded_window.guard_checks
    assert 0 < checks["p99_latency_ratio"].score < 1e6 and 0 <= checks["staging_psi"].score < 1e6, checks
    assert not any(c.breached for c in checks.values())
    staged = _version(api, model, 2)
    assert staged is not None and sum(staged.staging.sample_predictions.counts) > 0, staged.staging
    assert list(staged.staging.sample_predictions.classes) == list(staged.signature.class_labels)
    guarded = _alerts(api, model, K.DRIFT_KIND_GUARD_ROLLBACK)
    assert len(guarded) == 1 and guarded[0].model.version == 2, guarded
    assert guarded[0].message == rollback[0].reason.replace("rolled back to", "rolling back to"), guarded[0]
    assert [(sc.statistic, sc.breached) for sc in guarded[0].scores] == [("quality_drop", True)], guarded[0].scores

    # The quality alert retrains on the same data and seed: v2's very artifact. Depending on whether its
    # checks end before or after the guard's rollback reaches the registry, it is refused as no better
    # than v2 or as the artifact the guard rolled back; production stays v1 either way.
    def decided(version: int) -> registry_pb2.ModelVersion | None:
        try:
            mv = api.registry.GetModelVersion(registry_pb2.GetModelVersionRequest(name=model, version=version))
        except grpc.RpcError:
            return None
        state = mv.version.promotion.state
        return mv.version if state not in (0, registry_pb2.PROMOTION_STATE_PENDING_CHECKS) else None

    v2 = api.registry.GetModelVersion(registry_pb2.GetModelVersionRequest(name=model, version=2)).version
    v3 = wait_until(lambda: decided(3), 180, "the retrained version's promotion decision")
    assert v3.checksum == v2.checksum, "same data, same seed: the same artifact"
    assert v3.promotion.state == registry_pb2.PROMOTION_STATE_NOT_PROMOTED, v3.promotion
    assert production_version(api, model) == 1
    # Retrained again now that the rollback is done: the same artifact once more, and the registry
    # refuses it because the guard rolled it back, though it would beat v1 on the test split.
    api.training.StartRun(T.StartRunRequest(spec_name="guard-lr"))
    v4 = wait_until(lambda: decided(4), 180, "the manual retraining's promotion decision")
    assert v4.checksum == v2.checksum and v4.promotion.state == registry_pb2.PROMOTION_STATE_NOT_PROMOTED
    assert "guard rolled back" in v4.promotion.reason, v4.promotion.reason
    assert production_version(api, model) == 1


def test_a_shadow_challenger_is_compared_with_production_on_the_same_requests(stack, api, infer, headers):
    """v2 (a new concept, kept out of production by the margin) shadows v1: monitoring's comparison,
    over the RPC and in `flywheel deploy status`, equals a recomputation from predictions.logged."""
    model = "shadow-model"
    _bootstrap(api, infer, headers, "shadow", model, spec("shadow-lr", "shadow", model, on_data=True, margin=0.99))
    new = concept_csv(4000, seed=3, start_id=100_000, weights=(-1.0, 1.0, 1.0, 0.5))
    csv = ingestion_pb2.DATA_FORMAT_CSV
    header = ingestion_pb2.IngestHeader(dataset="shadow", mode=K.WRITE_MODE_REPLACE, format=csv)
    api.ingestion.IngestDataset(
        iter([ingestion_pb2.IngestDatasetRequest(header=header), ingestion_pb2.IngestDatasetRequest(chunk=new)])
    )

    def decided() -> registry_pb2.ModelVersion | None:
        try:
            mv = api.registry.GetModelVersion(registry_pb2.GetModelVersionRequest(name=model, version=2)).version
        except grpc.RpcError:
            return None
        return mv if mv.promotion.state == registry_pb2.PROMOTION_STATE_NOT_PROMOTED else None

    wait_until(decided, 180, "v2 registered, checked and kept out of production")
    api.serving.SetShadow(serving_pb2.SetShadowRequest(model_name=model, challenger_version=2, percent=100))
    x = shifted(200, seed=9, shift=0.0)
    ids = send_traffic(infer, model, x, headers, batch=20, prefix="sh")
    truth = (x @ [1.5, 0.5, -0.5, -1.0] > 0).astype(int)
    labels = [
        M.FeedbackLabel(request_id=ids[i // 20], row_index=i % 20, label=_value(int(t)))
        for i, t in enumerate(truth)
        if i < 100  # half the rows get a label
    ]
    api.monitoring.RecordFeedback(M.RecordFeedbackRequest(model_name=model, labels=labels))

    def compared() -> M.ShadowComparison | None:
        try:
            c = api.monitoring.GetShadowComparison(M.GetShadowComparisonRequest(model_name=model)).comparison
        except grpc.RpcError:
            return None
        if c.rows == 200 and c.labelled_rows < 100:  # labels sent before their predictions were stored
            api.monitoring.RecordFeedback(M.RecordFeedbackRequest(model_name=model, labels=labels))
        return c if c.rows == 200 and c.labelled_rows == 100 else None

    c = wait_until(compared, 60, "200 paired rows, 100 of them labelled")
    assert c.production.version == 1 and c.challenger.version == 2

    # Recomputed from the topic: serving's own records of both answers, paired by request and row.
    rows = [
        r for rec in read_topic(stack.bootstrap, Topics.PREDICTIONS_LOGGED)
        if rec.key == model.encode()
        for r in logged_rows(events_pb2.PredictionsLogged.FromString(rec.value))
        if r.request_id.startswith("sh-")
    ]  # fmt: skip
    by_role = {
        role: {(r.request_id, r.row_index): r for r in rows if r.role == role}
        for role in (K.SERVING_ROLE_PRODUCTION, K.SERVING_ROLE_SHADOW)
    }
    prod, shadow = by_role[K.SERVING_ROLE_PRODUCTION], by_role[K.SERVING_ROLE_SHADOW]
    assert len(prod) == len(shadow) == 200
    keys = sorted(prod)
    agree = np.mean([prod[k].outputs["class"] == shadow[k].outputs["class"] for k in keys])
    assert 0.05 < agree < 0.95, "two different concepts: they agree on some rows, not all"
    assert c.agreement == pytest.approx(agree)
    for side, got in ((prod, c.production_latency), (shadow, c.challenger_latency)):
        ms = np.array([side[k].latency_ms for k in keys])
        assert got.p50_ms == pytest.approx(np.percentile(ms, 50)) and got.p99_ms == pytest.approx(np.percentile(ms, 99))
    truth_by_key = {(ids[i // 20], i % 20): str(int(t)) for i, t in enumerate(truth) if i < 100}
    for side, got in ((prod, c.production_quality), (shadow, c.challenger_quality)):
        accuracy = np.mean([side[k].outputs["class"] == t for k, t in truth_by_key.items()])
        assert {m.name: m.value for m in got}["accuracy"] == pytest.approx(accuracy)

    shown = stack.cli("deploy", "status", model, "--json")
    assert shown.returncode == 0, shown.stderr
    printed = json.loads(shown.stdout)["shadow_comparison"]
    assert printed["rows"] == "200" and printed["agreement"] == pytest.approx(agree)
    api.serving.ClearTraffic(serving_pb2.ClearTrafficRequest(model_name=model))


WEIGHTS = np.array([1.5, 0.5, -0.5, -1.0])
# The faulty model fails on f3 above FAULT_ABOVE; normal draws (every split here) never get there.
FAULT_VALUE, FAULT_ABOVE = 5.0, 4.5


def _rows_csv(x: np.ndarray, y: np.ndarray, start_id: int) -> bytes:
    ids = np.arange(start_id, start_id + len(x))
    out = io.StringIO()
    out.write("id,f0,f1,f2,f3,label\n")
    np.savetxt(out, np.column_stack([ids, x, np.asarray(y, dtype=int)]), delimiter=",",
               fmt=["%d", "%.6f", "%.6f", "%.6f", "%.6f", "%d"])  # fmt: skip
    return out.getvalue().encode()


def _ingest(api: Clients, dataset: str, data: bytes, replace: bool) -> None:
    mode = K.WRITE_MODE_REPLACE if replace else K.WRITE_MODE_UNSPECIFIED
    header = ingestion_pb2.IngestHeader(dataset=dataset, mode=mode, format=ingestion_pb2.DATA_FORMAT_CSV)
    api.ingestion.IngestDataset(
        iter([ingestion_pb2.IngestDatasetRequest(header=header), ingestion_pb2.IngestDatasetRequest(chunk=data)])
    )


def _progressive_spec(name: str, model: str, dwell_s: int) -> T.TrainingSpec:
    s = spec(name, name, model, on_data=True, margin=0.0)
    s.triggers.on_drift_detected = False  # only new data trains: the versions are the test's
    s.promotion_policy.rollout.CopyFrom(
        K.RolloutPolicy(
            mode=K.ROLLOUT_MODE_PROGRESSIVE, steps=[20, 50], min_step_duration=Duration(seconds=dwell_s),
            min_step_rows=30,
            gates=K.RolloutGates(max_prediction_psi=1.0, max_p99_latency_ratio=50.0, max_quality_drop=0.05,
                                 min_labelled_rows=30),
        )
    )  # fmt: skip
    return s


class _LabelledTraffic:
    """Steady one-row requests on their own connection, each labelled with the true concept (the
    feedback follows a moment later, as it would from an application); counts failures and versions."""

    def __init__(self, stack, model: str, headers: dict[str, str]) -> None:  # type: ignore[no-untyped-def]
        self.stack, self.model, self.headers = stack, model, headers
        self.stop, self.failures, self.versions = threading.Event(), [], []
        self.fault_share = 0.0  # the share of requests whose f3 is FAULT_VALUE (the faulty model fails on them)
        self.labels: list[M.FeedbackLabel] = []
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        client, rng = self.stack.triton(), np.random.default_rng(77)
        try:
            while not self.stop.is_set():
                x = rng.normal(size=(1, 4)).astype(np.float32)
                if rng.random() < self.fault_share:
                    x[0, 3] = FAULT_VALUE
                inp = triton.InferInput("input", [1, 4], "FP32")
                inp.set_data_from_numpy(x)
                rid = f"steady-{len(self.versions) + len(self.failures)}"
                try:
                    answer = client.infer(self.model, [inp], request_id=rid, headers=self.headers).get_response()
                    self.versions.append(answer.model_version)
                    truth = int(float(x[0] @ WEIGHTS) > 0)
                    self.labels.append(M.FeedbackLabel(request_id=rid, row_index=0, label=_value(truth)))
                except Exception as exc:
                    self.failures.append((float(x[0, 3]), repr(exc)[:300]))
                time.sleep(0.005)
        finally:
            client.close()

    def __enter__(self) -> _LabelledTraffic:
        self.thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.stop.set()
        self.thread.join(10)


def _audit(api: Clients, model: str, action: int) -> list[registry_pb2.AuditEvent]:
    events = api.registry.ListAuditEvents(registry_pb2.ListAuditEventsRequest(name=model)).events
    return [e for e in events if e.action == action]


def _version(api: Clients, model: str, version: int) -> registry_pb2.ModelVersion | None:
    try:
        return api.registry.GetModelVersion(registry_pb2.GetModelVersionRequest(name=model, version=version)).version
    except grpc.RpcError:
        return None


def _register_faulty(api: Clients, model: str, signature: K.ModelSignature, dataset: str) -> int:
    """A model of the concept that fails live on f3 above FAULT_ABOVE, registered by hand against a
    dataset of its own (nothing trains on it): it wins on that dataset's test split against the biased
    production model and passes staging, whose rows never reach the fault."""
    create_dataset(api, dataset)
    rng = np.random.default_rng(5)
    x = rng.normal(size=(4000, 4))
    _ingest(api, dataset, _rows_csv(x, x @ WEIGHTS > 0, 0), replace=False)
    train = read_split(api, dataset, 1, K.SPLIT_TRAIN)
    test = read_split(api, dataset, 1, K.SPLIT_TEST)
    features = ["f0", "f1", "f2", "f3"]
    xt = np.column_stack([test[f].to_numpy() for f in features]).astype(np.float32)
    assert xt[:, 3].max() < FAULT_ABOVE, "the test split must not reach the fault"
    onnx = faulty_classifier(np.column_stack([train[f].to_numpy() for f in features]).astype(np.float32),
                             train["label"].to_numpy(), 3, FAULT_ABOVE)  # fmt: skip
    session = ort.InferenceSession(onnx, providers=["CPUExecutionProvider"])
    label, proba = session.run(None, {"input": xt})
    metrics = evaluation.classification_metrics(test["label"].to_numpy().astype(np.int64), label, proba, ["0", "1"])
    header = registry_pb2.RegisterModelHeader(
        model_name=model, task=K.TASK_CLASSIFICATION, signature=signature, metrics=list(metrics.metrics),
        lineage=K.Lineage(dataset=K.DatasetRef(name=dataset, version=1), run_id="hand-made"),
        format="onnx", sha256=hashlib.sha256(onnx).hexdigest(),
    )  # fmt: skip
    requests = iter([registry_pb2.RegisterModelRequest(header=header), registry_pb2.RegisterModelRequest(chunk=onnx)])
    return api.registry.RegisterModel(requests).version.ref.version


def _rolling_out(api: Clients, model: str, version: int) -> bool:
    v = _version(api, model, version)
    return bool(v) and v.promotion.state == registry_pb2.PROMOTION_STATE_ROLLING_OUT


def test_a_better_model_rolls_out_through_every_step_and_broken_ones_are_aborted_at_the_first(
    stack, api, infer, headers
):
    """Progressive policy (canary 20%, then 50%, then production), under steady labelled traffic.
    v2 (registered by hand) passes staging and wins offline but fails on live requests with f3 above
    4.5: the error-rate gate aborts it at 20%. v3 (trained on the concept; v1 learnt from labels with a
    bias) rolls through both steps and is promoted. v4, learnt from inverted labels, wins on its own
    test split too, but the feedback on its canary requests breaches the quality gate at 20%: aborted,
    traffic back to v3, no failed request. Each abort is audited and raises a rollout alert."""
    model, rng = "rollout-model", np.random.default_rng(31)
    x = rng.normal(size=(4000, 4))
    concept = (x @ WEIGHTS + rng.normal(scale=0.3, size=4000)) > 0
    create_dataset(api, "rollout-model")
    _ingest(api, "rollout-model", _rows_csv(x, (x @ WEIGHTS + 1.5 > 0), 0), replace=False)  # a biased v1
    api.training.CreateSpec(T.CreateSpecRequest(spec=_progressive_spec("rollout-model", model, dwell_s=1)))
    wait_until(lambda: production_version(api, model) == 1, 120, "v1 in production")
    wait_served(infer, model, 1, headers)
    # Production's labels must not close quality windows here: the rollout's gates are under test.
    _policy(api, model, cooldown_s=600, quality=M.QualityThreshold(metric="accuracy", min_labelled_rows=100_000))
    slow_steps = _progressive_spec("rollout-model", model, dwell_s=600).promotion_policy  # a step ends by a gate
    fast_steps = _progressive_spec("rollout-model", model, dwell_s=1).promotion_policy

    with _LabelledTraffic(stack, model, headers) as traffic:
        # v2: fails on live requests with f3 = FAULT_VALUE (a third of them from now on).
        api.registry.SetPromotionPolicy(registry_pb2.SetPromotionPolicyRequest(model_name=model, policy=slow_steps))
        traffic.fault_share = 0.33
        v1 = _version(api, model, 1)
        assert v1 is not None
        assert _register_faulty(api, model, v1.signature, "rollout-faulty") == 2
        v2 = wait_until(
            lambda: (v := _version(api, model, 2)) and v.promotion.state == registry_pb2.PROMOTION_STATE_ABORTED and v,
            120, "v2's canary aborted by the error-rate gate",
        )  # fmt: skip
        traffic.fault_share = 0.0
        failed_while_faulty = len(traffic.failures)
        assert v2.promotion.reason.startswith("canary at 20% aborted: error_rate"), v2.promotion
        breached = [g for g in v2.promotion.rollout.gates if g.breached]
        assert [g.gate for g in breached] == ["error_rate"] and breached[0].value > 0.1 and breached[0].sample >= 20
        assert v2.staging.passed, "the faulty model passed every offline check"
        assert failed_while_faulty > 0 and all(f3 == FAULT_VALUE for f3, _ in traffic.failures), traffic.failures[:5]

        # v3: the concept, trained by Flywheel: through both steps to production.
        api.registry.SetPromotionPolicy(registry_pb2.SetPromotionPolicyRequest(model_name=model, policy=fast_steps))
        _ingest(api, "rollout-model", _rows_csv(x, concept, 10_000), replace=True)
        assert wait_until(lambda: _rolling_out(api, model, 3), 120, "v3 entering its rollout")
        wait_until(lambda: production_version(api, model) == 3, 90, "v3 promoted after its canary steps")
        wait_served(infer, model, 3, headers)
        v3 = _version(api, model, 3)
        assert v3 is not None and v3.promotion.state == registry_pb2.PROMOTION_STATE_PROMOTED
        assert v3.promotion.actor == "rollout" and "rolled out through 20%, 50%" in v3.promotion.reason, v3.promotion
        steps = [e.reason for e in _audit(api, model, registry_pb2.AUDIT_ACTION_ROLLOUT_STEP) if e.version == 3]
        assert len(steps) == 2 and "canary at 20%" in steps[0] and "20% -> 50%" in steps[1], steps
        changes = api.serving.ListTrafficChanges(serving_pb2.ListTrafficChangesRequest(model_name=model)).changes
        canaries = sorted(c.after.percent for c in changes if c.after.mode == serving_pb2.TRAFFIC_MODE_CANARY)
        assert canaries == [20.0, 20.0, 50.0], changes  # v2's step, then v3's two

        # v4: inverted labels. It wins on its own test split and enters as a canary at 20%, where it
        # stays until a gate decides (a 10-minute step).
        api.registry.SetPromotionPolicy(registry_pb2.SetPromotionPolicyRequest(model_name=model, policy=slow_steps))
        _ingest(api, "rollout-model", _rows_csv(x, ~concept, 20_000), replace=True)
        wait_until(lambda: _rolling_out(api, model, 4), 120, "v4 entering its rollout")

        def aborted() -> registry_pb2.ModelVersion | None:
            api.monitoring.RecordFeedback(M.RecordFeedbackRequest(model_name=model, labels=traffic.labels[-5000:]))
            v = _version(api, model, 4)
            return v if v and v.promotion.state == registry_pb2.PROMOTION_STATE_ABORTED else None

        v4 = wait_until(aborted, 90, "v4's canary aborted by the quality gate")
        wait_until(lambda: traffic.versions[-20:] == ["3"] * 20, 30, "all traffic back on v3")
    assert traffic.failures[failed_while_faulty:] == [], traffic.failures[failed_while_faulty:][:5]
    assert "4" in traffic.versions, "v4 answered some requests as a canary"
    assert v4.promotion.reason.startswith("canary at 20% aborted: quality_drop"), v4.promotion.reason
    breached = [g for g in v4.promotion.rollout.gates if g.breached]
    assert [g.gate for g in breached] == ["quality_drop"] and breached[0].sample >= 30 and breached[0].value > 0.5
    aborts = _audit(api, model, registry_pb2.AUDIT_ACTION_ROLLOUT_ABORTED)
    assert sorted(e.version for e in aborts) == [2, 4] and {e.actor for e in aborts} == {"rollout"}
    assert production_version(api, model) == 3
    deployment = api.serving.GetDeployment(serving_pb2.GetDeploymentRequest(model_name=model)).deployment
    assert deployment.traffic.mode in (serving_pb2.TRAFFIC_MODE_UNSPECIFIED, serving_pb2.TRAFFIC_MODE_PRODUCTION_ONLY)
    # Each abort raised an alert that names the failing gate with its numbers (rollout.ended -> monitoring).
    alerts = wait_until(lambda: len(a := _alerts(api, model, K.DRIFT_KIND_ROLLOUT_ABORTED)) == 2 and a, 30,
                        "two rollout-aborted alerts")  # fmt: skip
    by_version = {a.model.version: a for a in alerts}
    assert "error_rate" in by_version[2].message and "quality_drop" in by_version[4].message, alerts
    assert [s.statistic for s in by_version[2].scores if s.breached] == ["error_rate"]
    assert all(not a.event_id for a in alerts), "a deployment alert starts no retraining"
    # The tick that aborted is one trace with serving's side of the call that took the traffic back.
    _traced(stack, "rollout tick", {"flywheel.model": model, "flywheel.rollout.action": "aborted"},
            ("flywheel-serving", "/flywheel.v1.ServingAdmin/ClearTraffic"))  # fmt: skip


def test_the_guard_rolls_back_a_promotion_that_fails_on_live_traffic(stack, api, infer, headers):
    """v2 (registered by hand) passes staging, wins offline and is promoted at once; a fifth of the
    live requests reach its fault. Monitoring's ticker reads serving's counters for it: its live error
    rate passes the guard's default 1% and production goes back to v1, with a guard alert naming the
    rate. No window of v2 had to close for that."""
    model, rng = "guard-errors-model", np.random.default_rng(41)
    x = rng.normal(size=(3000, 4))
    create_dataset(api, "guard-errors")
    _ingest(api, "guard-errors", _rows_csv(x, x @ WEIGHTS + 1.5 > 0, 0), replace=False)  # a biased v1
    s = spec("guard-errors", "guard-errors", model, on_data=True, margin=0.0)
    s.triggers.on_drift_detected = False
    api.training.CreateSpec(T.CreateSpecRequest(spec=s))
    wait_until(lambda: production_version(api, model) == 1, 120, "v1 in production")
    wait_served(infer, model, 1, headers)
    _policy(api, model, cooldown_s=600, quality=M.QualityThreshold(metric="accuracy", min_labelled_rows=100_000))
    v1 = _version(api, model, 1)
    assert v1 is not None

    with _LabelledTraffic(stack, model, headers) as traffic:
        traffic.fault_share = 0.2
        assert _register_faulty(api, model, v1.signature, "guard-errors-faulty") == 2
        rollback = wait_until(lambda: _audit(api, model, registry_pb2.AUDIT_ACTION_ROLLED_BACK), 120,
                              "the guard's rollback")  # fmt: skip
        wait_until(lambda: traffic.versions[-20:] == ["1"] * 20, 30, "traffic back on v1")
    v2 = _version(api, model, 2)
    assert v2 is not None and v2.promotion.state == registry_pb2.PROMOTION_STATE_PROMOTED and v2.staging.passed
    assert "2" in traffic.versions, "v2 answered requests in production"
    assert traffic.failures and all(f3 == FAULT_VALUE for f3, _ in traffic.failures), traffic.failures[:5]
    assert len(rollback) == 1 and rollback[0].actor == "guard", rollback
    assert "live error rate" in rollback[0].reason and "rolled back to v1" in rollback[0].reason, rollback[0].reason
    assert production_version(api, model) == 1
    alerts = _alerts(api, model, K.DRIFT_KIND_GUARD_ROLLBACK)
    assert len(alerts) == 1 and alerts[0].model.version == 2, alerts
    rate = [s for s in alerts[0].scores if s.statistic == "error_rate"]
    assert rate and rate[0].breached and rate[0].score > 0.01 and rate[0].threshold == 0.01, alerts[0]


def _traced(stack, name: str, attributes: dict[str, object], joined: tuple[str, str]) -> None:  # type: ignore[no-untyped-def]
    """A span `name` with `attributes` exists, and its trace holds the span `joined` (service, name)."""
    spans_file = stack.home / "spans.jsonl"

    def found() -> bool:
        spans = read_spans(spans_file)
        mine = [
            s for s in spans if s["name"] == name and all(s["attributes"].get(k) == v for k, v in attributes.items())
        ]
        traces = {s["trace_id"] for s in mine}
        return any((s["service"], s["name"]) == joined and s["trace_id"] in traces for s in spans)

    wait_until(found, 30, f"a {name!r} span {attributes} in one trace with {joined}")


def test_a_shadow_step_promotes_only_a_challenger_better_on_live_traffic_by_the_margin(stack, api, infer, headers):
    """shadow_first: each candidate first shadows production, and must beat it on the same labelled
    live requests by 0.05 before any request is its to answer. v2 (v1 learnt from biased labels) does
    and goes on through a 50% canary to production; v3 (inverted labels, better on its own test
    split) is aborted in the shadow step and never answers a request."""
    model, rng = "shadowgate-model", np.random.default_rng(32)
    x = rng.normal(size=(4000, 4))
    concept = (x @ WEIGHTS + rng.normal(scale=0.3, size=4000)) > 0
    create_dataset(api, model)
    _ingest(api, model, _rows_csv(x, (x @ WEIGHTS + 1.5 > 0), 0), replace=False)
    training_spec = _progressive_spec(model, model, dwell_s=1)
    rollout_policy = training_spec.promotion_policy.rollout
    rollout_policy.shadow_first = True
    del rollout_policy.steps[:]
    rollout_policy.steps.append(50)
    rollout_policy.gates.min_live_improvement = 0.05
    rollout_policy.gates.max_prediction_psi = 1e6  # under test here: the shadow gate (PSI: the test above)
    api.training.CreateSpec(T.CreateSpecRequest(spec=training_spec))
    wait_until(lambda: production_version(api, model) == 1, 120, "v1 in production")
    wait_served(infer, model, 1, headers)
    _policy(api, model, cooldown_s=600, quality=M.QualityThreshold(metric="accuracy", min_labelled_rows=100_000))

    with _LabelledTraffic(stack, model, headers) as traffic:

        def labelled(check):  # type: ignore[no-untyped-def]
            def poll():  # type: ignore[no-untyped-def]
                if traffic.labels:
                    api.monitoring.RecordFeedback(
                        M.RecordFeedbackRequest(model_name=model, labels=traffic.labels[-5000:])
                    )
                return check()

            return poll

        _ingest(api, model, _rows_csv(x, concept, 10_000), replace=True)
        wait_until(labelled(lambda: production_version(api, model) == 2), 180, "v2 through its shadow step and canary")
        v2 = _version(api, model, 2)
        assert v2 is not None and "rolled out through shadow, 50%" in v2.promotion.reason, v2.promotion
        steps = [e.reason for e in _audit(api, model, registry_pb2.AUDIT_ACTION_ROLLOUT_STEP) if e.version == 2]
        assert "rolling out: shadow" in steps[0] and steps[1].startswith("shadow -> canary 50%"), steps
        assert "live_improvement" in steps[1], "the step says by how much v2 beat production"

        _ingest(api, model, _rows_csv(x, ~concept, 20_000), replace=True)

        def aborted() -> registry_pb2.ModelVersion | None:
            v = _version(api, model, 3)
            return v if v and v.promotion.state == registry_pb2.PROMOTION_STATE_ABORTED else None

        v3 = wait_until(labelled(aborted), 180, "v3 aborted in its shadow step")
        time.sleep(0.5)
    assert traffic.failures == [], traffic.failures[:5]
    assert "3" not in traffic.versions, "a shadow answers no request"
    assert v3.promotion.reason.startswith("shadow aborted: live_improvement -"), v3.promotion.reason
    assert v3.promotion.rollout.shadow and production_version(api, model) == 2


def _value(v: int):  # type: ignore[no-untyped-def]
    from google.protobuf.struct_pb2 import Value

    out = Value()
    out.number_value = float(v)
    return out


def test_traces_cli_prints_the_chain(stack):
    shown = stack.cli("traces", "--last")
    assert shown.returncode == 0, shown.stderr
    assert "training run" in shown.stdout and "flywheel-serving" in shown.stdout
    listed = json.loads(stack.cli("traces", "--last", "--json").stdout or "{}")
    assert listed


def test_feedback_with_features_flows_into_the_opted_in_dataset(stack, api):
    from .clients import schema

    api.ingestion.CreateDataset(
        ingestion_pb2.CreateDatasetRequest(
            dataset=ingestion_pb2.Dataset(name="fb-data", schema=schema(), feedback_model="fb-model")
        )
    )
    rows = [
        {"modelName": "fb-model", "requestId": f"r{i}", "label": i % 2,
         "features": {"id": 9000 + i, "f0": 0.5, "f1": -0.5, "f2": 1.0, "f3": float(i)}}
        for i in range(30)
    ]  # fmt: skip

    async def produce() -> None:
        producer = AIOKafkaProducer(bootstrap_servers=stack.bootstrap)
        await producer.start()
        try:
            for row in rows:
                await producer.send_and_wait(
                    Topics.FEEDBACK, json.dumps(row).encode(), key=b"fb-model",
                    headers=[("content-type", b"application/json")],
                )  # fmt: skip
        finally:
            await producer.stop()

    asyncio.run(produce())

    def version() -> ingestion_pb2.DatasetVersion | None:
        try:
            v = api.ingestion.GetDatasetVersion(ingestion_pb2.GetDatasetVersionRequest(dataset="fb-data")).version
        except grpc.RpcError:
            return None
        return v if v.row_count == 30 else None

    v = wait_until(version, 60, "the labelled production rows as a dataset version")
    assert v.source == "feedback" and v.ref.version == 1


def test_monitoring_cli_reads_the_real_service(stack):
    drift = stack.cli("drift", "report", "loop-model", "--json")
    assert drift.returncode == 0, drift.stderr
    assert json.loads(drift.stdout)["windows"], "the loop's windows"
    alerts = stack.cli("alerts", "loop-model", "--kind", "data", "--json")
    assert alerts.returncode == 0, alerts.stderr
    assert all(a["kind"] == "DRIFT_KIND_DATA_DRIFT" for a in json.loads(alerts.stdout)["alerts"])
    segments = stack.cli("segments", "quality-model", "--field", "f3", "--json")
    assert segments.returncode == 0, segments.stderr
    assert {s["segment"]["value"] for s in json.loads(segments.stdout)["segments"]} >= {"< 0", ">= 0"}
