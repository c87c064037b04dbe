"""The `flywheel` command line without servers: argument parsing, model references, rendering of
hand-built protobuf messages (tables and JSON), the one-line gRPC error, and local file handling."""

from __future__ import annotations

import hashlib
import json

import grpc
import pytest

from flywheel.cli import client, datasets, models, runs, specs
from flywheel.cli.client import CliError, ModelSelector, parse_model_ref
from flywheel.v1 import common_pb2, ingestion_pb2, registry_pb2, training_pb2

from .cli_helpers import parse, render

# ---------------------------------------------------------------------------------------------------
# Parser


@pytest.mark.parametrize(
    ("argv", "func", "expected"),
    [
        (
            [
                "datasets", "create", "churn", "--schema", "s.json", "--label", "y", "--key", "id",
                "--train-fraction", "0.7", "--policy", "quarantine", "--description", "d", "--json",
            ],
            datasets.cmd_create,
            {"name": "churn", "schema": "s.json", "label": "y", "key": "id", "train_fraction": 0.7,
             "policy": "quarantine", "description": "d", "json": True},
        ),
        (
            ["datasets", "create", "churn", "--schema", "s.json"],
            datasets.cmd_create,
            {"label": None, "key": None, "train_fraction": None, "policy": None, "json": False},
        ),
        (
            ["datasets", "ingest", "churn", "d.csv", "--mode", "replace", "--format", "arrow", "--chunk-mb", "4"],
            datasets.cmd_ingest,
            {"name": "churn", "file": "d.csv", "mode": "replace", "format": "arrow", "chunk_mb": 4.0},
        ),
        (
            ["datasets", "ingest", "churn", "d.csv"],
            datasets.cmd_ingest,
            {"mode": "append", "format": None, "chunk_mb": 1.0, "delimiter": None},
        ),
        (["datasets", "list", "--json"], datasets.cmd_list, {"json": True}),
        (["datasets", "show", "churn"], datasets.cmd_show, {"name": "churn", "version": None, "json": False}),
        (["datasets", "show", "churn", "--version", "3", "--json"], datasets.cmd_show, {"version": 3}),
        (["specs", "create", "--file", "spec.json"], specs.cmd_create, {"file": "spec.json"}),
        (
            ["specs", "list", "--dataset", "churn", "--model", "m", "--all-versions", "--json"],
            specs.cmd_list,
            {"dataset": "churn", "model": "m", "all_versions": True, "json": True},
        ),
        (["specs", "show", "s", "--version", "2"], specs.cmd_show, {"name": "s", "version": 2}),
        (
            ["runs", "start", "s", "--dataset-version", "3", "--seed", "7", "--watch", "--spec-version", "2"],
            runs.cmd_start,
            {"spec": "s", "dataset_version": 3, "seed": 7, "watch": True, "spec_version": 2, "request_id": None},
        ),
        (["runs", "start", "s"], runs.cmd_start, {"dataset_version": None, "seed": None, "watch": False}),
        (
            ["runs", "list", "--spec", "s", "--status", "succeeded", "--limit", "5", "--json"],
            runs.cmd_list,
            {"spec": "s", "status": "succeeded", "limit": 5, "json": True},
        ),
        (["runs", "show", "r1", "--json"], runs.cmd_show, {"run_id": "r1", "json": True}),
        (["runs", "watch", "r1"], runs.cmd_watch, {"run_id": "r1"}),
        (
            ["runs", "compare", "r1", "r2", "r3", "--metric", "f1", "--metric", "accuracy"],
            runs.cmd_compare,
            {"run_ids": ["r1", "r2", "r3"], "metric": ["f1", "accuracy"]},
        ),
        (["models", "list", "--alias", "production"], models.cmd_list, {"alias": "production"}),
        (["models", "show", "churn@production", "--json"], models.cmd_show,
         {"ref": ModelSelector("churn", alias="production"), "json": True}),
        (["models", "lineage", "churn:3"], models.cmd_lineage, {"ref": ModelSelector("churn", version=3)}),
        (["models", "download", "churn", "--out", "m.onnx"], models.cmd_download,
         {"ref": ModelSelector("churn"), "out": "m.onnx"}),
    ],
)  # fmt: skip
def test_parser_accepts_commands_and_flags(argv, func, expected):
    args = parse(*argv)
    assert args.func is func
    for key, value in expected.items():
        assert getattr(args, key) == value, key


