"""Monitoring against hostile and broken input, without a stack: logged predictions and labels are
checked before anything is stored; stored rows that are junk anyway never stop a window; every
numeric and size field of the API is range-checked; feedback one dataset refuses is refused for it
alone."""

from __future__ import annotations

import json
import math
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from types import SimpleNamespace
from typing import Any, cast

import asyncpg
import numpy as np
import pytest
from google.protobuf.duration_pb2 import Duration
from google.protobuf.struct_pb2 import Struct, Value
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from flywheel.errors import InvalidArgument
from flywheel.predictions import tensor
from flywheel.v1 import common_pb2, events_pb2, monitoring_pb2
from services.monitoring import estimation, evaluator, guard, limits, logged, policy, records

M = monitoring_pb2
F = common_pb2.Field
FLOAT = common_pb2.FIELD_TYPE_FLOAT
FEATURES = ["f0", "f1"]


# ------------------------------------------------------------------------------------- logged predictions


def columns_event(rows: int = 3, **overrides: Any) -> events_pb2.PredictionsLogged:
    """What serving sends: `rows` rows of FEATURES, a class label and probabilities."""
    x = np.arange(rows * len(FEATURES), dtype=np.float32).reshape(rows, len(FEATURES))
    fields: dict[str, Any] = {
        "request_ids": [f"r{i}" for i in range(rows)],
        "row_indexes": [0] * rows,
        "latency_ms": [1.5] * rows,
        "occurred_at_unix_nanos": [1_700_000_000_000_000_000] * rows,
        "roles": [common_pb2.SERVING_ROLE_PRODUCTION] * rows,
        "feature_names": FEATURES,
        "inputs": tensor("inputs", x),
        "outputs": [
            tensor("label", np.arange(rows, dtype=np.int64) % 2),
            tensor("probabilities", np.full((rows, 2), 0.5, dtype=np.float32)),
        ],
        "class_labels": ["no", "yes"],
    }
    fields.update(overrides)
    return events_pb2.PredictionsLogged(
        model=common_pb2.ModelRef(name="m", version=1), columns=events_pb2.PredictionColumns(**fields)
    )


def record(
    inputs: dict[str, Any] | None = None,
    outputs: dict[str, Any] | None = None,
    *,
    request_id: str = "r",
    row_index: int = 0,
    latency_ms: float = 2.0,
    seconds: int = 1_735_689_600,
) -> events_pb2.PredictionRecord:
    r = events_pb2.PredictionRecord(request_id=request_id, row_index=row_index, latency_ms=latency_ms)
    r.inputs.update(inputs if inputs is not None else {"f0": 1.0, "f1": "text"})
    r.outputs.update(outputs if outputs is not None else {"variable": [0.25]})
    r.occurred_at.seconds = seconds
    return r


def records_event(*recs: events_pb2.PredictionRecord) -> events_pb2.PredictionsLogged:
    return events_pb2.PredictionsLogged(model=common_pb2.ModelRef(name="m", version=1), records=list(recs))


def test_what_serving_sends_is_stored_whole() -> None:
    rows = logged.stored_rows(columns_event())
    assert [r.request_id for r in rows] == ["r0", "r1", "r2"]
    assert json.loads(rows[1].inputs) == {"f0": 2.0, "f1": 3.0}
    assert json.loads(rows[1].outputs) == {"label": 1, "probabilities": [0.5, 0.5], "class": "yes"}


def test_a_record_event_with_text_and_nested_numeric_outputs_is_stored() -> None:
    rows = logged.stored_rows(records_event(record(outputs={"class": "yes", "probabilities": [[0.1, 0.9]]})))
    assert json.loads(rows[0].outputs) == {"class": "yes", "probabilities": [[0.1, 0.9]]}


def test_nan_in_a_column_tensor_is_a_missing_value() -> None:
    """Serving's own spelling of a missing value (json_value): stored as null, not refused."""
    x = np.array([[np.nan, 1.0]], dtype=np.float32)
    y = np.array([np.nan], dtype=np.float32)
    event = columns_event(1, inputs=tensor("inputs", x), outputs=[tensor("variable", y)], class_labels=[])
    row = logged.stored_rows(event)[0]
    assert json.loads(row.inputs) == {"f0": None, "f1": 1.0}
    assert json.loads(row.outputs) == {"variable": None}


def _nan_struct() -> Struct:
    s = Struct()
    s.fields["f0"].number_value = math.nan
    return s


