"""JSON -> protobuf for every request the gateway reads, each error named by its JSON path.

protobuf's ``json_format.ParseDict`` stops at the first problem and words it in Python's terms
("invalid literal for int() with base 10", "Available Fields(except extensions)"). :func:`parse`
walks the message descriptor over the JSON tree first and collects every problem at once, each with
the path as the client wrote it (``service.scale``, ``service.ports[0].port``,
``service.labels[tier]``), what was expected and what came (``expected an integer, got "abc"``);
an unknown enum value lists the allowed ones. Enum values may be written by name, by the short name
(``GRADUAL`` for ``SCALING_MODE_GRADUAL``) or by number, as in query parameters. What passes the
walk is then handed to ParseDict, which accepts it.

The codec (request bodies, query parameters, Connect JSON) and the exec routes decode through here.
"""

from __future__ import annotations

import base64
import binascii
import math
from typing import Any, TypeVar

import orjson
from google.protobuf import json_format, message_factory
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message

from runed.core import errors, validation
from runed.core.suggest import did_you_mean, meant

_RANGES = {
    FieldDescriptor.TYPE_INT32: (-(2**31), 2**31 - 1),
    FieldDescriptor.TYPE_SINT32: (-(2**31), 2**31 - 1),
    FieldDescriptor.TYPE_SFIXED32: (-(2**31), 2**31 - 1),
    FieldDescriptor.TYPE_UINT32: (0, 2**32 - 1),
    FieldDescriptor.TYPE_FIXED32: (0, 2**32 - 1),
    FieldDescriptor.TYPE_INT64: (-(2**63), 2**63 - 1),
    FieldDescriptor.TYPE_SINT64: (-(2**63), 2**63 - 1),
    FieldDescriptor.TYPE_SFIXED64: (-(2**63), 2**63 - 1),
    FieldDescriptor.TYPE_UINT64: (0, 2**64 - 1),
    FieldDescriptor.TYPE_FIXED64: (0, 2**64 - 1),
}
_FLOAT32_MAX = 3.4028234663852886e38
_NONFINITE = {"NaN", "Infinity", "-Infinity"}
M = TypeVar("M", bound=Message)
# Past this many problems the rest are counted, not described (validation.bounded clips further).
MAX_VIOLATIONS = 50


class BadRequest(errors.InvalidArgument):
    """A request the gateway could not turn into a message (malformed JSON, wrong types, unknown fields)."""


def show(value: Any) -> str:
    """A received JSON value as an error quotes it: ``"abc"``, ``12.5``, ``null``, ``an object``."""
    if isinstance(value, dict):
        return "an object"
    if isinstance(value, list):
        return "an array"
    text = orjson.dumps(value).decode()
    return text if len(text) <= 64 else text[:61] + "…"


def join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def enum_names(enum: Any) -> str:
    return ", ".join(v.name for v in enum.values)


def enum_value(f: Any, value: Any) -> tuple[Any, str]:
    """(the value ParseDict accepts, "") or (None, why) for an enum written by name, short name or number."""
    enum = f.enum_type
    if isinstance(value, bool) or not isinstance(value, int | str):
        return None, f"expected one of {enum_names(enum)}, got {show(value)}"
    if isinstance(value, int):
        if value in enum.values_by_number:
            return value, ""
        return None, f"unknown value {value} (expected one of {enum_names(enum)})"
    if value in enum.values_by_name:
        return value, ""
    if value.lstrip("-").isdigit():
        return enum_value(f, int(value))
    # Short names (GRADUAL for SCALING_MODE_GRADUAL) read naturally, as they do in URLs.
    for v in enum.values:
        if value and v.name.endswith("_" + value.upper()):
            return v.name, ""
    return None, f"unknown value {show(value)} (expected one of {enum_names(enum)})"


def integer(f: Any, value: Any) -> tuple[int | None, str]:
    """(the integer, "") or (None, why): JSON numbers, integral floats and decimal strings, in the field's range."""
    low, high = _RANGES[f.type]
    n: int | None = None
    if isinstance(value, int) and not isinstance(value, bool):
        n = value
    elif isinstance(value, float) and value.is_integer():
        n = int(value)
    elif isinstance(value, str) and value.strip().lstrip("-").isdigit():
        n = int(value)
    if n is None:
        kind = "a non-negative integer" if low == 0 else "an integer"
        return None, f"expected {kind}, got {show(value)}"
    if not low <= n <= high:
        return None, f"expected an integer from {low} to {high}, got {n}"
    return n, ""


