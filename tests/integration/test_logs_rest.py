"""Logs over REST: JSON lines for history, SSE with cursor ids when following, Last-Event-ID resume."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from runed.logs.timeparse import format_ns
from tests.harness import Runed, run_runed
from tests.integration.instance_fixtures import Instances
from tests.support import sse_events

T0 = 1_700_000_000 * 1_000_000_000


@pytest.fixture(scope="module")
def rest(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Runed]:
    with run_runed(tmp_path_factory.mktemp("rest") / "data", role="rest") as p:
        yield p


@pytest.fixture(scope="module")
def client(rest: Runed) -> Iterator[httpx.Client]:
    base = "http://" + rest.address("rest")
    with httpx.Client(base_url=base, timeout=20) as c:
        r = c.post("/rune.api.AdminService/AdminBootstrap", json={})
        assert r.status_code == 200, r.text
        c.headers["authorization"] = f"Bearer {r.json()['tokenSecret']}"
        yield c


@pytest.fixture
def web(rest: Runed) -> Instances:
    insts = Instances(rest.data_dir).reset()
    for k in range(2):
        iid = insts.add("web", k)
        for i in range(4):
            insts.writers[iid].write(
                f"web-{k} line {i}", stream="stderr" if i == 3 else "stdout", ns=T0 + (i * 10 + k) * 10**6
            )
    return insts


def json_lines(r: httpx.Response) -> list[dict[str, Any]]:
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("application/x-ndjson")
    return [json.loads(line) for line in r.text.splitlines() if line]


def test_history_as_json_lines(client: httpx.Client, web: Instances) -> None:
    rows = json_lines(client.get("/v1/namespaces/default/logs/web", params={"tail": "3"}))
    assert [r["content"] for r in rows] == ["web-1 line 2", "web-0 line 3", "web-1 line 3"]
    assert [r["instanceName"] for r in rows] == ["web-1", "web-0", "web-1"]
    assert {r["serviceName"] for r in rows} == {"web"}
    assert all(r["cursor"] for r in rows)
    rows = json_lines(
        client.get(
            "/v1/namespaces/default/logs/service/web",
            params={"stream": "stderr", "timestamps": "true", "since": format_ns(T0 + 31 * 10**6)},
        )
    )
    assert [r["content"] for r in rows] == [f"{format_ns(T0 + 31 * 10**6)} web-1 line 3"]
    rows = json_lines(
        client.get(
            "/v1/namespaces/default/logs/web", params={"filter": "/line [12]$/", "until": format_ns(T0 + 15 * 10**6)}
        )
    )
    assert [r["content"] for r in rows] == ["web-0 line 1", "web-1 line 1"]
    iid = next(iter(web.writers))
    rows = json_lines(client.get(f"/v1/namespaces/default/logs/instance/{iid}", params={"tail": "1"}))
    assert [r["content"] for r in rows] == ["web-0 line 3"]


def test_errors_have_http_statuses(client: httpx.Client, web: Instances) -> None:
    r = client.get("/v1/namespaces/default/logs/nope")
    assert r.status_code == 404 and '"nope" not found' in r.json()["message"]
    r = client.get("/v1/namespaces/default/logs/pod/web")
    assert r.status_code == 400 and "resource_target" in r.text
    r = client.get("/v1/namespaces/default/logs/web", params={"tail": "x", "follow": "maybe"})
    assert r.status_code == 400 and "tail" in r.text and "follow" in r.text
    # A misspelt or unknown parameter is an error naming it, not ignored.
    r = client.get("/v1/namespaces/default/logs/web", params={"tailLines": "1", "bogus": "1", "max_batch": "2"})
    assert r.status_code == 400, r.text
    (bad,) = [d for d in r.json()["details"] if d["@type"].endswith("google.rpc.BadRequest")]
    assert {v["field"]: v["description"] for v in bad["fieldViolations"]} == {
        "tailLines": 'unknown query parameter (did you mean "tail"?)',
        "bogus": "unknown query parameter (this route reads follow, tail, since, until, timestamps, showEvents, "
        "filter, stream, afterCursor, maxBatch, showLogs, showStatus, parameterUpdate)",
    }
    # Every request field is a parameter: those gRPC ignores are accepted here too.
    r = client.get("/v1/namespaces/default/logs/web", params={"tail": "1", "showLogs": "true", "show_status": "1"})
    assert r.status_code == 200, r.text
    r = httpx.get(str(client.base_url) + "/v1/namespaces/default/logs/web")
    assert r.status_code == 401


def test_follow_as_sse_and_resume_with_last_event_id(client: httpx.Client, web: Instances) -> None:
    w = web.writers[next(iter(web.writers))]
    url = "/v1/namespaces/default/logs/web"
    with client.stream("GET", url, params={"follow": "true", "tail": "1"}) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        events = sse_events(r.iter_lines())
        first = next(events)
        assert json.loads(first["data"])["content"] == "web-1 line 3"
        for i in range(3):
            w.write(f"live {i}")
        got = [next(events) for _ in range(2)]
        assert [json.loads(e["data"])["content"] for e in got] == ["live 0", "live 1"]
        assert got[1]["id"] == json.loads(got[1]["data"])["cursor"]
        last_id = got[0]["id"]
    w.write("live 3")
    with client.stream("GET", url, params={"follow": "true"}, headers={"last-event-id": last_id}) as r:
        events = sse_events(r.iter_lines())
        assert [json.loads(next(events)["data"])["content"] for _ in range(3)] == ["live 1", "live 2", "live 3"]


def test_fast_log_json_matches_the_codec() -> None:
    from rune.api import common_pb2, logs_pb2
    from rune.gateway import codec
    from rune.gateway.logs_http import log_json

    def without_empty_lines(d: dict[str, Any]) -> dict[str, Any]:
        # The single-line form leaves out the empty batch field, so its event shape stays as it was.
        out = {k: v for k, v in d.items() if k != "lines" or v}
        if "lines" in out:
            out["lines"] = [without_empty_lines(x) for x in out["lines"]]
        return out

    one = logs_pb2.LogResponse(service_name="s", instance_id="i", content='a "q" \u00e9', seq=2**40, cursor="v1;i=3")
    for msg in (
        one,
        logs_pb2.LogResponse(status=common_pb2.Status(code=3, message="m")),
        logs_pb2.LogResponse(lines=[one, one], cursor="v1;i=3"),
    ):
        assert json.loads(log_json(msg)) == without_empty_lines(json.loads(codec.dumps(msg)))
    assert "lines" not in json.loads(log_json(one))
