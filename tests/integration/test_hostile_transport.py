"""Hostile bytes at the transports of a real runed: undecodable messages and bodies, clients that hang up
mid-body, slow or huge request heads, bodies that are not JSON and label floods. Each gets a clean 4xx or
INVALID_ARGUMENT and at most one log line, never a traceback."""

from __future__ import annotations

import socket
import uuid
from collections.abc import Iterator
from typing import Any

import grpc
import httpx
import pytest

from rune.api import namespace_pb2, namespace_pb2_grpc, service_pb2, service_pb2_grpc
from tests.harness import Runed, run_runed
from tests.support import Metadata, bad_request_fields, bootstrap_metadata, eventually

HEADER_TIMEOUT = 1
BODY_TIMEOUT = 1
MAX_HEADER_BYTES = 8192
RUNEFILE = (
    f"server:\n  header_timeout_seconds: {HEADER_TIMEOUT}\n  max_header_bytes: {MAX_HEADER_BYTES}\n"
    f"  body_timeout_seconds: {BODY_TIMEOUT}\n"
)
BAD_REQUEST = "type.googleapis.com/google.rpc.BadRequest"
# Not a protobuf message of any type: a varint tag that never ends, then text.
GARBAGE = b"\xff\xff\xff\xff\x0f garbage"


@pytest.fixture(scope="module")
def hostile(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Runed, Metadata]]:
    """One runed with a 1 s header timeout, a 1 s body timeout and 8 KiB header limit, and its root token."""
    tmp = tmp_path_factory.mktemp("hostile")
    (tmp / "runefile.yaml").write_text(RUNEFILE)
    with run_runed(tmp / "data", args=["--config", str(tmp / "runefile.yaml")]) as r:
        yield r, bootstrap_metadata(r.channel())


def _address(runed: Runed) -> tuple[str, int]:
    host, _, port = runed.address("rest").rpartition(":")
    return host, int(port)


def _lines_with(runed: Runed, marker: str) -> list[str]:
    return [line for line in runed.output().splitlines() if marker in line]


def _assert_logged_once(runed: Runed, marker: str, since: int) -> None:
    """``marker`` (a request id) is in exactly one log line, and no traceback was logged since ``since``."""
    eventually(lambda: _lines_with(runed, marker), what=f"a log line naming {marker}")
    lines = _lines_with(runed, marker)
    assert len(lines) == 1, lines
    assert "Traceback" not in runed.output()[since:], runed.output()[since:]


def _violations(body: dict[str, Any]) -> dict[str, str]:
    for d in body.get("details", []):
        if d["@type"] == BAD_REQUEST:
            return {v["field"]: v["description"] for v in d["fieldViolations"]}
    return {}


# -- undecodable requests ------------------------------------------------------------------------
def test_exec_body_that_is_not_utf8_is_a_400_naming_the_body(hostile: tuple[Runed, Metadata]) -> None:
    runed, _ = hostile
    since = len(runed.output())
    rid = f"exec-{uuid.uuid4().hex[:8]}"
    r = httpx.post(
        runed.http_base + "/v1/namespaces/default/exec/web",
        content=b"\xff\xfe\x80{",
        headers={"x-request-id": rid},
        timeout=10,
    )
    assert r.status_code == 400, r.text
    assert "UTF-8" in _violations(r.json())["body"]
    assert "Traceback" not in runed.output()[since:]


@pytest.mark.parametrize("with_token", [False, True], ids=["anonymous", "token"])
def test_garbage_grpc_messages_are_invalid_argument_with_one_log_line(
    hostile: tuple[Runed, Metadata], with_token: bool
) -> None:
    runed, auth = hostile
    since = len(runed.output())
    ch = runed.channel()
    # No serializers: the bytes go on the wire as they are.
    calls = {
        "unary": lambda md: ch.unary_unary("/rune.api.ServiceService/GetService")(GARBAGE, metadata=md, timeout=10),
        "server stream": lambda md: list(
            ch.unary_stream("/rune.api.ServiceService/WatchServices")(GARBAGE, metadata=md, timeout=10)
        ),
        "bidi": lambda md: list(
            ch.stream_stream("/rune.api.LogService/StreamLogs")(iter([GARBAGE]), metadata=md, timeout=10)
        ),
    }
    for shape, call in calls.items():
        rid = f"garbage-{uuid.uuid4().hex[:8]}"
        md = [*(auth if with_token else []), ("x-request-id", rid)]
        with pytest.raises(grpc.RpcError) as e:
            call(md)
        assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT, (shape, e.value.details())
        assert "malformed request" in (e.value.details() or ""), shape
        _assert_logged_once(runed, rid, since)


