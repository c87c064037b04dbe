"""Event encoding: protobuf by default, JSON accepted from outside producers (content-type header)."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from typing import TypeVar

from google.protobuf import json_format
from google.protobuf.message import DecodeError, Message
from google.protobuf.timestamp_pb2 import Timestamp

from flywheel.v1 import common_pb2

M = TypeVar("M", bound=Message)

CONTENT_PROTOBUF = "application/x-protobuf"
CONTENT_JSON = "application/json"
SCHEMA_VERSION = 1

Headers = Sequence[tuple[str, bytes]]


class MalformedEvent(ValueError):
    """The payload cannot be read as the topic's event type."""


def new_meta(producer: str, *, causation_id: str = "", correlation_id: str = "") -> common_pb2.EventMeta:
    ts = Timestamp()
    ts.GetCurrentTime()
    return common_pb2.EventMeta(
        event_id=str(uuid.uuid4()),
        occurred_at=ts,
        producer=producer,
        schema_version=SCHEMA_VERSION,
        causation_id=causation_id,
        correlation_id=correlation_id,
    )


def event_type_name(message: Message) -> str:
    return message.DESCRIPTOR.full_name


def header(headers: Headers | None, name: str) -> str | None:
    for k, v in headers or ():
        if k == name and v is not None:
            return v.decode("utf-8", "replace")
    return None


def decode(cls: type[M], value: bytes | None, headers: Headers | None) -> M:
    if value is None:
        raise MalformedEvent("empty payload")
    content_type = (header(headers, "content-type") or CONTENT_PROTOBUF).split(";")[0].strip()
    msg = cls()
    try:
        if content_type == CONTENT_JSON:
            # Outside producers may be newer than us: unknown fields are ignored (add-only evolution).
            json_format.Parse(value.decode("utf-8"), msg, ignore_unknown_fields=True)
        elif content_type == CONTENT_PROTOBUF:
            msg.ParseFromString(value)
        else:
            raise MalformedEvent(f"unsupported content-type {content_type!r}")
    except (DecodeError, json_format.ParseError, UnicodeDecodeError) as exc:
        raise MalformedEvent(f"cannot decode {cls.DESCRIPTOR.full_name} as {content_type}: {exc}") from exc
    return msg
