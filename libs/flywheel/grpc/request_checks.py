"""Checks every request message gets before its handler runs, whatever the service: things no field
of ours may hold, that would otherwise surface deep inside as INTERNAL. A NUL character, which
PostgreSQL's text cannot store; a Timestamp outside what protobuf can convert (years 1..9999,
nanos in [0, 1e9)).

The walk visits only the fields that are set and skips scalars that are not strings, so a large
ModelInfer request (numbers and bytes) costs little.
"""

from __future__ import annotations

from collections.abc import AsyncIterable, AsyncIterator
from typing import Any

from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message

from flywheel.errors import InvalidArgument

_TIMESTAMP = "google.protobuf.Timestamp"
_MIN_SECONDS = -62_135_596_800  # 0001-01-01T00:00:00Z
_MAX_SECONDS = 253_402_300_799  # 9999-12-31T23:59:59Z
_STRING = FieldDescriptor.TYPE_STRING
_MESSAGE = FieldDescriptor.TYPE_MESSAGE


def check_request(message: Message, path: str = "") -> None:
    if message.DESCRIPTOR.full_name == _TIMESTAMP:
        _check_timestamp(message, path)
        return
    for field, value in message.ListFields():
        name = f"{path}.{field.name}" if path else field.name
        if field.type == _STRING:
            for i, text in enumerate(value) if _repeated(field) else ((None, value),):
                _check_text(text, name if i is None else f"{name}[{i}]")
        elif field.type == _MESSAGE:
            if field.message_type is not None and field.message_type.GetOptions().map_entry:
                _check_map(field, value, name)
            elif _repeated(field):
                for i, item in enumerate(value):
                    check_request(item, f"{name}[{i}]")
            else:
                check_request(value, name)


async def checked_stream(requests: AsyncIterable[Any]) -> AsyncIterator[Any]:
    """A client stream whose every message is checked as it arrives."""
    async for message in requests:
        if isinstance(message, Message):
            check_request(message)
        yield message


def _repeated(field: FieldDescriptor) -> bool:
    return bool(field.is_repeated)


def _check_map(field: FieldDescriptor, value: Any, name: str) -> None:
    entry = field.message_type
    assert entry is not None  # a map field's type is its entry message
    value_field = entry.fields_by_name["value"]
    for key, item in value.items():
        if isinstance(key, str):
            _check_text(key, f"{name} key")
        where = f"{name}[{key!r}]" if isinstance(key, str) and "\x00" not in key else name
        if value_field.type == _MESSAGE:
            check_request(item, where)
        elif isinstance(item, str):
            _check_text(item, where)


def _check_text(text: str, name: str) -> None:
    if "\x00" in text:
        raise InvalidArgument("must not contain the NUL character", field=name)


def _check_timestamp(ts: Any, name: str) -> None:
    if not 0 <= ts.nanos < 1_000_000_000:
        raise InvalidArgument("nanos must be in [0, 999999999]", field=name)
    if not _MIN_SECONDS <= ts.seconds <= _MAX_SECONDS:
        raise InvalidArgument("must be between years 1 and 9999", field=name)