def number(f: Any, value: Any) -> tuple[float | str | None, str]:
    """(the number, "") or (None, why): JSON numbers, numeric strings, "NaN", "Infinity", "-Infinity"."""
    x: float | None = None
    if isinstance(value, int | float) and not isinstance(value, bool):
        x = float(value)
    elif isinstance(value, str):
        if value in _NONFINITE:
            return value, ""
        try:
            x = float(value)
        except ValueError:
            x = None
    if x is None or (math.isnan(x) and value not in _NONFINITE):
        return None, f"expected a number, got {show(value)}"
    if f.type == FieldDescriptor.TYPE_FLOAT and math.isfinite(x) and abs(x) > _FLOAT32_MAX:
        return None, f"expected a number within ±{_FLOAT32_MAX:g}, got {show(value)}"
    return x, ""


class _Walk:
    """One pass over a JSON tree along a message descriptor: a normalised copy and every violation."""

    def __init__(self) -> None:
        self.violations: list[errors.FieldViolation] = []
        self.dropped = 0

    def bad(self, path: str, why: str) -> None:
        if len(self.violations) < MAX_VIOLATIONS:
            self.violations.append(errors.FieldViolation(path, why))
        else:
            self.dropped += 1

    def message(self, desc: Descriptor, value: Any, path: str) -> Any:
        if desc.full_name.startswith("google.protobuf."):
            return self.well_known(desc, value, path)
        if not isinstance(value, dict):
            self.bad(path or "body", f"expected a JSON object for {desc.name}, got {show(value)}")
            return None
        out: dict[str, Any] = {}
        seen: dict[str, str] = {}  # proto field name -> the key that set it
        oneofs: dict[str, str] = {}  # oneof name -> the key that set it
        for key, v in value.items():
            where = join(path, key)
            f = field_named(desc, key)
            if f is None:
                self.bad(where, unknown_field(desc, key))
                continue
            if f.name in seen:
                self.bad(where, f'set twice (as "{seen[f.name]}" and "{key}")')
                continue
            seen[f.name] = key
            oneof = f.containing_oneof
            if oneof is not None and v is not None:
                if oneof.name in oneofs:
                    members = ", ".join(m.json_name for m in oneof.fields)
                    self.bad(where, f'only one of {members} may be set (got "{oneofs[oneof.name]}" and "{key}")')
                    continue
                oneofs[oneof.name] = key
            out[f.name] = None if v is None else self.field(f, v, where)
        return out

    def field(self, f: Any, value: Any, path: str) -> Any:
        if f.message_type is not None and f.message_type.GetOptions().map_entry:
            return self.map(f, value, path)
        if f.is_repeated:
            if not isinstance(value, list):
                self.bad(path, f"expected an array, got {show(value)}")
                return None
            items = []
            for i, item in enumerate(value):
                if item is None:
                    self.bad(f"{path}[{i}]", "expected a value, got null")
                    continue
                items.append(self.single(f, item, f"{path}[{i}]"))
            return items
        return self.single(f, value, path)

    def map(self, f: Any, value: Any, path: str) -> Any:
        if not isinstance(value, dict):
            self.bad(path, f"expected an object (a map), got {show(value)}")
            return None
        kf = f.message_type.fields_by_name["key"]
        vf = f.message_type.fields_by_name["value"]
        out: dict[str, Any] = {}
        for k, v in value.items():
            where = f"{path}[{k}]"
            if kf.type in _RANGES:
                _, why = integer(kf, k)
                if why:
                    self.bad(where, f"the key: {why}")
                    continue
            elif kf.type == FieldDescriptor.TYPE_BOOL and k not in ("true", "false"):
                self.bad(where, f"the key: expected true or false, got {show(k)}")
                continue
            if v is None:
                self.bad(where, "expected a value, got null")
                continue
            out[k] = self.single(vf, v, where)
        return out

    def single(self, f: Any, value: Any, path: str) -> Any:
        """One value of field ``f`` (an element, for repeated fields), normalised; None after a violation."""
        t = f.type
        if t == FieldDescriptor.TYPE_MESSAGE or t == FieldDescriptor.TYPE_GROUP:
            return self.message(f.message_type, value, path)
        why = ""
        out: Any = value
        if t == FieldDescriptor.TYPE_ENUM:
            out, why = enum_value(f, value)
        elif t in _RANGES:
            # 64-bit integers travel as strings in protojson: both forms come out as an int.
            out, why = integer(f, value)
        elif t in (FieldDescriptor.TYPE_DOUBLE, FieldDescriptor.TYPE_FLOAT):
            out, why = number(f, value)
        elif t == FieldDescriptor.TYPE_BOOL:
            if not isinstance(value, bool):
                why = f"expected true or false, got {show(value)}"
        elif t == FieldDescriptor.TYPE_STRING:
            if not isinstance(value, str):
                why = f"expected a string, got {show(value)}"
        elif t == FieldDescriptor.TYPE_BYTES:
            why = _bytes_problem(value)
        if why:
            self.bad(path, why)
            return None
        return out

    def well_known(self, desc: Descriptor, value: Any, path: str) -> Any:
        """google.protobuf types have JSON forms of their own: ParseDict checks them, we name the path."""
        try:
            json_format.ParseDict(value, message_factory.GetMessageClass(desc)())
        except (json_format.ParseError, ValueError, TypeError, AttributeError):
            self.bad(path, f"expected {_WELL_KNOWN.get(desc.full_name, 'the JSON form of ' + desc.full_name)}")
            return None
        return value