def _deep(depth: int) -> list[Any]:
    v: list[Any] = [1.0]
    for _ in range(depth - 1):
        v = [v]
    return v


HOSTILE_RECORDS = {
    "non-numeric output": (record(outputs={"variable": "abc"}), "records[0].outputs"),
    "object output": (record(outputs={"variable": {"a": 1}}), "records[0].outputs"),
    "text inside an output list": (record(outputs={"probabilities": [0.1, "x"]}), "records[0].outputs"),
    "list as a class": (record(outputs={"class": ["a"]}), "records[0].outputs.class"),
    "list as a feature": (record(inputs={"f0": [1, 2]}), "records[0].inputs"),
    "object as a feature": (record(inputs={"f0": {"a": 1}}), "records[0].inputs"),
    "lists nested too deep": (record(outputs={"p": _deep(logged.MAX_OUTPUT_DEPTH + 1)}), "records[0].outputs"),
    "NaN feature": (events_pb2.PredictionRecord(request_id="r", inputs=_nan_struct()), "records[0].inputs"),
    "infinite output": (record(outputs={"variable": math.inf}), "records[0].outputs"),
    "NUL in a request id": (record(request_id="a\x00b"), "records[0].request_id"),
    "giant request id": (record(request_id="r" * 10_000), "records[0].request_id"),
    "giant text feature": (record(inputs={"f0": "x" * (limits.MAX_TEXT_CHARS + 1)}), "records[0].inputs"),
    "NUL in a feature name": (record(inputs={"f\x000": 1.0}), "records[0].inputs"),
    "negative row index": (record(row_index=-1), "records[0].row_index"),
    "NaN latency": (record(latency_ms=math.nan), "records[0].latency_ms"),
    "negative latency": (record(latency_ms=-1.0), "records[0].latency_ms"),
    "timestamp past 9999": (record(seconds=2**40), "records[0].occurred_at"),
    "too many outputs": (record(outputs={f"o{i}": 1.0 for i in range(logged.MAX_OUTPUTS + 1)}), "records[0].outputs"),
    "too many output values": (record(outputs={"p": [0.0] * (logged.MAX_ROW_VALUES + 1)}), "records[0].outputs"),
}


@pytest.mark.parametrize("case", sorted(HOSTILE_RECORDS))
def test_hostile_records_are_refused_naming_the_field(case: str) -> None:
    r, field = HOSTILE_RECORDS[case]
    with pytest.raises(InvalidArgument) as caught:
        logged.stored_rows(records_event(r))
    assert caught.value.field == field


def _inf_inputs() -> events_pb2.LoggedTensor:
    return tensor("inputs", np.array([[math.inf, 1.0]] * 3, dtype=np.float32))


def _tensor_with(**changes: Any) -> events_pb2.LoggedTensor:
    t = tensor("inputs", np.zeros((3, 2), dtype=np.float32))
    for k, v in changes.items():
        if k == "shape":
            del t.shape[:]
            t.shape.extend(v)
        else:
            setattr(t, k, v)
    return t


