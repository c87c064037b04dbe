"""`flywheel deploy` and `flywheel predict` without servers: argument parsing, ROWS parsing and the
feature mapping, OIP request building and response decoding, and rendering of hand-built messages.
Command handlers run against in-process fake stubs (no channel is opened)."""

from __future__ import annotations

import io
import json
import math
from contextlib import contextmanager

import grpc
import numpy as np
import pytest
from rich.console import Console
from tritonclient.grpc import service_pb2, service_pb2_grpc

from flywheel.cli import client, deploy, predict
from flywheel.cli.client import CliError, ModelSelector
from flywheel.v1 import common_pb2, registry_pb2, serving_pb2

from .cli_helpers import parse, render

# ---------------------------------------------------------------------------------------------------
# Parser


@pytest.mark.parametrize(
    ("argv", "func", "expected"),
    [
        (["deploy", "status"], deploy.cmd_status, {"model": None, "limit": 5, "json": False}),
        (["deploy", "status", "--json"], deploy.cmd_status, {"json": True}),
        (["deploy", "status", "churn", "--limit", "10", "--json"], deploy.cmd_status,
         {"model": "churn", "limit": 10, "json": True}),
        (["deploy", "approve", "churn:8"], deploy.cmd_approve,
         {"ref": ModelSelector("churn", version=8), "reason": None, "actor": None, "json": False}),
        (["deploy", "approve", "churn:8", "--reason", "looks good", "--actor", "ana", "--json"], deploy.cmd_approve,
         {"reason": "looks good", "actor": "ana", "json": True}),
        (["deploy", "reject", "churn:8", "--reason", "too slow"], deploy.cmd_reject,
         {"ref": ModelSelector("churn", version=8), "reason": "too slow", "actor": None}),
        (["deploy", "reject", "churn:8", "--reason", "r", "--actor", "bob", "--json"], deploy.cmd_reject,
         {"actor": "bob", "json": True}),
        (["deploy", "rollback", "churn"], deploy.cmd_rollback,
         {"model": "churn", "to": None, "reason": None, "actor": None, "json": False}),
        (["deploy", "rollback", "churn", "--to", "5", "--reason", "regression", "--actor", "ana", "--json"],
         deploy.cmd_rollback, {"to": 5, "reason": "regression", "actor": "ana", "json": True}),
        (["deploy", "canary", "churn", "--version", "8", "--percent", "10"], deploy.cmd_canary,
         {"model": "churn", "version": 8, "percent": 10.0, "actor": None, "json": False}),
        (["deploy", "canary", "churn", "--version", "8", "--percent", "100", "--actor", "ana", "--json"],
         deploy.cmd_canary, {"percent": 100.0, "actor": "ana", "json": True}),
        (["deploy", "canary", "churn", "--version", "8", "--percent", "2.5%"], deploy.cmd_canary, {"percent": 2.5}),
        (["deploy", "shadow", "churn", "--version", "8"], deploy.cmd_shadow,
         {"model": "churn", "version": 8, "percent": 100.0}),
        (["deploy", "shadow", "churn", "--version", "8", "--percent", "25", "--actor", "a", "--json"],
         deploy.cmd_shadow, {"percent": 25.0, "actor": "a", "json": True}),
        (["deploy", "clear", "churn", "--actor", "ana", "--json"], deploy.cmd_clear,
         {"model": "churn", "actor": "ana", "json": True}),
        (["predict", "churn", "--json", "[[1, 2]]"], predict.cmd_predict,
         {"ref": ModelSelector("churn"), "rows": "[[1, 2]]", "output": None, "json_output": False}),
        (["predict", "churn:3", "--json", "@rows.json", "--output", "label", "probabilities", "--json-output"],
         predict.cmd_predict,
         {"ref": ModelSelector("churn", version=3), "rows": "@rows.json", "output": ["label", "probabilities"],
          "json_output": True}),
        (["predict", "churn@staging", "--json", "[]", "--output", "label", "--output", "probabilities"],
         predict.cmd_predict, {"ref": ModelSelector("churn", alias="staging"), "output": ["label", "probabilities"]}),
    ],
)  # fmt: skip
def test_parser_accepts_commands_and_flags(argv, func, expected):
    args = parse(*argv)
    assert args.func is func
    for key, value in expected.items():
        assert getattr(args, key) == value, key


@pytest.mark.parametrize(
    "argv",
    [
        ["deploy"],
        ["deploy", "status", "churn:3"],
        ["deploy", "status", "--limit", "-1"],
        ["deploy", "approve", "churn"],  # a version is required
        ["deploy", "approve", "churn@production"],
        ["deploy", "approve", "churn:latest"],
        ["deploy", "approve", "churn:0"],
        ["deploy", "reject", "churn:8"],  # --reason is required
        ["deploy", "rollback"],
        ["deploy", "rollback", "churn:3"],
        ["deploy", "rollback", "churn", "--to", "0"],
        ["deploy", "canary", "churn", "--percent", "10"],  # --version is required
        ["deploy", "canary", "churn", "--version", "8"],  # --percent is required
        ["deploy", "canary", "churn", "--version", "8", "--percent", "0"],
        ["deploy", "canary", "churn", "--version", "8", "--percent", "100.5"],
        ["deploy", "canary", "churn", "--version", "8", "--percent", "-5"],
        ["deploy", "canary", "churn", "--version", "8", "--percent", "nan"],
        ["deploy", "canary", "churn", "--version", "8", "--percent", "ten"],
        ["deploy", "canary", "churn", "--version", "0", "--percent", "10"],
        ["deploy", "shadow", "churn"],
        ["deploy", "shadow", "churn", "--version", "8", "--percent", "0"],
        ["deploy", "clear"],
        ["deploy", "promote", "churn"],
        ["predict", "churn"],  # --json is required
        ["predict", "--json", "[[1]]"],  # MODEL is required
        ["predict", "churn:latest", "--json", "[[1]]"],
        ["predict", "churn:0", "--json", "[[1]]"],
        ["predict", "churn", "--json", "[[1]]", "--output"],
    ],
)
def test_parser_rejects_bad_input(argv, capsys):
    with pytest.raises(SystemExit) as exc:
        parse(*argv)
    assert exc.value.code == 2