@pytest.mark.parametrize("status", ["queued", "running", "succeeded", "failed", "cancelled"])
def test_run_status_choices(status):
    assert parse("runs", "list", "--status", status).status == status


@pytest.mark.parametrize(
    "argv",
    [
        ["datasets", "create", "churn"],  # --schema is required
        ["datasets", "create", "churn", "--schema", "s.json", "--train-fraction", "1.5"],
        ["datasets", "create", "churn", "--schema", "s.json", "--policy", "ignore"],
        ["datasets", "ingest", "churn", "d.csv", "--mode", "upsert"],
        ["datasets", "ingest", "churn", "d.csv", "--format", "parquet"],
        ["datasets", "ingest", "churn", "d.csv", "--chunk-mb", "0"],
        ["datasets", "show", "churn", "--version", "-1"],
        ["specs", "create"],  # --file is required
        ["runs", "list", "--status", "done"],
        ["runs", "compare"],
        ["models", "show", "churn:0"],
        ["models", "show", "churn:x"],
        ["models", "download", "churn"],  # --out is required
        ["datasets"],
        ["runs"],
    ],
)
def test_parser_rejects_bad_input(argv, capsys):
    with pytest.raises(SystemExit) as exc:
        parse(*argv)
    assert exc.value.code == 2


def test_stack_commands_are_still_there():
    assert parse("status").func.__name__ == "cmd_status"
    assert parse("down", "--timeout", "5").timeout == 5.0


# ---------------------------------------------------------------------------------------------------
# NAME[:VERSION|@ALIAS]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("churn", ModelSelector("churn")),
        ("churn:latest", ModelSelector("churn")),
        ("churn:3", ModelSelector("churn", version=3)),
        ("churn@production", ModelSelector("churn", alias="production")),
        ("fraud.v2-x_y@my-alias", ModelSelector("fraud.v2-x_y", alias="my-alias")),
        (" churn:12 ", ModelSelector("churn", version=12)),
    ],
)
def test_parse_model_ref(text, expected):
    assert parse_model_ref(text) == expected


@pytest.mark.parametrize("text", ["", ":3", "@prod", "churn:", "churn@", "churn:0", "churn:-1", "churn:1@prod", "a b"])
def test_parse_model_ref_rejects(text):
    with pytest.raises(ValueError, match="invalid model reference"):
        parse_model_ref(text)


def test_model_selector_sets_the_oneof():
    get = ModelSelector("m", alias="production").apply(registry_pb2.GetModelVersionRequest(name="m"))
    assert get.WhichOneof("selector") == "alias" and get.alias == "production"
    dl = ModelSelector("m", version=4).apply(registry_pb2.DownloadArtifactRequest(name="m"))
    assert dl.WhichOneof("selector") == "version" and dl.version == 4
    latest = ModelSelector("m").apply(registry_pb2.GetModelVersionRequest(name="m"))
    assert latest.WhichOneof("selector") is None
    assert [str(s) for s in (ModelSelector("m"), ModelSelector("m", 2), ModelSelector("m", alias="a"))] == [
        "m",
        "m:2",
        "m@a",
    ]


# ---------------------------------------------------------------------------------------------------
# The one-line gRPC error


class FakeRpcError(grpc.RpcError):
    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        self._code, self._details = code, details

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return self._details


def test_rpc_error_line():
    exc = FakeRpcError(grpc.StatusCode.INVALID_ARGUMENT, "train_fraction: must be in (0, 1)")
    assert client.rpc_error_line(exc) == "error: INVALID_ARGUMENT: train_fraction: must be in (0, 1)"
    multi = FakeRpcError(grpc.StatusCode.UNAVAILABLE, "failed to connect\n  last error: refused\n")
    assert client.rpc_error_line(multi) == "error: UNAVAILABLE: failed to connect last error: refused"
    assert client.rpc_error_line(grpc.RpcError()) == "error: UNKNOWN"


def test_command_wrapper_prints_one_line_and_exits_1(capsys):
    @client.command
    def handler(args):
        raise FakeRpcError(grpc.StatusCode.NOT_FOUND, "dataset 'x' not found")

    assert handler(None) == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err == "error: NOT_FOUND: dataset 'x' not found\n"