HOSTILE_COLUMNS = {
    "no model name": (lambda: _named(columns_event(), ""), "model.name"),
    "no rows": (lambda: columns_event(0), "records"),
    "fewer latencies than rows": (lambda: columns_event(latency_ms=[1.0]), "columns.latency_ms"),
    "infinite latency": (lambda: columns_event(latency_ms=[1.0, math.inf, 1.0]), "columns.latency_ms"),
    "negative row index": (lambda: columns_event(row_indexes=[0, -5, 0]), "columns.row_indexes"),
    "NUL in a request id": (lambda: columns_event(request_ids=["a", "b\x00", "c"]), "columns.request_ids"),
    "no feature names": (lambda: columns_event(feature_names=[]), "columns.feature_names"),
    "feature names that do not match the matrix": (lambda: columns_event(feature_names=["f0"]), "columns.inputs"),
    "unknown datatype": (lambda: columns_event(inputs=_tensor_with(datatype="BYTES")), "columns.inputs.datatype"),
    "shape for other rows": (lambda: columns_event(inputs=_tensor_with(shape=[4, 2])), "columns.inputs"),
    "negative dimensions": (lambda: columns_event(inputs=_tensor_with(shape=[3, -2, -1])), "columns.inputs"),
    "too many dimensions": (lambda: columns_event(inputs=_tensor_with(shape=[3] + [1] * 9)), "columns.inputs"),
    "absurd row width": (lambda: columns_event(inputs=_tensor_with(shape=[3, 2**40])), "columns.inputs"),
    "bytes short of the shape": (lambda: columns_event(inputs=_tensor_with(data=b"\x00" * 8)), "columns.inputs.data"),
    "infinite feature": (lambda: columns_event(inputs=_inf_inputs()), "columns.inputs.data"),
    "infinite output": (
        lambda: columns_event(outputs=[tensor("variable", np.array([1.0, -math.inf, 0.0], dtype=np.float64))]),
        "columns.outputs[0].data",
    ),
    "duplicate output names": (
        lambda: columns_event(outputs=[tensor("y", np.zeros(3, np.float32)), tensor("y", np.zeros(3, np.float32))]),
        "columns.outputs[1].name",
    ),
    "giant class label": (lambda: columns_event(class_labels=["x" * 5000]), "columns.class_labels"),
    "too many rows": (lambda: _many_rows(logged.MAX_EVENT_ROWS + 1), "records"),
    "too many values": (lambda: _wide(1_000, logged.MAX_EVENT_VALUES // 1_000 + 1), "columns"),
}


def _named(event: events_pb2.PredictionsLogged, name: str) -> events_pb2.PredictionsLogged:
    event.model.name = name
    return event


def _many_rows(n: int) -> events_pb2.PredictionsLogged:
    return events_pb2.PredictionsLogged(
        model=common_pb2.ModelRef(name="m"), columns=events_pb2.PredictionColumns(request_ids=[""] * n)
    )


def _wide(rows: int, features: int) -> events_pb2.PredictionsLogged:
    x = np.zeros((rows, features), dtype=np.int8)
    names = [f"f{i}" for i in range(features)]
    return columns_event(
        rows,
        request_ids=[""] * rows,
        row_indexes=[0] * rows,
        latency_ms=[0.0] * rows,
        occurred_at_unix_nanos=[0] * rows,
        roles=[0] * rows,
        feature_names=names,
        inputs=tensor("inputs", x),
        outputs=[],
    )


@pytest.mark.parametrize("case", sorted(HOSTILE_COLUMNS))
def test_hostile_columns_are_refused_naming_the_field(case: str) -> None:
    make, field = HOSTILE_COLUMNS[case]
    with pytest.raises(InvalidArgument) as caught:
        logged.stored_rows(make())
    assert caught.value.field == field
    assert "\x00" not in str(caught.value) and len(str(caught.value)) < 300  # never the value itself


json_values = st.recursive(
    st.none() | st.booleans() | st.floats() | st.integers(-(2**70), 2**70) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=5), inner, max_size=4),
    max_leaves=12,
)


def _struct_of(values: dict[str, Any]) -> Struct:
    """A Struct holding anything a protobuf producer could put there (NaN and infinities included)."""
    s = Struct()
    for k, v in values.items():
        _set(s.fields[k], v)
    return s


def _set(target: Value, v: Any) -> None:
    if v is None:
        target.null_value = 0
    elif isinstance(v, bool):
        target.bool_value = v
    elif isinstance(v, int | float):
        target.number_value = float(v)
    elif isinstance(v, str):
        target.string_value = v
    elif isinstance(v, list):
        target.list_value.SetInParent()
        for item in v:
            _set(target.list_value.values.add(), item)
    else:
        target.struct_value.SetInParent()
        for k, item in v.items():
            _set(target.struct_value.fields[k], item)


def _schema() -> common_pb2.Schema:
    return common_pb2.Schema(
        fields=[
            F(name="f0", type=FLOAT, nullable=True, min=-5, max=5),
            F(name="f1", type=common_pb2.FIELD_TYPE_CATEGORICAL, allowed_values=["a", "b"]),
            F(name="label", type=common_pb2.FIELD_TYPE_INT),
        ],
        label_field="label",
    )


PROFILE = {
    "features": {
        "f0": {"bin_edges": [-5.0, 0.0, 5.0], "histogram": [0.5, 0.5], "sample": [-1.0, 0.0, 1.0], "null_rate": 0},
        "f1": {"category_frequencies": {"a": 0.5, "b": 0.5}},
        "label": {"bin_edges": [0.0, 0.5, 1.0], "histogram": [0.5, 0.5], "sample": [0.0, 1.0]},
    }
}


