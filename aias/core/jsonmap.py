"""Proto <-> JSON as the public API shows it: proto field names, short lowercase enums, nulls."""

from __future__ import annotations

import base64
import binascii
import functools
import math
import re
from typing import Any, cast

from google.protobuf import json_format
from google.protobuf.descriptor import Descriptor, EnumDescriptor, FieldDescriptor
from google.protobuf.message import Message

from aias.core.errors import clip

# Types whose JSON form the protobuf JSON spec fixes (RFC 3339 strings, plain JSON for Struct).
_WELL_KNOWN = frozenset(
    f"google.protobuf.{name}"
    for name in (
        "Any",
        "BoolValue",
        "BytesValue",
        "DoubleValue",
        "Duration",
        "Empty",
        "FieldMask",
        "FloatValue",
        "Int32Value",
        "Int64Value",
        "ListValue",
        "StringValue",
        "Struct",
        "Timestamp",
        "UInt32Value",
        "UInt64Value",
        "Value",
    )
)
_STRUCT_TYPES = frozenset(
    {"google.protobuf.Struct", "google.protobuf.Value", "google.protobuf.ListValue"}
)
# The largest integer a double holds exactly.
_EXACT_INTEGER = 2**53
_INTEGERS = frozenset(
    {
        FieldDescriptor.TYPE_INT32,
        FieldDescriptor.TYPE_INT64,
        FieldDescriptor.TYPE_UINT32,
        FieldDescriptor.TYPE_UINT64,
        FieldDescriptor.TYPE_SINT32,
        FieldDescriptor.TYPE_SINT64,
        FieldDescriptor.TYPE_FIXED32,
        FieldDescriptor.TYPE_FIXED64,
        FieldDescriptor.TYPE_SFIXED32,
        FieldDescriptor.TYPE_SFIXED64,
    }
)
_FLOATS = frozenset({FieldDescriptor.TYPE_FLOAT, FieldDescriptor.TYPE_DOUBLE})
_SPECIAL_FLOATS = {"NaN": math.nan, "Infinity": math.inf, "-Infinity": -math.inf}
_CAMEL_BOUNDARY = re.compile(r"(?<=[a-z0-9])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])")


class JsonMappingError(ValueError):
    """A JSON value that does not fit the message: names the field and the problem."""

    def __init__(self, reason: str, field: str, problem: str) -> None:
        # A field path holds the client's own keys, so it is quoted like any client text.
        super().__init__(f"{clip(field)}: {problem}" if field else problem)
        self.reason = reason
        self.field = field


def descriptor_of(message: Message | type[Message]) -> Descriptor:
    """A message's descriptor, typed as the one descriptor class (the stubs offer two)."""
    return cast(Descriptor, message.DESCRIPTOR)


def _unknown(field: str, message: Descriptor) -> JsonMappingError:
    return JsonMappingError("UNKNOWN_FIELD", field, f"unknown field in {message.full_name}")


def _invalid(field: str, problem: str) -> JsonMappingError:
    return JsonMappingError("INVALID_FIELD_VALUE", field, problem)


def _rejected(field: str, error: Exception) -> JsonMappingError:
    """What the protobuf runtime refused, without quoting more of the value than `clip` does."""
    if isinstance(error, UnicodeError):
        return _invalid(field, "not valid Unicode text (it holds a lone surrogate escape)")
    return _invalid(field, clip(str(error)))


@functools.cache
def _enum_prefix(enum: EnumDescriptor) -> str:
    """`RunStatus` -> `RUN_STATUS_`, the buf-style prefix of every value name."""
    return _CAMEL_BOUNDARY.sub("_", enum.name).upper() + "_"


def enum_to_json(enum: EnumDescriptor, number: int) -> str | int:
    """`RUN_STATUS_SUCCEEDED` -> `"succeeded"`; a number the schema does not know stays a number."""
    value = enum.values_by_number.get(number)
    if value is None:
        return number
    return value.name.removeprefix(_enum_prefix(enum)).lower()


