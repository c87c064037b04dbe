"""Small conversions between Python values and protobuf well-known types."""

from __future__ import annotations

from datetime import datetime
from typing import Any, overload

from google.protobuf import json_format
from google.protobuf.struct_pb2 import Struct
from google.protobuf.timestamp_pb2 import Timestamp


@overload
def timestamp(dt: datetime) -> Timestamp: ...
@overload
def timestamp(dt: None) -> None: ...


def timestamp(dt: datetime | None) -> Timestamp | None:
    if dt is None:
        return None
    ts = Timestamp()
    ts.FromDatetime(dt)
    return ts


def struct(values: dict[str, Any] | None) -> Struct:
    s = Struct()
    if values:
        s.update(values)
    return s


def struct_to_dict(s: Struct) -> dict[str, Any]:
    return json_format.MessageToDict(s)
