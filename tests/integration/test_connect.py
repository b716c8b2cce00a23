"""The Connect protocol on the RPC routes, proven with ``buf curl`` and with raw HTTP: unary (POST and GET),
server streams in envelopes, half-duplex bidi, compression, protocol version and media types."""

from __future__ import annotations

import base64
import gzip
import json
import signal
import struct
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from rune.api import namespace_pb2
from tests.harness import Runed, RunedFactory
from tests.integration.bufcli import buf, buf_path, fetch_schema
from tests.support import eventually, rest_bootstrapped_runed

NS = "/rune.api.NamespaceService"
STREAM_JSON = {"content-type": "application/connect+json", "connect-protocol-version": "1"}
UNARY_JSON = {"content-type": "application/json", "connect-protocol-version": "1"}
# Over the gateway's 256-byte threshold, so a response carrying it is compressed when asked.
LONG = "a namespace described at length so that its messages are worth compressing " * 6


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Runed, str, Path]]:
    tmp = tmp_path_factory.mktemp("connect")
    with rest_bootstrapped_runed(tmp) as (runed, token):
        with httpx.Client(base_url=runed.http_base, headers={"authorization": f"Bearer {token}"}) as c:
            r = c.post("/v1/namespaces", json={"name": "connect-big", "description": LONG})
            assert r.status_code == 200, r.text
        yield runed, token, fetch_schema(runed, tmp)


@pytest.fixture
def client(gw: tuple[Runed, str, Path]) -> Iterator[httpx.Client]:
    runed, token, _ = gw
    with httpx.Client(base_url=runed.http_base, headers={"authorization": f"Bearer {token}"}, timeout=20) as c:
        yield c


def _curl(
    gw: tuple[Runed, str, Path], method: str, data: str, *extra: str, token: bool = True
) -> subprocess.CompletedProcess[bytes]:
    runed, tok, schema = gw
    auth = ["-H", f"authorization: Bearer {tok}"] if token else []
    return buf(
        "curl", "--protocol", "connect", "--schema", str(schema), *auth, *extra, "-d", data, runed.http_base + method
    )


def _envelope(payload: bytes, flags: int = 0) -> bytes:
    return struct.pack(">BI", flags, len(payload)) + payload


def _envelopes(data: bytes) -> list[tuple[int, bytes]]:
    out, pos = [], 0
    while pos < len(data):
        flags, size = struct.unpack_from(">BI", data, pos)
        out.append((flags, data[pos + 5 : pos + 5 + size]))
        pos += 5 + size
    return out


def _json_docs(text: str) -> list[Any]:
    """buf curl prints one pretty JSON document per message."""
    decoder, docs, pos = json.JSONDecoder(), [], 0
    text = text.strip()
    while pos < len(text):
        doc, pos = decoder.raw_decode(text, pos)
        docs.append(doc)
        while pos < len(text) and text[pos].isspace():
            pos += 1
    return docs


# -- buf curl: a Connect client nobody here wrote ----------------------------------------------


def test_buf_curl_unary_with_gzip_responses(gw: tuple[Runed, str, Path]) -> None:
    got = _curl(gw, f"{NS}/GetNamespace", '{"name": "default"}')
    assert got.returncode == 0, got.stderr.decode()
    assert json.loads(got.stdout)["namespace"]["name"] == "default"

    # buf asks for gzip; a response over the threshold comes back compressed and buf reads it.
    listed = _curl(gw, f"{NS}/ListNamespaces", "{}", "-v")
    assert listed.returncode == 0, listed.stderr.decode()
    assert "connect-big" in {n["name"] for n in json.loads(listed.stdout)["namespaces"]}
    assert "< (#1) Content-Encoding: gzip" in listed.stderr.decode()


def test_buf_curl_unary_error_is_a_connect_error(gw: tuple[Runed, str, Path]) -> None:
    got = _curl(gw, f"{NS}/GetNamespace", '{"name": "no-such-ns"}')
    assert got.returncode == 5 << 3, got.stderr.decode()  # buf exits with the code shifted by 3: NOT_FOUND
    assert json.loads(got.stderr)["code"] == "not_found"  # buf prints a failure on stderr