def test_command_wrapper_reports_cli_errors_with_their_code(capsys):
    @client.command
    def handler(args):
        raise CliError("s.json: not valid JSON", code=2)

    assert handler(None) == 2
    assert capsys.readouterr().err == "error: s.json: not valid JSON\n"


# ---------------------------------------------------------------------------------------------------
# JSON and small formatters


def test_json_uses_proto_field_names_and_indent_2():
    ds = ingestion_pb2.Dataset(name="churn", latest_version=3, schema=common_pb2.Schema(label_field="y"))
    text = client.dumps(ds)
    assert json.loads(text) == {"name": "churn", "latest_version": "3", "schema": {"label_field": "y"}}
    assert text.startswith('{\n  "name"')
    assert client.list_json("datasets", []) == {"datasets": []}
    assert client.list_json("datasets", [ds])["datasets"][0]["latest_version"] == "3"


def test_enum_names():
    assert client.enum_name(training_pb2.RunStatus, training_pb2.RUN_STATUS_SUCCEEDED) == "succeeded"
    assert client.enum_name(common_pb2.FieldType, common_pb2.FIELD_TYPE_CATEGORICAL) == "categorical"
    assert client.enum_name(training_pb2.RunStatus, 99) == "99"
    assert client.enum_value(training_pb2.RunStatus, "failed") == training_pb2.RUN_STATUS_FAILED
    assert client.enum_value(training_pb2.RunStatus, "RUN_STATUS_QUEUED") == training_pb2.RUN_STATUS_QUEUED
    assert client.enum_choices(training_pb2.RunStatus) == ["queued", "running", "succeeded", "failed", "cancelled"]


def test_formatters():
    assert client.fmt_number(3.0) == "3"
    assert client.fmt_number(0.912345) == "0.9123"
    assert client.fmt_number(123456.789) == "123457"
    assert client.fmt_bytes(512) == "512 B"
    assert client.fmt_bytes(3 * 1024 * 1024) == "3.0 MiB"
    assert client.fmt_seconds(75) == "1m15s"
    assert client.fmt_time(common_pb2.EventMeta().occurred_at) == "-"
    run = training_pb2.Run()
    run.best_params.update({"C": 10, "penalty": "l2", "layers": [64, 32]})
    assert client.fmt_struct(run.best_params) == "C=10, layers=[64,32], penalty=l2"


# ---------------------------------------------------------------------------------------------------
# Datasets


def _version(version: int = 2) -> ingestion_pb2.DatasetVersion:
    v = ingestion_pb2.DatasetVersion(
        ref=common_pb2.DatasetRef(name="churn", version=version, content_hash="ab" * 32),
        parent_version=version - 1,
        mode=common_pb2.WRITE_MODE_APPEND,
        row_count=1000,
        train_rows=800,
        test_rows=200,
        quarantined_rows=3,
        source="stream",
    )
    v.profile.row_count = 1000
    v.profile.features.add(name="age", type=common_pb2.FIELD_TYPE_INT, count=990, null_rate=0.01, min=18, max=90)
    v.profile.features.add(
        name="plan",
        type=common_pb2.FIELD_TYPE_CATEGORICAL,
        count=1000,
        category_frequencies={"basic": 0.6, "pro": 0.3, "team": 0.08, "max": 0.02},
    )
    return v


def test_datasets_tables():
    ds = ingestion_pb2.Dataset(
        name="churn",
        latest_version=2,
        invalid_row_policy=ingestion_pb2.INVALID_ROW_POLICY_QUARANTINE,
        schema=common_pb2.Schema(
            fields=[
                common_pb2.Field(name="id", type=common_pb2.FIELD_TYPE_INT),
                common_pb2.Field(name="age", type=common_pb2.FIELD_TYPE_INT, nullable=True, min=0, max=120),
                common_pb2.Field(name="churned", type=common_pb2.FIELD_TYPE_BOOL),
            ],
            label_field="churned",
            key_field="id",
            train_fraction=0.75,
        ),
    )
    listing = render(datasets.datasets_table([ds]))
    assert "churn" in listing and "v2" in listing and "quarantine" in listing and "0.75" in listing
    detail = render(datasets.dataset_detail(ds))
    assert "churned / id" in detail
    assert "120" in detail and "label" in detail and "key" in detail
    versions = render(datasets.versions_table([_version(2), _version(1)]))
    assert "v2" in versions and "v1" in versions and "abababababab" in versions and "append" in versions


