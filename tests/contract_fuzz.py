"""Hypothesis strategies for any protobuf message: random field values, random oneof choices,
out-of-range numbers, empty and huge repeated fields, nested messages. Used to fuzz the contracts
the services accept."""

from __future__ import annotations

from google.protobuf.descriptor import Descriptor, FieldDescriptor
from hypothesis import strategies as st

_INT_RANGES = {
    FieldDescriptor.TYPE_INT32: (-(2**31), 2**31 - 1),
    FieldDescriptor.TYPE_SINT32: (-(2**31), 2**31 - 1),
    FieldDescriptor.TYPE_SFIXED32: (-(2**31), 2**31 - 1),
    FieldDescriptor.TYPE_INT64: (-(2**63), 2**63 - 1),
    FieldDescriptor.TYPE_SINT64: (-(2**63), 2**63 - 1),
    FieldDescriptor.TYPE_SFIXED64: (-(2**63), 2**63 - 1),
    FieldDescriptor.TYPE_UINT32: (0, 2**32 - 1),
    FieldDescriptor.TYPE_FIXED32: (0, 2**32 - 1),
    FieldDescriptor.TYPE_UINT64: (0, 2**64 - 1),
    FieldDescriptor.TYPE_FIXED64: (0, 2**64 - 1),
}
# Huge repeated fields: long enough to cross every size check, short enough to stay fast.
_HUGE = 20_000


def _integers(lo: int, hi: int) -> st.SearchStrategy[int]:
    # The edges and small values find most bugs; a uniform draw finds the rest.
    edges = [v for v in (lo, hi, 0, 1, -1, 2, 255, 256, 4096, 2**31 - 1, 2**32 - 1) if lo <= v <= hi]
    return st.one_of(st.sampled_from(edges), st.integers(0 if lo >= 0 else -8, 64), st.integers(lo, hi))


def _scalar(field: FieldDescriptor) -> st.SearchStrategy:
    kind = field.type
    if kind in _INT_RANGES:
        return _integers(*_INT_RANGES[kind])
    if kind in (FieldDescriptor.TYPE_FLOAT, FieldDescriptor.TYPE_DOUBLE):
        width = 32 if kind == FieldDescriptor.TYPE_FLOAT else 64
        return st.one_of(
            st.sampled_from([0.0, -0.0, 1.0, -1.0, 1e-9, 1e30, float("inf"), float("-inf"), float("nan")]),
            st.floats(width=width, allow_nan=True, allow_infinity=True),
        )
    if kind == FieldDescriptor.TYPE_BOOL:
        return st.booleans()
    if kind == FieldDescriptor.TYPE_STRING:
        return st.one_of(st.text(max_size=40), st.just("x" * 5_000), st.sampled_from(["", "\x00", "🦙" * 10]))
    if kind == FieldDescriptor.TYPE_BYTES:
        return st.binary(max_size=64)
    if kind == FieldDescriptor.TYPE_ENUM:
        known = [v.number for v in field.enum_type.values]
        return st.one_of(st.sampled_from(known), st.integers(-5, 1000))
    raise AssertionError(f"unhandled field type {kind}")


# Per field, by full name ("pkg.Message.field"): a strategy that replaces the generic one (a test
# bounds what would make the fuzz spend minutes, e.g. tokens to generate, keeping out-of-range values
# in), or, under the name prefixed with "+", one drawn half of the time beside the generic one (valid
# values, so that more requests get past validation into the deeper paths).
Overrides = dict[str, st.SearchStrategy]


def _override(field: FieldDescriptor, overrides: Overrides, generic) -> st.SearchStrategy:
    if field.full_name in overrides:
        return overrides[field.full_name]
    if "+" + field.full_name in overrides:
        return st.one_of(overrides["+" + field.full_name], generic())
    return generic()


def _value(field: FieldDescriptor, depth: int, overrides: Overrides) -> st.SearchStrategy:
    if field.type == FieldDescriptor.TYPE_MESSAGE:
        return messages(field.message_type, depth + 1, overrides)
    return _scalar(field)


def _map(field: FieldDescriptor, overrides: Overrides) -> st.SearchStrategy[dict]:
    entry = field.message_type
    key = _value(entry.fields_by_name["key"], 0, overrides)
    value = _value(entry.fields_by_name["value"], 0, overrides)
    return st.one_of(
        st.dictionaries(key, value, max_size=8), st.dictionaries(key, value, min_size=300, max_size=300)
    )


def _repeated(field: FieldDescriptor, depth: int, overrides: Overrides) -> st.SearchStrategy[list]:
    item = _value(field, depth, overrides)
    small = st.lists(item, max_size=8)
    if field.type == FieldDescriptor.TYPE_MESSAGE:
        return small
    if field.type in (FieldDescriptor.TYPE_STRING, FieldDescriptor.TYPE_BYTES):
        # Many strings: many small ones (a huge string is tried on its own above).
        return st.one_of(small, st.lists(item.filter(lambda v: len(v) < 10), min_size=1000, max_size=1000))
    return st.one_of(small, item.map(lambda v: [v] * _HUGE))


def messages(
    descriptor: Descriptor, depth: int = 0, overrides: Overrides | None = None
) -> st.SearchStrategy[dict]:
    """Field values for `descriptor` as a dict (build with `build(cls, values)`); each field is set or
    not, one member of each oneof at most. `overrides` replaces the strategy of the fields it names."""
    overrides = overrides or {}
    if depth > 3:
        return st.just({})
    parts = {}
    for field in descriptor.fields:
        if field.message_type is not None and field.message_type.GetOptions().map_entry:
            generic = lambda f=field: _map(f, overrides)  # noqa: E731
        elif field.is_repeated:
            generic = lambda f=field: _repeated(f, depth, overrides)  # noqa: E731
        else:
            generic = lambda f=field: _value(f, depth, overrides)  # noqa: E731
        strategy = _override(field, overrides, generic)
        parts[field.name] = st.one_of(st.none(), strategy)
    return st.fixed_dictionaries(parts).map(lambda d: _one_per_oneof(descriptor, d))


def _one_per_oneof(descriptor: Descriptor, values: dict) -> dict:
    values = {k: v for k, v in values.items() if v is not None}
    for oneof in descriptor.oneofs:
        chosen = [f.name for f in oneof.fields if f.name in values]
        for name in chosen[1:]:
            del values[name]
    return values


def build(cls, values: dict):
    """The message `cls` with `values` (nested dicts become nested messages)."""
    message = cls()
    for name, value in values.items():
        field = cls.DESCRIPTOR.fields_by_name[name]
        if field.message_type is not None and field.message_type.GetOptions().map_entry:
            getattr(message, name).update(value)
        elif field.type == FieldDescriptor.TYPE_MESSAGE:
            sub = field.message_type._concrete_class
            if field.is_repeated:
                getattr(message, name).extend(build(sub, v) for v in value)
            else:
                getattr(message, name).CopyFrom(build(sub, value))
        elif field.is_repeated:
            getattr(message, name).extend(value)
        else:
            setattr(message, name, value)
    return message