_WELL_KNOWN = {
    "google.protobuf.Timestamp": 'an RFC 3339 timestamp such as "2024-05-01T12:00:00Z"',
    "google.protobuf.Duration": 'a duration in seconds such as "1.5s"',
    "google.protobuf.FieldMask": 'a comma-separated list of field paths such as "name,labels"',
    "google.protobuf.Struct": "a JSON object",
    "google.protobuf.ListValue": "a JSON array",
    "google.protobuf.Empty": "an empty JSON object",
    "google.protobuf.Any": 'a JSON object with an "@type"',
}


def field_named(desc: Descriptor, key: str) -> Any:
    """A field by proto name or lowerCamelCase JSON name; None when there is no such field."""
    f = desc.fields_by_name.get(key)
    if f is not None:
        return f
    for f in desc.fields:
        if f.json_name == key:
            return f
    return None


def unknown_field(desc: Descriptor, key: str) -> str:
    """How an unknown key of ``desc`` is worded: the field meant, else the fields there are."""
    names = [f.json_name for f in desc.fields]
    near = meant(key, names + [f.name for f in desc.fields])
    if near:
        return f"unknown field ({did_you_mean(near)})"
    return f"unknown field ({desc.name} has {', '.join(names)})"


def _bytes_problem(value: Any) -> str:
    if not isinstance(value, str):
        return f"expected base64-encoded bytes, got {show(value)}"
    text = value.replace("-", "+").replace("_", "/")
    try:
        base64.b64decode(text + "=" * (-len(text) % 4), validate=True)
    except (binascii.Error, ValueError):
        return f"expected base64-encoded bytes, got {show(value)}"
    return ""


def violations_of(desc: Any, data: Any, path: str = "") -> tuple[Any, list[errors.FieldViolation]]:
    """The JSON tree normalised for ParseDict, and every violation in it (empty when it decodes)."""
    walk = _Walk()
    out = walk.message(desc, data, path)
    found = walk.violations
    if walk.dropped:
        found.append(errors.FieldViolation("", f"and {walk.dropped} more violations not shown"))
    return out, found


def decode_error(violations: list[errors.FieldViolation]) -> BadRequest:
    vs = validation.bounded(violations)
    return BadRequest("invalid request: " + "; ".join(f"{v.field}: {v.description}" for v in vs), violations=vs)


def parse(data: Any, msg: M, path: str = "") -> M:
    """Fill ``msg`` from the JSON tree ``data``; :class:`BadRequest` naming every bad field otherwise.

    Args:
        data: the decoded JSON (a dict for a message).
        msg: the message to fill (merged into).
        path: where ``data`` sits in the request, prefixed to every path ("" for the whole request).
    """
    normalised, found = violations_of(msg.DESCRIPTOR, data, path)
    if found:
        raise decode_error(found)
    try:
        json_format.ParseDict(normalised, msg, ignore_unknown_fields=False)
    except json_format.ParseError as e:
        # The walk accepts only what ParseDict takes; should they ever disagree, name the path and
        # keep protobuf's wording (not its list of fields) out of the answer.
        raise decode_error([errors.FieldViolation(_parse_error_path(str(e), path), "invalid value")]) from None
    return msg


def _parse_error_path(text: str, path: str) -> str:
    """``Failed to parse service field: Failed to parse scale field: ...`` -> ``service.scale``."""
    parts: list[str] = []
    rest = text
    marker = "Failed to parse "
    while rest.startswith(marker) and " field: " in rest:
        name, _, rest = rest[len(marker) :].partition(" field: ")
        parts.append(name)
    return ".".join([path, *parts] if path else parts) or path or "body"
