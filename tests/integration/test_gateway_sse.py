"""Server-streaming RPCs as Server-Sent Events: watch, resume by Last-Event-ID, keep-alives, disconnects."""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from tests.harness import Runed, RunedFactory
from tests.support import eventually, rest_bootstrapped_runed


@dataclass
class Event:
    event: str = "message"
    id: str = ""
    data: dict[str, object] = field(default_factory=dict)


def events(lines: Iterator[str], comments: list[str] | None = None) -> Iterator[Event]:
    """Parse an event stream line by line (only what the gateway emits)."""
    ev = Event()
    data: list[str] = []
    for line in lines:
        if line == "":
            if data:
                ev.data = json.loads("\n".join(data))
                yield ev
            ev, data = Event(), []
        elif line.startswith(":"):
            if comments is not None:
                comments.append(line)
        else:
            key, _, value = line.partition(": ")
            if key == "event":
                ev.event = value
            elif key == "id":
                ev.id = value
            elif key == "data":
                data.append(value)


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Runed, str]]:
    """One runed for the module with fast keep-alives; tests use their own namespace names."""
    with rest_bootstrapped_runed(
        tmp_path_factory.mktemp("gateway-sse"), "server:\n  sse_keepalive_seconds: 0.3\n"
    ) as pair:
        yield pair


def _namespace_count(c: httpx.Client, token: str) -> int:
    return len(c.get("/v1/namespaces", headers=headers(token)).json()["namespaces"])


def headers(token: str, **extra: str) -> dict[str, str]:
    return {"authorization": f"Bearer {token}", **extra}


def names(evs: list[Event]) -> list[tuple[str, str]]:
    return [(e.event, str(e.data["namespace"]["name"])) for e in evs]  # type: ignore[index]


def take(evs: Iterator[Event], n: int) -> list[Event]:
    return [next(evs) for _ in range(n)]


def test_watch_namespaces_then_resume_with_last_event_id(gw: tuple[Runed, str]) -> None:
    runed, token = gw
    with httpx.Client(base_url=runed.http_base, timeout=10) as c:
        existing = _namespace_count(c, token)
        with c.stream("GET", "/v1/namespaces:watch", headers=headers(token)) as s:
            assert s.status_code == 200
            assert s.headers["content-type"].startswith("text/event-stream")
            evs = events(s.iter_lines())
            snapshot = take(evs, existing)
            assert {"default", "system"} <= {name for _, name in names(snapshot)}
            assert {e.event for e in snapshot} == {"ADDED"}
            assert c.post("/v1/namespaces", json={"name": "one"}, headers=headers(token)).status_code == 200
            (live,) = take(evs, 1)
            assert names([live]) == [("ADDED", "one")]
            assert int(live.id) >= max(int(e.id) for e in snapshot)
            last_id = live.id

        # While nobody watches: one more created, one deleted.
        assert c.post("/v1/namespaces", json={"name": "two"}, headers=headers(token)).status_code == 200
        assert c.delete("/v1/namespaces/one", headers=headers(token)).status_code == 200

        with c.stream("GET", "/v1/namespaces:watch", headers=headers(token, **{"last-event-id": last_id})) as s:
            resumed = take(events(s.iter_lines()), 2)
        # Exactly what happened after last_id: no snapshot again, nothing missed, nothing twice.
        assert names(resumed) == [("ADDED", "two"), ("DELETED", "one")]
        assert int(resumed[0].id) > int(last_id) and int(resumed[1].id) > int(resumed[0].id)


def test_watch_services_resumes_after_last_event_id(gw: tuple[Runed, str]) -> None:
    runed, token = gw
    svc = {"name": "web", "runtime": "process", "scale": 0, "process": {"command": "true"}}
    with httpx.Client(base_url=runed.http_base, timeout=10) as c:
        ns = c.post("/v1/namespaces", json={"name": "watch-svc"}, headers=headers(token))
        assert ns.status_code == 200, ns.text
        url = "/v1/namespaces/watch-svc/services:watch"
        with c.stream("GET", url, headers=headers(token)) as s:
            evs = events(s.iter_lines())
            r = c.post("/v1/namespaces/watch-svc/services", json=svc, headers=headers(token))
            assert r.status_code == 200, r.text
            added = next(evs)
            assert added.event == "ADDED" and added.data["service"]["name"] == "web"  # type: ignore[index]
        assert c.delete("/v1/namespaces/watch-svc/services/web", headers=headers(token)).status_code == 200
        with c.stream("GET", url, headers=headers(token, **{"last-event-id": added.id})) as s:
            ids = [int(added.id)]
            for ev in events(s.iter_lines()):
                assert ev.event in ("MODIFIED", "DELETED"), ev
                ids.append(int(ev.id))
                if ev.event == "DELETED":
                    break
        assert ids == sorted(set(ids)), "resumed events must be new and in order"


