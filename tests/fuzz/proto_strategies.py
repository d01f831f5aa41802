"""Hypothesis strategies for protobuf messages, read from their descriptors (lmgate.v1's protos).

Every field gets values its wire type can carry, edge values included (0, extremes, NaN and ±inf
for floats, unknown enum numbers, surrogate-free text); optional fields, oneof members and map or
repeated fields are present or not. ``overrides`` sets fields by name (``model``) from a strategy,
always.
"""

from __future__ import annotations

from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message
from google.protobuf.message_factory import GetMessageClass
from hypothesis import strategies as st

_INT_RANGES = {
    FieldDescriptor.TYPE_INT32: (-(2**31), 2**31 - 1), FieldDescriptor.TYPE_SINT32: (-(2**31), 2**31 - 1),
    FieldDescriptor.TYPE_SFIXED32: (-(2**31), 2**31 - 1), FieldDescriptor.TYPE_UINT32: (0, 2**32 - 1),
    FieldDescriptor.TYPE_FIXED32: (0, 2**32 - 1), FieldDescriptor.TYPE_INT64: (-(2**63), 2**63 - 1),
    FieldDescriptor.TYPE_SINT64: (-(2**63), 2**63 - 1), FieldDescriptor.TYPE_SFIXED64: (-(2**63), 2**63 - 1),
    FieldDescriptor.TYPE_UINT64: (0, 2**64 - 1), FieldDescriptor.TYPE_FIXED64: (0, 2**64 - 1),
}  # fmt: skip


def _integers(low: int, high: int) -> st.SearchStrategy[int]:
    # Small values reach the engine; the extremes test the edges.
    return st.one_of(st.integers(max(low, -4), min(high, 64)), st.sampled_from([low, high]), st.integers(low, high))


def _scalar(field: FieldDescriptor, depth: int, overrides: dict[str, st.SearchStrategy]) -> st.SearchStrategy:
    kind = field.type
    if kind in _INT_RANGES:
        return _integers(*_INT_RANGES[kind])
    if kind == FieldDescriptor.TYPE_FLOAT:
        return st.one_of(st.floats(0, 2, width=32), st.floats(width=32))  # the usual range, then anything
    if kind == FieldDescriptor.TYPE_DOUBLE:
        return st.one_of(st.floats(0, 2), st.floats())
    if kind == FieldDescriptor.TYPE_BOOL:
        return st.booleans()
    if kind == FieldDescriptor.TYPE_STRING:
        return st.text(max_size=64)
    if kind == FieldDescriptor.TYPE_BYTES:
        return st.binary(max_size=64)
    if kind == FieldDescriptor.TYPE_ENUM:
        known = [v.number for v in field.enum_type.values]
        return st.one_of(st.sampled_from(known), st.integers(-5, 99))
    if kind == FieldDescriptor.TYPE_MESSAGE:
        return messages(field.message_type, overrides, depth + 1)
    raise TypeError(f"no strategy for field {field.full_name} of type {kind}")


def messages(
    descriptor: Descriptor, overrides: dict[str, st.SearchStrategy] | None = None, depth: int = 0
) -> st.SearchStrategy[Message]:
    """Messages of type ``descriptor``; nested messages stop at depth 3."""
    overrides = overrides or {}
    message_class = GetMessageClass(descriptor)
    if depth > 3:
        return st.just(message_class())
    fields = {}
    for field in descriptor.fields:
        if field.name in overrides:
            fields[field.name] = overrides[field.name]  # always set
            continue
        if field.message_type is not None and field.message_type.GetOptions().map_entry:
            key, item = field.message_type.fields_by_name["key"], field.message_type.fields_by_name["value"]
            value = st.dictionaries(_scalar(key, depth, overrides), _scalar(item, depth, overrides), max_size=4)
        elif field.is_repeated:
            value = st.lists(_scalar(field, depth, overrides), max_size=5)
        else:
            value = _scalar(field, depth, overrides)
        fields[field.name] = st.one_of(st.none(), value)  # None: left unset

    def build(values: dict[str, object]) -> Message:
        message = message_class()
        for name, value in values.items():
            if value is None:
                continue
            field = descriptor.fields_by_name[name]
            target = getattr(message, name) if (field.is_repeated or field.message_type) else None
            if isinstance(value, dict):
                target.update(value)  # type: ignore[union-attr]
            elif isinstance(value, list):
                if field.message_type is not None:
                    for item in value:
                        target.add().CopyFrom(item)  # type: ignore[union-attr]
                else:
                    target.extend(value)  # type: ignore[union-attr]
            elif isinstance(value, Message):
                target.CopyFrom(value)  # type: ignore[union-attr]
            else:
                setattr(message, name, value)  # a later oneof member replaces an earlier one
        return message

    return st.fixed_dictionaries(fields).map(build)
