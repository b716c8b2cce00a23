"""One error contract on every transport, over a real runed: the HTTP status of errors known before a
stream's first frame, body errors named by their JSON path, ``google.rpc.ErrorInfo`` on gRPC, REST,
Connect and SSE, logs and exec agreeing on a missing target, WatchScaling ending without a target,
and the Connect protocol's own status table on the Connect routes."""

from __future__ import annotations

import base64
import json
from collections.abc import Callable, Iterator
from typing import Any

import grpc
import httpx
import pytest
from google.rpc import error_details_pb2

from rune.api import (
    auth_pb2,
    auth_pb2_grpc,
    exec_pb2,
    exec_pb2_grpc,
    logs_pb2,
    logs_pb2_grpc,
    service_pb2,
    service_pb2_grpc,
)
from tests.integration.orch import Orch
from tests.support import Metadata, error_info, eventually, sse_events

ERROR_INFO = "type.googleapis.com/google.rpc.ErrorInfo"
BAD_REQUEST = "type.googleapis.com/google.rpc.BadRequest"
REQUEST_INFO = "type.googleapis.com/google.rpc.RequestInfo"
CONNECT = {"connect-protocol-version": "1", "content-type": "application/json"}
ANON = {"authorization": ""}
NO_SERVICE = "SERVICE_NOT_FOUND"
# A bare logs target names a service or an instance.
NO_TARGET = "SERVICE_OR_INSTANCE_NOT_FOUND"
# Sleeps until killed: a service that stays at its scale.
SLEEPER = "import time\nprint('up', flush=True)\nwhile True:\n    time.sleep(1)\n"
# What protobuf and Python say when they parse: none of it may reach a client.
LEAKS = ("invalid literal", "Available Fields", "Failed to parse", "base 10")


def _headers(auth: Metadata) -> dict[str, str]:
    return {"authorization": auth[0][1]}


@pytest.fixture
def client(orch: Orch) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=orch.runed.http_base, headers=_headers(orch.auth), timeout=30) as c:
        yield c


def _readonly(orch: Orch) -> Metadata:
    """A token whose policy may read (and follow logs) but not exec or write."""
    resp = auth_pb2_grpc.AuthServiceStub(orch.runed.channel()).CreateToken(
        auth_pb2.CreateTokenRequest(name="ro-token", subject_name="ro-user", policies=["readonly"]), metadata=orch.auth
    )
    return [("authorization", f"Bearer {resp.secret}")]


def _detail(body: dict[str, Any], type_url: str) -> dict[str, Any]:
    found: list[dict[str, Any]] = [d for d in body.get("details", []) if d["@type"] == type_url]
    assert len(found) == 1, body
    return found[0]


def _violations(body: dict[str, Any]) -> dict[str, str]:
    return {v["field"]: v["description"] for v in _detail(body, BAD_REQUEST)["fieldViolations"]}


def _grpc_error(call: Callable[[], object]) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as e:
        call()
    return e.value


# -- 1. errors known before a stream's first frame ----------------------------------------------------
def test_stream_routes_answer_errors_known_before_the_first_frame_with_their_http_status(
    orch: Orch, client: httpx.Client
) -> None:
    readonly = _headers(_readonly(orch))
    cases = [
        # RPC-style bidi routes (were HTTP 200 with an `event: error` frame).
        ("POST", "/rune.api.LogService/StreamLogs", {"resourceTarget": "nope"}, None, 404, NO_TARGET),
        ("POST", "/rune.api.LogService/StreamLogs", {"resourceTarget": "nope"}, ANON, 401, "UNAUTHENTICATED"),
        ("POST", "/rune.api.LogService/StreamLogs", {"resourceTarget": "pod/x"}, None, 400, "INVALID_FIELD"),
        ("POST", "/rune.api.ExecService/StreamExec", {"init": {"serviceName": "nope", "command": ["true"]}}, None,
         404, "SERVICE_NOT_FOUND"),
        ("POST", "/rune.api.ExecService/StreamExec", {"init": {"serviceName": "nope", "command": ["true"]}}, readonly,
         403, "PERMISSION_DENIED"),
        # RPC-style and resource server streams, SSE routes.
        ("POST", "/rune.api.ServiceService/WatchScaling", {"serviceName": "nope", "targetScale": 1}, None, 404,
         "SERVICE_NOT_FOUND"),
        ("GET", "/v1/namespaces/default/services/nope:watchScaling?targetScale=1", None, None, 404, NO_SERVICE),
        ("GET", "/v1/namespaces/default/services:watch", None, ANON, 401, "UNAUTHENTICATED"),
        ("GET", "/v1/namespaces/default/logs/nope?follow=true", None, None, 404, NO_TARGET),
    ]  # fmt: skip
    for verb, path, body, headers, status, reason in cases:
        kw: dict[str, Any] = {"json": body} if body is not None else {}
        if headers is not None:
            kw["headers"] = headers
        r = client.request(verb, path, **kw)
        assert (r.status_code, r.headers["content-type"].split(";")[0]) == (status, "application/json"), (path, r.text)
        assert _detail(r.json(), ERROR_INFO)["reason"] == reason, (path, r.text)


