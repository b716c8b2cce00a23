"""OpenAPI 3.1 document generated from the descriptors and the gateway's routes (one source of truth).

Every route the REST port serves has a path here: the resource routes of the ``google.api.http``
options, the RPC routes (plain JSON and the Connect protocol, GET included for side-effect-free
methods), the logs and exec routes (sessions and the WebSocket), and the operations endpoints.
Equivalent resource templates (``/v1/namespaces/{namespace}/services`` and
``/v1/namespaces/{service.namespace}/services``) share one path, whose parameters are named after
the simplest of the rules (OpenAPI 3.1 allows one template per path); each operation says which
request field a parameter sets.
"""

from __future__ import annotations

import functools
from typing import Any

import orjson

from rune.gateway import connect, routes, schemas
from rune.gateway.routes import HttpRule
from rune.gateway.schemas import BINARY, CONNECT_ERROR, STATUS, ref
from runed import __version__
from runed.pipeline import methods
from runed.pipeline.methods import Method

# Query parameters reach this deep into nested messages (paging.limit).
QUERY_DEPTH = 2
SEGMENT = {"type": "string", "pattern": "^[^/:]+$"}
# Logs and exec targets: service/<name>, svc/<name>, instance/<id>, inst/<id> or a bare service name.
TARGET = {"type": "string", "minLength": 1}
LOGS_METHOD = "/rune.api.LogService/StreamLogs"
EXEC_METHOD = "/rune.api.ExecService/StreamExec"


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _errors(*schema_names: str) -> dict[str, Any]:
    if len(schema_names) == 1:
        schema = ref(schema_names[0])
    else:
        schema = {"anyOf": [ref(n) for n in schema_names]}
    what = {
        STATUS: "google.rpc.Status with the HTTP status of the gRPC code (400, 401, 403, 404, 405, 409, 412, 413, "
        "415, 429 with Retry-After, 501, 503, 500)",
        CONNECT_ERROR: "a Connect error with the Connect protocol's status table",
    }
    return {"default": _json(schema, "Error: " + "; or ".join(what[n] for n in schema_names) + ".")}


def _path_param(name: str, description: str, schema: dict[str, Any] = SEGMENT) -> dict[str, Any]:
    return {"name": name, "in": "path", "required": True, "description": description, "schema": schema}


def _query(name: str, schema: dict[str, Any], description: str = "", required: bool = False) -> dict[str, Any]:
    param: dict[str, Any] = {"name": name, "in": "query", "required": required, "schema": schema}
    if description:
        param["description"] = description
    return param


def _last_event_id(description: str) -> dict[str, Any]:
    return {
        "name": "Last-Event-ID",
        "in": "header",
        "required": False,
        "description": description,
        "schema": {"type": "string"},
    }


def _sse(out_name: str, description: str) -> dict[str, Any]:
    return {"description": description, "content": {"text/event-stream": {"schema": schemas.sse_event(out_name)}}}


# -- resource routes (google.api.http) ------------------------------------------------------------


def _query_params(desc: Any, skip: set[str], prefix: str = "", depth: int = 0) -> list[dict[str, Any]]:
    params: list[dict[str, Any]] = []
    for f in desc.fields:
        name = prefix + f.name
        if name in skip:
            continue
        if schemas.is_map(f):
            # label_selector[tier]=gold: one query parameter per key.
            param = _query(name, schemas.field(f), f"Sets the map `{name}`: `{name}[key]=value`, once per key.")
            params.append({**param, "style": "deepObject", "explode": True})
            continue
        if f.message_type is not None:
            if not f.is_repeated and depth + 1 < QUERY_DEPTH:
                params += _query_params(f.message_type, skip, name + ".", depth + 1)
            continue
        param = _query(name, schemas.field(f))
        if f.is_repeated:
            param["explode"] = True
        params.append(param)
    return params


def _operation_id(m: Method, suffix: str = "") -> str:
    return f"{m.service}_{m.name}{suffix}"


def _success(m: Method) -> dict[str, Any]:
    out_name = m.descriptor.output_type.full_name
    if m.server_streaming:
        return _sse(
            out_name,
            f"Server-Sent Events: `data:` is a {out_name} as protojson; `event:` is ADDED, MODIFIED or DELETED for "
            "watches (else `message`), `error` for a final google.rpc.Status; `id:` is the store revision (send it "
            "back as Last-Event-ID to resume).",
        )
    return _json(ref(out_name), out_name)