scalars = st.none() | st.booleans() | st.floats(-1e9, 1e9) | st.text(max_size=8)
numbers = st.floats(-1e9, 1e9) | st.lists(st.floats(-1e9, 1e9), max_size=3)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    inputs=st.dictionaries(st.sampled_from(["f0", "f1", "x", ""]), scalars | scalars | json_values, max_size=4),
    outputs=st.dictionaries(
        st.sampled_from(["class", "variable", "probabilities", "label"]), numbers | scalars | json_values, max_size=3
    ),
    latency=st.floats(0, 1e4) | st.floats(),
    row_index=st.integers(0, 100) | st.integers(-(2**31), 2**31 - 1),
)
def test_any_record_is_either_refused_or_judged(
    inputs: dict[str, Any], outputs: dict[str, Any], latency: float, row_index: int
) -> None:
    """Whatever a record holds, the consumer refuses it (InvalidArgument) or stores rows that every
    later window can judge, for either task."""
    r = events_pb2.PredictionRecord(
        request_id="r", inputs=_struct_of(inputs), outputs=_struct_of(outputs), latency_ms=latency, row_index=row_index
    )
    try:
        rows = logged.stored_rows(records_event(r))
    except InvalidArgument:
        return
    stored = [{"inputs": x.inputs, "outputs": x.outputs, "latency_ms": x.latency_ms} for x in rows] * 3
    for task in (common_pb2.TASK_CLASSIFICATION, common_pb2.TASK_REGRESSION):
        report = evaluator._judge_drift(cast(Any, stored), _ref_row(task), _schema(), policy_with())
        assert report.rows == 3
        # The same rows in a window of a version the guard watches, with every live check on.
        guarded = evaluator._judge_drift(cast(Any, stored), _ref_row(task, **GUARDED), _schema(), GUARD_POLICY)
        assert guarded.rows == 3 and all(math.isfinite(c.score) for c in guarded.guard_checks)


GUARDED = {
    "guard_until": datetime(2999, 1, 1, tzinfo=UTC), "guard_previous": 1, "guard_previous_p99": 2.0,
    "staging_predictions": common_pb2.PredictionHistogram(
        classes=["0", "1"], edges=[0.5], counts=[40, 60]).SerializeToString(),
}  # fmt: skip
GUARD_POLICY = policy.effective(
    M.MonitoringPolicy(model_name="m", enabled=True,
                       guard=M.GuardPolicy(max_p99_latency_ratio=2.0, max_staging_psi=0.25)), "m",
)  # fmt: skip


@settings(max_examples=200, deadline=None)
@given(
    classes=st.lists(st.text(max_size=3), max_size=4),
    edges=st.lists(st.floats(allow_nan=True, allow_infinity=True), max_size=4),
    counts=st.lists(st.integers(-(2**62), 2**62), max_size=5),
    answers=st.lists(st.none() | st.text(max_size=2) | st.floats(), max_size=20),
)
def test_a_stored_staging_histogram_of_any_shape_gives_a_psi_or_none(
    classes: list[str], edges: list[float], counts: list[int], answers: list[Any]
) -> None:
    """A staging histogram is the registry's copy of what serving reported; whatever it holds, the
    guard's PSI is a finite number or NaN (no check), never an exception."""
    hist = common_pb2.PredictionHistogram(classes=classes, edges=edges, counts=counts)
    outputs = {
        "class": np.array([a if isinstance(a, str) else None for a in answers], dtype=object),
        "variable": np.array([a if isinstance(a, float) else math.nan for a in answers], dtype=np.float64),
    }
    for task in (common_pb2.TASK_CLASSIFICATION, common_pb2.TASK_REGRESSION):
        value = guard.staging_psi(task, outputs, hist)
        assert math.isnan(value) or (math.isfinite(value) and value >= 0)


def _ref_row(task: int, calibration: str | None = None, **guard: Any) -> Any:
    """What close_drift_window hands _judge_drift: the model_refs row (jsonb columns as text)."""
    return {
        "model": "m", "version": 1, "profile": json.dumps(PROFILE), "task": task, "class_labels": ["0", "1"],
        "recorded": json.dumps({"accuracy": 0.9}), "calibration": calibration, "guard_until": None,
        "guard_previous": 0, "guard_previous_p99": None, "staging_predictions": None, **guard,
    }  # fmt: skip


def policy_with(**fields: Any) -> M.MonitoringPolicy:
    return policy.effective(M.MonitoringPolicy(model_name="m", enabled=True, **fields), "m")


# ---------------------------------------------------------------------------------- stored junk never stops


