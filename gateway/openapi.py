"""OpenAPI 3.1 document generated from the descriptors and the gateway's routes (one source of truth)."""

from __future__ import annotations

import functools
from typing import Any

import orjson
from google.protobuf.descriptor import FieldDescriptor

from rune.gateway import routes
from rune.gateway.routes import HttpRule
from runed import __version__
from runed.pipeline import methods
from runed.pipeline.methods import Method

STATUS_REF = "#/components/schemas/google.rpc.Status"
_INT32 = {FieldDescriptor.TYPE_INT32, FieldDescriptor.TYPE_SINT32, FieldDescriptor.TYPE_SFIXED32}
_UINT32 = {FieldDescriptor.TYPE_UINT32, FieldDescriptor.TYPE_FIXED32}
_INT64 = {
    FieldDescriptor.TYPE_INT64,
    FieldDescriptor.TYPE_SINT64,
    FieldDescriptor.TYPE_SFIXED64,
    FieldDescriptor.TYPE_UINT64,
    FieldDescriptor.TYPE_FIXED64,
}
# Query parameters reach this deep into nested messages (paging.limit).
QUERY_DEPTH = 2


def _ref(full_name: str) -> dict[str, Any]:
    return {"$ref": f"#/components/schemas/{full_name}"}


def _is_map(f: Any) -> bool:
    return f.message_type is not None and f.message_type.GetOptions().map_entry


def _scalar_schema(f: Any) -> dict[str, Any]:
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
        return _ref(f.message_type.full_name)
    return {"type": "string"}


def _field_schema(f: Any) -> dict[str, Any]:
    if _is_map(f):
        return {"type": "object", "additionalProperties": _scalar_schema(f.message_type.fields_by_name["value"])}
    if f.is_repeated:
        return {"type": "array", "items": _scalar_schema(f)}
    return _scalar_schema(f)


def _message_schema(desc: Any) -> dict[str, Any]:
    props = {f.json_name: _field_schema(f) for f in desc.fields}
    return {"type": "object", "title": desc.name, "properties": props}


def _collect(desc: Any, out: dict[str, Any]) -> None:
    if desc.full_name in out:
        return
    out[desc.full_name] = _message_schema(desc)
    for f in desc.fields:
        mt = f.message_type
        if mt is None:
            continue
        if mt.GetOptions().map_entry:
            vt = mt.fields_by_name["value"].message_type
            if vt is not None:
                _collect(vt, out)
        else:
            _collect(mt, out)