def _rest_operation(rule: HttpRule, names: tuple[str, ...], index: int) -> dict[str, Any]:
    m = rule.method
    req = m.descriptor.input_type
    params = [_path_param(n, f"Sets the request field `{f}`.") for n, f in zip(names, rule.path_fields, strict=True)]
    if rule.body != "*":
        params += _query_params(req, set(rule.path_fields) | ({rule.body} if rule.body else set()))
    if m.server_streaming:
        params.append(_last_event_id("Resume after this store revision (what a reconnecting EventSource sends)."))
    op: dict[str, Any] = {
        "operationId": _operation_id(m, "" if index == 0 else f"_{index}"),
        "tags": [m.service],
        "summary": f"{m.service}.{m.name}",
        "parameters": params,
        "responses": {"200": _success(m), **_errors(STATUS)},
    }
    if rule.body:
        schema = ref(req.full_name) if rule.body == "*" else schemas.field(req.fields_by_name[rule.body])
        op["requestBody"] = {"required": False, "content": {"application/json": {"schema": schema}}}
    return op


def _canonical_names(rules: tuple[HttpRule, ...]) -> dict[str, tuple[str, ...]]:
    """Per template shape, the parameter names of its simplest rule (fewest nested fields, then first)."""
    best: dict[str, HttpRule] = {}
    for r in rules:
        cur = best.get(r.shape)
        if cur is None or sum(f.count(".") for f in r.path_fields) < sum(f.count(".") for f in cur.path_fields):
            best[r.shape] = r
    return {shape: tuple(routes.openapi_param(f) for f in r.path_fields) for shape, r in best.items()}


def _fill(shape: str, names: tuple[str, ...]) -> str:
    parts = shape.split("{}")
    return parts[0] + "".join("{" + n + "}" + rest for n, rest in zip(names, parts[1:], strict=True))


def _resource_paths() -> dict[str, Any]:
    rules = tuple(r for r in routes.http_rules() if r.method.kind != "bidi")  # logs/exec: see _bidi_paths
    names = _canonical_names(rules)
    paths: dict[str, Any] = {}
    seen: dict[str, int] = {}
    for rule in rules:
        n = seen.get(rule.method.full_name, 0)
        seen[rule.method.full_name] = n + 1
        path = _fill(rule.shape, names[rule.shape])
        paths.setdefault(path, {})[rule.verb.lower()] = _rest_operation(rule, names[rule.shape], n)
    return paths


# -- RPC routes (plain JSON and Connect) ------------------------------------------------------------


def _rpc_post(m: Method) -> dict[str, Any]:
    in_name, out_name = m.descriptor.input_type.full_name, m.descriptor.output_type.full_name
    request: dict[str, Any] = {"application/json": {"schema": ref(in_name)}}
    ok: dict[str, Any]
    if m.kind == "unary":
        request["application/proto"] = {"schema": BINARY}
        ok = {
            "description": f"{out_name}, in the request's codec",
            "content": {"application/json": {"schema": ref(out_name)}, "application/proto": {"schema": BINARY}},
        }
    else:
        envelopes = {"schema": BINARY}
        request["application/connect+json"] = envelopes
        request["application/connect+proto"] = envelopes
        ok = _sse(
            out_name,
            f"A JSON request: every {out_name} as a Server-Sent Event. A Connect request (application/connect+json "
            "or +proto, each message in an envelope): the responses in envelopes of the same codec, then an "
            "end-stream envelope with the error, if any, and the metadata."
            + (" Served half-duplex: the request envelopes are read to the end first." if m.kind == "bidi" else ""),
        )
        ok["content"]["application/connect+json"] = envelopes
        ok["content"]["application/connect+proto"] = envelopes
    return {
        "operationId": _operation_id(m, "_rpc"),
        "tags": [m.service],
        "summary": f"{m.service}.{m.name} (RPC style: plain JSON, or the Connect protocol)",
        "description": "Connect calls (Connect-Protocol-Version: 1, or a proto/Connect content type) get Connect "
        "errors; Content-Encoding / Connect-Content-Encoding gzip or identity; responses compressed per "
        "Accept-Encoding / Connect-Accept-Encoding.",
        "requestBody": {"required": False, "content": request},
        "responses": {"200": ok, **_errors(STATUS, CONNECT_ERROR)},
    }