def test_dataset_version_profile():
    text = render(datasets.version_detail(_version()))
    assert "1000 (train 800, test 200)" in text
    assert "profile (1000 rows)" in text
    assert "age" in text and "1.00%" in text and "18" in text and "90" in text
    assert "basic 60%, pro 30%, team 8% (+1)" in text


def test_ingest_summary_created_and_existing():
    response = ingestion_pb2.IngestDatasetResponse(version=_version(1), created=True)
    response.stats.rows_received = 1003
    response.stats.rows_accepted = 1000
    response.stats.rows_quarantined = 3
    response.stats.quarantine_counts.update({"out_of_range": 2, "null_not_allowed": 1})
    response.stats.sample_errors.add(row=7, field="age", reason="out_of_range", value="-4")
    text = render(datasets.ingest_summary(response))
    assert "churn v1" in text and "created" in text
    assert "out_of_range" in text and "null_not_allowed" in text and "-4" in text
    existing = render(datasets.ingest_summary(ingestion_pb2.IngestDatasetResponse(version=_version(1))))
    assert "existing" in existing


def test_dataset_file_schema_or_dataset_and_flag_overrides(tmp_path):
    schema_file = tmp_path / "schema.json"
    schema_file.write_text(
        json.dumps({"fields": [{"name": "x", "type": "FIELD_TYPE_FLOAT"}], "label_field": "x", "train_fraction": 0.9})
    )
    dataset_file = tmp_path / "dataset.json"
    dataset_file.write_text(
        json.dumps(
            {
                "name": "other",
                "description": "from file",
                "invalid_row_policy": "INVALID_ROW_POLICY_REJECT",
                "schema": {"fields": [{"name": "y", "type": "FIELD_TYPE_INT"}], "key_field": "y"},
            }
        )
    )
    from_schema = datasets.dataset_from_file(str(schema_file))
    assert from_schema.schema.fields[0].name == "x" and from_schema.schema.train_fraction == 0.9
    from_dataset = datasets.dataset_from_file(str(dataset_file))
    assert from_dataset.description == "from file" and from_dataset.schema.key_field == "y"

    args = parse(
        "datasets", "create", "churn", "--schema", str(dataset_file),
        "--label", "y", "--train-fraction", "0.6", "--policy", "quarantine",
    )  # fmt: skip
    built = datasets.build_dataset(args)
    assert built.name == "churn"
    assert built.schema.label_field == "y" and built.schema.key_field == "y"
    assert built.schema.train_fraction == 0.6
    assert built.invalid_row_policy == ingestion_pb2.INVALID_ROW_POLICY_QUARANTINE
    assert built.description == "from file"


@pytest.mark.parametrize("content", ["{not json", '{"fields": [{"name": 3}]}', "[1, 2]", '{"schema": 1}'])
def test_dataset_file_errors_are_cli_errors(tmp_path, content):
    path = tmp_path / "bad.json"
    path.write_text(content)
    with pytest.raises(CliError) as exc:
        datasets.dataset_from_file(str(path))
    assert exc.value.code == 2 and str(path) in str(exc.value)
    with pytest.raises(CliError):
        datasets.dataset_from_file(str(tmp_path / "missing.json"))


def test_ingest_stream_header_then_chunks(tmp_path):
    path = tmp_path / "d.tsv"
    path.write_bytes(b"a\tb\n" + b"1\t2\n" * 1000)
    args = parse("datasets", "ingest", "churn", str(path), "--mode", "replace")
    fmt = datasets.infer_format(str(path), args.format)
    assert fmt == "csv"
    header = datasets.ingest_header(args, fmt)
    assert header.dataset == "churn" and header.mode == common_pb2.WRITE_MODE_REPLACE
    assert header.format == ingestion_pb2.DATA_FORMAT_CSV and header.csv_delimiter == "\t"
    sent: list[int] = []
    requests = list(datasets.ingest_requests(header, datasets.iter_file_chunks(str(path), 1000), sent.append))
    assert requests[0].WhichOneof("payload") == "header"
    assert all(r.WhichOneof("payload") == "chunk" for r in requests[1:])
    assert b"".join(r.chunk for r in requests[1:]) == path.read_bytes()
    assert max(sent) == 1000 and sum(sent) == path.stat().st_size
    assert datasets.infer_format("x.feather", None) == "arrow"
    assert datasets.infer_format("x.arrow", "csv") == "csv"