JUNK_ROWS = [
    {"inputs": '"not an object"', "outputs": "[1, 2]", "latency_ms": 1.0},
    {"inputs": '{"f0": "abc", "f1": 7}', "outputs": '{"variable": "abc", "class": {"a": 1}}', "latency_ms": 1.0},
    {"inputs": '{"f0": [1, 2], "f1": [1, 2]}', "outputs": '{"variable": {"a": 1}, "class": [1, 2]}', "latency_ms": 1.0},
    {"inputs": '{"f0": 1e308, "f1": null}', "outputs": '{"variable": 1e308, "class": null}', "latency_ms": 1.0},
    {"inputs": '{"f0": [3, 4], "f1": [3, 4]}', "outputs": '{"variable": [[true]], "class": [3, 4]}', "latency_ms": 1.0},
    {"inputs": "{}", "outputs": '{"variable": "Infinity", "class": true}', "latency_ms": 1.0},
]


@pytest.mark.parametrize("task", [common_pb2.TASK_CLASSIFICATION, common_pb2.TASK_REGRESSION])
def test_rows_stored_before_the_checks_still_make_a_window(task: int) -> None:
    report = evaluator._judge_drift(cast(Any, JUNK_ROWS), _ref_row(task), _schema(), policy_with())
    assert report.rows == len(JUNK_ROWS)
    f0 = next(f for f in report.integrity.features if f.feature == "f0")
    assert f0.type_mismatches >= 3  # text and lists are mismatches, not errors


@pytest.mark.parametrize("task", [common_pb2.TASK_CLASSIFICATION, common_pb2.TASK_REGRESSION])
def test_junk_labels_still_make_a_quality_window(task: int) -> None:
    labels = ["1", "abc", {"a": 1}, [1, 2], 1e308, True, None, 0, 1.0]
    rows = [
        {"label": json.dumps(v), "predicted": p, "inputs": i}
        for v, p, i in zip(
            labels,
            ['{"class": "1", "variable": 1}', '"junk"', '{"class": [1], "variable": "x"}'] * 3,
            ['{"seg": "a"}', "[1]", '{"seg": [1, 2]}'] * 3,
            strict=True,
        )
    ]
    pol = policy_with(segments=[M.SegmentConfig(field="seg")])
    quality, segments, _ = evaluator._judge_quality(cast(Any, rows), task, ["0", "1"], "", math.nan, pol)
    assert quality.metric
    assert segments


class FakeConn:
    """Just enough of asyncpg.Connection for closing one window."""

    def __init__(self, ref: dict[str, Any], rows: list[dict[str, Any]], policy_bytes: bytes | None = None) -> None:
        self.ref, self.rows, self.policy = ref, rows, policy_bytes
        self.executed: list[tuple[str, tuple[Any, ...]]] = []

    async def fetchrow(self, sql: str, *args: Any) -> dict[str, Any]:
        return self.ref

    async def fetch(self, sql: str, *args: Any) -> list[dict[str, Any]]:
        return self.rows

    async def fetchval(self, sql: str, *args: Any) -> Any:
        return self.policy

    async def execute(self, sql: str, *args: Any) -> None:
        self.executed.append((sql, args))

    @asynccontextmanager
    async def transaction(self):  # type: ignore[no-untyped-def]
        yield


def _ref() -> dict[str, Any]:
    return {
        "version": 1,
        "schema": _schema().SerializeToString(),
        "profile": json.dumps(PROFILE),
        "task": common_pb2.TASK_CLASSIFICATION,
        "dataset": "d",
        "dataset_version": 1,
        "class_labels": ["0", "1"],
        "recorded": "{}",
    }


async def test_a_window_that_cannot_be_judged_is_set_aside(monkeypatch: pytest.MonkeyPatch) -> None:
    """Not retried forever: its rows leave the open window, so the next window can close."""
    rows = [{"id": i, "at": datetime(2025, 1, 1, tzinfo=UTC)} for i in (4, 5)]
    conn = FakeConn(_ref(), rows)

    def broken(*args: Any) -> None:
        raise ValueError("a row nobody foresaw")

    monkeypatch.setattr(evaluator, "_judge_drift", broken)
    assert await evaluator.close_drift_window(cast(Any, conn), "m") is None
    (sql, (ids, window_id)), *_ = conn.executed
    assert sql.startswith("UPDATE predictions SET window_id") and ids == [4, 5] and window_id.startswith("x-")

    monkeypatch.setattr(evaluator, "_judge_quality", broken)
    conn = FakeConn(_ref(), rows * 30)
    assert await evaluator.close_quality_window(cast(Any, conn), "m") is None
    assert conn.executed[0][0].startswith("UPDATE labels SET window_id") and conn.executed[0][1][1].startswith("x-")