def _rpc_get(m: Method) -> dict[str, Any]:
    out_name = m.descriptor.output_type.full_name
    return {
        "operationId": _operation_id(m, "_get"),
        "tags": [m.service],
        "summary": f"{m.service}.{m.name} (Connect GET: this method has no side effects)",
        "parameters": [
            _query("connect", {"type": "string", "enum": ["v1"]}, "The Connect protocol version."),
            _query("encoding", {"type": "string", "enum": list(connect.GET_ENCODINGS)}, "The message's codec.", True),
            _query(
                "message",
                {"type": "string"},
                f"The {m.descriptor.input_type.full_name}: JSON, or with base64=1 URL-safe base64 of its bytes.",
                True,
            ),
            _query("base64", {"type": "string", "enum": ["1"]}, "The message is URL-safe base64."),
            _query(
                "compression", {"type": "string", "enum": list(connect.COMPRESSIONS)}, "How the message is compressed."
            ),
        ],
        "responses": {
            "200": {
                "description": f"{out_name}, in the codec of encoding=",
                "content": {"application/json": {"schema": ref(out_name)}, "application/proto": {"schema": BINARY}},
            },
            **_errors(CONNECT_ERROR),
        },
    }


def _rpc_paths() -> dict[str, Any]:
    paths: dict[str, Any] = {}
    for m in methods.all_methods():
        item = {"post": _rpc_post(m)}
        if connect.side_effect_free(m):
            item["get"] = _rpc_get(m)
        paths[m.full_name] = item
    return paths


# -- logs and exec ----------------------------------------------------------------------------------


def _bidi_paths() -> dict[str, Any]:
    ns = _path_param("namespace", "The namespace of the target.")
    target = _path_param("target", "service/<name>, svc/<name>, instance/<id>, inst/<id> or a service name.", TARGET)
    session = _path_param("id", "The sessionId from the POST that started the session.")
    flag = {"type": "boolean"}
    log_out = "rune.api.LogResponse"
    exec_out = "rune.api.ExecResponse"
    logs = {
        "get": {
            "operationId": "LogService_StreamLogs",
            "tags": ["LogService"],
            "summary": "LogService.StreamLogs",
            "parameters": [
                ns,
                target,
                _query("follow", flag, "Keep the stream open for new lines (Server-Sent Events)."),
                _query("tail", {"type": "integer", "minimum": 0}, "Start with the last N lines."),
                _query("since", {"type": "string"}, "Lines from this time on (RFC 3339, or a duration like 5m)."),
                _query("until", {"type": "string"}, "Lines up to this time."),
                _query("timestamps", flag),
                _query("show_events", flag, "Include lifecycle events."),
                _query("filter", {"type": "string"}, "Only lines containing this text."),
                _query("stream", {"type": "string"}, "stdout, stderr, or empty for both."),
                _query("after_cursor", {"type": "string"}, "Resume after this cursor (LogResponse.cursor)."),
                _query(
                    "max_batch",
                    {"type": "integer", "minimum": 0, "maximum": 1000},
                    "Up to this many lines per event or JSON line, in `lines` (0 or 1: one line each).",
                ),
                _last_event_id("A cursor: resume after it (what a reconnecting EventSource sends)."),
            ],
            "responses": {
                "200": {
                    "description": f"Without follow: JSON lines (one {log_out} per line). With follow=true: "
                    "Server-Sent Events whose id: is the line's cursor (resume with Last-Event-ID).",
                    "content": {
                        "application/x-ndjson": {"schema": {"type": "string"}},
                        "text/event-stream": {"schema": schemas.sse_event(log_out)},
                    },
                },
                **_errors(STATUS),
            },
        }
    }
    create = {
        "post": {
            "operationId": "ExecService_StreamExec",
            "tags": ["ExecService"],
            "summary": "ExecService.StreamExec: start an exec session",
            "parameters": [ns, target],
            "requestBody": {
                "required": False,
                "content": {"application/json": {"schema": ref("rune.api.ExecInitRequest")}},
            },
            "responses": {
                "201": _json(
                    {"type": "object", "properties": {"sessionId": {"type": "string"}}, "required": ["sessionId"]},
                    "The session started: read its output from .../exec/sessions/{id}/output, feed it with "
                    ".../exec/sessions/{id}/input (or use .../exec/{target}/ws, the interactive WebSocket form).",
                ),
                **_errors(STATUS),
            },
        }
    }
    close = {"type": "object", "properties": {"close": {"type": "boolean"}}, "required": ["close"]}
    input_ = {
        "post": {
            "operationId": "ExecService_session_input",
            "tags": ["ExecService"],
            "summary": 'Feed an exec session: stdin (base64), resize or signal; {"close": true} ends its input',
            "parameters": [ns, session],
            "requestBody": {
                "required": True,
                "content": {"application/json": {"schema": {"anyOf": [ref("rune.api.ExecRequest"), close]}}},
            },
            "responses": {"204": {"description": "Taken."}, **_errors(STATUS)},
        }
    }
    output = {
        "get": {
            "operationId": "ExecService_session_output",
            "tags": ["ExecService"],
            "summary": "Read an exec session's output",
            "parameters": [ns, session],
            "responses": {
                "200": _sse(
                    exec_out,
                    f"Server-Sent Events: `event:` status, stdout, stderr or exit; `data:` the {exec_out} as "
                    "protojson (bytes in base64); `error` for a final google.rpc.Status.",
                ),
                **_errors(STATUS),
            },
        }
    }
    websocket = {
        "get": {
            "operationId": "ExecService_websocket",
            "tags": ["ExecService"],
            "summary": "ExecService.StreamExec as a WebSocket (interactive)",
            "description": "Upgrade to a WebSocket (credentials in Authorization, or the subprotocols rune.exec.v1 "
            "and bearer.<token>). The first text message is the ExecInitRequest JSON; then text messages are "
            "ExecRequest JSON and binary messages raw stdin (an empty one closes input); every ExecResponse comes "
            "back as a JSON text message. A GET without the upgrade is answered 426.",
            "parameters": [
                ns,
                target,
                {"name": "Sec-WebSocket-Protocol", "in": "header", "required": False, "schema": {"type": "string"}},
            ],
            "responses": {
                "101": {"description": "Switching Protocols: the WebSocket is open."},
                "426": _json(ref(STATUS), "Upgrade Required: this path speaks WebSocket only."),
                **_errors(STATUS),
            },
        }
    }
    base = "/v1/namespaces/{namespace}"
    return {
        f"{base}/logs/{{target}}": logs,
        f"{base}/exec/{{target}}": create,
        f"{base}/exec/{{target}}/ws": websocket,
        f"{base}/exec/sessions/{{id}}/input": input_,
        f"{base}/exec/sessions/{{id}}/output": output,
    }