def test_arrow_ipc_file_is_sent_as_an_ipc_stream(tmp_path):
    pa = pytest.importorskip("pyarrow")
    from pyarrow import feather

    table = pa.table({"x": list(range(5000)), "y": ["a", "b"] * 2500})
    path = tmp_path / "t.feather"
    feather.write_feather(table, str(path), chunksize=1000, compression="uncompressed")
    assert datasets.is_arrow_ipc_file(str(path))
    chunks = list(datasets.iter_arrow_file_as_stream(str(path), 4096))
    assert max(len(c) for c in chunks) <= 4096
    assert pa.ipc.open_stream(b"".join(chunks)).read_all().equals(table)


# ---------------------------------------------------------------------------------------------------
# Specs


def _spec() -> training_pb2.TrainingSpec:
    spec = training_pb2.TrainingSpec(
        name="churn-lr",
        version=2,
        dataset="churn",
        model_name="churn",
        task=common_pb2.TASK_CLASSIFICATION,
        estimator=training_pb2.ESTIMATOR_RANDOM_FOREST_CLASSIFIER,
        metric="f1",
        direction=common_pb2.METRIC_DIRECTION_MAXIMIZE,
        promotion_policy=common_pb2.PromotionPolicy(
            metric="f1", direction=common_pb2.METRIC_DIRECTION_MAXIMIZE, min_improvement=0.01
        ),
    )
    spec.triggers.on_data_versioned = True
    spec.triggers.cooldown.FromSeconds(300)
    spec.search_space.strategy = training_pb2.SEARCH_STRATEGY_RANDOM
    spec.search_space.trial_budget = 20
    spec.search_space.params["max_depth"].choices.extend([4, 8, None])
    spec.search_space.params["min_samples_leaf"].range.CopyFrom(
        training_pb2.ParamDistribution.Range(low=1, high=50, integer=True)
    )
    spec.search_space.fixed_params.update({"n_estimators": 200})
    return spec


def test_spec_rendering():
    listing = render(specs.specs_table([_spec()]))
    assert "churn-lr" in listing and "v2" in listing and "random_forest_classifier" in listing
    assert "f1 (max)" in listing and "data.versioned, cooldown 5m00s" in listing
    detail = render(specs.spec_detail(_spec()))
    assert "search space: random, budget 20" in detail
    assert "choices [4,8,null]" in detail and "range [1, 50] (integer)" in detail and "fixed 200" in detail
    assert "f1 (max), min improvement 0.01" in detail
    assert specs.fmt_triggers(training_pb2.Triggers()) == "manual only"


def test_spec_file_parses_as_training_spec(tmp_path):
    path = tmp_path / "spec.json"
    path.write_text(json.dumps(client.to_dict(_spec())))
    assert client.load_json_message(str(path), training_pb2.TrainingSpec()) == _spec()


# ---------------------------------------------------------------------------------------------------
# Runs


def _run(run_id: str = "run-1", status: int = training_pb2.RUN_STATUS_SUCCEEDED) -> training_pb2.Run:
    run = training_pb2.Run(
        run_id=run_id,
        spec_name="churn-lr",
        spec_version=2,
        dataset=common_pb2.DatasetRef(name="churn", version=5, content_hash="cd" * 32),
        trigger=training_pb2.RUN_TRIGGER_DATA_VERSIONED,
        status=status,
        stage=training_pb2.RUN_STAGE_DONE,
        seed=42,
        best_trial=1,
        registered_model=common_pb2.ModelRef(name="churn", version=7),
        parity=training_pb2.ParityCheck(passed=True, rows_checked=200, max_abs_diff=1e-7, tolerance=1e-5),
    )
    run.start_time.FromSeconds(1_700_000_000)
    run.end_time.FromSeconds(1_700_000_090)
    for i, c in enumerate((0.1, 1.0)):
        trial = run.trials.add(number=i, status=training_pb2.RUN_STATUS_SUCCEEDED)
        trial.params.update({"C": c})
        trial.metrics.add(name="f1", value=0.8 + i / 10)
        trial.duration.FromMilliseconds(1500)
    run.best_params.update({"C": 1.0})
    ev = run.evaluation
    ev.split, ev.rows = common_pb2.SPLIT_TEST, 200
    ev.metrics.add(name="f1", value=0.91, split=common_pb2.SPLIT_TEST)
    ev.metrics.add(name="accuracy", value=0.93, split=common_pb2.SPLIT_TEST)
    ev.metrics.add(name="recall", value=0.88, split=common_pb2.SPLIT_TEST, class_label="yes")
    ev.confusion_matrix.labels.extend(["no", "yes"])
    ev.confusion_matrix.rows.add(counts=[90, 5])
    ev.confusion_matrix.rows.add(counts=[9, 96])
    return run