async def test_a_stored_policy_that_breaks_the_limits_gives_way_to_the_defaults() -> None:
    bad = M.MonitoringPolicy(model_name="m", enabled=False, cooldown=Duration(seconds=2**62))
    got = await evaluator.load_policy(cast(Any, FakeConn({}, [], bad.SerializeToString())), "m")
    assert got.cooldown.seconds == policy.DEFAULT_COOLDOWN_S


async def test_a_failing_window_close_keeps_what_the_caller_stored() -> None:
    async def fails() -> None:
        raise RuntimeError("window trouble")

    await records._closing_windows(cast(Any, FakeConn({}, [])), "m", "drift", fails)  # logged and counted

    async def connection_lost() -> None:
        raise asyncpg.InterfaceError("connection is closed")

    with pytest.raises(asyncpg.InterfaceError):
        await records._closing_windows(cast(Any, FakeConn({}, [])), "m", "drift", connection_lost)


# ----------------------------------------------------------------------------------------------------- API


def _policy(**fields: Any) -> M.MonitoringPolicy:
    return M.MonitoringPolicy(**{"model_name": "m", **fields})


GOOD_POLICY = _policy(
    enabled=True,
    window=M.WindowPolicy(size_rows=1000, min_rows=100, duration=Duration(seconds=3600)),
    default_thresholds=M.FeatureThresholds(psi=0.2, ks_statistic=0.1, chi2_p_value=0.01),
    feature_thresholds={"f0": M.FeatureThresholds(ignore=True)},
    integrity=M.IntegrityThresholds(max_null_rate=0.5),
    quality=M.QualityThreshold(metric="f1", max_drop=0.1, min_labelled_rows=50),
    segments=[M.SegmentConfig(field="f1", bucket_edges=[0, 1, 2], min_value=0.5, max_gap=0.2, min_rows=10)],
    consecutive_breaches=3,
    cooldown=Duration(seconds=600),
)

BAD_POLICIES = {
    "policy.model_name": _policy(model_name=""),
    "policy.window.size_rows": _policy(window=M.WindowPolicy(size_rows=limits.MAX_WINDOW_ROWS + 1)),
    "policy.window.min_rows": _policy(window=M.WindowPolicy(min_rows=-1)),
    "policy.window.duration": _policy(window=M.WindowPolicy(duration=Duration(seconds=-1))),
    "policy.default_thresholds.psi": _policy(default_thresholds=M.FeatureThresholds(psi=math.nan)),
    "policy.default_thresholds.ks_statistic": _policy(default_thresholds=M.FeatureThresholds(ks_statistic=1.5)),
    "policy.prediction_thresholds.chi2_p_value": _policy(
        prediction_thresholds=M.FeatureThresholds(chi2_p_value=-math.inf)
    ),
    "policy.feature_thresholds['f0'].psi": _policy(feature_thresholds={"f0": M.FeatureThresholds(psi=math.inf)}),
    "policy.integrity.max_null_rate": _policy(integrity=M.IntegrityThresholds(max_null_rate=math.nan)),
    "policy.quality.max_drop": _policy(quality=M.QualityThreshold(max_drop=math.inf)),
    "policy.quality.min_labelled_rows": _policy(quality=M.QualityThreshold(min_labelled_rows=10**12)),
    "policy.quality.metric": _policy(quality=M.QualityThreshold(metric="m" * 100)),
    "policy.segments[0].bucket_edges": _policy(segments=[M.SegmentConfig(field="s", bucket_edges=[0, math.nan])]),
    "policy.segments[0].max_gap": _policy(segments=[M.SegmentConfig(field="s", max_gap=-1)]),
    "policy.segments[0].min_value": _policy(segments=[M.SegmentConfig(field="s", min_value=math.nan)]),
    "policy.segments[0].field": _policy(segments=[M.SegmentConfig(field="s\x00")]),
    "policy.segments": _policy(segments=[M.SegmentConfig(field="s")] * (limits.MAX_SEGMENTS + 1)),
    "policy.consecutive_breaches": _policy(consecutive_breaches=limits.MAX_CONSECUTIVE + 1),
    "policy.cooldown": _policy(cooldown=Duration(seconds=2**62)),
}