def enum_from_json(enum: EnumDescriptor, value: object, field: str) -> int:
    """Accepts `"succeeded"`, `"RUN_STATUS_SUCCEEDED"` or the number."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str):
        for name in (value, _enum_prefix(enum) + value.upper(), value.upper()):
            if (found := enum.values_by_name.get(name)) is not None:
                return found.number
    choices = ", ".join(str(enum_to_json(enum, v.number)) for v in enum.values)
    raise _invalid(field, f"{clip(repr(value))} is not one of {choices}")


def field_by_json_name(message: Descriptor, name: str) -> FieldDescriptor | None:
    """A field by its proto name or its lowerCamelCase JSON name."""
    if not name.isascii():
        # Field names are ASCII; upb's lookup fails on a name that is not valid UTF-8.
        return None
    return message.fields_by_name.get(name) or message.fields_by_camelcase_name.get(name)


def message_to_json(message: Message) -> Any:
    """Every field by its proto name: defaults printed, unset message fields as null."""
    descriptor = descriptor_of(message)
    if descriptor.full_name in _STRUCT_TYPES:
        return _whole_numbers(json_format.MessageToDict(message))
    if descriptor.full_name in _WELL_KNOWN:
        return json_format.MessageToDict(message)
    return {field.name: field_to_json(message, field) for field in descriptor.fields}


def _whole_numbers(value: Any) -> Any:
    """Struct numbers are doubles; whole ones print as `1`, not `1.0`, as protojson prints them."""
    if isinstance(value, float) and value.is_integer() and abs(value) <= _EXACT_INTEGER:
        return int(value)
    if isinstance(value, dict):
        return {key: _whole_numbers(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_whole_numbers(item) for item in value]
    return value


def field_to_json(message: Message, field: FieldDescriptor) -> Any:
    """One field of a message as `message_to_json` shows it (also used for `response_body`)."""
    value = getattr(message, field.name)
    if (entry := _map_entry(field)) is not None:
        value_field = entry.fields_by_name["value"]
        return {str(k): _value_to_json(value_field, v) for k, v in value.items()}
    if field.is_repeated:
        return [_value_to_json(field, item) for item in value]
    if field.has_presence and not message.HasField(field.name):
        return None
    return _value_to_json(field, value)


def _value_to_json(field: FieldDescriptor, value: Any) -> Any:
    if field.message_type is not None:
        return message_to_json(value)
    if field.enum_type is not None:
        return enum_to_json(field.enum_type, value)
    if field.type == FieldDescriptor.TYPE_BYTES:
        return base64.b64encode(value).decode("ascii")
    if field.type in _FLOATS and not math.isfinite(value):
        return "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")
    return value


def _map_entry(field: FieldDescriptor) -> Descriptor | None:
    """The key/value entry type of a map field, None for any other field."""
    entry = field.message_type
    if field.is_repeated and entry is not None and entry.GetOptions().map_entry:
        return entry
    return None


def json_to_message(data: Any, message: Message, path: str = "") -> None:
    """Merges a decoded JSON value into `message`; JsonMappingError names the offending field."""
    descriptor = descriptor_of(message)
    if descriptor.full_name in _WELL_KNOWN:
        try:
            json_format.ParseDict(data, message)
        except (json_format.ParseError, TypeError, ValueError) as error:
            raise _rejected(path, error) from None
        return
    if not isinstance(data, dict):
        raise _invalid(path, f"must be a JSON object, got {_kind(data)}")
    for key, value in data.items():
        field_path = f"{path}.{key}" if path else key
        field = field_by_json_name(descriptor, key)
        if field is None:
            raise _unknown(field_path, descriptor)
        if value is None and not _is_null_value(field):
            # The protobuf JSON spec: null means the field's default.
            message.ClearField(field.name)
        elif (entry := _map_entry(field)) is not None:
            _map_from_json(value, getattr(message, field.name), entry, field_path)
        elif field.is_repeated:
            if not isinstance(value, list):
                raise _invalid(field_path, f"must be a JSON array, got {_kind(value)}")
            target = getattr(message, field.name)
            for index, item in enumerate(value):
                item_path = f"{field_path}[{index}]"
                if field.type == FieldDescriptor.TYPE_MESSAGE:
                    json_to_message(item, target.add(), item_path)
                else:
                    append_scalar(target, scalar_from_json(field, item, item_path), item_path)
        elif field.type == FieldDescriptor.TYPE_MESSAGE:
            child = getattr(message, field.name)
            child.SetInParent()
            json_to_message(value, child, field_path)
        else:
            set_scalar(message, field, scalar_from_json(field, value, field_path), field_path)


def _is_null_value(field: FieldDescriptor) -> bool:
    """google.protobuf.Value takes JSON null as a value of its own."""
    return field.message_type is not None and field.message_type.full_name == (
        "google.protobuf.Value"
    )


def _map_from_json(value: Any, target: Any, entry: Descriptor, path: str) -> None:
    if not isinstance(value, dict):
        raise _invalid(path, f"must be a JSON object, got {_kind(value)}")
    key_field = entry.fields_by_name["key"]
    value_field = entry.fields_by_name["value"]
    for raw_key, item in value.items():
        item_path = f"{path}[{raw_key}]"
        key = scalar_from_text(key_field, raw_key, item_path)
        if value_field.type == FieldDescriptor.TYPE_MESSAGE:
            json_to_message(item, target[key], item_path)
        else:
            try:
                target[key] = scalar_from_json(value_field, item, item_path)
            except (TypeError, ValueError) as error:
                raise _rejected(item_path, error) from None


def append_scalar(target: Any, value: Any, path: str) -> None:
    """Appends to a repeated scalar field, turning range and type errors into JsonMappingError."""
    try:
        target.append(value)
    except (TypeError, ValueError) as error:
        raise _rejected(path, error) from None


def set_scalar(message: Message, field: FieldDescriptor, value: Any, path: str) -> None:
    """Sets a scalar field, turning the runtime's range and type errors into JsonMappingError."""
    try:
        setattr(message, field.name, value)
    except (TypeError, ValueError) as error:
        raise _rejected(path, error) from None