def test_runs_table():
    text = render(runs.runs_table([_run(), _run("run-2", training_pb2.RUN_STATUS_FAILED)]))
    assert "run-1" in text and "run-2" in text and "succeeded" in text and "failed" in text
    assert "churn-lr v2" in text and "churn v5" in text and "data_versioned" in text and "1m30s" in text


def test_run_detail():
    text = render(runs.run_detail(_run()))
    assert "churn v5 (cdcdcdcdcdcd)" in text
    assert "1 *" in text  # best trial marked
    assert "C=0.1" in text and "f1=0.9" in text
    assert "test metrics (200 rows)" in text and "0.93" in text
    assert "per class" in text and "0.88" in text
    assert "confusion matrix" in text and "96" in text
    assert "passed: max abs diff 1e-07 (tolerance 1e-05) on 200 rows" in text
    assert "registered model  churn v7" in text
    failed = _run(status=training_pb2.RUN_STATUS_FAILED)
    failed.error = "parity failed: max abs diff 0.2 > 1e-05"
    assert "parity failed" in render(runs.run_detail(failed))


def _value(x) -> object:
    from google.protobuf import struct_pb2

    v = struct_pb2.Value()
    if x is None:
        v.null_value = struct_pb2.NULL_VALUE
    elif isinstance(x, str):
        v.string_value = x
    else:
        v.number_value = x
    return v


def test_comparison_table_highlights_differences_and_best():
    response = training_pb2.CompareRunsResponse(runs=[_run("run-a"), _run("run-b")])
    response.metrics.add(name="f1", values=[_value(0.91), _value(0.93)], differs=True, best_index=1)
    response.metrics.add(name="accuracy", values=[_value(0.9), _value(0.9)], differs=False, best_index=-1)
    response.params.add(name="C", values=[_value(1), _value(None)], differs=True, best_index=-1)
    response.params.add(name="penalty", values=[_value("l2")], differs=True, best_index=-1)  # short row
    table = runs.comparison_table(["run-a", "run-b"], response)
    names = list(table.columns[0]._cells)
    assert names == ["dataset", "status", "f1", "accuracy", "C", "penalty"]
    styles = {name: row.style for name, row in zip(names, table.rows, strict=True)}
    assert styles["f1"] == "yellow" and styles["C"] == "yellow"
    assert styles["accuracy"] is None and styles["dataset"] is None
    assert list(table.columns[2]._cells)[2] == "[bold green]0.93[/]"
    text = render(table)
    assert "run-a" in text and "churn-lr v2" in text
    assert list(table.columns[2]._cells)[4:] == ["-", "-"]


def test_watch_progress_fields_and_final_line():
    progress = training_pb2.RunProgress(
        status=training_pb2.RUN_STATUS_RUNNING,
        stage=training_pb2.RUN_STAGE_PARITY_CHECK,
        trials_completed=3,
        trials_total=10,
        best_score=0.912,
    )
    assert runs.progress_update(progress) == {
        "description": "parity check",
        "total": 10,
        "completed": 3,
        "best": "best 0.912",
    }
    queued = runs.progress_update(training_pb2.RunProgress(status=training_pb2.RUN_STATUS_QUEUED))
    assert queued["total"] is None and queued["best"] == "" and queued["description"] == "queued"
    assert training_pb2.RUN_STATUS_CANCELLED in runs.TERMINAL
    assert training_pb2.RUN_STATUS_RUNNING not in runs.TERMINAL
    assert "registered churn v7" in render(runs.final_line(_run()))
    trial = training_pb2.Trial(number=4, metrics=[common_pb2.Metric(name="f1", value=0.5)])
    assert runs.trial_line(trial) == "trial 4: f1=0.5"


# ---------------------------------------------------------------------------------------------------
# Models


