"""The build half of the loop, through gRPC and Kafka only, with every service a real process:
records in -> immutable dataset version -> training run -> ONNX model registered with lineage."""

from __future__ import annotations

import io
import json
import os
import signal
from pathlib import Path

import grpc
import numpy as np
import onnxruntime as ort
import pyarrow as pa
import pytest
from aiokafka import AIOKafkaProducer
from google.protobuf.duration_pb2 import Duration

from flywheel.bus.topics import Topics
from flywheel.stack.up import read_state
from flywheel.v1 import common_pb2, events_pb2, ingestion_pb2, registry_pb2, training_pb2
from tests.polling import wait_until

from .clients import Clients, create_dataset, ingest_requests, make_csv, read_topic
from .stack import UpProcess

T = training_pb2


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    """The module's stack, allowed to read local files from one directory (FLYWHEEL_INGEST_ROOTS)."""
    base = tmp_path_factory.mktemp("build_pipeline")
    (base / "uploads").mkdir()
    up = UpProcess(base / "home", env={"FLYWHEEL_INGEST_ROOTS": str(base / "uploads")})
    up.start()
    yield up
    up.kill_all()


def _events_for(stack: UpProcess, topic: str, key: str) -> list[bytes]:
    return [r.value for r in read_topic(stack.bootstrap, topic) if r.key == key.encode()]


def test_stream_ingest_versions_dedupes_and_validates(stack, api):
    create_dataset(api, "clicks")
    data = make_csv(100_000, seed=1)
    resp = api.ingestion.IngestDataset(ingest_requests("clicks", data))
    v = resp.version
    assert resp.created and v.ref.version == 1 and v.row_count == 100_000
    assert v.train_rows + v.test_rows == 100_000 and 0.78 < v.train_rows / 100_000 < 0.82
    assert len(v.ref.content_hash) == 64 and v.data_uri.startswith("sha256:")
    profiled = {f.name: f for f in v.profile.features}
    assert {"f0", "f1", "f2", "f3", "label"} <= set(profiled)
    assert len(profiled["f0"].bin_edges) >= 2 and sum(profiled["f0"].histogram) == v.train_rows

    again = api.ingestion.IngestDataset(ingest_requests("clicks", data))
    assert not again.created and again.version.ref.version == 1
    assert again.version.ref.content_hash == v.ref.content_hash
    events = [events_pb2.DataVersioned.FromString(b) for b in _events_for(stack, Topics.DATA_VERSIONED, "clicks")]
    assert [(e.dataset.name, e.dataset.version) for e in events] == [("clicks", 1)], "no second event"

    bad = data.decode().splitlines()
    bad[4] = bad[4].split(",", 1)[0] + ",not-a-number" + "," + bad[4].split(",", 2)[2]
    with pytest.raises(grpc.RpcError) as err:
        api.ingestion.IngestDataset(ingest_requests("clicks", "\n".join(bad).encode()))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "row 4" in err.value.details() and "f0" in err.value.details(), err.value.details()
    assert api.ingestion.GetDataset(ingestion_pb2.GetDatasetRequest(name="clicks")).dataset.latest_version == 1


def test_quarantine_policy_counts_bad_rows_per_reason(api):
    create_dataset(api, "quarantined", invalid_row_policy=ingestion_pb2.INVALID_ROW_POLICY_QUARANTINE)
    lines = make_csv(1000, seed=2).decode().splitlines()
    lines[1] = lines[1].rsplit(",", 1)[0] + ",7"  # label out of [0, 1]
    lines[2] = lines[2].rsplit(",", 1)[0] + ",7"
    lines[3] = ",".join([lines[3].split(",")[0], "x", *lines[3].split(",")[2:]])  # type mismatch
    resp = api.ingestion.IngestDataset(ingest_requests("quarantined", "\n".join(lines).encode()))
    assert resp.created and resp.version.row_count == 997
    assert dict(resp.stats.quarantine_counts) == {"out_of_range": 2, "type_mismatch": 1}
    assert resp.stats.rows_quarantined == 3 and resp.version.quarantined_rows == 3


def test_plain_kafka_producer_json_records_make_a_version(stack, api):
    batch = ingestion_pb2.MicroBatchPolicy(max_rows=500, max_wait=Duration(seconds=1))
    create_dataset(api, "stream", micro_batch=batch)
    rows = [{"id": i, "f0": 0.1 * i, "f1": 1.0, "f2": -1.0, "f3": 2.0, "label": i % 2} for i in range(50)]

    async def produce() -> None:
        producer = AIOKafkaProducer(bootstrap_servers=stack.bootstrap)
        await producer.start()
        try:
            for row in rows:
                await producer.send_and_wait(Topics.INGEST_RECORDS, json.dumps(row).encode(), key=b"stream")
        finally:
            await producer.stop()

    import asyncio

    asyncio.run(produce())

    def latest() -> ingestion_pb2.DatasetVersion | None:
        try:
            return api.ingestion.GetDatasetVersion(ingestion_pb2.GetDatasetVersionRequest(dataset="stream")).version
        except grpc.RpcError:
            return None

    version = wait_until(latest, 60, "a version from Kafka records")
    assert version.ref.version == 1 and version.row_count == 50 and version.source == "kafka"


