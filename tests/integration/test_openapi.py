"""The OpenAPI document: valid OpenAPI 3.1, one template per path, every route documented, and
schemathesis against a live gateway (over a thousand generated requests, no 5xx, no schema violation)."""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import httpx
import pytest
from starlette.routing import BaseRoute, Route, WebSocketRoute

from rune.gateway import connect, exec_http, exec_sessions, exec_ws, logs_http, ops, routes
from runed.pipeline import methods
from tests.harness import Runed
from tests.support import rest_bootstrapped_runed

# Streams never end on their own, services and exec start real processes from random input, a
# revoked root token would turn the rest of the run into 401s, and TestRegistry reaches out to
# whatever registry host the run made up (only loopback may be a target here).
SKIPPED_OPERATIONS = (
    r"(Watch|Stream)\w*$|^ServiceService_(Create|Update|Scale|Rollback)Service|RevokeToken|TestRegistry"
)
MIN_CASES = 1000
CHECKS = "not_a_server_error,response_schema_conformance,status_code_conformance,content_type_conformance"
_VAR = re.compile(r"\{[^}]+\}")


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Runed, str]]:
    with rest_bootstrapped_runed(tmp_path_factory.mktemp("openapi")) as pair:
        yield pair


@pytest.fixture(scope="module")
def doc(gw: tuple[Runed, str]) -> dict[str, Any]:
    r = httpx.get(gw[0].http_base + "/openapi.json", timeout=10)
    assert r.status_code == 200
    out: dict[str, Any] = r.json()
    return out


def _shape(path: str) -> str:
    return _VAR.sub("{}", path)


def test_valid_openapi_31_with_one_template_per_path(doc: dict[str, Any]) -> None:
    from openapi_spec_validator import validate

    validate(doc)
    assert doc["openapi"].startswith("3.1")
    by_shape: dict[str, list[str]] = {}
    for path in doc["paths"]:
        by_shape.setdefault(_shape(path), []).append(path)
    assert [paths for paths in by_shape.values() if len(paths) > 1] == []
    ids = [op["operationId"] for item in doc["paths"].values() for op in item.values()]
    assert len(ids) == len(set(ids))
    # Each operation names the request field its path parameters set.
    create = doc["paths"]["/v1/namespaces/{namespace}/services"]["post"]
    assert [p["description"] for p in create["parameters"] if p["in"] == "path"] == [
        "Sets the request field `service.namespace`."
    ]


def _served_routes() -> list[BaseRoute]:
    # The route tables only keep what they are given: nothing here is called.
    none = cast(Any, None)
    return [
        *ops.Operations(none, none, none).routes(),
        *logs_http.routes(none),
        *exec_http.routes(none, none, exec_sessions.Sessions()),
        *exec_ws.routes(none),
    ]


def test_every_route_is_documented(doc: dict[str, Any]) -> None:
    paths = {_shape(p): item for p, item in doc["paths"].items()}
    for route in _served_routes():
        assert isinstance(route, Route | WebSocketRoute)
        item = paths.get(_shape(route.path))
        assert item is not None, f"{route.path} is not in the OpenAPI document"
        verbs = {"get"} if isinstance(route, WebSocketRoute) else {m.lower() for m in route.methods or ()} - {"head"}
        assert verbs <= item.keys(), f"{route.path}: {verbs - item.keys()} not documented"
    for rule in routes.http_rules():
        assert rule.verb.lower() in paths[_shape(rule.template)], rule.template
    for m in methods.all_methods():
        rpc = doc["paths"][m.full_name]
        assert "post" in rpc
        assert ("get" in rpc) == connect.side_effect_free(m), m.full_name
    websocket = doc["paths"]["/v1/namespaces/{namespace}/exec/{target}/ws"]["get"]
    assert "101" in websocket["responses"] and "426" in websocket["responses"]


def test_map_query_parameters(doc: dict[str, Any], gw: tuple[Runed, str]) -> None:
    params = {p["name"]: p for p in doc["paths"]["/v1/namespaces"]["get"]["parameters"]}
    selector = params["label_selector"]
    assert (selector["style"], selector["explode"]) == ("deepObject", True)
    assert selector["schema"] == {"type": "object", "additionalProperties": {"type": "string"}}
    # As documented, so it works: label_selector[tier]=gold.
    runed, token = gw
    with httpx.Client(base_url=runed.http_base, headers={"authorization": f"Bearer {token}"}, timeout=10) as c:
        assert c.post("/v1/namespaces", json={"name": "gold-ns", "labels": {"tier": "gold"}}).status_code == 200
        r = c.get("/v1/namespaces", params={"label_selector[tier]": "gold"})
        assert [n["name"] for n in r.json()["namespaces"]] == ["gold-ns"]


def test_a_plain_get_on_the_websocket_path_is_426(gw: tuple[Runed, str]) -> None:
    runed, token = gw
    r = httpx.get(
        runed.http_base + "/v1/namespaces/default/exec/service/web/ws",
        headers={"authorization": f"Bearer {token}"},
        timeout=10,
    )
    assert r.status_code == 426 and r.headers["upgrade"] == "websocket"
    assert r.json()["code"] == 9  # FAILED_PRECONDITION


def _schemathesis(runed: Runed, token: str, cwd: Path, *select: str) -> tuple[int, str]:
    """One ``st run`` over the operations ``select`` picks; (cases generated, output)."""
    proc = subprocess.run(
        [
            str(Path(sys.executable).parent / "st"),
            "run",
            runed.http_base + "/openapi.json",
            "-H",
            f"Authorization: Bearer {token}",
            *select,
            "--max-examples",
            "10",
            "--phases",
            "examples,fuzzing",
            "--checks",
            CHECKS,
            "--generation-database",
            "none",
            "--request-timeout",
            "10",
            "--seed",
            "1",
            "--no-color",
        ],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=150,
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-6000:]
    found = re.search(r"(\d+) generated, (\d+) passed", out)
    assert found, out[-3000:]
    assert found.group(1) == found.group(2), out[-3000:]
    return int(found.group(1)), out


@pytest.mark.slow
@pytest.mark.timeout(420)  # two schemathesis runs of up to 150 s each, beside other test modules
def test_schemathesis_against_the_live_gateway(gw: tuple[Runed, str], tmp_path: Path) -> None:
    runed, token = gw
    # Every operation, with data that fits the document and data that does not...
    everything, _ = _schemathesis(
        runed, token, tmp_path, "--exclude-operation-id-regex", SKIPPED_OPERATIONS + "|_get$", "--mode", "all"
    )
    # ...except that Connect GETs get valid codecs and compressions only: an unknown compression is
    # answered `unimplemented` (501), as the Connect protocol asks (tests/integration/test_connect.py).
    gets, _ = _schemathesis(runed, token, tmp_path, "--include-operation-id-regex", "_get$", "--mode", "positive")
    assert everything + gets >= MIN_CASES