def test_buf_curl_server_stream_ends_with_the_stream(gw: tuple[Runed, str, Path], client: httpx.Client) -> None:
    svc = {"name": "idle", "runtime": "process", "scale": 0, "process": {"command": sys.executable, "args": ["-V"]}}
    assert client.post("/v1/namespaces/default/services", json=svc).status_code == 200
    got = _curl(gw, "/rune.api.ServiceService/WatchScaling", '{"serviceName": "idle", "namespace": "default"}')
    assert got.returncode == 0, got.stderr.decode()
    docs = _json_docs(got.stdout.decode())
    assert docs and docs[-1]["complete"] is True


def test_buf_curl_follows_a_watch(gw: tuple[Runed, str, Path]) -> None:
    runed, token, schema = gw
    url = runed.http_base + f"{NS}/WatchNamespaces"
    argv = [buf_path(), "curl", "--schema", str(schema), "-H", f"authorization: Bearer {token}", "-d", "{}", url]
    with subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True) as proc:
        try:
            assert proc.stdout is not None
            seen: set[str] = set()
            text = ""
            while not {"default", "system", "connect-big"} <= seen:
                line = proc.stdout.readline().decode()
                assert line, proc.stderr.read().decode() if proc.stderr else "buf ended"
                text += line
                if line.startswith("}"):  # one message complete
                    doc = json.loads(text)
                    assert doc["eventType"] == "EVENT_TYPE_ADDED"
                    seen.add(doc["namespace"]["name"])
                    text = ""
            assert proc.poll() is None  # a watch goes on
        finally:
            proc.kill()


def test_buf_curl_stream_error_arrives_in_the_end_stream_message(gw: tuple[Runed, str, Path]) -> None:
    got = _curl(gw, f"{NS}/WatchNamespaces", "{}", token=False)
    assert got.returncode == 16 << 3, got.stderr.decode()  # UNAUTHENTICATED
    assert json.loads(got.stderr)["code"] == "unauthenticated"


# -- streams on the wire ------------------------------------------------------------------------


def _frame_stream(chunks: Iterator[bytes]) -> Iterator[tuple[int, bytes]]:
    """(flags, payload) of each envelope of a streaming response, as it completes."""
    data = b""
    for chunk in chunks:
        data += chunk
        while len(data) >= 5 and len(data) >= 5 + struct.unpack_from(">I", data, 1)[0]:
            flags, size = struct.unpack_from(">BI", data)
            yield flags, data[5 : 5 + size]
            data = data[5 + size :]


def _frames_until(r: httpx.Response, done: Any) -> list[tuple[int, bytes]]:
    """Envelopes of a streaming response as they arrive, until ``done(frames)`` holds (or the stream ends)."""
    frames: list[tuple[int, bytes]] = []
    for frame in _frame_stream(r.iter_bytes()):
        frames.append(frame)
        if done(frames):
            break
    return frames


def _names(frames: list[tuple[int, bytes]]) -> set[str]:
    out = set()
    for flags, payload in frames:
        if not flags & 0x02:
            out.add(json.loads(gzip.decompress(payload) if flags & 0x01 else payload)["namespace"]["name"])
    return out


def test_json_stream_envelopes_and_end_stream(gw: tuple[Runed, str, Path], client: httpx.Client) -> None:
    body = _envelope(b"{}")
    with client.stream("POST", f"{NS}/WatchNamespaces", content=body, headers=STREAM_JSON) as r:
        assert r.status_code == 200
        assert r.headers["content-type"] == "application/connect+json"
        frames = _frames_until(r, lambda f: {"default", "system", "connect-big"} <= _names(f))
    assert {flags for flags, _ in frames} == {0}  # no compression asked for, and the watch goes on
    # Without credentials: still HTTP 200, and one end-stream envelope carrying the error and metadata.
    r = httpx.post(gw[0].http_base + f"{NS}/WatchNamespaces", content=body, headers=STREAM_JSON, timeout=20)
    assert r.status_code == 200
    ((flags, payload),) = _envelopes(r.content)
    assert flags == 0x02
    end = json.loads(payload)
    assert end["error"]["code"] == "unauthenticated"
    assert end["metadata"]["x-request-id"] == [r.headers["x-request-id"]]