def _status_schema() -> dict[str, Any]:
    return {
        "type": "object",
        "title": "Status",
        "description": "google.rpc.Status as protojson: the gRPC code, a message, and typed details "
        "(google.rpc.BadRequest with fieldViolations, RetryInfo, RequestInfo).",
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


def _error_responses() -> dict[str, Any]:
    return {
        "default": {
            "description": "Error: HTTP status from the gRPC code (400, 401, 403, 404, 405, 409, 412, 413, 429 "
            "with Retry-After, 501, 503, 500); body google.rpc.Status.",
            "content": {"application/json": {"schema": {"$ref": STATUS_REF}}},
        }
    }


def _sse_event_schema(out_name: str) -> dict[str, Any]:
    """One event of the stream (the OpenAPI 3.2 way of modelling SSE, as tools read it)."""
    return {
        "type": "object",
        "properties": {
            "event": {"type": "string"},
            "id": {"type": "string"},
            "retry": {"type": "integer"},
            "data": {
                "type": "string",
                "contentMediaType": "application/json",
                "contentSchema": {"anyOf": [_ref(out_name), {"$ref": STATUS_REF}]},
            },
        },
    }


def _success(m: Method, rpc_style: bool = False) -> dict[str, Any]:
    out_name = m.descriptor.output_type.full_name
    if m.kind == "bidi" and rpc_style:
        return {
            "description": f"The body is the first (and only) request message; every {out_name} comes back "
            "as a Server-Sent Event.",
            "content": {"text/event-stream": {"schema": _sse_event_schema(out_name)}},
        }
    if m.kind == "bidi" and m.name == "StreamExec":
        return {
            "description": "Starts an exec session: 201 with {sessionId}; its output streams from "
            "GET .../exec/sessions/{id}/output (SSE), input goes to POST .../exec/sessions/{id}/input, "
            "and .../exec/{target}/ws is the interactive WebSocket form.",
            "content": {"application/json": {"schema": {"type": "object"}}},
        }
    if m.kind == "bidi":
        return {
            "description": f"Without follow: JSON lines (one {out_name} per line). With follow=true: Server-Sent "
            "Events whose id: is the line's cursor (resume with Last-Event-ID).",
            "content": {
                "application/x-ndjson": {"schema": {"type": "string"}},
                "text/event-stream": {"schema": _sse_event_schema(out_name)},
            },
        }
    if m.server_streaming:
        return {
            "description": f"Server-Sent Events: `data:` is a {out_name} as protojson; `event:` is ADDED, "
            "MODIFIED or DELETED for watches (else `message`), `error` for a final google.rpc.Status; `id:` is "
            "the store revision (send it back as Last-Event-ID to resume).",
            "content": {"text/event-stream": {"schema": _sse_event_schema(out_name)}},
        }
    return {"description": out_name, "content": {"application/json": {"schema": _ref(out_name)}}}


def _query_params(desc: Any, skip: set[str], prefix: str = "", depth: int = 0) -> list[dict[str, Any]]:
    params: list[dict[str, Any]] = []
    for f in desc.fields:
        name = prefix + f.name
        if name in skip or _is_map(f):
            continue
        if f.message_type is not None:
            if not f.is_repeated and depth + 1 < QUERY_DEPTH:
                params += _query_params(f.message_type, skip, name + ".", depth + 1)
            continue
        schema = _field_schema(f)
        param: dict[str, Any] = {"name": name, "in": "query", "required": False, "schema": schema}
        if f.is_repeated:
            param["explode"] = True
        params.append(param)
    return params


def _operation_id(m: Method, suffix: str = "") -> str:
    return f"{m.service}_{m.name}{suffix}"


def _rest_operation(rule: HttpRule, index: int) -> dict[str, Any]:
    m = rule.method
    req = m.descriptor.input_type
    path_params = [
        {
            "name": routes.openapi_param(f),
            "in": "path",
            "required": True,
            "description": f"Sets the request field `{f}`.",
            "schema": {"type": "string", "pattern": "^[^/:]+$"},
        }
        for f in rule.path_fields
    ]
    params = list(path_params)
    if rule.body != "*":
        skip = set(rule.path_fields) | ({rule.body} if rule.body else set())
        params += _query_params(req, skip)
    op: dict[str, Any] = {
        "operationId": _operation_id(m, "" if index == 0 else f"_{index}"),
        "tags": [m.service],
        "summary": f"{m.service}.{m.name}",
        "parameters": params,
        "responses": {"201" if m.name == "StreamExec" else "200": _success(m), **_error_responses()},
    }
    if m.server_streaming and m.kind != "bidi":
        op["parameters"].append(
            {
                "name": "Last-Event-ID",
                "in": "header",
                "required": False,
                "schema": {"type": "string", "pattern": "^[0-9]+$"},
            }
        )
    if rule.body:
        if rule.body == "*":
            schema = _ref(req.full_name)
        else:
            schema = _field_schema(req.fields_by_name[rule.body])
        op["requestBody"] = {"required": False, "content": {"application/json": {"schema": schema}}}
    return op


def _rpc_operation(m: Method) -> dict[str, Any]:
    return {
        "operationId": _operation_id(m, "_rpc"),
        "tags": [m.service],
        "summary": f"{m.service}.{m.name} (RPC style; also the Connect protocol's unary JSON form)",
        "requestBody": {
            "required": False,
            "content": {"application/json": {"schema": _ref(m.descriptor.input_type.full_name)}},
        },
        "responses": {"200": _success(m, rpc_style=True), **_error_responses()},
    }


def _ops_paths() -> dict[str, Any]:
    def plain(summary: str, schema: dict[str, Any], codes: tuple[str, ...] = ("200",)) -> dict[str, Any]:
        return {
            "get": {
                "operationId": summary.split(":")[0].strip().lstrip("/").replace(".", "_"),
                "tags": ["operations"],
                "summary": summary,
                "security": [],
                "responses": {
                    c: {"description": summary, "content": {"application/json": {"schema": schema}}} for c in codes
                },
            }
        }

    obj = {"type": "object"}
    return {
        "/healthz": plain("healthz: the process is up", obj),
        "/readyz": plain(
            "readyz: store open and the gRPC role serving (503 names the failing check)", obj, ("200", "503")
        ),
        "/livez": plain("livez: component detail", obj, ("200", "503")),
        "/version": plain("version: build, git commit, python, grpc and protobuf versions", obj),
        "/openapi.json": plain("openapi: this document", obj),
        "/descriptor.binpb": {
            "get": {
                "operationId": "descriptors",
                "tags": ["operations"],
                "summary": "The rune.api FileDescriptorSet (for buf curl --schema and other dynamic clients)",
                "security": [],
                "responses": {
                    "200": {
                        "description": "binary google.protobuf.FileDescriptorSet",
                        "content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}},
                    }
                },
            }
        },
        "/metrics": {
            "get": {
                "operationId": "metrics",
                "tags": ["operations"],
                "summary": "Prometheus metrics (text exposition format)",
                "security": [],
                "responses": {
                    "200": {"description": "metrics", "content": {"text/plain": {"schema": {"type": "string"}}}}
                },
            }
        },
    }


def build_document() -> dict[str, Any]:
    schemas: dict[str, Any] = {"google.rpc.Status": _status_schema()}
    for m in methods.all_methods():
        _collect(m.descriptor.input_type, schemas)
        _collect(m.descriptor.output_type, schemas)
    paths: dict[str, Any] = _ops_paths()
    seen: dict[str, int] = {}
    for rule in routes.http_rules():
        n = seen.get(rule.method.full_name, 0)
        seen[rule.method.full_name] = n + 1
        paths.setdefault(rule.openapi_path, {})[rule.verb.lower()] = _rest_operation(rule, n)
    for m in methods.all_methods():
        paths[m.full_name] = {"post": _rpc_operation(m)}
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "rune.api REST gateway",
            "version": __version__,
            "description": "Generated from the rune.api proto descriptors and their google.api.http options. "
            "Every RPC is also served as POST /rune.api.<Service>/<Method> with the request as JSON.",
        },
        "servers": [{"url": "/"}],
        "security": [{"bearer": []}],
        "paths": dict(sorted(paths.items())),
        "components": {
            "schemas": dict(sorted(schemas.items())),
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
    }


@functools.cache
def document() -> bytes:
    return orjson.dumps(build_document())