# -- operations -----------------------------------------------------------------------------------


def _ops_paths() -> dict[str, Any]:
    obj = {"type": "object"}

    def get(op_id: str, summary: str, responses: dict[str, Any], public: bool = True) -> dict[str, Any]:
        op: dict[str, Any] = {"operationId": op_id, "tags": ["operations"], "summary": summary, "responses": responses}
        if public:
            op["security"] = []
        return {"get": op}

    def plain(op_id: str, summary: str, codes: tuple[str, ...] = ("200",)) -> dict[str, Any]:
        return get(op_id, summary, {c: _json(obj, summary) for c in codes})

    return {
        "/healthz": plain("healthz", "healthz: the process is up"),
        "/readyz": plain(
            "readyz", "readyz: store open and the gRPC role serving (503 names the failing check)", ("200", "503")
        ),
        "/livez": plain("livez", "livez: component detail", ("200", "503")),
        "/version": plain("version", "version: build, git commit, python, grpc and protobuf versions"),
        "/info": plain("info", "info: version, commit, build date and features"),
        "/config": get(
            "config",
            "config: the running configuration, credentials redacted (admin only)",
            {"200": _json(obj, "The configuration and where it came from."), **_errors(STATUS)},
            public=False,
        ),
        "/openapi.json": plain("openapi", "openapi: this document"),
        "/descriptor.binpb": get(
            "descriptors",
            "The rune.api FileDescriptorSet (for buf curl --schema and other dynamic clients)",
            {
                "200": {
                    "description": "binary google.protobuf.FileDescriptorSet",
                    "content": {"application/octet-stream": {"schema": BINARY}},
                }
            },
        ),
        "/metrics": get(
            "metrics",
            "Prometheus metrics (text exposition format)",
            {"200": {"description": "metrics", "content": {"text/plain": {"schema": {"type": "string"}}}}},
        ),
    }


def build_document() -> dict[str, Any]:
    components: dict[str, Any] = {STATUS: schemas.status(), CONNECT_ERROR: schemas.connect_error()}
    for m in methods.all_methods():
        schemas.collect(m.descriptor.input_type, components)
        schemas.collect(m.descriptor.output_type, components)
    paths = {**_ops_paths(), **_resource_paths(), **_bidi_paths(), **_rpc_paths()}
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "rune.api REST gateway",
            "version": __version__,
            "description": "Generated from the rune.api proto descriptors and their google.api.http options. "
            "Every RPC is also served as POST /rune.api.<Service>/<Method> with the request as JSON or in the "
            "Connect protocol (side-effect-free ones also as Connect GET).",
        },
        "servers": [{"url": "/"}],
        "security": [{"bearer": []}],
        "paths": dict(sorted(paths.items())),
        "components": {
            "schemas": dict(sorted(components.items())),
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
    }


@functools.cache
def document() -> bytes:
    return orjson.dumps(build_document())
