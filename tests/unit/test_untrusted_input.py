"""Untrusted input refused as bad input, never as a crash: model files the registry would store,
and JSON rows ingestion would turn into a table."""

from __future__ import annotations

from typing import Any

import numpy as np
import onnx
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from onnx import TensorProto, helper
from skl2onnx import to_onnx
from sklearn.linear_model import LogisticRegression

from flywheel.errors import InvalidArgument, ResourceExhausted
from flywheel.v1 import common_pb2
from services.ingestion.tables import ReadLimits, read_arrow_ipc, read_csv, read_untrusted_parquet, rows_to_table
from services.registry.model_check import validate_onnx


@pytest.fixture(scope="module")
def good_model() -> onnx.ModelProto:
    x = np.random.default_rng(0).normal(size=(40, 3)).astype(np.float32)
    clf = LogisticRegression().fit(x, (x[:, 0] > 0).astype(int))
    return to_onnx(clf, x[:1], options={id(clf): {"zipmap": False}})


def test_a_trained_model_passes(good_model):
    assert validate_onnx(good_model.SerializeToString()).graph.node


@pytest.mark.parametrize("data", [b"", b"not a model", b"\x08\x07" + b"\xff" * 64, bytes(range(256)) * 4])
def test_bytes_that_are_not_onnx_are_refused(data):
    with pytest.raises(InvalidArgument, match="chunk: not an ONNX model"):
        validate_onnx(data)


def _add_model(weight: TensorProto, opset: int = 17, domain: str = "") -> onnx.ModelProto:
    graph = helper.make_graph(
        [helper.make_node("Add", ["x", "w"], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])],
        initializer=[weight],
    )
    opsets = [helper.make_opsetid("", opset)]
    if domain:
        opsets.append(helper.make_opsetid(domain, 1))
    return helper.make_model(graph, opset_imports=opsets)


def test_external_tensor_data_is_refused():
    weight = helper.make_tensor("w", TensorProto.FLOAT, [2], [1.0, 2.0])
    weight.ClearField("float_data")
    weight.data_location = TensorProto.EXTERNAL
    weight.external_data.add(key="location", value="../../etc/passwd")
    with pytest.raises(InvalidArgument, match="external tensor data"):
        validate_onnx(_add_model(weight).SerializeToString())


def test_an_opset_newer_than_the_runtime_is_refused():
    weight = helper.make_tensor("w", TensorProto.FLOAT, [2], [1.0, 2.0])
    with pytest.raises(InvalidArgument, match="opset 999 is newer"):
        validate_onnx(_add_model(weight, opset=999).SerializeToString())


def test_custom_operator_domains_are_refused():
    weight = helper.make_tensor("w", TensorProto.FLOAT, [2], [1.0, 2.0])
    with pytest.raises(InvalidArgument, match=r"operator domain 'evil\.ops'"):
        validate_onnx(_add_model(weight, domain="evil.ops").SerializeToString())


def test_a_graph_the_checker_rejects_is_refused():
    weight = helper.make_tensor("w", TensorProto.FLOAT, [2], [1.0, 2.0])
    model = _add_model(weight)
    model.graph.node[0].input[1] = "undefined"
    with pytest.raises(InvalidArgument, match="invalid ONNX model"):
        validate_onnx(model.SerializeToString())


def test_a_lone_surrogate_in_a_json_row_is_bad_input_not_a_crash():
    schema = common_pb2.Schema()
    field = schema.fields.add()
    field.name, field.type = "colour", common_pb2.FIELD_TYPE_CATEGORICAL
    with pytest.raises(InvalidArgument) as err:
        rows_to_table([{"colour": "red"}, {"colour": "bl\ud800ue"}], schema)
    assert str(err.value) == "colour: row 2: not valid UTF-8 text"  # names the row, never echoes the value
    assert rows_to_table([{"colour": "red"}], schema).num_rows == 1


def _dataset(*fields: tuple[str, int]) -> Any:
    from flywheel.v1 import ingestion_pb2

    ds = ingestion_pb2.Dataset(name="d")
    for name, kind in fields:
        f = ds.schema.fields.add()
        f.name, f.type = name, kind
    ds.schema.key_field = fields[0][0]
    return ds


def test_reserved_column_names_are_refused_at_dataset_creation():
    from services.ingestion.datasets import check_dataset

    ds = _dataset(("id", common_pb2.FIELD_TYPE_INT), ("__split", common_pb2.FIELD_TYPE_CATEGORICAL))
    with pytest.raises(InvalidArgument, match=r"fields\[1\]\.name: names starting with '__' are reserved"):
        check_dataset(ds)


@pytest.mark.parametrize("bound", ["min", "max"])
def test_non_finite_field_bounds_are_refused(bound):
    from services.ingestion.datasets import check_dataset

    ds = _dataset(("id", common_pb2.FIELD_TYPE_INT), ("x", common_pb2.FIELD_TYPE_FLOAT))
    setattr(ds.schema.fields[1], bound, float("nan"))
    with pytest.raises(InvalidArgument, match=rf"fields\[1\]\.{bound}: must be a finite number"):
        check_dataset(ds)


def test_micro_batch_settings_out_of_range_are_refused():
    from services.ingestion.datasets import check_dataset

    ds = _dataset(("id", common_pb2.FIELD_TYPE_INT))
    ds.micro_batch.max_rows = 10**9
    with pytest.raises(InvalidArgument, match=r"micro_batch\.max_rows"):
        check_dataset(ds)
    ds.micro_batch.max_rows = 100
    ds.micro_batch.max_wait.FromSeconds(10**7)
    with pytest.raises(InvalidArgument, match=r"micro_batch\.max_wait"):
        check_dataset(ds)