def test_a_sensible_policy_passes() -> None:
    policy.check(GOOD_POLICY)


@pytest.mark.parametrize("field", sorted(BAD_POLICIES))
def test_out_of_range_policy_fields_are_refused_by_name(field: str) -> None:
    with pytest.raises(InvalidArgument) as caught:
        policy.check(BAD_POLICIES[field])
    assert caught.value.field == field


def _label(**kind: Any) -> Value:
    v = Value()
    for k, x in kind.items():
        setattr(v, k, x)
    return v


BAD_REQUESTS = {
    "window_count": (limits.drift_report_request, M.GetDriftReportRequest(model_name="m", window_count=-1)),
    "window_count ": (limits.drift_report_request, M.GetDriftReportRequest(model_name="m", window_count=10**6)),
    "model_version": (limits.drift_report_request, M.GetDriftReportRequest(model_name="m", model_version=-1)),
    "model_name": (limits.drift_report_request, M.GetDriftReportRequest(model_name="m" * 300)),
    "kind": (limits.alerts_request, M.ListAlertsRequest(kind=cast(Any, 99))),
    "since": (limits.alerts_request, M.ListAlertsRequest(since={"seconds": 2**50})),
    "kinds[1]": (limits.watch_request, M.WatchAlertsRequest(kinds=[1, cast(Any, -3)])),
    "field": (limits.segment_report_request, M.GetSegmentReportRequest(model_name="m", field="x\x00")),
    "labels": (
        limits.feedback_request,
        M.RecordFeedbackRequest(model_name="m", labels=[M.FeedbackLabel()] * (limits.MAX_FEEDBACK_LABELS + 1)),
    ),
    "labels[0].label": (
        limits.feedback_request,
        M.RecordFeedbackRequest(
            model_name="m", labels=[M.FeedbackLabel(request_id="r", label=_label(number_value=math.nan))]
        ),
    ),
    "labels[0].label ": (
        limits.feedback_request,
        M.RecordFeedbackRequest(
            model_name="m", labels=[M.FeedbackLabel(request_id="r", label=Value(list_value={"values": [{}]}))]
        ),
    ),
    "labels[0].label  ": (
        limits.feedback_request,
        M.RecordFeedbackRequest(
            model_name="m",
            labels=[M.FeedbackLabel(request_id="r", label=_label(string_value="x" * (limits.MAX_LABEL_CHARS + 1)))],
        ),
    ),
    "labels[0].row_index": (
        limits.feedback_request,
        M.RecordFeedbackRequest(model_name="m", labels=[M.FeedbackLabel(request_id="r", row_index=-1)]),
    ),
    "labels[0].request_id": (
        limits.feedback_request,
        M.RecordFeedbackRequest(model_name="m", labels=[M.FeedbackLabel()]),
    ),
}


@pytest.mark.parametrize("case", sorted(BAD_REQUESTS))
def test_out_of_range_request_fields_are_refused_by_name(case: str) -> None:
    check, request = BAD_REQUESTS[case]
    with pytest.raises(InvalidArgument) as caught:
        check(request)
    assert caught.value.field == case.strip()


def test_labels_a_model_can_learn_from_pass() -> None:
    for label in (_label(number_value=2.5), _label(bool_value=True), _label(string_value="cat")):
        limits.feedback("r", 0, label, "")
    with pytest.raises(InvalidArgument, match="label"):
        limits.feedback("r", 0, Value(), "")  # no label at all


# --------------------------------------------------------------------------------------- feedback routing