# -- 2. body errors name the JSON path --------------------------------------------------------------------
def test_body_errors_name_the_json_path_what_was_expected_and_the_allowed_values(client: httpx.Client) -> None:
    r = client.post(
        "/v1/namespaces/default/services",
        json={"name": "web", "scale": "abc", "ports": [{"port": "x"}], "restartPolicy": "SOMETIMES", "comand": "x"},
    )
    assert r.status_code == 400, r.text
    assert not any(leak in r.text for leak in LEAKS), r.text
    policies = "RESTART_POLICY_UNSPECIFIED, RESTART_POLICY_ALWAYS, RESTART_POLICY_ON_FAILURE, RESTART_POLICY_NEVER"
    assert _violations(r.json()) == {
        "service.scale": 'expected an integer, got "abc"',
        "service.ports[0].port": 'expected an integer, got "x"',
        "service.restartPolicy": f'unknown value "SOMETIMES" (expected one of {policies})',
        "service.comand": 'unknown field (did you mean "command"?)',
    }

    # A body that is not an object (every body is a message): named as such, not taken for an empty
    # one with the path's fields set in it.
    for body, got in (([], "an array"), (None, "null"), ("web", '"web"'), (3, "3")):
        r = client.post(
            "/v1/namespaces/default/services", content=json.dumps(body), headers={"content-type": "application/json"}
        )
        assert r.status_code == 400, r.text
        assert _violations(r.json()) == {"body": f"expected a JSON object, got {got}"}, r.text
        r = client.put(
            "/v1/namespaces/default/services/web",
            content=json.dumps(body),
            headers={"content-type": "application/json"},
        )
        assert r.status_code == 400 and _violations(r.json()) == {"body": f"expected a JSON object, got {got}"}

    # Connect JSON: the same words, in Connect's error shape.
    r = client.post(
        "/rune.api.ServiceService/ScaleService", json={"name": "web", "scale": 1e12, "mode": "FAST"}, headers=CONNECT
    )
    assert r.status_code == 400 and r.json()["code"] == "invalid_argument", r.text
    (bad,) = [d["debug"] for d in r.json()["details"] if d["type"] == "google.rpc.BadRequest"]
    assert {v["field"]: v["description"] for v in bad["fieldViolations"]} == {
        "scale": "expected an integer from -2147483648 to 2147483647, got 1000000000000",
        "mode": 'unknown value "FAST" (expected one of SCALING_MODE_UNSPECIFIED, SCALING_MODE_IMMEDIATE, '
        "SCALING_MODE_GRADUAL)",
    }

    # Query parameters.
    r = client.get("/v1/namespaces/default/services", params={"paging.limit": "ten"})
    assert r.status_code == 400 and _violations(r.json()) == {"paging.limit": 'expected an integer, got "ten"'}

    # The exec route's own body.
    r = client.post("/v1/namespaces/default/exec/web", json={"command": "ls", "tty": "yes", "terminalSize": []})
    assert r.status_code == 400, r.text
    assert _violations(r.json()) == {
        "command": 'expected an array, got "ls"',
        "tty": 'expected true or false, got "yes"',
        "terminalSize": "expected a JSON object for TerminalSize, got an array",
    }