def _num_schema() -> common_pb2.Schema:
    schema = common_pb2.Schema(key_field="id")
    for name, kind in (("id", common_pb2.FIELD_TYPE_INT), ("x", common_pb2.FIELD_TYPE_FLOAT)):
        f = schema.fields.add()
        f.name, f.type = name, kind
    return schema


SMALL = ReadLimits(max_rows=100_000, max_decoded_bytes=8 * 1024 * 1024, max_cell_chars=1000, max_line_bytes=64 * 1024)


def _bomb_table() -> pa.Table:
    n = 4_000_000  # 64 MB of decoded int64/float64 that compress to almost nothing
    return pa.table({"id": pa.array(np.zeros(n, dtype=np.int64)), "x": pa.array(np.zeros(n))})


def test_a_compressed_arrow_stream_that_unfolds_past_the_limit_is_resource_exhausted():
    sink = pa.BufferOutputStream()
    options = pa.ipc.IpcWriteOptions(compression="zstd")
    with pa.ipc.new_stream(sink, _bomb_table().schema, options=options) as w:
        for batch in _bomb_table().to_batches(max_chunksize=500_000):
            w.write_batch(batch)
    data = sink.getvalue().to_pybytes()
    assert len(data) < 1024 * 1024  # small on the wire
    with pytest.raises(ResourceExhausted):
        read_arrow_ipc(data, _num_schema(), SMALL)


def test_a_parquet_bomb_is_refused_from_its_metadata():
    sink = pa.BufferOutputStream()
    pq.write_table(_bomb_table(), sink, compression="zstd")
    data = sink.getvalue().to_pybytes()
    assert len(data) < 1024 * 1024
    with pytest.raises(ResourceExhausted, match="rows"):
        read_untrusted_parquet(data, SMALL)


def test_a_csv_error_never_echoes_the_offending_line():
    secret = "hunter2-secret-value"
    with pytest.raises(InvalidArgument) as err:
        read_csv(f"id,x\n1,2\n3,{secret},9\n".encode(), _num_schema(), limits=SMALL)
    assert secret not in str(err.value)
    assert "expected 2 columns, got 3" in str(err.value)


def test_csv_line_and_cell_caps():
    long_line = b"id,x\n1," + b"9" * (128 * 1024) + b"\n"
    with pytest.raises(InvalidArgument, match="longer than"):
        read_csv(long_line, _num_schema(), limits=SMALL)
    big_cell = b"id,x\n1," + b"9" * 5000 + b"\n"
    with pytest.raises(InvalidArgument, match="5000 characters"):
        read_csv(big_cell, _num_schema(), limits=SMALL)
    assert read_csv(b"id,x\n1,2.5\n", _num_schema(), limits=SMALL).num_rows == 1


def test_ingest_uris_resolve_only_under_the_configured_roots(tmp_path):
    from flywheel.errors import PermissionDenied
    from services.ingestion.sources import local_path

    root = tmp_path / "imports"
    root.mkdir()
    (root / "ok.csv").write_text("id\n1\n")
    (root / "escape").symlink_to("/etc")
    assert local_path(f"file://{root}/ok.csv", [root]) == (root / "ok.csv").resolve()
    for uri in (
        "/etc/passwd",
        f"{root}/../../../etc/passwd",
        f"file://{root}/escape/passwd",  # a symlink inside the root pointing out of it
        "/no/such.csv",  # refused the same way whether or not it exists
    ):
        with pytest.raises(PermissionDenied) as err:
            local_path(uri, [root])
        assert "passwd" not in str(err.value) and "such" not in str(err.value)
    with pytest.raises(PermissionDenied):
        local_path(f"{root}/ok.csv", [])  # no roots configured: no local files at all
    with pytest.raises(InvalidArgument, match="scheme"):
        local_path("http://169.254.169.254/latest", [root])
    with pytest.raises(InvalidArgument, match="no host"):
        local_path(f"file://evil.example{root}/ok.csv", [root])


def test_registry_metadata_that_ends_up_in_events_is_bounded():
    from services.registry import rules

    with pytest.raises(InvalidArgument, match="at most 64 tags"):
        rules.check_tags({f"k{i}": "v" for i in range(65)})
    with pytest.raises(InvalidArgument, match="1024 characters"):
        rules.check_tags({"note": "x" * 1025})
    with pytest.raises(InvalidArgument, match=r"header\.description"):
        rules.check_text("x" * 5000, "header.description")
    rules.check_tags({"team": "fraud"})


@pytest.mark.parametrize("value", [float("nan"), float("inf"), -0.5, 1e9])
def test_promotion_policy_numbers_must_be_finite_and_in_range(value):
    from services.registry import rules

    with pytest.raises(InvalidArgument, match=r"policy\.min_improvement"):
        rules.check_policy(common_pb2.PromotionPolicy(metric="accuracy", min_improvement=value))


def test_metrics_must_be_finite():
    from services.registry import rules

    with pytest.raises(InvalidArgument, match=r"metrics\[1\]\.value"):
        rules.check_metrics([common_pb2.Metric(name="a", value=0.9), common_pb2.Metric(name="b", value=float("nan"))])