def test_existing_groups_are_still_there():
    for group in ("datasets", "specs", "runs", "models", "deploy", "predict", "up", "down", "status"):
        with pytest.raises(SystemExit) as exc:
            parse(group, "--help")
        assert exc.value.code == 0


# ---------------------------------------------------------------------------------------------------
# ROWS


def test_parse_rows_inline_objects_lists_and_a_single_object():
    rows, source = predict.parse_rows('[{"age": 30, "tenure": 2}, {"age": 41, "tenure": 7}]')
    assert rows == [{"age": 30, "tenure": 2}, {"age": 41, "tenure": 7}] and source == "--json"
    assert predict.parse_rows("[[1, 2.5], [3, null]]")[0] == [[1, 2.5], [3, None]]
    assert predict.parse_rows('{"age": 30}')[0] == [{"age": 30}]


def test_parse_rows_from_a_file_and_stdin(tmp_path, monkeypatch):
    path = tmp_path / "rows.json"
    path.write_text(json.dumps([[1, 2], [3, 4]]))
    assert predict.parse_rows(f"@{path}") == ([[1, 2], [3, 4]], str(path))
    monkeypatch.setattr("sys.stdin", io.StringIO('[{"a": 1}]'))
    assert predict.parse_rows("@-") == ([{"a": 1}], "stdin")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[[1, 2]", "--json: not valid JSON"),
        ("not json", "--json: not valid JSON"),
        ("[]", "--json: no rows"),
        ("3", "expected a JSON list of objects"),
        ('"x"', "got a string"),
        ("[1, 2, 3]", "for a single row of values write [[...]]"),
        ('[{"a": 1}, [1]]', "row 0 is an object but row 1 is a list"),
        ('[[1], {"a": 1}, 3]', "row 0 is a list but row 1 is an object"),
        ("@", "the file name is missing"),
    ],
)
def test_parse_rows_rejects_bad_input_with_code_2(text, message):
    with pytest.raises(CliError) as exc:
        predict.parse_rows(text)
    assert exc.value.code == 2
    assert message in str(exc.value)


def test_parse_rows_bad_files(tmp_path, monkeypatch):
    bad = tmp_path / "bad.json"
    bad.write_text("{nope")
    for text, message in ((f"@{bad}", f"{bad}: not valid JSON"), (f"@{tmp_path / 'missing.json'}", "missing.json")):
        with pytest.raises(CliError) as exc:
            predict.parse_rows(text)
        assert exc.value.code == 2 and message in str(exc.value)
    monkeypatch.setattr("sys.stdin", io.StringIO("[[1,"))
    with pytest.raises(CliError, match="stdin: not valid JSON"):
        predict.parse_rows("@-")


def test_predict_bad_json_exits_2_with_one_line_before_any_call(capsys):
    args = parse("predict", "churn", "--json", "[{oops}]")
    assert args.func(args) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.startswith("error: --json: not valid JSON: ")
    assert captured.err.count("\n") == 1


FEATURES = ["age", "plan", "tenure"]


def test_rows_matrix_maps_objects_to_feature_order():
    rows = [{"tenure": 2, "age": 30, "plan": 1.5}, {"plan": True, "tenure": None, "age": 41}]
    matrix = predict.rows_matrix(rows, FEATURES, 3)
    assert matrix[0] == [30.0, 1.5, 2.0]
    assert matrix[1][:2] == [41.0, 1.0] and math.isnan(matrix[1][2])


def test_rows_matrix_lists_in_column_order():
    assert predict.rows_matrix([[1, 2, 3], [4, False, None]], FEATURES, 3)[0] == [1.0, 2.0, 3.0]
    assert predict.rows_matrix([[1, 2], [3, 4]], [], 0) == [[1.0, 2.0], [3.0, 4.0]]  # width from the first row


@pytest.mark.parametrize(
    ("rows", "names", "columns", "message"),
    [
        ([{"age": 1, "tenure": 2}], FEATURES, 3, "row 0: missing feature plan (the model's features: age, plan"),
        ([{"age": 1, "plan": 1, "tenure": 2}, {"age": 1}], FEATURES, 3, "row 1: missing features plan, tenure"),
        ([{"age": 1, "plan": 1, "tenure": 2, "zip": 9}], FEATURES, 3, "row 0: unknown feature zip"),
        ([{"age": 1}], [], 1, "the registry lists no feature names"),
        ([[1, 2]], FEATURES, 3, "row 0: 2 values, expected the model's 3 features (age, plan, tenure)"),
        ([[1, 2], [1, 2, 3]], [], 0, "row 1: 3 values, expected 2 values"),
        ([{"age": "old", "plan": 1, "tenure": 2}], FEATURES, 3, "row 0, feature 'age': expected a number"),
        ([[1, [2], 3]], FEATURES, 3, "row 0, feature 'plan': expected a number, true/false or null, got a list"),
        ([[1, "x"]], [], 2, "row 0, feature #1: expected a number"),
    ],
)  # fmt: skip
def test_rows_matrix_errors_name_the_problem(rows, names, columns, message):
    with pytest.raises(CliError) as exc:
        predict.rows_matrix(rows, names, columns)
    assert exc.value.code == 2
    assert message in str(exc.value)