def scalar_from_json(field: FieldDescriptor, value: Any, path: str) -> Any:
    """A decoded JSON value as the Python value of a scalar or enum field."""
    kind = field.type
    if field.enum_type is not None:
        return enum_from_json(field.enum_type, value, path)
    if kind == FieldDescriptor.TYPE_STRING:
        if isinstance(value, str):
            return value
    elif kind == FieldDescriptor.TYPE_BOOL:
        if isinstance(value, bool):
            return value
    elif kind == FieldDescriptor.TYPE_BYTES:
        if isinstance(value, str):
            return _base64(value, path)
    elif isinstance(value, bool):
        pass
    elif kind in _INTEGERS:
        # The protobuf JSON spec writes 64-bit integers as strings; both forms are accepted.
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            return scalar_from_text(field, value, path)
    elif kind in _FLOATS:
        if isinstance(value, int | float):
            return float(value)
        if isinstance(value, str):
            return scalar_from_text(field, value, path)
    raise _invalid(path, f"expected {_type_name(field)}, got {_kind(value)}")


def scalar_from_text(field: FieldDescriptor, text: str, path: str) -> Any:
    """A path or query parameter (always text) as the Python value of a scalar or enum field."""
    kind = field.type
    if kind == FieldDescriptor.TYPE_STRING:
        return text
    if field.enum_type is not None:
        return enum_from_json(field.enum_type, text, path)
    if kind == FieldDescriptor.TYPE_BYTES:
        return _base64(text, path)
    if kind == FieldDescriptor.TYPE_BOOL:
        if text in ("true", "1"):
            return True
        if text in ("false", "0"):
            return False
    elif kind in _INTEGERS:
        try:
            return int(text)
        except ValueError:
            pass
    elif kind in _FLOATS:
        if text in _SPECIAL_FLOATS:
            return _SPECIAL_FLOATS[text]
        try:
            return float(text)
        except ValueError:
            pass
    raise _invalid(path, f"expected {_type_name(field)}, got {clip(repr(text))}")


def _base64(text: str, path: str) -> bytes:
    # Standard or URL-safe alphabet, padding optional, as the protobuf JSON spec allows.
    padded = text + "=" * (-len(text) % 4)
    try:
        return base64.b64decode(padded.replace("-", "+").replace("_", "/"), validate=True)
    except binascii.Error:
        raise _invalid(path, "expected base64") from None


def _type_name(field: FieldDescriptor) -> str:
    if field.type == FieldDescriptor.TYPE_BOOL:
        return "a boolean"
    if field.type in _INTEGERS:
        return "an integer"
    if field.type in _FLOATS:
        return "a number"
    return "a string"


def _kind(value: Any) -> str:
    return {
        dict: "an object",
        list: "an array",
        str: "a string",
        bool: "a boolean",
        int: "a number",
        float: "a number",
        type(None): "null",
    }.get(type(value), type(value).__name__)
