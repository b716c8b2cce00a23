"""Exec over REST: sessions with SSE output and POSTed input, and the interactive WebSocket form."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from websockets.sync.client import connect

from tests.harness import Runed, run_runed
from tests.integration.instance_fixtures import Instances
from tests.support import alive, eventually, sse_events


@pytest.fixture(scope="module")
def rest(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Runed]:
    with run_runed(tmp_path_factory.mktemp("rest") / "data", role="rest") as p:
        yield p


@pytest.fixture(scope="module")
def token(rest: Runed) -> str:
    r = httpx.post("http://" + rest.address("rest") + "/rune.api.AdminService/AdminBootstrap", json={})
    assert r.status_code == 200, r.text
    return str(r.json()["tokenSecret"])


@pytest.fixture(scope="module")
def client(rest: Runed, token: str) -> Iterator[httpx.Client]:
    with httpx.Client(
        base_url="http://" + rest.address("rest"), timeout=20, headers={"authorization": f"Bearer {token}"}
    ) as c:
        yield c


@pytest.fixture
def iid(rest: Runed) -> str:
    insts = Instances(rest.data_dir).reset()
    return insts.add("web", 0, env={"GREETING": "hi"})


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def run_session(
    client: httpx.Client, body: dict[str, Any], inputs: list[dict[str, Any]]
) -> tuple[bytes, bytes, dict[str, Any]]:
    r = client.post("/v1/namespaces/default/exec/web", json=body)
    assert r.status_code == 201, r.text
    sid = r.json()["sessionId"]
    out, err = b"", b""
    with client.stream("GET", f"/v1/namespaces/default/exec/sessions/{sid}/output") as s:
        assert s.status_code == 200
        for i in inputs:
            assert client.post(f"/v1/namespaces/default/exec/sessions/{sid}/input", json=i).status_code == 204
        for ev in sse_events(s.iter_lines()):
            data = json.loads(ev["data"])
            if ev["event"] == "stdout":
                out += base64.b64decode(data["stdout"])
            elif ev["event"] == "stderr":
                err += base64.b64decode(data["stderr"])
            elif ev["event"] == "exit":
                return out, err, data["exit"]
    raise AssertionError("no exit event")


def test_session_with_stdin_and_exit_codes(client: httpx.Client, iid: str) -> None:
    out, err, ex = run_session(client, {"command": ["cat"]}, [{"stdin": b64(b"echo me\n")}, {"close": True}])
    assert out == b"echo me\n" and ex["code"] == 0
    out, err, ex = run_session(client, {"command": ["sh", "-c", "echo $GREETING; echo e >&2; exit 3"]}, [])
    assert (out, err, ex["code"]) == (b"hi\n", b"e\n", 3)
    _, err, ex = run_session(client, {"command": ["no-such-command-xyz"]}, [])
    assert ex["code"] == 127 and b"not found" in err
    _, _, ex = run_session(client, {"command": ["sleep", "30"]}, [{"signal": {"name": "TERM"}}])
    assert ex["signaled"] and ex["signal"] == "SIGTERM" and ex["code"] == 143


def test_session_errors(client: httpx.Client, iid: str) -> None:
    assert client.post("/v1/namespaces/default/exec/nope", json={"command": ["true"]}).status_code == 404
    r = client.post("/v1/namespaces/default/exec/web", json={"command": []})
    assert r.status_code == 400 and r.json()["message"].startswith("invalid request: command: required"), r.text
    r = client.post("/v1/namespaces/default/exec/web", json={"command": ["env"], "env": {"A=B": "x"}})
    # Named as in the body (the init itself), as the body's decoding names them.
    assert r.status_code == 400 and r.json()["message"] == "invalid request: env[A=B]: invalid variable name", r.text
    assert client.post("/v1/namespaces/default/exec/pod/x", json={"command": ["true"]}).status_code == 400
    assert client.get("/v1/namespaces/default/exec/sessions/unknown/output").status_code == 404
    # The request is the body: a query parameter is named, not ignored.
    r = client.post("/v1/namespaces/default/exec/web?tty=true", json={"command": ["true"]})
    assert r.status_code == 400, r.text
    assert (
        r.json()["message"]
        == "invalid request: tty: unknown query parameter (this route takes none: send it in the body)"
    )
    r = client.post("/v1/namespaces/default/exec/web", json={"command": ["true"]})
    sid = r.json()["sessionId"]
    anon = httpx.get(str(client.base_url) + f"/v1/namespaces/default/exec/sessions/{sid}/output")
    assert anon.status_code == 401


def test_websocket_tty_resize_and_disconnect(rest: Runed, token: str, iid: str) -> None:
    url = f"ws://{rest.address('rest')}/v1/namespaces/default/exec/web/ws"
    with connect(url, additional_headers={"authorization": f"Bearer {token}"}) as ws:
        ws.send(
            json.dumps(
                {
                    "command": ["sh", "-c", "stty size; read x; stty size"],
                    "tty": True,
                    "terminalSize": {"width": 90, "height": 25},
                }
            )
        )
        out = b""
        while b"25 90" not in out:
            msg = json.loads(ws.recv(timeout=10))
            out += base64.b64decode(msg.get("stdout", ""))
        ws.send(json.dumps({"resize": {"width": 132, "height": 50}}))
        ws.send(b"go\r")
        ex = None
        while ex is None:
            msg = json.loads(ws.recv(timeout=10))
            out += base64.b64decode(msg.get("stdout", ""))
            ex = msg.get("exit")
        assert b"50 132" in out and ex["code"] == 0
    # Closing the socket kills a command still running.
    with connect(url, additional_headers={"authorization": f"Bearer {token}"}) as ws:
        ws.send(json.dumps({"command": ["sh", "-c", "echo $$; exec sleep 60"]}))
        out = b""
        while not out.endswith(b"\n"):
            out += base64.b64decode(json.loads(ws.recv(timeout=10)).get("stdout", ""))
        pid = int(out.split()[0])
        assert alive(pid)
    eventually(lambda: not alive(pid), timeout=5, what="the command dies with its WebSocket")


def test_websocket_token_as_subprotocol(rest: Runed, token: str, iid: str) -> None:
    url = f"ws://{rest.address('rest')}/v1/namespaces/default/exec/web/ws"
    with connect(url, subprotocols=["rune.exec.v1", f"bearer.{token}"]) as ws:  # type: ignore[list-item]
        assert ws.subprotocol == "rune.exec.v1"
        ws.send(json.dumps({"command": ["sh", "-c", "exit 4"]}))
        ex = None
        while ex is None:
            ex = json.loads(ws.recv(timeout=10)).get("exit")
        assert ex["code"] == 4
    with connect(url) as ws:
        ws.send(json.dumps({"command": ["true"]}))
        msg = json.loads(ws.recv(timeout=10))
        assert msg["error"]["code"] == 16  # UNAUTHENTICATED