# ---------------------------------------------------------------------------------------------------
# OIP request and response


def _metadata(
    shape=(-1, 3), datatype="FP32", inputs=1, outputs=("label", "probabilities")
) -> service_pb2.ModelMetadataResponse:
    md = service_pb2.ModelMetadataResponse(name="churn", versions=["7"], platform="onnxruntime_onnx")
    for i in range(inputs):
        md.inputs.add(name="input" if i == 0 else f"input{i}", datatype=datatype, shape=list(shape))
    for name in outputs:
        md.outputs.add(name=name, datatype="FP32", shape=[-1])
    return md


def test_input_spec():
    assert predict.input_spec(_metadata(), "churn") == predict.InputSpec("input", "FP32", 3)
    assert predict.input_spec(_metadata(shape=(-1, -1), datatype="FP64"), "churn").columns == 0
    for md, message in (
        (_metadata(inputs=2), "has 2 inputs (input, input1); predict needs exactly one"),
        (_metadata(shape=(-1, 3, 2)), "has shape [-1, 3, 2]; predict needs a 2-D"),
        (_metadata(datatype="INT64"), "is INT64; predict sends features as FP32 or FP64"),
    ):
        with pytest.raises(CliError, match=message.replace("[", r"\[").replace("(", r"\(").replace(")", r"\)")):
            predict.input_spec(md, "churn")


def test_check_outputs():
    predict.check_outputs(["label"], _metadata(), "churn")
    with pytest.raises(CliError, match="unknown output proba \\(the outputs of churn: label, probabilities\\)"):
        predict.check_outputs(["label", "proba"], _metadata(), "churn")


def test_build_infer_request_sends_raw_fp32():
    spec = predict.InputSpec("input", "FP32", 3)
    request = predict.build_infer_request("churn", "7", spec, [[1, 2, 3], [4.5, math.nan, 6]], ["label"])
    assert request.model_name == "churn" and request.model_version == "7" and request.id
    (tensor,) = request.inputs
    assert tensor.name == "input" and tensor.datatype == "FP32" and list(tensor.shape) == [2, 3]
    assert not tensor.HasField("contents")
    data = np.frombuffer(request.raw_input_contents[0], dtype="<f4").reshape(2, 3)
    assert data[0].tolist() == [1.0, 2.0, 3.0] and data[1, 0] == 4.5 and np.isnan(data[1, 1])
    assert [o.name for o in request.outputs] == ["label"]
    production = predict.build_infer_request("churn", "", predict.InputSpec("x", "FP64", 1), [[1.0]])
    assert production.model_version == "" and len(production.raw_input_contents[0]) == 8
    assert list(production.outputs) == []


def _classifier_response(raw: bool) -> service_pb2.ModelInferResponse:
    response = service_pb2.ModelInferResponse(model_name="churn", model_version="7")
    labels = np.array([1, 0], dtype="<i8")
    probabilities = np.array([[0.1, 0.9], [0.8, 0.2]], dtype="<f4")
    label = response.outputs.add(name="label", datatype="INT64", shape=[2])
    proba = response.outputs.add(name="probabilities", datatype="FP32", shape=[2, 2])
    if raw:
        response.raw_output_contents.extend([labels.tobytes(), probabilities.tobytes()])
    else:
        label.contents.int64_contents.extend(labels.tolist())
        proba.contents.fp32_contents.extend(probabilities.ravel().tolist())
    return response


@pytest.mark.parametrize("raw", [True, False])
def test_decode_outputs_raw_and_typed(raw):
    outputs = predict.decode_outputs(_classifier_response(raw))
    assert list(outputs) == ["label", "probabilities"]
    assert outputs["label"].tolist() == [1, 0] and outputs["probabilities"].shape == (2, 2)
    rows = predict.rows_of_outputs(outputs, 2)
    assert rows == [{"label": 1, "probabilities": [0.1, 0.9]}, {"label": 0, "probabilities": [0.8, 0.2]}]


def test_regression_and_bytes_outputs():
    response = service_pb2.ModelInferResponse(model_name="price", model_version="2")
    response.outputs.add(name="variable", datatype="FP32", shape=[3, 1])
    response.outputs.add(name="tag", datatype="BYTES", shape=[3])
    variable = np.array([[1.5], [np.nan], [3.25]], dtype="<f4").tobytes()
    tags = b"".join(len(t).to_bytes(4, "little") + t for t in (b"a", b"", b"ccc"))
    response.raw_output_contents.extend([variable, tags])
    rows = predict.rows_of_outputs(predict.decode_outputs(response), 3)
    assert rows == [{"variable": 1.5, "tag": "a"}, {"variable": None, "tag": ""}, {"variable": 3.25, "tag": "ccc"}]
    json.dumps(rows, allow_nan=False)  # NaN became null
    text = render(predict.predictions_table(rows, title="price v2"))
    assert "price v2" in text and "variable" in text and "3.25" in text and "ccc" in text