async def test_one_dataset_refusing_feedback_spares_the_others(monkeypatch: pytest.MonkeyPatch) -> None:
    from aiokafka import ConsumerRecord

    from flywheel.config import Settings
    from flywheel.v1 import ingestion_pb2
    from services.ingestion import handlers

    schema = common_pb2.Schema(
        fields=[F(name="f0", type=FLOAT), F(name="label", type=common_pb2.FIELD_TYPE_INT)], label_field="label"
    )
    datasets = [
        ingestion_pb2.Dataset(name=name, schema=schema, feedback_model=model)
        for name, model in (("takes", "m"), ("refuses", "m"), ("other-model", "n"), ("also-takes", "m"))
    ]
    written: list[str] = []
    parked: list[tuple[int, str]] = []

    async def write_version(ctx: Any, dataset: str, raw: Any, *args: Any, **kwargs: Any) -> None:
        if dataset == "refuses":
            raise InvalidArgument("row 1: value not allowed", field="f0")
        written.append(dataset)

    async def park(self: Any, rec: ConsumerRecord, exc: BaseException, attempts: int, conn: Any = None) -> None:
        parked.append((rec.offset, str(exc)))

    monkeypatch.setattr(handlers, "write_version", write_version)
    monkeypatch.setattr(handlers.DeadLetters, "park", park)

    class Conn(FakeConn):
        async def fetch(self, sql: str, *args: Any) -> list[dict[str, Any]]:
            return [{"spec": d.SerializeToString()} for d in datasets]

    ctx = SimpleNamespace(settings=Settings(), pool=None, producer=None, name="ingestion")
    consumer = handlers.feedback_consumer(cast(Any, ctx))
    items = [handlers.FeedbackRow({"f0": 1.0, "__label__": 1}, cast(Any, SimpleNamespace(offset=i))) for i in (7, 8)]
    await consumer._handler(cast(Any, Conn({}, [])), "m", [None, *items])
    assert written == ["takes", "also-takes"]
    assert [offset for offset, _ in parked] == [7, 8]
    assert all(reason.startswith("dataset refuses: f0: row 1") for _, reason in parked)

    async def disk_full(*args: Any, **kwargs: Any) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(handlers, "write_version", disk_full)
    with pytest.raises(OSError):  # not the rows' fault: the whole batch is retried, nothing refused
        await consumer._handler(cast(Any, Conn({}, [])), "m", items)
    await consumer.stop()


def test_feedback_with_nan_is_malformed() -> None:
    from aiokafka import ConsumerRecord

    from flywheel.bus.serde import CONTENT_PROTOBUF, MalformedEvent
    from services.ingestion import handlers

    event = events_pb2.Feedback(model_name="m", request_id="r", label=Value(number_value=math.inf))
    event.features.update({"f0": 1.0})
    rec = ConsumerRecord(
        "flywheel.feedback", 0, 0, 0, 0, b"m", event.SerializeToString(), None, 0, 0,
        [("content-type", CONTENT_PROTOBUF.encode())],
    )  # fmt: skip
    with pytest.raises(MalformedEvent, match="NaN or infinity"):
        handlers.decode_feedback(rec)


# ---------------------------------------------------------------------- estimation without labels

# Calibrated on rows where a 0.55 for class 1 was right half the time.
CALIBRATION = json.dumps(
    estimation.fit(
        ["0", "1"], np.array([[0.9, 0.1], [0.45, 0.55], [0.45, 0.55], [0.1, 0.9]] * 30), np.array([0, 1, 0, 1] * 30)
    ).to_json()
)


@pytest.mark.parametrize(
    "calibration", [CALIBRATION, '"junk"', '{"class_labels": ["0", "1"], "knots": [[[0, 1], [0]]]}', "[]"]
)
def test_junk_rows_and_stored_calibrations_never_stop_a_window(calibration: str) -> None:
    rows = JUNK_ROWS * 20
    report = evaluator._judge_drift(
        cast(Any, rows), _ref_row(common_pb2.TASK_CLASSIFICATION, calibration), _schema(), policy_with()
    )
    assert report.rows == len(rows)
    assert not report.HasField("estimated"), "no row carries probabilities: nothing to estimate from"


def test_a_window_with_probabilities_gets_an_estimate_and_breaches_past_the_drop() -> None:
    outputs = ['{"label": 1, "class": "1", "probabilities": [0.45, 0.55]}'] * 150
    rows = [{"inputs": '{"f0": 0.1, "f1": 0.2}', "outputs": o, "latency_ms": 1.0} for o in outputs]
    ref = _ref_row(common_pb2.TASK_CLASSIFICATION, CALIBRATION)
    report = evaluator._judge_drift(cast(Any, rows), ref, _schema(), policy_with())
    est = report.estimated
    assert est.rows == 150 and est.metric == "accuracy" and est.reference_value == pytest.approx(0.9)
    assert est.value == pytest.approx(0.5) and est.breached
    assert common_pb2.DRIFT_KIND_ESTIMATED_PERFORMANCE in report.breached
    off = policy_with(estimated_performance=M.EstimatedPerformanceThreshold(disabled=True))
    assert not evaluator._judge_drift(cast(Any, rows), ref, _schema(), off).HasField("estimated")
    loose = policy_with(estimated_performance=M.EstimatedPerformanceThreshold(max_drop=0.5))
    assert not evaluator._judge_drift(cast(Any, rows), ref, _schema(), loose).estimated.breached
