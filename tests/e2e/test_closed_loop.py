"""The closed loop with every service a real process: production inputs shift, monitoring
names the shifted features, training retrains on the newest data, the registry promotes the
better model and serving swaps to it, with no call from the test after the traffic began, and
one trace links the alert, the run, the registration, the checks, the promotion and the swap."""

from __future__ import annotations

import asyncio
import json
import threading
import time

import grpc
import numpy as np
import pytest
import tritonclient.grpc as triton
from aiokafka import AIOKafkaProducer
from google.protobuf.duration_pb2 import Duration

from flywheel.bus.topics import Topics
from flywheel.telemetry import read_spans
from flywheel.v1 import (
    common_pb2,
    ingestion_pb2,
    monitoring_pb2,
    registry_pb2,
    training_pb2,
)
from tests.polling import wait_until

from .clients import Clients, create_dataset, ingest_requests, read_topic
from .loop_helpers import (
    concept_csv,
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

    alert = wait_until(
        lambda: _alerts(api, model, K.DRIFT_KIND_ESTIMATED_PERFORMANCE), 60, "an estimated-performance alert"
    )[0]
    assert alert.event_id and not alert.suppressed
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
    v1 (actor "guard") with no failed request, and the retraining the quality alert starts reproduces
    v2's artifact, which the registry refuses to promote again."""
    model = "guard-model"
    _bootstrap(api, infer, headers, "guard", model, spec("guard-lr", "guard", model, on_data=True, margin=0.0))
    _policy(
        api, model, cooldown_s=0,
        default_thresholds=M.FeatureThresholds(ignore=True),
        prediction_thresholds=M.FeatureThresholds(psi=1e6, chi2_p_value=0.0),
        quality=M.QualityThreshold(metric="accuracy", max_drop=0.05, min_labelled_rows=200),
    )  # fmt: skip
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
    assert "accuracy" in rollback[0].reason and "rolled back to v1" in rollback[0].reason, rollback[0].reason
    promoted = [r for r in read_topic(stack.bootstrap, Topics.MODEL_PROMOTED) if r.key == model.encode()]
    assert promoted, "model.promoted events for the model"
    quality = _alerts(api, model, K.DRIFT_KIND_QUALITY)
    assert quality and quality[0].scores[0].score > 0.05, "the alert naming the breach"

    # The quality alert retrains on the same data and seed: v2's very artifact, refused by the registry.
    def decided() -> registry_pb2.ModelVersion | None:
        try:
            mv = api.registry.GetModelVersion(registry_pb2.GetModelVersionRequest(name=model, version=3)).version
        except grpc.RpcError:
            return None
        return mv if mv.promotion.state not in (0, registry_pb2.PROMOTION_STATE_PENDING_CHECKS) else None

    v3 = wait_until(decided, 180, "the retrained version's promotion decision")
    v2 = api.registry.GetModelVersion(registry_pb2.GetModelVersionRequest(name=model, version=2)).version
    assert v3.checksum == v2.checksum, "same data, same seed: the same artifact"
    assert v3.promotion.state == registry_pb2.PROMOTION_STATE_NOT_PROMOTED, v3.promotion
    assert "guard rolled back" in v3.promotion.reason, v3.promotion.reason
    assert production_version(api, model) == 1


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