def test_decode_outputs_errors():
    response = service_pb2.ModelInferResponse()
    response.outputs.add(name="label", datatype="INT64", shape=[3])
    response.raw_output_contents.append(np.array([1, 2], dtype="<i8").tobytes())
    with pytest.raises(CliError, match="2 values do not fill shape \\[3\\]"):
        predict.decode_outputs(response)
    odd = service_pb2.ModelInferResponse()
    odd.outputs.add(name="x", datatype="COMPLEX", shape=[1])
    with pytest.raises(CliError, match="datatype 'COMPLEX'"):
        predict.decode_outputs(odd)
    with pytest.raises(CliError, match="expected 3 rows first"):
        predict.rows_of_outputs({"label": np.array([1, 2])}, 3)


def test_predictions_table_shows_class_labels_and_a_column_per_class():
    rows = predict.rows_of_outputs(predict.decode_outputs(_classifier_response(True)), 2)
    table = predict.predictions_table(rows, ["no", "yes"], title="churn v7")
    headers = render(table).splitlines()[2]
    assert [h.strip() for h in headers.strip("┃").split("┃")] == [
        "#",
        "label",
        "probabilities[no]",
        "probabilities[yes]",
    ]
    assert list(table.columns[1]._cells) == ["yes", "no"]
    assert list(table.columns[3]._cells) == ["0.9", "0.2"]
    plain = predict.predictions_table(rows)  # no class labels: raw index and the list
    assert list(plain.columns[1]._cells) == ["1", "0"] and list(plain.columns[2]._cells) == ["[0.1, 0.9]", "[0.8, 0.2]"]


# ---------------------------------------------------------------------------------------------------
# predict against fake stubs


class FakeRpcError(grpc.RpcError):
    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        self._code, self._details = code, details

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return self._details


class FakeStub:
    """Records (method, request); answers from `responses`, or raises `errors[method]`."""

    def __init__(self, responses: dict, errors: dict | None = None) -> None:
        self.responses, self.errors = responses, errors or {}
        self.requests: list = []

    def __getattr__(self, method):
        def call(request, timeout=None):
            self.requests.append((method, request))
            if method in self.errors:
                raise self.errors[method]
            return self.responses[method]

        return call


class FakeInference:
    """ModelMetadata from _metadata(); ModelInfer answers label = argmax, probabilities = softmax-ish rows."""

    requests: list = []

    def __init__(self, channel) -> None:
        pass

    def ModelMetadata(self, request, timeout=None):
        FakeInference.requests.append(request)
        return _metadata()

    def ModelInfer(self, request, timeout=None):
        FakeInference.requests.append(request)
        x = np.frombuffer(request.raw_input_contents[0], dtype="<f4").reshape(list(request.inputs[0].shape))
        response = service_pb2.ModelInferResponse(model_name=request.model_name, model_version="7")
        p = np.stack([np.zeros(len(x)), np.ones(len(x))], axis=1).astype("<f4")
        p[x[:, 0] > 35] = [1, 0]
        names = [o.name for o in request.outputs] or ["label", "probabilities"]
        if "label" in names:
            response.outputs.add(name="label", datatype="INT64", shape=[len(x)])
            response.raw_output_contents.append(p.argmax(axis=1).astype("<i8").tobytes())
        if "probabilities" in names:
            response.outputs.add(name="probabilities", datatype="FP32", shape=list(p.shape))
            response.raw_output_contents.append(p.tobytes())
        return response


@pytest.fixture
def fake_predict(monkeypatch):
    registry = FakeStub({"GetModelVersion": registry_pb2.GetModelVersionResponse(version=_model_version(8))})

    @contextmanager
    def connect(service):
        assert service == "registry"
        yield registry

    @contextmanager
    def channel():
        yield object()

    FakeInference.requests = []
    monkeypatch.setattr(client, "connect", connect)
    monkeypatch.setattr(predict, "serving_channel", channel)
    monkeypatch.setattr(service_pb2_grpc, "GRPCInferenceServiceStub", FakeInference)
    monkeypatch.setattr(predict, "console", Console(width=220))
    return registry


def test_predict_objects_via_production(fake_predict, capsys):
    rows = json.dumps([{"tenure": 1, "age": 30, "plan": 0}, {"age": 50, "plan": 1, "tenure": 9}])
    args = parse("predict", "churn", "--json", rows, "--json-output")
    assert args.func(args) == 0
    assert json.loads(capsys.readouterr().out) == [
        {"label": 1, "probabilities": [0.0, 1.0]},
        {"label": 0, "probabilities": [1.0, 0.0]},
    ]
    (method, request), = fake_predict.requests  # fmt: skip
    assert method == "GetModelVersion" and request.WhichOneof("selector") == "alias" and request.alias == "production"
    metadata, infer = FakeInference.requests
    assert metadata.name == "churn" and metadata.version == ""
    assert infer.model_version == "" and list(infer.inputs[0].shape) == [2, 3]
    assert np.frombuffer(infer.raw_input_contents[0], dtype="<f4").tolist() == [30, 0, 1, 50, 1, 9]


def test_predict_version_outputs_and_table(fake_predict, capsys):
    args = parse("predict", "churn:8", "--json", "[[30, 0, 1]]", "--output", "label")
    assert args.func(args) == 0
    out = capsys.readouterr().out
    assert "churn v7" in out and "yes" in out and "probabilities" not in out
    assert fake_predict.requests[0][1].version == 8
    assert FakeInference.requests[0].version == "8" and FakeInference.requests[1].model_version == "8"
    assert [o.name for o in FakeInference.requests[1].outputs] == ["label"]


