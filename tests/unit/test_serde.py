from __future__ import annotations

import json
import uuid

import pytest

from flywheel.bus.serde import CONTENT_JSON, CONTENT_PROTOBUF, MalformedEvent, decode, header, new_meta
from flywheel.v1 import events_pb2


def test_new_meta_fills_every_field():
    meta = new_meta("registry", causation_id="c-1")
    assert uuid.UUID(meta.event_id).version == 4
    assert meta.producer == "registry" and meta.schema_version == 1 and meta.causation_id == "c-1"
    assert meta.occurred_at.seconds > 0


def test_protobuf_round_trip():
    event = events_pb2.ModelPromoted(meta=new_meta("registry"))
    event.model.name = "churn"
    event.model.version = 3
    back = decode(events_pb2.ModelPromoted, event.SerializeToString(), [("content-type", CONTENT_PROTOBUF.encode())])
    assert back == event


def test_missing_content_type_means_protobuf():
    event = events_pb2.Feedback(meta=new_meta("x"), model_name="m")
    assert decode(events_pb2.Feedback, event.SerializeToString(), None) == event


def test_json_from_outside_producers_ignores_unknown_fields():
    payload = json.dumps({"modelName": "churn", "requestId": "r1", "label": 1, "fieldFromTheFuture": 7}).encode()
    event = decode(events_pb2.Feedback, payload, [("content-type", b"application/json; charset=utf-8")])
    assert (event.model_name, event.request_id, event.label.number_value) == ("churn", "r1", 1)


@pytest.mark.parametrize(
    ("value", "content_type", "reason"),
    [
        (
            b"\xff\xfe garbage",
            CONTENT_PROTOBUF,
            "cannot decode flywheel.v1.Feedback as application/x-protobuf",
        ),
        (b"{not json", CONTENT_JSON, "cannot decode flywheel.v1.Feedback as application/json"),
        (b'{"modelName": 5}', CONTENT_JSON, "cannot decode"),
        (b"\x80\x81", CONTENT_JSON, "cannot decode"),
        (b"x", "text/csv", "unsupported content-type 'text/csv'"),
        (None, CONTENT_PROTOBUF, "empty payload"),
    ],
)
def test_malformed_payloads_raise_with_a_reason(value, content_type, reason):
    with pytest.raises(MalformedEvent, match=reason.replace("(", r"\(")):
        decode(events_pb2.Feedback, value, [("content-type", content_type.encode())])


def test_header_lookup_returns_first_match():
    assert header([("a", b"1"), ("a", b"2")], "a") == "1"
    assert header([], "a") is None
