"""Every request is checked before its handler: NUL characters (PostgreSQL text cannot hold them) and
Timestamps protobuf cannot convert are INVALID_ARGUMENT naming the field, in any service, any depth."""

from __future__ import annotations

import pytest
from google.protobuf.timestamp_pb2 import Timestamp
from tritonclient.grpc import service_pb2 as oip

from flywheel.errors import InvalidArgument
from flywheel.grpc.request_checks import check_request
from flywheel.v1 import ingestion_pb2, registry_pb2, training_pb2


def refused_field(message) -> str:  # type: ignore[no-untyped-def]
    with pytest.raises(InvalidArgument) as err:
        check_request(message)
    assert err.value.field is not None
    return err.value.field


def test_nul_in_a_top_level_string():
    assert refused_field(training_pb2.GetSpecRequest(name="a\x00")) == "name"


def test_nul_in_a_repeated_nested_and_map_string():
    req = registry_pb2.SetTagsRequest(name="m", version=1, tags={"ok": "fine", "k": "v\x00"})
    assert refused_field(req) == "tags['k']"
    req = registry_pb2.SetTagsRequest(name="m", version=1, tags={"k\x00": "v"})
    assert refused_field(req) == "tags key"
    ds = ingestion_pb2.Dataset(name="d")
    ds.schema.fields.add(name="ok")
    ds.schema.fields.add(name="x", allowed_values=["a", "b\x00"])
    assert refused_field(ingestion_pb2.CreateDatasetRequest(dataset=ds)) == "dataset.schema.fields[1].allowed_values[1]"


def test_timestamps_protobuf_cannot_convert():
    assert refused_field(registry_pb2.ListAuditEventsRequest(since=Timestamp(seconds=9, nanos=-1))) == "since"
    too_early = registry_pb2.SearchModelVersionsRequest(created_after=Timestamp(seconds=-(2**63)))
    assert refused_field(too_early) == "created_after"
    check_request(registry_pb2.ListAuditEventsRequest(since=Timestamp(seconds=1_700_000_000, nanos=5)))


def test_ordinary_requests_pass_and_bytes_may_hold_anything():
    check_request(training_pb2.GetSpecRequest(name="churn"))
    req = oip.ModelInferRequest(model_name="m", raw_input_contents=[b"\x00" * 80])
    req.inputs.add(name="x", datatype="FP32", shape=[1, 20])
    check_request(req)