def test_predict_alias_resolves_to_a_version(fake_predict, capsys):
    args = parse("predict", "churn@staging", "--json", "[[30, 0, 1]]")
    assert args.func(args) == 0
    assert fake_predict.requests[0][1].alias == "staging"
    assert FakeInference.requests[1].model_version == "8"


def test_predict_reports_missing_feature_and_unknown_output(fake_predict, capsys):
    args = parse("predict", "churn", "--json", '[{"age": 30, "plan": 1}]')
    assert args.func(args) == 2
    assert capsys.readouterr().err == "error: row 0: missing feature tenure (the model's features: age, plan, tenure)\n"
    args = parse("predict", "churn", "--json", "[[1, 2, 3]]", "--output", "score")
    assert args.func(args) == 2
    assert "unknown output score" in capsys.readouterr().err


def test_predict_lists_survive_a_registry_outage_but_objects_do_not(fake_predict, capsys):
    fake_predict.errors["GetModelVersion"] = FakeRpcError(grpc.StatusCode.UNAVAILABLE, "connection refused")
    args = parse("predict", "churn", "--json", "[[30, 0, 1]]", "--json-output")
    assert args.func(args) == 0
    assert json.loads(capsys.readouterr().out) == [{"label": 1, "probabilities": [0.0, 1.0]}]
    args = parse("predict", "churn", "--json", '[{"age": 30, "plan": 0, "tenure": 1}]')
    assert args.func(args) == 1
    assert capsys.readouterr().err == "error: UNAVAILABLE: connection refused\n"


# ---------------------------------------------------------------------------------------------------
# deploy rendering


def _slot(role, version, state, provider="CPUExecutionProvider", **kw) -> serving_pb2.ModelSlot:
    return serving_pb2.ModelSlot(
        role=role, model=common_pb2.ModelRef(name="churn", version=version), state=state, execution_provider=provider,
        **kw,
    )  # fmt: skip


def _deployment(mode=serving_pb2.TRAFFIC_MODE_PRODUCTION_ONLY, challenger=0, percent=0.0) -> serving_pb2.Deployment:
    d = serving_pb2.Deployment(
        model_name="churn",
        slots=[
            _slot(common_pb2.SERVING_ROLE_PRODUCTION, 7, serving_pb2.SLOT_STATE_READY, "CUDAExecutionProvider"),
            _slot(
                common_pb2.SERVING_ROLE_STAGING, 9, serving_pb2.SLOT_STATE_FAILED, error="signature: 4 inputs, not 3"
            ),
        ],
        traffic=serving_pb2.TrafficSplit(mode=mode, percent=percent, updated_by="ana"),
        batching=serving_pb2.BatchingConfig(enabled=True, max_batch_size=64, max_queue_delay_us=500),
        log_sample_rate=0.1,
        log_dropped=3,
    )
    if challenger:
        d.traffic.challenger.CopyFrom(common_pb2.ModelRef(name="churn", version=challenger))
        d.slots.append(_slot(common_pb2.SERVING_ROLE_CANARY, challenger, serving_pb2.SLOT_STATE_READY))
    d.slots[0].stats.CopyFrom(serving_pb2.SlotStats(request_count=1200, error_count=2, latency_p50_ms=0.8))
    return d


def test_production_version_prefers_the_ready_slot_during_a_swap():
    d = serving_pb2.Deployment(
        slots=[
            _slot(common_pb2.SERVING_ROLE_PRODUCTION, 8, serving_pb2.SLOT_STATE_WARMING),
            _slot(common_pb2.SERVING_ROLE_PRODUCTION, 7, serving_pb2.SLOT_STATE_READY),
        ]
    )
    assert deploy.production_version(d) == 7
    d.slots[0].state, d.slots[1].state = serving_pb2.SLOT_STATE_READY, serving_pb2.SLOT_STATE_DRAINING
    assert deploy.production_version(d) == 8
    assert deploy.production_version(serving_pb2.Deployment()) == 0


def test_traffic_texts():
    assert deploy.fmt_traffic(_deployment()) == "production only"
    assert deploy.fmt_traffic(serving_pb2.Deployment()) == "production only"
    canary = _deployment(serving_pb2.TRAFFIC_MODE_CANARY, 8, 10)
    assert deploy.fmt_traffic(canary) == "canary v8 10%"
    assert deploy.traffic_line(canary) == "churn: canary v8 10%, production v7 90%"
    shadow = _deployment(serving_pb2.TRAFFIC_MODE_SHADOW, 8, 100)
    assert deploy.fmt_traffic(shadow) == "shadow v8 100%"
    assert deploy.traffic_line(shadow) == "churn: production v7 answers 100%; shadow v8 gets a copy of 100% of requests"
    assert deploy.traffic_line(_deployment()) == "churn: production v7 100%"
    assert deploy.fmt_traffic(_deployment(serving_pb2.TRAFFIC_MODE_CANARY, 8, 2.5)) == "canary v8 2.5%"


def test_deployments_table():
    text = render(deploy.deployments_table([_deployment(serving_pb2.TRAFFIC_MODE_CANARY, 8, 10)]))
    assert "churn" in text and "v7" in text
    assert "production v7 ready (CUDA)" in text and "staging v9 failed (CPU): signature: 4 inputs, not 3" in text
    assert "canary v8 ready (CPU)" in text and "canary v8 10%" in text and "0.1 / 3" in text