def test_bad_last_event_id_and_unauthenticated_watch_get_http_errors(gw: tuple[Runed, str]) -> None:
    runed, root_token = gw
    with httpx.Client(base_url=runed.http_base, timeout=10) as c:
        r = c.get("/v1/namespaces:watch", headers=headers(root_token, **{"last-event-id": "abc"}))
        assert r.status_code == 400
        r = c.get("/v1/namespaces:watch")
        assert r.status_code == 401
        assert r.json()["code"] == 16


def _open_streams(c: httpx.Client) -> float:
    text = c.get("/metrics").text
    m = re.search(r'^rune_open_streams\{transport="rest"\} ([0-9.e+-]+)$', text, re.M)
    return float(m.group(1)) if m else 0.0


def test_disconnect_cancels_the_server_side_stream(gw: tuple[Runed, str]) -> None:
    runed, root_token = gw
    with httpx.Client(base_url=runed.http_base, timeout=10) as c:
        eventually(lambda: _open_streams(c) == 0, what="no stream open before")
        existing = _namespace_count(c, root_token)
        with httpx.Client(base_url=runed.http_base, timeout=10) as watcher:
            with watcher.stream("GET", "/v1/namespaces:watch", headers=headers(root_token)) as s:
                # Keep the parser (and so the response stream) referenced while we look.
                evs = events(s.iter_lines())
                take(evs, existing)
                eventually(lambda: _open_streams(c) == 1, what="one open stream")
        # The client went away: the gateway notices and the handler's work ends.
        eventually(lambda: _open_streams(c) == 0, what="stream closed on the server")
        text = c.get("/metrics").text
        assert re.search(r'rune_requests_total\{code="\w+",method="/rune.api.NamespaceService/WatchNamespaces"', text)


def test_keepalive_comments_on_idle_streams(gw: tuple[Runed, str]) -> None:
    runed, token = gw
    with httpx.Client(base_url=runed.http_base, timeout=10) as c:
        existing = _namespace_count(c, token)
        comments: list[str] = []
        with c.stream("GET", "/v1/namespaces:watch", headers=headers(token)) as s:
            lines = s.iter_lines()
            take(events(lines, comments), existing)
            # Nothing changes now: the stream stays open with comment frames only.
            for line in lines:
                if line.startswith(":"):
                    comments.append(line)
                    break
        assert comments and comments[0].startswith(": keep-alive")


def test_watch_via_rpc_style_route_is_sse_too(gw: tuple[Runed, str]) -> None:
    runed, root_token = gw
    with httpx.Client(base_url=runed.http_base, timeout=10) as c:
        with c.stream("POST", "/rune.api.NamespaceService/WatchNamespaces", json={}, headers=headers(root_token)) as s:
            assert s.headers["content-type"].startswith("text/event-stream")
            assert len(take(events(s.iter_lines()), 2)) == 2


def test_stopping_runed_ends_open_streams_promptly(runed_factory: RunedFactory, tmp_path: Path) -> None:
    import signal
    import time

    r = runed_factory(tmp_path / "data")
    with httpx.Client(base_url=r.http_base, timeout=10) as c:
        token = c.post("/v1/admin:bootstrap", json={}).json()["tokenSecret"]
        with c.stream("GET", "/v1/namespaces:watch", headers=headers(token)) as s:
            evs = events(s.iter_lines())
            take(evs, 2)
            started = time.monotonic()
            r.signal(signal.SIGTERM)
            last = next(evs)
            assert last.event == "error"
            assert last.data["code"] == 14  # UNAVAILABLE: reconnect
    assert r.wait(15) == 0
    # Well inside the 10 s grace: the stream did not hold the shutdown.
    assert time.monotonic() - started < 8


def test_error_mid_stream_is_a_final_error_event() -> None:
    """The framing helper turns a domain error raised after the first frame into `event: error`."""
    import asyncio

    from rune.gateway.http import sse_response
    from runed.core import errors

    async def frames() -> Iterator[bytes]:  # type: ignore[misc]
        yield b"data: {}\n\n"
        raise errors.Unavailable("store went away")

    async def collect() -> bytes:
        resp = sse_response(frames(), "rid-1", keepalive=5)  # type: ignore[arg-type]
        out = b""
        async for chunk in resp.body_iterator:
            out += chunk.encode() if isinstance(chunk, str) else bytes(chunk)
        return out

    body = asyncio.run(collect()).decode()
    assert body.startswith("data: {}\n\n")
    tail = body.split("\n\n")[1]
    assert tail.startswith("event: error\n")
    status = json.loads(tail.split("data: ", 1)[1])
    assert status["code"] == 14 and status["message"] == "store went away"


@pytest.fixture(autouse=True)
def _no_thread_leaks() -> Iterator[None]:
    before = threading.active_count()
    yield
    assert threading.active_count() <= before + 1
