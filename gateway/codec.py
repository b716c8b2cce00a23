"""JSON <-> protobuf for the gateway: request binding (path, query, body) and protojson responses."""

from __future__ import annotations

import base64
import functools
import keyword
import math
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import orjson
from google.protobuf import json_format
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.internal import type_checkers
from google.protobuf.message import Message

from rune.gateway import fromjson
from rune.gateway.fromjson import BadRequest as BadRequest  # re-exported: the gateway's decoding error
from runed.core import errors

_INT_TYPES = {
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
_INT64_TYPES = {
    FieldDescriptor.TYPE_INT64,
    FieldDescriptor.TYPE_UINT64,
    FieldDescriptor.TYPE_SINT64,
    FieldDescriptor.TYPE_FIXED64,
    FieldDescriptor.TYPE_SFIXED64,
}
_FLOAT_TYPES = {FieldDescriptor.TYPE_DOUBLE, FieldDescriptor.TYPE_FLOAT}
_TRUE = {"true", "1", "yes", "on"}
_FALSE = {"false", "0", "no", "off", ""}


def _is_map(f: FieldDescriptor) -> bool:
    return f.message_type is not None and f.message_type.GetOptions().map_entry


def _scalar(f: Any, raw: str, where: str) -> Any:
    """A query/path string as the JSON value ParseDict expects for this field (same rules and words as bodies)."""
    t = f.type
    why = ""
    value: Any = raw
    if t in _INT_TYPES:
        value, why = fromjson.integer(f, raw)
    elif t in _FLOAT_TYPES:
        value, why = fromjson.number(f, raw)
    elif t == FieldDescriptor.TYPE_BOOL:
        low = raw.lower()
        if low in _TRUE:
            return True
        if low in _FALSE:
            return False
        why = f"expected true or false, got {fromjson.show(raw)}"
    elif t == FieldDescriptor.TYPE_ENUM:
        value, why = fromjson.enum_value(f, raw)
    if why:
        raise _bad(where, why)
    return value


def _bad(field: str, why: str) -> BadRequest:
    return BadRequest(f"invalid request: {field}: {why}", violations=[errors.FieldViolation(field, why)])


def _drop_aliases(node: dict[str, Any], f: FieldDescriptor) -> None:
    node.pop(f.name, None)
    node.pop(f.json_name, None)


def set_path(data: dict[str, Any], desc: Any, dotted: str, raw: str | list[str], where: str) -> None:
    """Set ``dotted`` (proto or JSON names; ``labels[key]`` for maps) in the JSON tree ``data``."""
    parts = dotted.split(".")
    node = data
    d: Any = desc
    for i, part in enumerate(parts):
        key = None
        if part.endswith("]") and "[" in part:
            part, _, key = part[:-1].partition("[")
        f = fromjson.field_named(d, part)
        if f is None:
            raise _bad(where, fromjson.unknown_field(d, part))
        last = i == len(parts) - 1
        if key is not None:
            if not (_is_map(f) and last):
                raise _bad(where, f"{part} is not a map")
            vf: Any = f.message_type.fields_by_name["value"]
            sub = node.get(f.name) or node.get(f.json_name) or {}
            _drop_aliases(node, f)
            value = raw[-1] if isinstance(raw, list) else raw
            sub[key] = _scalar(vf, value, where)
            node[f.name] = sub
            return
        if last:
            _drop_aliases(node, f)
            if f.is_repeated and not _is_map(f):
                values: Iterable[str] = raw if isinstance(raw, list) else [raw]
                node[f.name] = [_scalar(f, v, where) for v in values]
            elif _is_map(f) or (f.message_type is not None and not f.message_type.full_name.startswith("google.")):
                raise _bad(where, f"{part} is a message; set its fields (e.g. {part}.<field>)")
            else:
                node[f.name] = _scalar(f, raw[-1] if isinstance(raw, list) else raw, where)
            return
        if f.message_type is None or f.is_repeated:
            raise _bad(where, f"{part} has no fields")
        child = node.get(f.name)
        if child is None:
            child = node.get(f.json_name)
        if not isinstance(child, dict):
            child = {}
        _drop_aliases(node, f)
        node[f.name] = child
        node = child
        d = f.message_type


@functools.cache
def _simple_fields(desc: Any) -> dict[str, Any]:
    """Singular top-level string fields by proto name (what path variables usually bind to)."""
    return {f.name: f for f in desc.fields if f.type == FieldDescriptor.TYPE_STRING and not f.is_repeated}


@functools.cache
def _simple_fields_any(desc: Any) -> dict[str, Any]:
    """Singular top-level non-enum scalar fields by proto and JSON name (safe to pass to the constructor)."""
    out: dict[str, Any] = {}
    for f in desc.fields:
        if f.message_type is None and f.enum_type is None and not f.is_repeated:
            out[f.name] = f
            out[f.json_name] = f
    return out


def _construct(cls: type[Message], kwargs: dict[str, Any]) -> Message:
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as e:
        raise _bad("query", str(e)) from None


def parse_body(raw: bytes) -> dict[str, Any]:
    """The request body as a JSON object (empty: ``{}``); malformed JSON is a 400 with the parser's
    position, and so is any other JSON value: every body of the API is a message or a message field
    (an array or ``null`` taken for an empty one would have the path's fields set in it)."""
    if not raw.strip():
        return {}
    try:
        value = orjson.loads(raw)
    except orjson.JSONDecodeError as e:
        try:
            raw.decode()
        except UnicodeDecodeError as u:
            # orjson words this as "surrogates not allowed"; what the client needs is the encoding.
            raise _bad("body", f"is not valid UTF-8 (invalid byte at offset {u.start})") from None
        raise _bad("body", f"malformed JSON: {e}") from None
    if not isinstance(value, dict):
        raise _bad("body", f"expected a JSON object, got {fromjson.show(value)}")
    return value


def build_request(
    cls: type[Message],
    *,
    body: Any = None,
    body_field: str = "*",
    path: Mapping[str, str] | None = None,
    query: Iterable[tuple[str, str]] = (),
    query_allowed: bool = True,
) -> Message:
    """Assemble a request: the body into ``body_field`` (``*`` = whole message), then query, then path."""
    desc: Any = cls.DESCRIPTOR
    if body is None and path:
        fast = _simple_fields(desc)
        if all(k in fast for k in path):
            # The common GET: only top-level string fields from the path, maybe scalar query params.
            kwargs: dict[str, Any] = dict(path)
            if query:
                for k, v in query:
                    f = fast.get(k) or _simple_fields_any(desc).get(k)
                    if f is None or k in kwargs:
                        kwargs = {}
                        break
                    kwargs[f.name] = _scalar(f, v, k)
                else:
                    return _construct(cls, kwargs)
            else:
                return cls(**kwargs)
    data: dict[str, Any] = {}
    if body is not None and body_field:
        if body_field == "*":
            data = body
        else:
            f = fromjson.field_named(desc, body_field)
            if f is None:  # pragma: no cover - the rule names a field of this message
                raise _bad("body", f"unknown body field {body_field}")
            _not_wrapped(f, body)
            data[f.name] = body
    grouped: dict[str, list[str]] = {}
    for k, v in query:
        grouped.setdefault(k, []).append(v)
    if grouped and not query_allowed:
        raise _bad(next(iter(grouped)), "query parameters are not accepted here (the body is the whole request)")
    for k, vs in grouped.items():
        set_path(data, desc, k, vs, k)
    for k, v in (path or {}).items():
        set_path(data, desc, k, v, k)
    msg = cls()
    if not data:
        return msg
    # Every problem at once, each named by its path (``service.scale``), in the one JSON decoder.
    return fromjson.parse(data, msg)


def _not_wrapped(f: Any, body: Any) -> None:
    """Refuse a body that wraps the message it should be, as the gRPC request holds it
    (``{"service": {...}}`` where the body is the service): said in one sentence, not as an unknown
    field followed by the list of the service's fields."""
    if f.message_type is None or not isinstance(body, dict):
        return
    for key in (f.name, f.json_name):
        if key in body and fromjson.field_named(f.message_type, key) is None:
            raise _bad(
                f"{f.name}.{key}",
                f'the body is the {f.name} itself: send its fields at the top level, not inside "{key}"',
            )


# -- responses ---------------------------------------------------------------------------------
# MessageToDict walks descriptors through generic Python on every call; this plans each message
# type once and then only reads attributes (bench_rest prints both). Output is identical to
# MessageToDict(always_print_fields_with_no_presence=True); a test compares them on every type.
_Plan = list[tuple[str, str, bool, Callable[[Any], Any]]]
_compiled: dict[Any, Callable[[Any], dict[str, Any]]] = {}


def _identity(v: Any) -> Any:
    return v


def _float32(v: float) -> Any:
    if math.isnan(v) or math.isinf(v):
        return _nonfinite(v)
    return type_checkers.ToShortestFloat(v)


def _double(v: float) -> Any:
    if math.isnan(v) or math.isinf(v):
        return _nonfinite(v)
    return v


def _nonfinite(v: float) -> str:
    if math.isnan(v):
        return "NaN"
    return "Infinity" if v > 0 else "-Infinity"


def _bytes(v: bytes) -> str:
    return base64.b64encode(v).decode()


def _enum_conv(enum: Any) -> Callable[[Any], Any]:
    names = {v.number: v.name for v in enum.values}

    def conv(v: int) -> Any:
        return names.get(v, v)

    return conv


def _wkt(m: Message) -> Any:
    return json_format.MessageToDict(m, always_print_fields_with_no_presence=True)


def _value_conv(f: Any) -> Callable[[Any], Any]:
    t = f.type
    if t == FieldDescriptor.TYPE_MESSAGE:
        if f.message_type.full_name.startswith("google.protobuf."):
            return _wkt
        return _convert
    if t == FieldDescriptor.TYPE_ENUM:
        return _enum_conv(f.enum_type)
    if t in _INT64_TYPES:
        return str
    if t == FieldDescriptor.TYPE_BYTES:
        return _bytes
    if t == FieldDescriptor.TYPE_FLOAT:
        return _float32
    if t == FieldDescriptor.TYPE_DOUBLE:
        return _double
    return _identity


def _map_key(f: Any) -> Callable[[Any], str]:
    if f.type == FieldDescriptor.TYPE_BOOL:
        return lambda k: "true" if k else "false"
    return str


def _map_conv(kconv: Callable[[Any], str], vconv: Callable[[Any], Any]) -> Callable[[Any], Any]:
    def conv(m: Any) -> dict[str, Any]:
        return {kconv(k): vconv(v) for k, v in m.items()}

    return conv


def _list_conv(item: Callable[[Any], Any]) -> Callable[[Any], Any]:
    def conv(xs: Any) -> list[Any]:
        return [item(x) for x in xs]

    return conv


def _plan(desc: Any) -> _Plan:
    plan: _Plan = []
    for f in sorted(desc.fields, key=lambda f: f.number):
        if _is_map(f):
            kconv = _map_key(f.message_type.fields_by_name["key"])
            vconv = _value_conv(f.message_type.fields_by_name["value"])
            conv: Callable[[Any], Any] = dict if kconv is str and vconv is _identity else _map_conv(kconv, vconv)
        elif f.is_repeated:
            item = _value_conv(f)
            conv = list if item is _identity else _list_conv(item)
        else:
            conv = _value_conv(f)
        plan.append((f.name, f.json_name, bool(f.has_presence), conv))
    return plan


def _compile(desc: Any) -> Callable[[Any], dict[str, Any]]:
    """One straight-line function per message type built from its plan: a loop over the plan
    (tuple unpacking, a call per scalar) cost more than the attribute reads it drives."""
    plan = _plan(desc)
    env: dict[str, Any] = {}
    lines = ["def convert(msg):", "    out = {}"]
    for i, (name, json_name, presence, conv) in enumerate(plan):
        read = f"msg.{name}" if name.isidentifier() and not keyword.iskeyword(name) else f"getattr(msg, {name!r})"
        value = read if conv is _identity else f"c{i}({read})"
        env[f"c{i}"] = conv
        if presence:
            lines.append(f"    if msg.HasField({name!r}):")
            lines.append(f"        out[{json_name!r}] = {value}")
        else:
            lines.append(f"    out[{json_name!r}] = {value}")
    lines.append("    return out")
    # The source is built only from descriptor field names (identifiers, or quoted via repr).
    exec("\n".join(lines), env)
    fn: Callable[[Any], dict[str, Any]] = env["convert"]
    return fn


def _convert(msg: Message) -> dict[str, Any]:
    desc = msg.DESCRIPTOR
    fn = _compiled.get(desc)
    if fn is None:
        fn = _compiled[desc] = _compile(desc)
    return fn(msg)


def to_dict(msg: Message) -> dict[str, Any]:
    """protojson as grpc-gateway emits it: lowerCamelCase names, unpopulated fields included."""
    if msg.DESCRIPTOR.full_name.startswith("google.protobuf."):
        out: dict[str, Any] = json_format.MessageToDict(msg, always_print_fields_with_no_presence=True)
        return out
    return _convert(msg)


def dumps(msg: Message) -> bytes:
    return orjson.dumps(_convert(msg))