def test_stream_compression_both_ways(client: httpx.Client) -> None:
    request = _envelope(gzip.compress(b"{}"), flags=0x01)
    headers = {**STREAM_JSON, "connect-content-encoding": "gzip", "connect-accept-encoding": "gzip"}
    with client.stream("POST", f"{NS}/WatchNamespaces", content=request, headers=headers) as r:
        assert r.status_code == 200 and r.headers["connect-content-encoding"] == "gzip"
        frames = _frames_until(r, lambda f: {"default", "system", "connect-big"} <= _names(f))
    # Only the message over the threshold is compressed; each envelope says which it is.
    (big,) = [gzip.decompress(p) for flags, p in frames if flags == 0x01]
    assert json.loads(big)["namespace"]["description"] == LONG
    assert {json.loads(p)["namespace"]["name"] for flags, p in frames if flags == 0} == {"default", "system"}


def test_a_stream_with_two_requests_or_a_bad_envelope_fails_in_the_end_stream(client: httpx.Client) -> None:
    r = client.post(f"{NS}/WatchNamespaces", content=_envelope(b"{}") + _envelope(b"{}"), headers=STREAM_JSON)
    ((flags, payload),) = _envelopes(r.content)
    assert r.status_code == 200 and flags == 0x02
    assert json.loads(payload)["error"]["code"] == "invalid_argument"
    r = client.post(f"{NS}/WatchNamespaces", content=b"\x00\x00\x00\x00\x09{}", headers=STREAM_JSON)
    assert json.loads(_envelopes(r.content)[0][1])["error"]["code"] == "invalid_argument"


def test_bidi_logs_half_duplex(client: httpx.Client) -> None:
    code = "print('hello over connect', flush=True); import time; time.sleep(60)"
    svc = {
        "name": "talker",
        "runtime": "process",
        "scale": 1,
        "process": {"command": sys.executable, "args": ["-c", code]},
    }
    assert client.post("/v1/namespaces/default/services", json=svc).status_code == 200
    try:
        request = _envelope(json.dumps({"resourceTarget": "talker", "namespace": "default"}).encode())

        def lines() -> list[tuple[int, bytes]]:
            r = client.post("/rune.api.LogService/StreamLogs", content=request, headers=STREAM_JSON)
            assert r.status_code == 200
            frames = _envelopes(r.content)
            return frames if any(b"hello over connect" in p for _, p in frames) else []

        frames = eventually(lines, timeout=60, what="the log line over Connect")
        assert frames[-1][0] == 0x02 and "error" not in json.loads(frames[-1][1])
        assert json.loads(frames[0][1])["content"] == "hello over connect"
    finally:
        client.delete("/v1/namespaces/default/services/talker")


# -- unary: GET, compression, protocol version, media types ---------------------------------------


def test_get_for_side_effect_free_methods(client: httpx.Client) -> None:
    r = client.get(f"{NS}/GetNamespace", params={"connect": "v1", "encoding": "json", "message": '{"name": "default"}'})
    assert r.status_code == 200, r.text
    assert r.json()["namespace"]["name"] == "default"

    raw = namespace_pb2.GetNamespaceRequest(name="default").SerializeToString()
    b64 = base64.urlsafe_b64encode(raw).decode().rstrip("=")
    r = client.get(f"{NS}/GetNamespace", params={"connect": "v1", "encoding": "proto", "base64": "1", "message": b64})
    assert r.status_code == 200 and r.headers["content-type"] == "application/proto"
    assert namespace_pb2.GetNamespaceResponse.FromString(r.content).namespace.name == "default"

    zipped = base64.urlsafe_b64encode(gzip.compress(b'{"name": "default"}')).decode()
    params = {"connect": "v1", "encoding": "json", "compression": "gzip", "base64": "1", "message": zipped}
    r = client.get(f"{NS}/GetNamespace", params=params)
    assert r.status_code == 200 and r.json()["namespace"]["name"] == "default"

    # A method with side effects is POST only; the error is Connect's, with Allow.
    r = client.get(f"{NS}/CreateNamespace", params={"connect": "v1", "encoding": "json", "message": '{"name": "x"}'})
    assert r.status_code == 405 and r.headers["allow"] == "POST"
    assert r.json()["code"] == "unimplemented"
    # Without the query a GET names no codec: 415, as for an unknown encoding.
    assert client.get(f"{NS}/GetNamespace").status_code == 415
    r = client.get(f"{NS}/GetNamespace", params={"connect": "v1", "encoding": "xml", "message": "<x/>"})
    assert r.status_code == 415 and r.json()["code"] == "invalid_argument"
    r = client.get(f"{NS}/GetNamespace", params={"connect": "v2", "encoding": "json", "message": "{}"})
    assert r.status_code == 400