def _model_version() -> registry_pb2.ModelVersion:
    mv = registry_pb2.ModelVersion(
        ref=common_pb2.ModelRef(name="churn", version=7),
        task=common_pb2.TASK_CLASSIFICATION,
        checksum="ef" * 32,
        size_bytes=2048,
        format="onnx",
        tags={"team": "growth"},
        aliases=["production", "champion"],
        metrics=[common_pb2.Metric(name="f1", value=0.91, split=common_pb2.SPLIT_TEST)],
        lineage=common_pb2.Lineage(
            dataset=common_pb2.DatasetRef(name="churn", version=5, content_hash="cd" * 32),
            run_id="run-1",
            spec_name="churn-lr",
            spec_version=2,
            code_version="0.1.0+gabc123",
            parent_dataset_versions=[4, 3],
            seed=42,
        ),
    )
    mv.signature.inputs.add(name="input", datatype="FP32", shape=[-1, 3])
    mv.signature.outputs.add(name="label", datatype="INT64", shape=[-1])
    mv.signature.feature_names.extend(["age", "plan", "tenure"])
    mv.signature.class_labels.extend(["no", "yes"])
    return mv


def test_models_table():
    model = registry_pb2.Model(name="churn", latest_version=7, aliases={"production": 6, "staging": 7})
    text = render(models.models_table([model]))
    assert "churn" in text and "v7" in text and "production=v6, staging=v7" in text


def test_model_version_detail():
    text = render(models.model_version_detail(_model_version()))
    assert "churn v7" in text and "sha256:" + "ef" * 32 in text
    assert "champion, production" in text and "team=growth" in text
    assert "run run-1" in text and "churn v5" in text
    assert "FP32" in text and "[?, 3]" in text and "age, plan, tenure" in text and "no, yes" in text
    assert "0.91" in text


def test_lineage_tree_nests_model_run_dataset_ancestry():
    mv = _model_version()
    response = registry_pb2.GetLineageResponse(version=mv, lineage=mv.lineage)
    response.dataset_ancestry.add(name="churn", version=5, content_hash="cd" * 32)
    response.dataset_ancestry.add(name="churn", version=4, content_hash="aa" * 32)
    tree = models.lineage_tree(response)
    run = tree.children[0]
    dataset = run.children[0]
    parent = dataset.children[0]
    assert "model churn v7" in str(tree.label)
    assert "run run-1" in str(run.label) and "spec churn-lr v2" in str(run.label)
    assert "dataset churn v5" in str(dataset.label) and "parent churn v4" in str(parent.label)
    assert parent.children == []
    # Without dataset_ancestry, the lineage's parent versions are used.
    fallback = models.lineage_tree(registry_pb2.GetLineageResponse(version=mv, lineage=mv.lineage))
    chain = []
    node = fallback.children[0]
    while node.children:
        node = node.children[0]
        chain.append(str(node.label))
    assert [c.split("  ")[0] for c in chain] == ["dataset churn v5", "parent churn v4", "parent churn v3"]


def _download_stream(data: bytes, sha: str, chunk: int = 100) -> list[registry_pb2.DownloadArtifactResponse]:
    messages = []
    for offset in range(0, len(data), chunk):
        msg = registry_pb2.DownloadArtifactResponse(chunk=data[offset : offset + chunk], offset=offset)
        if offset == 0:
            msg.sha256, msg.size_bytes = sha, len(data)
            msg.model.CopyFrom(common_pb2.ModelRef(name="churn", version=7))
        messages.append(msg)
    messages.append(registry_pb2.DownloadArtifactResponse(sha256=sha))
    return messages


def test_write_artifact_verifies_sha256(tmp_path):
    data = bytes(range(256)) * 10
    sha = hashlib.sha256(data).hexdigest()
    path, digest, size, model = models.write_artifact(
        _download_stream(data, sha), str(tmp_path), ModelSelector("churn", version=7)
    )
    assert path == tmp_path / "churn-v7.onnx" and path.read_bytes() == data
    assert digest == sha and size == len(data) and model.version == 7

    out = tmp_path / "bad.onnx"
    with pytest.raises(CliError, match="sha256 mismatch"):
        models.write_artifact(_download_stream(data, "0" * 64), str(out), ModelSelector("churn"))
    assert not out.exists() and not (tmp_path / "bad.onnx.part").exists()

    gap = _download_stream(data, sha)
    del gap[1]
    with pytest.raises(CliError, match="offset"):
        models.write_artifact(gap, str(out), ModelSelector("churn"))
    assert not out.exists()