def _spec(name: str, dataset: str, model: str, **search) -> T.TrainingSpec:  # type: ignore[no-untyped-def]
    space = T.SearchSpace(strategy=T.SEARCH_STRATEGY_GRID, seed=7, **search)
    space.params["C"].choices.values.add().number_value = 0.1
    space.params["C"].choices.values.add().number_value = 1.0
    return T.TrainingSpec(
        name=name,
        dataset=dataset,
        model_name=model,
        task=common_pb2.TASK_CLASSIFICATION,
        estimator=T.ESTIMATOR_LOGISTIC_REGRESSION,
        search_space=space,
        metric="accuracy",
        direction=common_pb2.METRIC_DIRECTION_MAXIMIZE,
        triggers=T.Triggers(on_data_versioned=True),
    )


def _runs(api: Clients, spec: str) -> list[T.Run]:
    try:
        return list(api.training.ListRuns(T.ListRunsRequest(spec_name=spec)).runs)
    except grpc.RpcError as exc:
        if exc.code() == grpc.StatusCode.UNAVAILABLE:  # training is being restarted by the supervisor
            return []
        raise


def _finished_run(api: Clients, spec: str, timeout_s: float = 120) -> T.Run:
    def done() -> T.Run | None:
        runs = _runs(api, spec)
        return runs[0] if runs and runs[0].status in (T.RUN_STATUS_SUCCEEDED, T.RUN_STATUS_FAILED) else None

    run = wait_until(done, timeout_s, f"a finished run of {spec}")
    assert run.status == T.RUN_STATUS_SUCCEEDED, run.error
    return run


def test_new_data_trains_registers_and_reproduces_metrics(stack, api):
    create_dataset(api, "churn")
    api.training.CreateSpec(T.CreateSpecRequest(spec=_spec("churn-lr", "churn", "churn-model")))
    api.ingestion.IngestDataset(ingest_requests("churn", make_csv(20_000, seed=3)))

    run = _finished_run(api, "churn-lr")  # no further call: data.versioned queued it
    assert run.trigger == T.RUN_TRIGGER_DATA_VERSIONED and len(run.trials) == 2 and run.parity.passed
    assert run.registered_model.name == "churn-model" and run.registered_model.version == 1

    registered = [
        events_pb2.ModelRegistered.FromString(b) for b in _events_for(stack, Topics.MODEL_REGISTERED, "churn-model")
    ]
    assert [(e.model.name, e.model.version) for e in registered] == [("churn-model", 1)]
    assert registered[0].lineage.run_id == run.run_id

    lineage = api.registry.GetLineage(registry_pb2.GetLineageRequest(name="churn-model", version=1))
    assert lineage.lineage.run_id == run.run_id
    assert (lineage.lineage.dataset.name, lineage.lineage.dataset.version) == ("churn", 1)
    assert [(d.name, d.version) for d in lineage.dataset_ancestry] == [("churn", 1)]

    chunks = list(api.registry.DownloadArtifact(registry_pb2.DownloadArtifactRequest(name="churn-model", version=1)))
    onnx_bytes = b"".join(c.chunk for c in chunks)
    import hashlib

    assert hashlib.sha256(onnx_bytes).hexdigest() == chunks[0].sha256

    # The test split, read back through the API, scored in a fresh onnxruntime session.
    parts = api.ingestion.ReadDatasetVersion(
        ingestion_pb2.ReadDatasetVersionRequest(dataset="churn", version=1, split=common_pb2.SPLIT_TEST)
    )
    table = pa.concat_tables(pa.ipc.open_stream(io.BytesIO(p.data)).read_all() for p in parts)
    features = list(run.signature.feature_names)
    x = np.column_stack([table[f].to_numpy(zero_copy_only=False) for f in features]).astype(np.float32)
    y = table["label"].to_numpy()
    session = ort.InferenceSession(onnx_bytes, providers=["CPUExecutionProvider"])
    label_idx = session.run(["label"], {run.signature.inputs[0].name: x})[0]
    predicted = np.array([int(run.signature.class_labels[i]) for i in label_idx])
    recorded = {m.name: m.value for m in run.evaluation.metrics if not m.class_label}
    assert abs((predicted == y).mean() - recorded["accuracy"]) < 1e-9
    assert run.evaluation.rows == len(y)