def test_deployment_detail():
    text = render(deploy.deployment_detail(_deployment(serving_pb2.TRAFFIC_MODE_SHADOW, 8, 50)))
    assert "shadow v8 50%" in text and "by ana" in text
    assert "on (max batch 64, max queue delay 0.5 ms)" in text
    assert "sample rate 0.1, dropped 3" in text
    assert "CUDA" in text and "1200" in text and "0.8 ms" in text
    assert deploy.fmt_batching(serving_pb2.BatchingConfig()) == "off"


def _model_version(version: int, **kw) -> registry_pb2.ModelVersion:
    mv = registry_pb2.ModelVersion(ref=common_pb2.ModelRef(name="churn", version=version), **kw)
    mv.signature.inputs.add(name="input", datatype="FP32", shape=[-1, 3])
    mv.signature.feature_names.extend(FEATURES)
    mv.signature.class_labels.extend(["no", "yes"])
    return mv


def _candidate() -> registry_pb2.ModelVersion:
    mv = _model_version(8, aliases=["staging"])
    mv.staging.CopyFrom(
        registry_pb2.StagingReport(
            passed=True,
            checks=[
                registry_pb2.StagingCheck(name="load", passed=True),
                registry_pb2.StagingCheck(name="parity", passed=True, detail="f1 0.93 vs recorded 0.93"),
            ],
            sample_metrics=[
                common_pb2.Metric(name="f1", value=0.93, split=common_pb2.SPLIT_TEST),
                common_pb2.Metric(name="recall", value=0.9, split=common_pb2.SPLIT_TEST, class_label="yes"),
            ],
            champion_metrics=[common_pb2.Metric(name="f1", value=0.91, split=common_pb2.SPLIT_TEST)],
            champion_version=7,
            latency_p50_ms=0.42,
            latency_p99_ms=1.9,
            latency_calls=200,
            reporter="serving-0",
        )
    )
    mv.promotion.CopyFrom(
        registry_pb2.PromotionDecision(
            state=registry_pb2.PROMOTION_STATE_PENDING_APPROVAL, reason="f1 0.93 vs production 0.91: +0.02 >= 0.01"
        )
    )
    return mv


def test_staging_and_versions_table():
    failed = _model_version(9)
    failed.staging.checks.add(name="load", passed=True)
    failed.staging.checks.add(name="signature", passed=False, detail="4 inputs, not 3")
    failed.promotion.state = registry_pb2.PROMOTION_STATE_CHECKS_FAILED
    first = _model_version(1)
    first.staging.passed = True
    first.staging.sample_metrics.add(name="f1", value=0.8)
    assert deploy.fmt_sample_vs_champion(_candidate().staging) == "f1 0.93 vs 0.91 (champion v7)"
    assert deploy.fmt_sample_vs_champion(first.staging) == "f1 0.8"
    assert deploy.fmt_staging(registry_pb2.StagingReport()) == "-"
    assert deploy.fmt_staging(failed.staging) == "[red]failed[/]: signature"
    text = render(deploy.versions_table([failed, _candidate(), _model_version(7, aliases=["production"])]))
    assert "v9" in text and "failed: signature" in text and "checks failed" in text
    assert "v8" in text and "staging" in text and "passed" in text and "0.42 ms" in text and "1.9 ms" in text
    assert "f1 0.93 vs 0.91 (champion v7)" in text
    assert "pending approval: f1 0.93 vs production 0.91: +0.02 >= 0.01" in text
    assert "production" in text


def test_model_status_with_and_without_a_deployment():
    event = registry_pb2.AuditEvent(
        actor="ana",
        action=registry_pb2.AUDIT_ACTION_ROLLED_BACK,
        model_name="churn",
        alias="production",
        from_version=8,
        to_version=7,
        reason="latency regression",
    )
    event.reason = "latency [p99] regression"  # free text is not markup
    text = render(deploy.model_status("churn", _deployment(), [_candidate()], [event]))
    assert "production only" in text and "versions" in text
    assert "staging checks of v8 (serving-0)" in text and "f1 0.93 vs recorded 0.93" in text and "200" in text
    assert "rolled back production" in text and "v8 -> v7" in text and "latency [p99] regression" in text
    bare = render(deploy.model_status("churn", None, []))
    assert "churn: not deployed by serving" in bare and "no versions" in bare


def test_decision_and_rollback_lines():
    mv = _model_version(8)
    approved = registry_pb2.ApproveVersionResponse(
        version=mv,
        decision=registry_pb2.PromotionDecision(
            state=registry_pb2.PROMOTION_STATE_PROMOTED, reason="approved: looks good", actor="ana"
        ),
    )
    assert deploy.decision_line(approved) == "churn v8: promoted: approved: looks good (by ana)"
    mv.promotion.state = registry_pb2.PROMOTION_STATE_REJECTED
    assert deploy.decision_line(registry_pb2.RejectVersionResponse(version=mv)) == "churn v8: rejected"
    rolled = registry_pb2.RollbackResponse(production=common_pb2.ModelRef(name="churn", version=6), previous_version=7)
    assert deploy.rollback_line("churn", rolled) == "churn production: v6 (was v7)"
    assert deploy.rollback_line("churn", registry_pb2.RollbackResponse()) == "churn production: - (was none)"


# ---------------------------------------------------------------------------------------------------
# deploy commands against fake stubs


