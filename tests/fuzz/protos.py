"""Hypothesis strategies for any protobuf message, derived from its descriptor: every field may be
set (a oneof's members one at a time), recursively to a bounded depth, with hostile values from
values.py. New messages and fields are covered without touching this module."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from google.protobuf import message_factory
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message
from hypothesis import strategies as st

from . import values as v

F = FieldDescriptor
_INT_RANGES = {
    F.CPPTYPE_INT32: v.INT32,
    F.CPPTYPE_INT64: v.INT64,
    F.CPPTYPE_UINT32: v.UINT32,
    F.CPPTYPE_UINT64: v.UINT64,
}


class MessageStrategies:
    """`of(descriptor)`: messages of that type. `known_strings` / `known_ints` are names and numbers the
    running stack holds (a dataset, a model, its versions), so lookups sometimes succeed."""

    def __init__(
        self,
        known_strings: Sequence[str],
        known_ints: Sequence[int] = (1, 2),
        *,
        max_depth: int = 4,
        max_repeated: int = 4,
        huge_chars: int = 200_000,
        field_probability: int = 60,
    ) -> None:
        self.strings = v.texts(known_strings, huge_chars=huge_chars)
        self.known_ints = tuple(known_ints)
        self.max_depth = max_depth
        self.max_repeated = max_repeated
        self.field_probability = field_probability  # percent of fields set in a message
        self._cache: dict[tuple[str, int], st.SearchStrategy[Message]] = {}
        self.json = v.json_values(self.strings, big_ints=False)

    def of(self, descriptor: Descriptor, depth: int = 0) -> st.SearchStrategy[Message]:
        key = (descriptor.full_name, depth)
        if key not in self._cache:
            self._cache[key] = self._build(descriptor, depth)
        return self._cache[key]

    # -- messages ---------------------------------------------------------------------------------

    def _build(self, d: Descriptor, depth: int) -> st.SearchStrategy[Message]:
        cls = message_factory.GetMessageClass(d)
        special = self._well_known(d, cls)
        if special is not None:
            return special
        if depth >= self.max_depth:
            return st.just(cls())
        oneof_members = {f.full_name for o in d.oneofs for f in o.fields}
        plain = [f for f in d.fields if f.full_name not in oneof_members]
        oneofs = [list(o.fields) for o in d.oneofs]
        # Built lazily: a message type may contain itself.
        field_values: dict[str, st.SearchStrategy[Any]] = {}

        def values_of(f: FieldDescriptor) -> st.SearchStrategy[Any]:
            if f.full_name not in field_values:
                field_values[f.full_name] = self._field(f, depth)
            return field_values[f.full_name]

        @st.composite
        def build(draw: st.DrawFn) -> Message:
            msg = cls()
            chosen = [f for f in plain if draw(st.integers(0, 99)) < self.field_probability]
            for members in oneofs:
                pick = draw(st.none() | st.sampled_from(members))
                if pick is not None:
                    chosen.append(pick)
            for f in chosen:
                _assign(msg, f, draw(values_of(f)))
            return msg

        return build()

    def _well_known(self, d: Descriptor, cls: Callable[[], Message]) -> st.SearchStrategy[Message] | None:
        name = d.full_name
        if name == "google.protobuf.Struct":
            return st.dictionaries(self.strings, self.json, max_size=6).map(lambda obj: _struct(cls, obj))
        if name == "google.protobuf.Value":
            return self.json.map(lambda obj: _value(cls, obj))
        if name == "google.protobuf.ListValue":
            return st.lists(self.json, max_size=6).map(lambda items: _list_value(cls, items))
        if name in ("google.protobuf.Timestamp", "google.protobuf.Duration"):
            # Out-of-range seconds and nanos included: the wire allows them, conversions may not.
            return st.builds(
                lambda s, n: cls(seconds=s, nanos=n),  # type: ignore[call-arg]
                v.ints(*v.INT64, known=(0, 1, 60, 253402300800, -62135596801)),
                v.ints(*v.INT32, known=(0, 999_999_999, 1_000_000_000)),
            )
        return None

    # -- fields -----------------------------------------------------------------------------------

    def _field(self, f: FieldDescriptor, depth: int) -> st.SearchStrategy[Any]:
        if f.message_type is not None and f.message_type.GetOptions().map_entry:
            key = self._single(f.message_type.fields_by_name["key"], depth)
            value = self._single(f.message_type.fields_by_name["value"], depth + 1)
            return st.dictionaries(key, value, max_size=self.max_repeated)
        single = self._single(f, depth)
        if not f.is_repeated:
            return single
        many = st.lists(single, max_size=self.max_repeated)
        if f.message_type is None and f.cpp_type != F.CPPTYPE_STRING:  # long numeric lists (tensor contents, shapes)
            many = many | st.lists(single, min_size=100, max_size=2000)
        return many

    def _single(self, f: FieldDescriptor, depth: int) -> st.SearchStrategy[Any]:
        if f.message_type is not None:
            return self.of(f.message_type, depth + 1)
        if f.cpp_type in _INT_RANGES:
            return v.ints(*_INT_RANGES[f.cpp_type], known=self.known_ints)
        if f.cpp_type == F.CPPTYPE_DOUBLE:
            return v.floats(64)
        if f.cpp_type == F.CPPTYPE_FLOAT:
            return v.floats(32)
        if f.cpp_type == F.CPPTYPE_BOOL:
            return st.booleans()
        if f.cpp_type == F.CPPTYPE_ENUM:
            known = [e.number for e in f.enum_type.values]
            return st.sampled_from(known) | v.ints(*v.INT32)  # unknown numbers too (proto3 enums are open)
        if f.type == F.TYPE_BYTES:
            return v.binaries()
        return self.strings


def _assign(msg: Message, f: FieldDescriptor, value: Any) -> None:
    try:
        if f.message_type is not None and f.message_type.GetOptions().map_entry:
            target = getattr(msg, f.name)
            for k, item in value.items():
                if isinstance(item, Message):
                    target[k].CopyFrom(item)
                else:
                    target[k] = item
        elif f.is_repeated:
            getattr(msg, f.name).extend(value)
        elif f.message_type is not None:
            getattr(msg, f.name).CopyFrom(value)
        else:
            setattr(msg, f.name, value)
    except ValueError:
        pass  # a value protobuf itself refuses to hold (a closed enum's unknown number, a lone surrogate)


def _value(cls: Callable[[], Message], obj: Any) -> Message:
    msg = cls()
    _set_value(msg, obj)
    return msg


def _set_value(msg: Any, obj: Any) -> None:
    if obj is None:
        msg.null_value = 0
    elif isinstance(obj, bool):
        msg.bool_value = obj
    elif isinstance(obj, int | float):
        msg.number_value = float(obj)
    elif isinstance(obj, str):
        msg.string_value = obj
    elif isinstance(obj, list):
        msg.list_value.SetInParent()
        for item in obj:
            _set_value(msg.list_value.values.add(), item)
    else:
        msg.struct_value.SetInParent()
        for k, item in obj.items():
            _set_value(msg.struct_value.fields[k], item)


def _struct(cls: Callable[[], Message], obj: dict[str, Any]) -> Message:
    msg: Any = cls()
    for k, item in obj.items():
        _set_value(msg.fields[k], item)
    return msg


def _list_value(cls: Callable[[], Message], items: list[Any]) -> Message:
    msg: Any = cls()
    for item in items:
        _set_value(msg.values.add(), item)
    return msg