def test_same_event_twice_is_one_run_and_a_killed_run_resumes(stack, api):
    # Redeliver churn's data.versioned event verbatim: the inbox and the run key absorb it.
    original = [r for r in read_topic(stack.bootstrap, Topics.DATA_VERSIONED) if r.key == b"churn"]
    assert len(original) == 1

    async def redeliver() -> None:
        producer = AIOKafkaProducer(bootstrap_servers=stack.bootstrap)
        await producer.start()
        try:
            await producer.send_and_wait(
                Topics.DATA_VERSIONED, original[0].value, key=b"churn", headers=list(original[0].headers)
            )
        finally:
            await producer.stop()

    import asyncio

    asyncio.run(redeliver())
    create_dataset(api, "slow")
    space = T.SearchSpace(strategy=T.SEARCH_STRATEGY_RANDOM, trial_budget=4, seed=3)
    space.params["n_estimators"].range.CopyFrom(T.ParamDistribution.Range(low=60, high=100, integer=True))
    spec = T.TrainingSpec(
        name="slow-gb",
        dataset="slow",
        model_name="slow-model",
        task=common_pb2.TASK_CLASSIFICATION,
        estimator=T.ESTIMATOR_GRADIENT_BOOSTING_CLASSIFIER,
        search_space=space,
        metric="accuracy",
        triggers=T.Triggers(on_data_versioned=True),
    )
    api.training.CreateSpec(T.CreateSpecRequest(spec=spec))
    api.ingestion.IngestDataset(ingest_requests("slow", make_csv(20_000, seed=4)))

    def mid_run() -> T.Run | None:
        runs = _runs(api, "slow-gb")
        return (
            runs[0]
            if runs and runs[0].status == T.RUN_STATUS_RUNNING and runs[0].stage == T.RUN_STAGE_SEARCHING
            else None
        )

    wait_until(mid_run, 120, "the run to be searching")
    victim = read_state(stack.home)["services"]["training"]["pid"]
    os.kill(victim, signal.SIGKILL)

    run = _finished_run(api, "slow-gb", timeout_s=240)
    assert run.attempt == 2, "the run was reclaimed after its lease lapsed"
    versions = api.registry.ListModelVersions(registry_pb2.ListModelVersionsRequest(name="slow-model")).versions
    assert [v.ref.version for v in versions] == [1], "exactly one model version"
    assert len(_runs(api, "churn-lr")) == 1, "the redelivered data.versioned queued no second run"


def test_uri_ingest_search_aliases_tags_and_archive(stack, api, tmp_path):
    uploads = Path(stack.env["FLYWHEEL_INGEST_ROOTS"])
    path = uploads / "extra.csv"
    path.write_bytes(make_csv(2_000, seed=8, start_id=500_000))
    create_dataset(api, "from-file")
    resp = api.ingestion.IngestFromUri(ingestion_pb2.IngestFromUriRequest(dataset="from-file", uri=f"file://{path}"))
    assert resp.created and resp.version.row_count == 2_000 and resp.version.source.startswith("uri:")
    with pytest.raises(grpc.RpcError) as missing:
        api.ingestion.IngestFromUri(ingestion_pb2.IngestFromUriRequest(dataset="from-file", uri=f"{uploads}/no.csv"))
    assert missing.value.code() == grpc.StatusCode.NOT_FOUND and "uri" in missing.value.details()
    outside = tmp_path / "elsewhere.csv"
    outside.write_bytes(make_csv(10, seed=9))
    with pytest.raises(grpc.RpcError) as denied:
        api.ingestion.IngestFromUri(ingestion_pb2.IngestFromUriRequest(dataset="from-file", uri=str(outside)))
    assert denied.value.code() == grpc.StatusCode.PERMISSION_DENIED and "uri" in denied.value.details()

    R = registry_pb2
    found = api.registry.SearchModelVersions(
        R.SearchModelVersionsRequest(
            metric_filters=[R.MetricFilter(metric="accuracy", op=R.COMPARISON_GT, value=0.5)],
            dataset_name="churn",
            order_by_metric="accuracy",
        )
    ).versions
    assert [(v.ref.name, v.ref.version) for v in found] == [("churn-model", 1)]
    assert not api.registry.SearchModelVersions(
        R.SearchModelVersionsRequest(metric_filters=[R.MetricFilter(metric="accuracy", op=R.COMPARISON_GT, value=1.0)])
    ).versions

    api.registry.SetTags(R.SetTagsRequest(name="churn-model", version=1, tags={"team": "growth"}, actor="dana"))
    tagged = api.registry.SearchModelVersions(R.SearchModelVersionsRequest(tags={"team": "growth"})).versions
    assert [v.ref.name for v in tagged] == ["churn-model"]
    api.registry.SetAlias(R.SetAliasRequest(name="churn-model", alias="champion", version=1, actor="dana"))
    assert api.registry.GetAlias(R.GetAliasRequest(name="churn-model", alias="champion")).alias.version == 1
    production = api.registry.GetAlias(R.GetAliasRequest(name="churn-model", alias="production")).alias.version
    with pytest.raises(grpc.RpcError) as held:
        api.registry.ArchiveVersion(R.ArchiveVersionRequest(name="churn-model", version=production, reason="old"))
    assert held.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    actions = [e.action for e in api.registry.ListAuditEvents(R.ListAuditEventsRequest(name="churn-model")).events]
    assert {R.AUDIT_ACTION_REGISTERED, R.AUDIT_ACTION_TAGS_SET, R.AUDIT_ACTION_ALIAS_SET} <= set(actions)