@pytest.fixture
def fakes(monkeypatch):
    admin = FakeStub(
        {
            "ListDeployments": serving_pb2.ListDeploymentsResponse(deployments=[_deployment()]),
            "GetDeployment": serving_pb2.GetDeploymentResponse(deployment=_deployment()),
            "SetCanary": serving_pb2.SetCanaryResponse(deployment=_deployment(serving_pb2.TRAFFIC_MODE_CANARY, 8, 10)),
            "SetShadow": serving_pb2.SetShadowResponse(deployment=_deployment(serving_pb2.TRAFFIC_MODE_SHADOW, 8, 100)),
            "ClearTraffic": serving_pb2.ClearTrafficResponse(deployment=_deployment()),
            "ListTrafficChanges": serving_pb2.ListTrafficChangesResponse(changes=[_change()]),
        }
    )
    audit = [
        registry_pb2.AuditEvent(action=registry_pb2.AUDIT_ACTION_TAGS_SET, actor="x"),
        registry_pb2.AuditEvent(action=registry_pb2.AUDIT_ACTION_PROMOTED, version=7, actor="registry"),
    ]
    registry = FakeStub(
        {
            "ListModelVersions": registry_pb2.ListModelVersionsResponse(versions=[_candidate(), _model_version(7)]),
            "ListAuditEvents": registry_pb2.ListAuditEventsResponse(events=audit),
            "ApproveVersion": registry_pb2.ApproveVersionResponse(
                version=_model_version(8),
                decision=registry_pb2.PromotionDecision(state=registry_pb2.PROMOTION_STATE_PROMOTED),
            ),
            "RejectVersion": registry_pb2.RejectVersionResponse(
                version=_model_version(8),
                decision=registry_pb2.PromotionDecision(state=registry_pb2.PROMOTION_STATE_REJECTED, reason="slow"),
            ),
            "Rollback": registry_pb2.RollbackResponse(
                production=common_pb2.ModelRef(name="churn", version=6), previous_version=7
            ),
        }
    )

    @contextmanager
    def connect_admin():
        yield admin

    @contextmanager
    def connect(service):
        assert service == "registry"
        yield registry

    monkeypatch.setattr(deploy, "connect_admin", connect_admin)
    monkeypatch.setattr(client, "connect", connect)
    monkeypatch.setattr(deploy, "default_actor", lambda: "tester")
    wide = Console(width=220)
    monkeypatch.setattr(deploy, "console", wide)
    monkeypatch.setattr(client, "console", wide)  # listings print through client.print_listing
    return admin, registry


def run(*argv: str) -> int:
    args = parse(*argv)
    return args.func(args)


def test_status_all_and_one(fakes, capsys):
    admin, registry = fakes
    assert run("deploy", "status") == 0
    assert "production v7 ready (CUDA)" in capsys.readouterr().out
    assert run("deploy", "status", "--json") == 0
    assert json.loads(capsys.readouterr().out)["deployments"][0]["model_name"] == "churn"

    assert run("deploy", "status", "churn", "--limit", "3") == 0
    out = capsys.readouterr().out
    assert "pending approval" in out and "f1 0.93 vs 0.91 (champion v7)" in out and "promoted" in out
    assert "tags set" not in out  # only deployment decisions from the audit log
    methods = {m: r for m, r in registry.requests}
    assert methods["ListModelVersions"].name == "churn" and methods["ListModelVersions"].page_size == 3
    assert methods["ListAuditEvents"].name == "churn"
    assert admin.requests[-1][1].model_name == "churn"

    assert run("deploy", "status", "churn", "--json") == 0
    data = json.loads(capsys.readouterr().out)
    assert data["deployment"]["model_name"] == "churn"
    assert [v["ref"]["version"] for v in data["versions"]] == ["8", "7"]
    assert [e["action"] for e in data["events"]] == ["AUDIT_ACTION_PROMOTED"]


def test_status_of_a_model_serving_does_not_deploy_yet(fakes, capsys):
    admin, _ = fakes
    admin.errors["GetDeployment"] = FakeRpcError(grpc.StatusCode.NOT_FOUND, "no deployment 'churn'")
    assert run("deploy", "status", "churn") == 0
    assert "churn: not deployed by serving" in capsys.readouterr().out
    assert run("deploy", "status", "churn", "--json") == 0
    assert json.loads(capsys.readouterr().out)["deployment"] is None
    admin.errors["GetDeployment"] = FakeRpcError(grpc.StatusCode.UNAVAILABLE, "connection refused")
    assert run("deploy", "status", "churn") == 1
    assert capsys.readouterr().err == "error: UNAVAILABLE: connection refused\n"


def test_approve_reject_rollback(fakes, capsys):
    _, registry = fakes
    assert run("deploy", "approve", "churn:8", "--reason", "ok") == 0
    assert capsys.readouterr().out.strip() == "churn v8: promoted"
    method, request = registry.requests[-1]
    assert method == "ApproveVersion"
    assert (request.name, request.version, request.actor, request.reason) == ("churn", 8, "tester", "ok")

    assert run("deploy", "reject", "churn:8", "--reason", "slow", "--actor", "ana") == 0
    assert capsys.readouterr().out.strip() == "churn v8: rejected: slow"
    assert registry.requests[-1][1].actor == "ana" and registry.requests[-1][1].reason == "slow"
    assert run("deploy", "reject", "churn:8", "--reason", "  ") == 2
    assert capsys.readouterr().err == "error: --reason must not be empty\n"

    assert run("deploy", "rollback", "churn") == 0
    assert capsys.readouterr().out.strip() == "churn production: v6 (was v7)"
    assert registry.requests[-1][1].to_version == 0
    assert run("deploy", "rollback", "churn", "--to", "6", "--reason", "r", "--json") == 0
    assert json.loads(capsys.readouterr().out) == {
        "production": {"name": "churn", "version": "6"},
        "previous_version": "7",
    }
    assert registry.requests[-1][1].to_version == 6 and registry.requests[-1][1].reason == "r"