# -- 3. ErrorInfo on every transport ------------------------------------------------------------------------
def test_every_error_carries_error_info_over_grpc(orch: Orch) -> None:
    stub = service_pb2_grpc.ServiceServiceStub(orch.runed.channel())
    err = _grpc_error(lambda: stub.GetService(service_pb2.GetServiceRequest(name="nope"), metadata=orch.auth))
    info = error_info(err)
    assert (info.reason, info.domain) == ("SERVICE_NOT_FOUND", "rune.api")
    assert dict(info.metadata) == {"kind": "service", "name": "nope", "namespace": "default"}

    err = _grpc_error(lambda: stub.GetService(service_pb2.GetServiceRequest(name="nope")))
    assert error_info(err).reason == "UNAUTHENTICATED"

    err = _grpc_error(
        lambda: stub.ScaleService(service_pb2.ScaleServiceRequest(name="web", scale=10**6), metadata=orch.auth)
    )
    info = error_info(err)
    assert info.reason == "SCALE_LIMIT" and info.metadata["field"] == "scale", info

    bad = service_pb2.CreateServiceRequest(service=service_pb2.Service(name="Not_A_Name"))
    err = _grpc_error(lambda: stub.CreateService(bad, metadata=orch.auth))
    assert error_info(err).reason == "INVALID_FIELD"

    readonly = _readonly(orch)
    err = _grpc_error(lambda: stub.CreateService(bad, metadata=readonly))
    info = error_info(err)
    assert info.reason == "PERMISSION_DENIED"
    assert dict(info.metadata) == {"resource": "services", "verb": "create", "namespace": "default"}


def test_every_error_carries_error_info_over_rest_connect_and_sse(orch: Orch, client: httpx.Client) -> None:
    r = client.get("/v1/namespaces/default/services/nope", headers={"x-request-id": "info-1"})
    assert r.status_code == 404
    info = _detail(r.json(), ERROR_INFO)
    assert (info["reason"], info["domain"]) == ("SERVICE_NOT_FOUND", "rune.api")
    assert info["metadata"] == {"kind": "service", "name": "nope", "namespace": "default"}
    assert _detail(r.json(), REQUEST_INFO)["requestId"] == "info-1"

    r = client.post("/v1/namespaces/default/services", json={"name": "x", "scale": "many"})
    assert _detail(r.json(), ERROR_INFO)["reason"] == "INVALID_FIELD"
    assert _violations(r.json()) == {"service.scale": 'expected an integer, got "many"'}

    r = client.post("/rune.api.ServiceService/GetService", json={"name": "nope"}, headers=CONNECT)
    (d,) = [d for d in r.json()["details"] if d["type"] == "google.rpc.ErrorInfo"]
    decoded = error_details_pb2.ErrorInfo.FromString(base64.b64decode(d["value"] + "=" * (-len(d["value"]) % 4)))
    assert decoded.reason == d["debug"]["reason"] == "SERVICE_NOT_FOUND"

    # An error after the stream started: the final SSE frame carries the ErrorInfo too.
    orch.cast("fading", orch.program("fading", SLEEPER), scale=0)
    url = "/v1/namespaces/default/services/fading:watchScaling?targetScale=2"
    with client.stream("GET", url) as resp:
        assert resp.status_code == 200
        events = sse_events(resp.iter_lines())
        first = next(events)
        assert json.loads(first["data"])["targetScale"] == 2
        orch.services.DeleteService(
            service_pb2.DeleteServiceRequest(name="fading", force=True, now=True), metadata=orch.auth
        )
        last = next(ev for ev in events if ev.get("event") == "error")
    status = json.loads(last["data"])
    assert status["code"] == grpc.StatusCode.NOT_FOUND.value[0]
    assert _detail(status, ERROR_INFO)["reason"] == "SERVICE_NOT_FOUND"


# -- 4. logs and exec agree on a missing target ---------------------------------------------------------------
def test_logs_and_exec_of_a_missing_target_are_both_not_found(orch: Orch, client: httpx.Client) -> None:
    ch = orch.runed.channel()
    logs = logs_pb2_grpc.LogServiceStub(ch).StreamLogs(
        iter([logs_pb2.LogRequest(resource_target="service/nope")]), metadata=orch.auth, timeout=30
    )
    execs = exec_pb2_grpc.ExecServiceStub(ch).StreamExec(
        iter([exec_pb2.ExecRequest(init=exec_pb2.ExecInitRequest(service_name="nope", command=["true"]))]),
        metadata=orch.auth,
        timeout=30,
    )
    answers = []
    for call in (logs, execs):
        with pytest.raises(grpc.RpcError) as e:
            list(call)
        answers.append((e.value.code(), e.value.details(), error_info(e.value).reason))
    assert (
        answers[0]
        == answers[1]
        == (
            grpc.StatusCode.NOT_FOUND,
            'service "nope" not found in namespace "default"',
            "SERVICE_NOT_FOUND",
        )
    )

    r_logs = client.get("/v1/namespaces/default/logs/service/nope")
    r_exec = client.post("/v1/namespaces/default/exec/service/nope", json={"command": ["true"]})
    for r in (r_logs, r_exec):
        assert r.status_code == 404, r.text
        assert r.json()["message"] == 'service "nope" not found in namespace "default"'
        assert _detail(r.json(), ERROR_INFO)["reason"] == "SERVICE_NOT_FOUND"


