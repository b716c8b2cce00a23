"""JSON Schemas of the OpenAPI document: proto messages as protojson, google.rpc.Status, the Connect error."""

from __future__ import annotations

from typing import Any

from google.protobuf.descriptor import FieldDescriptor

STATUS = "google.rpc.Status"
CONNECT_ERROR = "connect.Error"
_INT32 = {FieldDescriptor.TYPE_INT32, FieldDescriptor.TYPE_SINT32, FieldDescriptor.TYPE_SFIXED32}
_UINT32 = {FieldDescriptor.TYPE_UINT32, FieldDescriptor.TYPE_FIXED32}
_INT64 = {
    FieldDescriptor.TYPE_INT64,
    FieldDescriptor.TYPE_SINT64,
    FieldDescriptor.TYPE_SFIXED64,
    FieldDescriptor.TYPE_UINT64,
    FieldDescriptor.TYPE_FIXED64,
}


def ref(name: str) -> dict[str, Any]:
    return {"$ref": f"#/components/schemas/{name}"}


def is_map(f: Any) -> bool:
    return f.message_type is not None and f.message_type.GetOptions().map_entry


def scalar(f: Any) -> dict[str, Any]:
    """One value of field ``f`` (an element, for repeated fields) as protojson writes it."""
    t = f.type
    if t in _INT32:
        return {"type": "integer", "format": "int32"}
    if t in _UINT32:
        return {"type": "integer", "format": "int32", "minimum": 0}
    if t in _INT64:
        # protojson writes 64-bit integers as strings; either form is accepted on input.
        return {"type": ["string", "integer"], "format": "int64", "pattern": "^-?[0-9]+$"}
    if t in (FieldDescriptor.TYPE_DOUBLE, FieldDescriptor.TYPE_FLOAT):
        return {"type": "number"}
    if t == FieldDescriptor.TYPE_BOOL:
        return {"type": "boolean"}
    if t == FieldDescriptor.TYPE_BYTES:
        return {"type": "string", "contentEncoding": "base64"}
    if t == FieldDescriptor.TYPE_ENUM:
        return {"type": "string", "enum": [v.name for v in f.enum_type.values]}
    if t == FieldDescriptor.TYPE_MESSAGE:
        return ref(f.message_type.full_name)
    return {"type": "string"}


def field(f: Any) -> dict[str, Any]:
    """Field ``f`` as a whole: a map is an object, a repeated field an array."""
    if is_map(f):
        return {"type": "object", "additionalProperties": scalar(f.message_type.fields_by_name["value"])}
    if f.is_repeated:
        return {"type": "array", "items": scalar(f)}
    return scalar(f)


def collect(desc: Any, out: dict[str, Any]) -> None:
    """Add message ``desc`` and every message it reaches to ``out`` (keyed by full name)."""
    if desc.full_name in out:
        return
    out[desc.full_name] = {
        "type": "object",
        "title": desc.name,
        "properties": {f.json_name: field(f) for f in desc.fields},
    }
    for f in desc.fields:
        mt = f.message_type
        if mt is None:
            continue
        if mt.GetOptions().map_entry:
            vt = mt.fields_by_name["value"].message_type
            if vt is not None:
                collect(vt, out)
        else:
            collect(mt, out)


def status() -> dict[str, Any]:
    return {
        "type": "object",
        "title": "Status",
        "description": "google.rpc.Status as protojson: the gRPC code, a message, and typed details "
        "(google.rpc.ErrorInfo with a stable reason, BadRequest with fieldViolations, RetryInfo, RequestInfo).",
        "properties": {
            "code": {"type": "integer", "format": "int32"},
            "message": {"type": "string"},
            "details": {
                "type": "array",
                "items": {"type": "object", "properties": {"@type": {"type": "string"}}, "additionalProperties": True},
            },
        },
        "required": ["code", "message"],
    }


def connect_error() -> dict[str, Any]:
    return {
        "type": "object",
        "title": "Connect error",
        "description": "The Connect protocol's error: the code by name, a message, and each detail as its "
        "type, its value (base64 protobuf, no padding) and a protojson rendering under debug.",
        "properties": {
            "code": {"type": "string"},
            "message": {"type": "string"},
            "details": {
                "type": "array",
                "items": {
                    "type": "object",
                    "properties": {"type": {"type": "string"}, "value": {"type": "string"}, "debug": {}},
                    "required": ["type", "value"],
                },
            },
        },
        "required": ["code"],
    }


def sse_event(out_name: str) -> dict[str, Any]:
    """One Server-Sent Event of a stream (the OpenAPI 3.2 way of modelling SSE, as tools read it)."""
    return {
        "type": "object",
        "properties": {
            "event": {"type": "string"},
            "id": {"type": "string"},
            "retry": {"type": "integer"},
            "data": {
                "type": "string",
                "contentMediaType": "application/json",
                "contentSchema": {"anyOf": [ref(out_name), ref(STATUS)]},
            },
        },
    }


BINARY: dict[str, Any] = {"type": "string", "format": "binary"}