def test_canary_shadow_clear(fakes, capsys):
    admin, _ = fakes
    assert run("deploy", "canary", "churn", "--version", "8", "--percent", "10") == 0
    assert capsys.readouterr().out.strip() == "churn: canary v8 10%, production v7 90%"
    method, request = admin.requests[-1]
    assert method == "SetCanary"
    assert (request.model_name, request.challenger_version, request.percent, request.actor) == (
        "churn",
        8,
        10.0,
        "tester",
    )
    assert run("deploy", "shadow", "churn", "--version", "8") == 0
    assert "shadow v8 gets a copy of 100% of requests" in capsys.readouterr().out
    assert admin.requests[-1][0] == "SetShadow" and admin.requests[-1][1].percent == 100.0
    assert run("deploy", "clear", "churn", "--json") == 0
    assert json.loads(capsys.readouterr().out)["deployment"]["traffic"]["mode"] == "TRAFFIC_MODE_PRODUCTION_ONLY"
    assert admin.requests[-1][0] == "ClearTraffic" and admin.requests[-1][1].actor == "tester"
    admin.errors["SetCanary"] = FakeRpcError(grpc.StatusCode.FAILED_PRECONDITION, "version 8 is not loaded")
    assert run("deploy", "canary", "churn", "--version", "8", "--percent", "5") == 1
    assert capsys.readouterr().err == "error: FAILED_PRECONDITION: version 8 is not loaded\n"


def _change() -> serving_pb2.TrafficChange:
    change = serving_pb2.TrafficChange(
        id=4, model_name="churn", actor="ana", reason="try v8 [ticket 3]", replica="serving-1:50054"
    )
    change.before.mode = serving_pb2.TRAFFIC_MODE_PRODUCTION_ONLY
    change.after.CopyFrom(_deployment(serving_pb2.TRAFFIC_MODE_CANARY, 8, 10).traffic)
    change.after.generation = 3
    return change


def _replicas(d: serving_pb2.Deployment) -> serving_pb2.Deployment:
    """Two replicas: one applying the stored generation, one that could not load the challenger."""
    d.replica = "serving-0:50054"
    d.traffic.generation = 3
    good = serving_pb2.ReplicaView(replica="serving-0:50054", state=serving_pb2.REPLICA_STATE_IN_SYNC,
                                   production_version=7, detail="applies generation 3")  # fmt: skip
    good.traffic.CopyFrom(d.traffic)
    bad = serving_pb2.ReplicaView(replica="serving-1:50054", state=serving_pb2.REPLICA_STATE_DISAGREES,
                                  production_version=7, error="challenger v8: out of [memory]",
                                  detail="cannot apply generation 3")  # fmt: skip
    bad.traffic.mode, bad.traffic.generation = serving_pb2.TRAFFIC_MODE_PRODUCTION_ONLY, 2
    d.replicas.extend([good, bad])
    return d


def test_status_shows_every_replica_and_flags_the_one_that_disagrees():
    d = _replicas(_deployment(serving_pb2.TRAFFIC_MODE_CANARY, 8, 10))
    text = render(deploy.deployment_detail(d))
    assert "replicas (answered by serving-0:50054)" in text
    lines = [line for line in text.splitlines() if "serving-1:50054" in line and "DISAGREES" in line]
    assert lines and "challenger v8: out of [memory]" in text  # the error, not markup
    assert any("serving-0:50054" in line and "in sync" in line for line in text.splitlines())
    assert "1 of 2 replicas do not apply the stored policy: serving-1:50054" in text
    assert "slots and statistics are this replica's" in text
    listing = render(deploy.deployments_table([d]))
    assert "serving-1:50054 DISAGREES: cannot apply generation 3" in listing
    assert "serving-0:50054 in sync: canary v8 10% (gen 3)" in listing
    stale = serving_pb2.ReplicaView(
        replica="old:1", state=serving_pb2.REPLICA_STATE_STALE, detail="no heartbeat for 40 s"
    )
    assert deploy.replica_line(stale) == "old:1 [yellow]STALE[/]: no heartbeat for 40 s"


def test_history_and_reasons(fakes, capsys):
    admin, _ = fakes
    assert run("deploy", "history", "churn") == 0
    out = capsys.readouterr().out
    assert "production only -> canary v8 10%" in out and "try v8 [ticket 3]" in out and "ana" in out
    assert "serving-1:50054" in out
    assert admin.requests[-1][0] == "ListTrafficChanges" and admin.requests[-1][1].model_name == "churn"
    assert run("deploy", "history", "churn", "--json") == 0
    assert json.loads(capsys.readouterr().out)["changes"][0]["reason"] == "try v8 [ticket 3]"
    assert run("deploy", "canary", "churn", "--version", "8", "--percent", "10", "--reason", "why not") == 0
    assert admin.requests[-1][1].reason == "why not"
    assert run("deploy", "shadow", "churn", "--version", "8", "--reason", "mirror") == 0
    assert admin.requests[-1][1].reason == "mirror"
    assert run("deploy", "clear", "churn", "--reason", "done") == 0
    assert admin.requests[-1][1].reason == "done"
    capsys.readouterr()