# -- 5. WatchScaling without a target -----------------------------------------------------------------------------
def test_watch_scaling_without_a_target_ends_once_the_service_is_at_its_scale(orch: Orch, client: httpx.Client) -> None:
    orch.cast("steady", orch.program("steady", SLEEPER), scale=1)
    eventually(lambda: orch.running("steady", 1), timeout=30, what="steady running")
    stub = orch.services
    # The deadline only bounds a failure: the stream ends by itself once it has reported the scale.
    states = list(
        stub.WatchScaling(service_pb2.WatchScalingRequest(service_name="steady"), metadata=orch.auth, timeout=60)
    )
    assert states and states[-1].complete, states
    assert (states[-1].target_scale, states[-1].running_instances) == (1, 1)

    with client.stream("GET", "/v1/namespaces/default/services/steady:watchScaling") as resp:
        assert resp.status_code == 200
        frames = [json.loads(ev["data"]) for ev in sse_events(resp.iter_lines())]
    assert frames[-1]["complete"] is True and frames[-1]["targetScale"] == 1

    r = client.post("/rune.api.ServiceService/WatchScaling", json={"serviceName": "steady"})
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
    assert json.loads(list(sse_events(iter(r.text.splitlines())))[-1]["data"])["complete"] is True

    # 0 is also "scale to zero": after ScaleService(0) the watch waits for no instance left.
    stub.ScaleService(service_pb2.ScaleServiceRequest(name="steady", scale=0), metadata=orch.auth)
    states = list(
        stub.WatchScaling(service_pb2.WatchScalingRequest(service_name="steady"), metadata=orch.auth, timeout=60)
    )
    assert states[-1].complete and states[-1].target_scale == 0 and states[-1].running_instances == 0, states[-1]
    assert not [i for i in orch.instances("steady") if i["state"] == "RUNNING"]


# -- 6. the Connect protocol's status table on the Connect routes -------------------------------------------------
def test_connect_routes_follow_the_connect_status_table(orch: Orch, client: httpx.Client) -> None:
    # FAILED_PRECONDITION: 412 on the REST routes (this API's mapping), 400 on the Connect routes.
    r = client.post("/v1/admin:bootstrap", json={})
    assert (r.status_code, r.json()["code"]) == (412, grpc.StatusCode.FAILED_PRECONDITION.value[0])
    r = client.post("/rune.api.AdminService/AdminBootstrap", json={})
    assert r.status_code == 412, r.text
    r = client.post("/rune.api.AdminService/AdminBootstrap", json={}, headers=CONNECT)
    assert (r.status_code, r.json()["code"]) == (400, "failed_precondition"), r.text
    assert set(r.json()) == {"code", "message", "details"}
    for d in r.json()["details"]:
        assert set(d) == {"type", "value", "debug"}, d

    cases = [
        ("/rune.api.ServiceService/GetService", {"name": "nope"}, {}, 404, "not_found"),
        ("/rune.api.ServiceService/GetService", {"name": "nope"}, ANON, 401, "unauthenticated"),
        ("/rune.api.ServiceService/CreateService", {"service": {"name": "x"}}, _headers(_readonly(orch)), 403,
         "permission_denied"),
        ("/rune.api.ServiceService/GetService", {"name": "Bad_Name"}, {}, 400, "invalid_argument"),
        ("/rune.api.NamespaceService/CreateNamespace", {"namespace": {"name": "default"}}, {}, 409, "already_exists"),
        # An unknown procedure: 404, read by Connect clients as unimplemented.
        ("/rune.api.ServiceService/NoSuchMethod", {}, {}, 404, "unimplemented"),
    ]  # fmt: skip
    for path, body, headers, status, code in cases:
        r = client.post(path, json=body, headers={**CONNECT, **headers})
        assert (r.status_code, r.json()["code"]) == (status, code), (path, r.text)