def test_unary_compression_negotiation(gw: tuple[Runed, str, Path]) -> None:
    runed, token, _ = gw
    auth = {"authorization": f"Bearer {token}"}
    zipped = gzip.compress(b"{}")
    # httpx would add its own Accept-Encoding; a raw client says exactly what a test means.
    with httpx.Client(base_url=runed.http_base, headers=auth, timeout=20) as c:
        c.headers.pop("accept-encoding")
        r = c.post(
            f"{NS}/ListNamespaces",
            content=zipped,
            headers={**UNARY_JSON, "content-encoding": "gzip", "accept-encoding": "br, gzip"},
        )
        assert r.status_code == 200, r.text
        assert r.headers["content-encoding"] == "gzip"  # the first of the client's choices this server has
        assert "connect-big" in {n["name"] for n in r.json()["namespaces"]}
        # No Accept-Encoding: the request's own encoding is taken as acceptable.
        r = c.post(f"{NS}/ListNamespaces", content=zipped, headers={**UNARY_JSON, "content-encoding": "gzip"})
        assert r.headers["content-encoding"] == "gzip"
        r = c.post(f"{NS}/ListNamespaces", content=b"{}", headers=UNARY_JSON)
        assert "content-encoding" not in r.headers
        r = c.post(
            f"{NS}/ListNamespaces", content=b"{}", headers={**UNARY_JSON, "accept-encoding": "gzip;q=0, identity"}
        )
        assert "content-encoding" not in r.headers
        # An encoding this server does not have: unimplemented, naming the ones it has.
        r = c.post(f"{NS}/GetNamespace", content=b"x", headers={**UNARY_JSON, "content-encoding": "br"})
        assert r.status_code == 501 and r.json()["code"] == "unimplemented"
        assert "gzip, identity" in r.json()["message"]


def test_protocol_version_and_media_types(client: httpx.Client) -> None:
    r = client.post(f"{NS}/GetNamespace", json={"name": "default"}, headers={"connect-protocol-version": "2"})
    assert r.status_code == 400 and r.json()["code"] == "invalid_argument"
    r = client.post(
        f"{NS}/GetNamespace", content=b"{}", headers={"connect-protocol-version": "1", "content-type": "text/plain"}
    )
    assert r.status_code == 415 and r.json()["code"] == "invalid_argument"
    # A unary method in streaming framing, and a stream in unary framing.
    r = client.post(f"{NS}/GetNamespace", content=_envelope(b"{}"), headers=STREAM_JSON)
    assert r.status_code == 415
    r = client.post(f"{NS}/WatchNamespaces", content=b"{}", headers=UNARY_JSON)
    assert r.status_code == 415


def test_stopping_runed_ends_open_connect_streams(runed_factory: RunedFactory, tmp_path: Path) -> None:
    r = runed_factory(tmp_path / "data")
    with httpx.Client(base_url=r.http_base, timeout=20) as c:
        token = c.post("/v1/admin:bootstrap", json={}).json()["tokenSecret"]
        auth = {**STREAM_JSON, "authorization": f"Bearer {token}"}
        with c.stream("POST", f"{NS}/WatchNamespaces", content=_envelope(b"{}"), headers=auth) as s:
            frames: list[tuple[int, bytes]] = []
            for frame in _frame_stream(s.iter_bytes()):
                frames.append(frame)
                if len(frames) == 2:  # default and system: the watch is live
                    r.signal(signal.SIGTERM)
    assert frames[-1][0] == 0x02
    assert json.loads(frames[-1][1])["error"]["code"] == "unavailable"  # call again to resume
    assert r.wait(15) == 0