# -- a client that hangs up mid-body ---------------------------------------------------------------
@pytest.mark.parametrize(
    "path",
    ["/v1/namespaces", "/rune.api.NamespaceService/CreateNamespace", "/v1/namespaces/default/exec/web"],
    ids=["resource", "rpc", "exec"],
)
def test_client_gone_mid_body_is_one_info_line(hostile: tuple[Runed, Metadata], path: str) -> None:
    runed, _ = hostile
    since = len(runed.output())
    rid = f"gone-{uuid.uuid4().hex[:8]}"
    with socket.create_connection(_address(runed), timeout=10) as s:
        s.sendall(
            f"POST {path} HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
            f'x-request-id: {rid}\r\ncontent-length: 1000\r\n\r\n{{"name'.encode()
        )
        # Hang up with 995 bytes of the body missing.
    _assert_logged_once(runed, rid, since)
    (line,) = _lines_with(runed, rid)
    assert " INFO " in line and "disconnected" in line, line


# -- slow bodies -------------------------------------------------------------------------------------
def _post_slowly(runed: Runed, md: Metadata, path: str, body: bytes, pieces: int, gap: float, rid: str) -> bytes:
    """POST ``body`` in ``pieces`` sent ``gap`` seconds apart; everything the server answered until it closed
    the connection or the answer was complete."""
    auth = dict(md)["authorization"]
    head = (
        f"POST {path} HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\nauthorization: {auth}\r\n"
        f"x-request-id: {rid}\r\ncontent-length: {len(body)}\r\n\r\n"
    )
    size = -(-len(body) // pieces)
    answer = b""
    with socket.create_connection(_address(runed), timeout=10) as s:
        s.sendall(head.encode())
        s.settimeout(gap)
        for i in range(0, len(body), size):
            try:
                s.sendall(body[i : i + size])
            except OSError:
                break  # closed by the server: read what it said
            try:
                answer += s.recv(65536)
            except TimeoutError:
                continue
            if b"\r\n\r\n" in answer:
                break
        s.settimeout(10)
        if b"connection: close" in answer.lower() or b"\r\n\r\n" not in answer:
            answer += _read_to_close(s)
    return answer


def test_a_body_trickling_in_is_cut_off_with_408(hostile: tuple[Runed, Metadata]) -> None:
    """A body sent a byte every 0.25 s (a slowloris on the body) gets 408 once the 1 s body timeout is
    over, the connection is closed, the request is not carried out, and one INFO line says why."""
    runed, md = hostile
    since = len(runed.output())
    name = f"slow-{uuid.uuid4().hex[:8]}"
    rid = f"trickle-{uuid.uuid4().hex[:8]}"
    body = f'{{"name": "{name}"}}'.encode()
    # 40 pieces 0.25 s apart: 10 s, far past the timeout; a server without it would take them all.
    answer = _post_slowly(runed, md, "/v1/namespaces", body.ljust(40), pieces=40, gap=0.25, rid=rid)
    assert answer.startswith(b"HTTP/1.1 408 "), answer[:300]
    assert b"connection: close" in answer.lower()
    assert b"REQUEST_BODY_TIMEOUT" in answer and b"request body not received within 1s" in answer
    stub = namespace_pb2_grpc.NamespaceServiceStub(runed.channel())
    with pytest.raises(grpc.RpcError) as e:
        stub.GetNamespace(namespace_pb2.GetNamespaceRequest(name=name), metadata=md)
    assert e.value.code() == grpc.StatusCode.NOT_FOUND
    _assert_logged_once(runed, rid, since)
    (line,) = _lines_with(runed, rid)
    assert " INFO " in line and "408" in line, line


def test_a_body_in_pieces_within_the_timeout_is_served(hostile: tuple[Runed, Metadata]) -> None:
    runed, md = hostile
    name = f"pieces-{uuid.uuid4().hex[:8]}"
    body = f'{{"name": "{name}"}}'.encode()
    answer = _post_slowly(runed, md, "/v1/namespaces", body, pieces=3, gap=0.2, rid=f"pieces-{name}")
    assert answer.startswith(b"HTTP/1.1 200 "), answer[:300]
    stub = namespace_pb2_grpc.NamespaceServiceStub(runed.channel())
    assert stub.GetNamespace(namespace_pb2.GetNamespaceRequest(name=name), metadata=md).namespace.name == name


# -- request heads -----------------------------------------------------------------------------------
def test_slow_request_head_is_cut_off(hostile: tuple[Runed, Metadata]) -> None:
    """A slowloris client (a header line at a time, never the blank line) gets 408 and a closed socket."""
    runed, _ = hostile
    with socket.create_connection(_address(runed), timeout=10) as s:
        s.sendall(b"GET /healthz HTTP/1.1\r\nhost: x\r\n")
        s.settimeout(0.25)
        answer = b""
        # Far more lines than the 1 s timeout allows (0.25 s apart): on a server without the
        # timeout the loop runs out and the assertion below fails.
        for i in range(120):
            try:
                s.sendall(f"x-slow-{i}: a\r\n".encode())
            except OSError:
                pass  # closed by the server: read what it said
            try:
                chunk = s.recv(4096)
            except TimeoutError:
                continue
            answer += chunk
            if not chunk or b"\r\n\r\n" in answer:
                break
        assert answer.startswith(b"HTTP/1.1 408 "), answer
        assert b"connection: close" in answer.lower()
        s.settimeout(10)
        _read_to_close(s)


def _read_to_close(s: socket.socket) -> bytes:
    """Everything until the server closes the connection (a reset counts as closed)."""
    out = b""
    while True:
        try:
            chunk = s.recv(65536)
        except ConnectionResetError:
            return out
        if not chunk:
            return out
        out += chunk


def test_oversized_request_head_is_431(hostile: tuple[Runed, Metadata]) -> None:
    runed, _ = hostile
    with socket.create_connection(_address(runed), timeout=10) as s:
        s.sendall(b"GET /healthz HTTP/1.1\r\nhost: x\r\nx-big: " + b"a" * (4 * MAX_HEADER_BYTES) + b"\r\n\r\n")
        answer = _read_to_close(s)
    assert answer.startswith(b"HTTP/1.1 431 "), answer[:200]
    assert b"over the limit of 8192 bytes" in answer


def test_heads_within_the_limits_are_served(hostile: tuple[Runed, Metadata]) -> None:
    runed, _ = hostile
    with httpx.Client(base_url=runed.http_base, timeout=10) as c:
        for _ in range(3):  # one keep-alive connection
            assert c.get("/healthz", headers={"x-fill": "a" * (MAX_HEADER_BYTES // 2)}).status_code == 200


# -- media types -------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "ctype", ["text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x", "application/xml"]
)
def test_bodies_that_are_not_json_are_415(hostile: tuple[Runed, Metadata], ctype: str) -> None:
    runed, auth = hostile
    headers = {"authorization": auth[0][1], "content-type": ctype}
    body = b'{"name": "not-json-ns"}'
    with httpx.Client(base_url=runed.http_base, headers=headers, timeout=10) as c:
        for path in ("/v1/namespaces", "/rune.api.NamespaceService/CreateNamespace", "/v1/namespaces/default/exec/web"):
            r = c.post(path, content=body)
            assert r.status_code == 415, (path, r.text)
            assert "application/json" in r.json()["message"]
    with pytest.raises(grpc.RpcError) as e:
        namespace_pb2_grpc.NamespaceServiceStub(runed.channel()).GetNamespace(
            namespace_pb2.GetNamespaceRequest(name="not-json-ns"), metadata=auth
        )
    assert e.value.code() == grpc.StatusCode.NOT_FOUND


def test_json_bodies_are_read_whatever_their_json_label(hostile: tuple[Runed, Metadata]) -> None:
    runed, auth = hostile
    with httpx.Client(base_url=runed.http_base, headers={"authorization": auth[0][1]}, timeout=10) as c:
        for i, ctype in enumerate([None, "application/json", "application/json; charset=utf-8", "application/x+json"]):
            headers = {"content-type": ctype} if ctype else {}
            r = c.post("/v1/namespaces", content=f'{{"name": "json-{i}"}}'.encode(), headers=headers)
            assert r.status_code == 200, (ctype, r.text)
        r = c.post(
            "/rune.api.NamespaceService/GetNamespace",
            content=namespace_pb2.GetNamespaceRequest(name="json-0").SerializeToString(),
            headers={"connect-protocol-version": "1", "content-type": "application/proto"},
        )
        assert r.status_code == 200, r.text


# -- label floods -----------------------------------------------------------------------------------
def test_label_floods_are_refused_naming_the_map(hostile: tuple[Runed, Metadata]) -> None:
    runed, auth = hostile
    flood = {f"k{i}": "v" for i in range(10_000)}
    ns_stub = namespace_pb2_grpc.NamespaceServiceStub(runed.channel())
    with pytest.raises(grpc.RpcError) as e:
        ns_stub.CreateNamespace(
            namespace_pb2.CreateNamespaceRequest(namespace=namespace_pb2.Namespace(name="flood", labels=flood)),
            metadata=auth,
        )
    assert bad_request_fields(e.value) == ["namespace.labels"]
    svc = service_pb2.Service(name="flood", runtime="process", labels=flood)
    svc.process.command = "true"
    with pytest.raises(grpc.RpcError) as e:
        service_pb2_grpc.ServiceServiceStub(runed.channel()).CreateService(
            service_pb2.CreateServiceRequest(service=svc), metadata=auth
        )
    assert "service.labels" in bad_request_fields(e.value)
    # 64 labels are fine.
    ns = namespace_pb2.Namespace(name="many-labels", labels={f"k{i}": "v" for i in range(64)})
    ns_stub.CreateNamespace(namespace_pb2.CreateNamespaceRequest(namespace=ns), metadata=auth)


@pytest.mark.parametrize("method", ["/rune.api.LogService/StreamLogs", "/rune.api.ExecService/StreamExec"])
def test_bidi_stream_closed_before_its_first_message_is_invalid_argument(
    hostile: tuple[Runed, Metadata], method: str
) -> None:
    runed, auth = hostile
    call = runed.channel().stream_stream(method)
    with pytest.raises(grpc.RpcError) as ei:
        list(call(iter([]), metadata=auth, timeout=10))
    assert ei.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "the stream ended before its first message" in (ei.value.details() or "")
