"""Hostile and broken input for monitoring and for feedback routing, against real processes (issue
12): logged predictions and labels anyone can produce, junk already stored, out-of-range API fields,
and feedback one dataset cannot take. Each test asserts the answer (a status code, or a DLQ record
with its error headers), that the service kept its PID, and that a good input right after is
processed.

One `flywheel up` for the module, with one model in production (so monitoring holds a reference and
closes windows) and a 20-row drift window.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
import math
import uuid
from collections.abc import Iterator
from typing import Any

import asyncpg
import grpc
import numpy as np
import onnxruntime as ort
import pyarrow as pa
import pytest
from google.protobuf.duration_pb2 import Duration
from google.protobuf.message import Message
from google.protobuf.struct_pb2 import Value
from skl2onnx import to_onnx
from sklearn.linear_model import LogisticRegression

from flywheel import evaluation
from flywheel.bus.serde import CONTENT_JSON, CONTENT_PROTOBUF, event_type_name, new_meta
from flywheel.bus.topics import Topics
from flywheel.predictions import tensor
from flywheel.v1 import common_pb2, events_pb2, ingestion_pb2, monitoring_pb2, registry_pb2
from tests.polling import wait_until

from .clients import Clients, ingest_requests, make_csv, schema
from .hostile import assert_same_process, dead_letter, dlq_headers, produce, refusal, service_pid
from .stack import UpProcess

I = ingestion_pb2  # noqa: E741
M, R = monitoring_pb2, registry_pb2
MODEL = "hostile-monitoring"
DATASET = "hm-train"
FEATURES = ["f0", "f1", "f2", "f3"]
WINDOW_ROWS = 20
CODE = grpc.StatusCode


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[UpProcess]:
    # Time-based windows out of reach: every window in this module closes by count, when a test says so.
    up = UpProcess(tmp_path_factory.mktemp("hostile_monitoring") / "home")
    up.start()
    yield up
    up.kill_all()


# -- setup: one model in production, monitored ----------------------------------------------------


def _sql(stack: UpProcess, query: str, *args: Any) -> Any:
    async def run() -> Any:
        conn = await asyncpg.connect(stack.dsn)
        try:
            return await conn.fetch(query, *args)
        finally:
            await conn.close()

    return asyncio.run(run())


def _split(api: Clients, which: common_pb2.Split.ValueType) -> tuple[np.ndarray, np.ndarray]:
    parts = api.ingestion.ReadDatasetVersion(I.ReadDatasetVersionRequest(dataset=DATASET, version=1, split=which))
    table = pa.concat_tables(pa.ipc.open_stream(io.BytesIO(p.data)).read_all() for p in parts)
    return np.column_stack([table[f].to_numpy() for f in FEATURES]).astype(np.float32), table["label"].to_numpy()


def _register(api: Clients, dataset: common_pb2.DatasetRef) -> int:
    (x, y), (xt, yt) = _split(api, common_pb2.SPLIT_TRAIN), _split(api, common_pb2.SPLIT_TEST)
    clf = LogisticRegression().fit(x, y)
    data = to_onnx(clf, x[:1], options={id(clf): {"zipmap": False}}, target_opset={"": 17, "ai.onnx.ml": 3})
    blob = data.SerializeToString()
    session = ort.InferenceSession(blob, providers=["CPUExecutionProvider"])
    label, proba = session.run(None, {session.get_inputs()[0].name: xt})
    header = R.RegisterModelHeader(
        model_name=MODEL,
        task=common_pb2.TASK_CLASSIFICATION,
        signature=common_pb2.ModelSignature(
            inputs=[common_pb2.TensorSpec(name=session.get_inputs()[0].name, datatype="FP32", shape=[-1, 4])],
            outputs=[
                common_pb2.TensorSpec(name="label", datatype="INT64", shape=[-1]),
                common_pb2.TensorSpec(name="probabilities", datatype="FP32", shape=[-1, 2]),
            ],
            feature_names=FEATURES,
            class_labels=["0", "1"],
        ),
        metrics=evaluation.classification_metrics(yt, label, proba, ["0", "1"]).metrics,
        lineage=common_pb2.Lineage(dataset=dataset, run_id="hostile-monitoring"),
        format="onnx",
        sha256=hashlib.sha256(blob).hexdigest(),
    )
    requests = iter([R.RegisterModelRequest(header=header), R.RegisterModelRequest(chunk=blob)])
    return api.registry.RegisterModel(requests).version.ref.version


@pytest.fixture(scope="module")
def deployed(stack: UpProcess, api: Clients) -> int:
    """MODEL's production version, once monitoring holds its reference; a 20-row drift window and
    quality windows of 4 labels."""
    api.ingestion.CreateDataset(I.CreateDatasetRequest(dataset=I.Dataset(name=DATASET, schema=schema())))
    dataset = api.ingestion.IngestDataset(ingest_requests(DATASET, make_csv(1_000, seed=5))).version.ref
    version = _register(api, dataset)

    def production() -> bool:
        mv = api.registry.GetModelVersion(R.GetModelVersionRequest(name=MODEL, version=version)).version
        return mv.promotion.state == R.PROMOTION_STATE_PROMOTED

    wait_until(production, 120, f"{MODEL} v{version} in production")
    wait_until(
        lambda: _sql(stack, "SELECT 1 FROM monitoring.model_refs WHERE model = $1 AND version = $2", MODEL, version),
        60,
        "monitoring's reference",
    )
    policy = M.MonitoringPolicy(
        model_name=MODEL,
        enabled=True,
        window=M.WindowPolicy(size_rows=WINDOW_ROWS, min_rows=10, duration=Duration(seconds=86_400)),
        quality=M.QualityThreshold(min_labelled_rows=4),
    )
    api.monitoring.SetMonitoringPolicy(M.SetMonitoringPolicyRequest(policy=policy))
    return version


@pytest.fixture(scope="module")
def pids(stack: UpProcess, deployed: int) -> dict[str, int]:
    """The monitoring and ingestion processes every test must leave running."""
    return {name: service_pid(stack, name) for name in ("monitoring", "ingestion")}


# -- events --------------------------------------------------------------------------------------------


def _send(stack: UpProcess, topic: str, event: Message) -> bytes:
    value = event.SerializeToString()
    headers = [("content-type", CONTENT_PROTOBUF.encode()), ("event-type", event_type_name(event).encode())]
    produce(stack, topic, MODEL.encode(), value, headers)
    return value


def _columns(version: int, request_ids: list[str]) -> events_pb2.PredictionsLogged:
    """What serving sends for one row per request id (features drawn like the training data)."""
    n = len(request_ids)
    x = np.random.default_rng(len(request_ids[0])).normal(size=(n, 4)).astype(np.float32)
    return events_pb2.PredictionsLogged(
        meta=new_meta("serving"),
        model=common_pb2.ModelRef(name=MODEL, version=version),
        columns=events_pb2.PredictionColumns(
            request_ids=request_ids,
            row_indexes=[0] * n,
            latency_ms=[1.0] * n,
            occurred_at_unix_nanos=[1_700_000_000_000_000_000] * n,
            roles=[common_pb2.SERVING_ROLE_PRODUCTION] * n,
            feature_names=FEATURES,
            inputs=tensor("inputs", x),
            outputs=[
                tensor("label", (x[:, 0] > 0).astype(np.int64)),
                tensor("probabilities", np.full((n, 2), 0.5, np.float32)),
            ],
            class_labels=["0", "1"],
        ),
    )


def _ids(prefix: str, n: int = 1) -> list[str]:
    tag = uuid.uuid4().hex[:8]
    return [f"{prefix}-{tag}-{i}" for i in range(n)]


def _stored(stack: UpProcess, request_ids: list[str]) -> int:
    rows = _sql(stack, "SELECT count(*) AS n FROM monitoring.predictions WHERE request_id = ANY($1)", request_ids)
    return int(rows[0]["n"])


def _assert_dead_lettered(
    stack: UpProcess, topic: str, value: bytes, consumer: str, error_type: str, field: str
) -> dict[str, bytes]:
    headers = dlq_headers(dead_letter(stack, topic, value, MODEL.encode()))
    assert headers["error.type"] == error_type.encode(), headers
    assert headers["error.consumer"] == consumer.encode(), headers
    assert headers["source.topic"] == topic.encode()
    assert field.encode() in headers["error.message"], headers["error.message"]
    return headers


def _record(version: int, request_id: str, **outputs: Any) -> events_pb2.PredictionsLogged:
    r = events_pb2.PredictionRecord(request_id=request_id, latency_ms=1.0)
    r.inputs.update({"f0": 0.5, "f1": 0.1, "f2": -0.2, "f3": 1.0})
    r.outputs.update(outputs)
    return events_pb2.PredictionsLogged(
        meta=new_meta("producer"), model=common_pb2.ModelRef(name=MODEL, version=version), records=[r]
    )


def _hostile_predictions(version: int) -> dict[str, tuple[events_pb2.PredictionsLogged, str]]:
    """name -> (event, the field its DLQ record must name)."""
    inf_inputs = _columns(version, _ids("hostile"))
    inf_inputs.columns.inputs.CopyFrom(tensor("inputs", np.array([[math.inf, 0, 0, 0]], np.float32)))
    wrong_shape = _columns(version, _ids("hostile", 2))
    del wrong_shape.columns.inputs.shape[:]
    wrong_shape.columns.inputs.shape.extend([2, 2**40])
    absurd = _columns(version, _ids("hostile"))
    absurd.columns.request_ids.extend([""] * 200_000)  # rows the other columns do not have
    nan_record = _record(version, _ids("hostile")[0], variable=0.5)
    nan_record.records[0].outputs.fields["variable"].number_value = math.nan
    return {
        "non-numeric output": (_record(version, _ids("hostile")[0], variable="abc"), "records[0].outputs"),
        "list as the class": (_record(version, _ids("hostile")[0], **{"class": ["0", "1"]}), "records[0].outputs"),
        "NaN output": (nan_record, "records[0].outputs"),
        "infinite feature": (inf_inputs, "columns.inputs.data"),
        "absurd shape": (wrong_shape, "columns.inputs"),
        "absurd size": (absurd, "records"),
    }


def test_hostile_logged_predictions_are_dead_lettered_and_never_stored(
    stack: UpProcess, deployed: int, pids: dict[str, int]
) -> None:
    cases = _hostile_predictions(deployed)
    sent = {name: _send(stack, Topics.PREDICTIONS_LOGGED, event) for name, (event, _) in cases.items()}
    # An outside producer's JSON form, with a non-numeric regression output.
    json_value = json.dumps(
        {
            "model": {"name": MODEL, "version": deployed},
            "records": [{"requestId": "hostile-json", "outputs": {"variable": "NaN?"}}],
        }
    ).encode()
    produce(stack, Topics.PREDICTIONS_LOGGED, MODEL.encode(), json_value, [("content-type", CONTENT_JSON.encode())])

    for name, (_, field) in cases.items():
        headers = _assert_dead_lettered(
            stack, Topics.PREDICTIONS_LOGGED, sent[name], "flywheel-monitoring", "InvalidArgument", field
        )
        assert headers["error.attempts"] == b"1", name  # invalid input is not retried
    _assert_dead_lettered(
        stack, Topics.PREDICTIONS_LOGGED, json_value, "flywheel-monitoring", "InvalidArgument", "records[0].outputs"
    )
    hostile_ids = [r.request_id for e, _ in cases.values() for r in e.records] + ["hostile-json"]
    hostile_ids += [i for e, _ in cases.values() for i in e.columns.request_ids if i]
    assert _stored(stack, hostile_ids) == 0

    good = _ids("good", 3)
    _send(stack, Topics.PREDICTIONS_LOGGED, _columns(deployed, good))
    wait_until(lambda: _stored(stack, good) == 3, 30, "the good predictions to be stored")
    assert_same_process(stack, "monitoring", pids["monitoring"])


def _drift_windows(api: Clients) -> list[M.WindowReport]:
    windows = api.monitoring.GetDriftReport(M.GetDriftReportRequest(model_name=MODEL, window_count=500)).windows
    return [w for w in windows if w.window_id.startswith("w-")]


def test_junk_already_stored_does_not_stop_the_windows(
    stack: UpProcess, api: Clients, deployed: int, pids: dict[str, int]
) -> None:
    """Rows an older monitoring stored before the checks (or a hand-made INSERT): the next window
    closes anyway, counting them as integrity problems rather than failing on them."""
    junk = _ids("junk", 3)
    for request_id, inputs, outputs in zip(
        junk,
        ['"not an object"', '{"f0": "abc", "f1": [1, 2]}', '{"f0": 1e308}'],
        ['{"variable": "abc", "class": {"a": 1}}', "[1, 2]", '{"class": ["0", "1"], "label": "x"}'],
        strict=True,
    ):
        _sql(
            stack,
            "INSERT INTO monitoring.predictions"
            " (model, version, request_id, row_index, inputs, outputs, latency_ms, at)"
            " VALUES ($1, $2, $3, 0, $4::jsonb, $5::jsonb, 1.0, now())",
            MODEL,
            deployed,
            request_id,
            inputs,
            outputs,
        )
    before = len(_drift_windows(api))
    open_rows = _sql(
        stack,
        "SELECT count(*) AS n FROM monitoring.predictions WHERE model = $1 AND version = $2 AND window_id IS NULL",
        MODEL,
        deployed,
    )[0]["n"]
    # Just enough good rows that every open row, junk included, ends up in a closed window.
    good = _ids("window", WINDOW_ROWS - open_rows % WINDOW_ROWS)
    _send(stack, Topics.PREDICTIONS_LOGGED, _columns(deployed, good))

    def junk_windowed() -> bool:
        rows = _sql(stack, "SELECT window_id FROM monitoring.predictions WHERE request_id = ANY($1)", junk)
        return all(r["window_id"] and r["window_id"].startswith("w-") for r in rows)

    wait_until(junk_windowed, 30, "the junk rows to close in a window")
    windows = _drift_windows(api)
    assert len(windows) > before
    mismatches = sum(f.type_mismatches for w in windows for f in w.integrity.features)
    assert mismatches >= 2  # "abc" and a list in numeric features, counted, not fatal
    assert_same_process(stack, "monitoring", pids["monitoring"])


BAD_POLICIES = {
    "policy.default_thresholds.psi": M.MonitoringPolicy(default_thresholds=M.FeatureThresholds(psi=math.nan)),
    "policy.integrity.max_null_rate": M.MonitoringPolicy(integrity=M.IntegrityThresholds(max_null_rate=math.inf)),
    "policy.window.size_rows": M.MonitoringPolicy(window=M.WindowPolicy(size_rows=10**12)),
    "policy.cooldown": M.MonitoringPolicy(cooldown=Duration(seconds=2**62)),
    "policy.quality.min_labelled_rows": M.MonitoringPolicy(quality=M.QualityThreshold(min_labelled_rows=-5)),
    "policy.segments[0].bucket_edges": M.MonitoringPolicy(
        segments=[M.SegmentConfig(field="f0", bucket_edges=[0.0, math.inf])]
    ),
}


def _nan_label() -> M.RecordFeedbackRequest:
    return M.RecordFeedbackRequest(
        model_name=MODEL, labels=[M.FeedbackLabel(request_id="r", label=Value(number_value=math.nan))]
    )


def test_out_of_range_api_fields_are_invalid_argument(api: Clients, stack: UpProcess, pids: dict[str, int]) -> None:
    for field, policy in BAD_POLICIES.items():
        policy.model_name = MODEL
        code, details = refusal(
            lambda p=policy: api.monitoring.SetMonitoringPolicy(M.SetMonitoringPolicyRequest(policy=p))
        )
        assert (code, field) == (CODE.INVALID_ARGUMENT, details.split(":")[0]), details
    calls = {
        "window_count": lambda: api.monitoring.GetDriftReport(
            M.GetDriftReportRequest(model_name=MODEL, window_count=-1)
        ),
        "window_count ": lambda: api.monitoring.GetDriftReport(
            M.GetDriftReportRequest(model_name=MODEL, window_count=2**31 - 1)
        ),
        "model_version": lambda: api.monitoring.GetSegmentReport(
            M.GetSegmentReportRequest(model_name=MODEL, model_version=-3)
        ),
        "kind": lambda: api.monitoring.ListAlerts(M.ListAlertsRequest(kind=77)),  # type: ignore[arg-type]
        "labels[0].label": lambda: api.monitoring.RecordFeedback(_nan_label()),
        "model_name": lambda: api.monitoring.GetMonitoringPolicy(M.GetMonitoringPolicyRequest(model_name="m" * 5000)),
    }
    for field, call in calls.items():
        code, details = refusal(call)
        assert (code, field.strip()) == (CODE.INVALID_ARGUMENT, details.split(":")[0]), details

    # The policy in force is untouched, and a good one is taken right after.
    assert api.monitoring.GetMonitoringPolicy(M.GetMonitoringPolicyRequest(model_name=MODEL)).policy.window.size_rows
    good = M.MonitoringPolicy(
        model_name=MODEL,
        enabled=True,
        window=M.WindowPolicy(size_rows=WINDOW_ROWS, min_rows=10, duration=Duration(seconds=86_400)),
        default_thresholds=M.FeatureThresholds(psi=0.25),
        quality=M.QualityThreshold(min_labelled_rows=4),
    )
    answer = api.monitoring.SetMonitoringPolicy(M.SetMonitoringPolicyRequest(policy=good)).policy
    assert answer.default_thresholds.psi == 0.25
    assert_same_process(stack, "monitoring", pids["monitoring"])


def _feedback(request_id: str, label: Value, **features: Any) -> events_pb2.Feedback:
    event = events_pb2.Feedback(meta=new_meta("producer"), model_name=MODEL, request_id=request_id, label=label)
    if features:
        event.features.update(features)
    return event


def _labels(stack: UpProcess, request_ids: list[str]) -> int:
    rows = _sql(stack, "SELECT count(*) AS n FROM monitoring.labels WHERE request_id = ANY($1)", request_ids)
    return int(rows[0]["n"])


def test_hostile_labels_are_dead_lettered_by_monitoring(
    stack: UpProcess, api: Clients, deployed: int, pids: dict[str, int]
) -> None:
    target = _ids("labelled")
    _send(stack, Topics.PREDICTIONS_LOGGED, _columns(deployed, target))
    wait_until(lambda: _stored(stack, target), 30, "the prediction the labels answer")
    cases = {
        "NaN": (_feedback(target[0], Value(number_value=math.nan)), "label"),
        "infinity": (_feedback(target[0], Value(number_value=-math.inf)), "label"),
        "an object": (_feedback(target[0], Value(struct_value={"fields": {"a": Value(number_value=1)}})), "label"),
        "a list": (_feedback(target[0], Value(list_value={"values": [Value(bool_value=True)]})), "label"),
        "huge text": (_feedback(target[0], Value(string_value="x" * 100_000)), "label"),
        "no label": (_feedback(target[0], Value()), "label"),
        "giant request id": (_feedback("r" * 10_000, Value(number_value=1)), "request_id"),
    }
    sent = {name: _send(stack, Topics.FEEDBACK, event) for name, (event, _) in cases.items()}
    for name, (_, field) in cases.items():
        headers = _assert_dead_lettered(
            stack, Topics.FEEDBACK, sent[name], "flywheel-monitoring", "InvalidArgument", field
        )
        assert headers["error.attempts"] == b"1", name
    assert _labels(stack, target) == 0

    _send(stack, Topics.FEEDBACK, _feedback(target[0], Value(number_value=1)))
    wait_until(lambda: _labels(stack, target) == 1, 30, "the good label to be joined")
    assert_same_process(stack, "monitoring", pids["monitoring"])


# -- feedback routing ------------------------------------------------------------------------------------


def _routing_schema(strict: bool) -> common_pb2.Schema:
    s = schema()
    if strict:  # a field the other dataset does not have, with allowed values
        s.fields.insert(
            len(s.fields) - 1,
            common_pb2.Field(name="region", type=common_pb2.FIELD_TYPE_CATEGORICAL, allowed_values=["eu", "us"]),
        )
    return s


def _versions(api: Clients, dataset: str) -> list[I.DatasetVersion]:
    return list(api.ingestion.ListDatasetVersions(I.ListDatasetVersionsRequest(dataset=dataset)).versions)


def test_feedback_one_dataset_refuses_is_refused_for_it_alone(
    stack: UpProcess, api: Clients, deployed: int, pids: dict[str, int]
) -> None:
    for name, strict in (("fb-open", False), ("fb-strict", True)):
        dataset = I.Dataset(name=name, schema=_routing_schema(strict), feedback_model=MODEL)
        api.ingestion.CreateDataset(I.CreateDatasetRequest(dataset=dataset))
    target = _ids("routed", 2)
    _send(stack, Topics.PREDICTIONS_LOGGED, _columns(deployed, target))
    wait_until(lambda: _stored(stack, target) == 2, 30, "the predictions the feedback answers")

    row = {"id": 1, "f0": 0.1, "f1": 0.2, "f2": 0.3, "f3": 0.4}
    refused = _send(stack, Topics.FEEDBACK, _feedback(target[0], Value(number_value=1), **row, region="mars"))

    headers = _assert_dead_lettered(
        stack, Topics.FEEDBACK, refused, "flywheel-ingestion-feedback", "FeedbackRejected", "dataset fb-strict"
    )
    assert b"region" in headers["error.message"]
    wait_until(lambda: _versions(api, "fb-open"), 30, "fb-open to take the feedback row")
    assert [v.source for v in _versions(api, "fb-open")] == ["feedback"]
    assert _versions(api, "fb-strict") == []
    wait_until(lambda: _labels(stack, target[:1]) == 1, 30, "monitoring to join the label all the same")

    _send(stack, Topics.FEEDBACK, _feedback(target[1], Value(number_value=0), **{**row, "id": 2}, region="eu"))
    wait_until(lambda: _versions(api, "fb-strict"), 30, "fb-strict to take a row it accepts")
    assert len(_versions(api, "fb-open")) == 2
    wait_until(lambda: _labels(stack, target) == 2, 30, "monitoring to join the second label")
    assert_same_process(stack, "ingestion", pids["ingestion"])
    assert_same_process(stack, "monitoring", pids["monitoring"])
