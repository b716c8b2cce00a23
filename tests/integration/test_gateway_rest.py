"""The REST gateway against a real runed: resource routes, RPC-style routes, binding and the error table."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.harness import Runed, RunedFactory
from tests.support import eventually, rest_bootstrapped_runed

BAD_REQUEST = "type.googleapis.com/google.rpc.BadRequest"


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Runed, str]]:
    """One runed for the module (tests use distinct names); bootstrapped over REST from loopback."""
    with rest_bootstrapped_runed(tmp_path_factory.mktemp("gateway-rest"), "server:\n  max_body_bytes: 4096\n") as pair:
        yield pair


@pytest.fixture
def client(gw: tuple[Runed, str]) -> Iterator[httpx.Client]:
    runed, token = gw
    with httpx.Client(base_url=runed.http_base, headers={"authorization": f"Bearer {token}"}, timeout=10) as c:
        yield c


@pytest.fixture
def anon(gw: tuple[Runed, str]) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=gw[0].http_base, timeout=10) as c:
        yield c


def _violations(body: dict[str, Any]) -> list[dict[str, str]]:
    for d in body.get("details", []):
        if d["@type"] == BAD_REQUEST:
            return list(d["fieldViolations"])
    return []


def test_namespace_crud_via_resource_routes(client: httpx.Client) -> None:
    r = client.post("/v1/namespaces", json={"name": "team-a", "labels": {"tier": "gold"}})
    assert r.status_code == 200, r.text
    assert r.json()["namespace"]["name"] == "team-a"

    r = client.get("/v1/namespaces/team-a")
    assert r.status_code == 200
    assert r.json()["namespace"]["labels"] == {"tier": "gold"}

    # Map-typed query parameter: label_selector[key]=value.
    r = client.get("/v1/namespaces", params={"labelSelector[tier]": "gold"})
    assert r.status_code == 200
    assert [n["name"] for n in r.json()["namespaces"]] == ["team-a"]

    r = client.post("/v1/namespaces", json={"name": "team-a"})
    assert r.status_code == 409
    assert r.json()["code"] == 6  # ALREADY_EXISTS

    r = client.delete("/v1/namespaces/team-a")
    assert r.status_code == 200
    assert client.get("/v1/namespaces/team-a").status_code == 404


def test_secret_and_configmap_crud_via_resource_routes(client: httpx.Client) -> None:
    r = client.post(
        "/v1/namespaces/default/secrets", json={"name": "db", "type": "static", "data": {"password": "s3cr3t"}}
    )
    assert r.status_code == 200, r.text
    r = client.get("/v1/namespaces/default/secrets/db")
    assert r.status_code == 200
    assert r.json()["secret"]["data"] == {"password": "s3cr3t"}
    r = client.put("/v1/namespaces/default/secrets/db", json={"type": "static", "data": {"password": "other"}})
    assert r.status_code == 200, r.text
    assert r.json()["secret"]["version"] == 2
    assert [s["name"] for s in client.get("/v1/namespaces/default/secrets").json()["secrets"]] == ["db"]
    assert client.delete("/v1/namespaces/default/secrets/db").status_code == 200
    assert client.get("/v1/namespaces/default/secrets/db").status_code == 404

    r = client.post("/v1/namespaces/default/configmaps", json={"name": "app", "data": {"mode": "fast"}})
    assert r.status_code == 200, r.text
    r = client.put("/v1/namespaces/default/configmaps/app", json={"data": {"mode": "slow"}})
    assert r.status_code == 200
    assert client.get("/v1/namespaces/default/configmaps/app").json()["configmap"]["data"] == {"mode": "slow"}
    assert client.delete("/v1/namespaces/default/configmaps/app").status_code == 200


def test_configmap_crud_via_rpc_style_routes(client: httpx.Client) -> None:
    base = "/rune.api.ConfigmapService"
    r = client.post(f"{base}/CreateConfigmap", json={"configmap": {"name": "c1", "namespace": "default", "data": {}}})
    assert r.status_code == 200, r.text
    # Original proto field names are accepted as well as lowerCamelCase.
    r = client.post(f"{base}/CreateConfigmap", json={"configmap": {"name": "c2"}, "ensure_namespace": True})
    assert r.status_code == 200, r.text
    r = client.post(f"{base}/ListConfigmaps", json={"namespace": "default"})
    assert {"c1", "c2"} <= {c["name"] for c in r.json()["configmaps"]}
    r = client.post(f"{base}/GetConfigmap", json={"name": "c1", "namespace": "default"})
    assert r.status_code == 200 and r.json()["configmap"]["name"] == "c1"
    r = client.post(f"{base}/DeleteConfigmap", json={"name": "c1", "namespace": "default"})
    assert r.status_code == 200
    r = client.post(f"{base}/GetConfigmap", json={"name": "c1", "namespace": "default"})
    assert r.status_code == 404
    assert r.json()["code"] == 5


def test_namespace_and_secret_crud_via_rpc_style_routes(client: httpx.Client) -> None:
    ns, sec = "/rune.api.NamespaceService", "/rune.api.SecretService"
    assert client.post(f"{ns}/CreateNamespace", json={"namespace": {"name": "rpc-ns"}}).status_code == 200
    assert client.post(f"{ns}/GetNamespace", json={"name": "rpc-ns"}).json()["namespace"]["name"] == "rpc-ns"
    assert "rpc-ns" in [n["name"] for n in client.post(f"{ns}/ListNamespaces", json={}).json()["namespaces"]]

    secret = {"name": "tok", "namespace": "rpc-ns", "type": "static", "data": {"k": "v1"}}
    assert client.post(f"{sec}/CreateSecret", json={"secret": secret}).status_code == 200
    r = client.post(f"{sec}/UpdateSecret", json={"secret": {**secret, "data": {"k": "v2"}}})
    assert r.status_code == 200 and r.json()["secret"]["version"] == 2
    r = client.post(f"{sec}/GetSecret", json={"name": "tok", "namespace": "rpc-ns"})
    assert r.json()["secret"]["data"] == {"k": "v2"}
    assert [s["name"] for s in client.post(f"{sec}/ListSecrets", json={"namespace": "rpc-ns"}).json()["secrets"]] == [
        "tok"
    ]
    assert client.post(f"{sec}/DeleteSecret", json={"name": "tok", "namespace": "rpc-ns"}).status_code == 200
    assert client.post(f"{ns}/DeleteNamespace", json={"name": "rpc-ns"}).status_code == 200
    assert client.post(f"{ns}/GetNamespace", json={"name": "rpc-ns"}).status_code == 404


def test_service_crud_via_both_route_styles(client: httpx.Client) -> None:
    svc = {"name": "web", "runtime": "process", "process": {"command": "sleep", "args": ["30"]}, "scale": 0}
    r = client.post("/v1/namespaces/default/services", json=svc)
    assert r.status_code == 200, r.text
    assert r.json()["service"]["name"] == "web"
    r = client.get("/v1/namespaces/default/services/web")
    assert r.status_code == 200
    r = client.post("/rune.api.ServiceService/GetService", json={"name": "web", "namespace": "default"})
    assert r.status_code == 200
    assert r.json()["service"]["name"] == "web"
    assert "web" in [s["name"] for s in client.get("/v1/namespaces/default/services").json()["services"]]
    r = client.delete("/v1/namespaces/default/services/web")
    assert r.status_code == 200, r.text


def test_unknown_fields_wrong_types_and_malformed_json_are_400(client: httpx.Client) -> None:
    r = client.post("/v1/namespaces", json={"name": "x", "colour": "blue"})
    assert r.status_code == 400
    assert "colour" in r.json()["message"]
    assert r.json()["code"] == 3

    r = client.post("/rune.api.NamespaceService/GetNamespace", json={"name": 12})
    assert r.status_code == 400

    r = client.post("/v1/namespaces", content=b'{"name": "x",', headers={"content-type": "application/json"})
    assert r.status_code == 400
    assert "malformed JSON" in r.json()["message"]

    r = client.get("/v1/namespaces/default/secrets", params={"nonsense": "1"})
    assert r.status_code == 400
    assert "nonsense" in r.json()["message"]
    assert _violations(r.json())[0]["field"] == "nonsense"

    r = client.get("/v1/namespaces/default/instances", params={"status": "NOT_A_STATE"})
    assert r.status_code == 400
    assert "NOT_A_STATE" in r.json()["message"]


def test_a_body_wrapped_as_in_the_grpc_request_says_the_body_is_the_object_itself(client: httpx.Client) -> None:
    """POST /v1/namespaces/{ns}/services takes the Service as its body; a client that sends it as the
    gRPC request holds it (``{"service": {...}}``) is told so, naming the field, and nothing is made."""
    svc = {"name": "wrapped", "runtime": "process", "process": {"command": "sleep", "args": ["30"]}, "scale": 0}
    r = client.post("/v1/namespaces/default/services", json={"service": svc})
    assert r.status_code == 400
    assert _violations(r.json()) == [
        {
            "field": "service.service",
            "description": 'the body is the service itself: send its fields at the top level, not inside "service"',
        }
    ]
    assert client.get("/v1/namespaces/default/services/wrapped").status_code == 404
    # A field of that name in the object itself is not a wrapping: the RPC-style route's body is the request.
    r = client.post("/rune.api.ServiceService/CreateService", json={"service": svc})
    assert r.status_code == 200, r.text
    assert client.delete("/v1/namespaces/default/services/wrapped").status_code == 200


def test_enum_query_params_by_name_short_name_or_number(client: httpx.Client) -> None:
    for value in ("INSTANCE_STATUS_RUNNING", "RUNNING", "4"):
        r = client.get("/v1/namespaces/default/instances", params={"status": value})
        assert r.status_code == 200, r.text
        assert r.json().get("instances", []) == [], r.text


def test_error_table_401_403_404_405(client: httpx.Client, anon: httpx.Client) -> None:
    r = anon.get("/v1/namespaces")
    assert r.status_code == 401
    assert r.json()["code"] == 16

    r = anon.get("/v1/namespaces", headers={"authorization": "Bearer rune_not_a_real_token"})
    assert r.status_code == 401

    # A readonly user cannot create.
    r = client.post("/v1/admin/users", json={"name": "viewer", "policies": ["readonly"]})
    assert r.status_code == 200, r.text
    r = client.post("/v1/auth/tokens", json={"subjectName": "viewer", "name": "t"})
    assert r.status_code == 200, r.text
    viewer = r.json()["secret"]
    r = anon.post("/v1/namespaces", json={"name": "nope"}, headers={"authorization": f"Bearer {viewer}"})
    assert r.status_code == 403
    assert r.json()["code"] == 7

    r = client.get("/v1/namespaces/default/secrets/missing")
    assert r.status_code == 404
    r = client.get("/v1/no/such/route")
    assert r.status_code == 404
    assert r.json()["message"] == "no route for GET /v1/no/such/route (routes: /openapi.json)"
    # A path like a route's is told of the routes of its verb that share its words.
    r = client.get("/v1/services")
    assert r.status_code == 404
    assert r.json()["message"].startswith(
        "no route for GET /v1/services (routes of GET like it: /v1/namespaces/{namespace}/services, "
    ), r.json()
    r = client.patch("/v1/namespaces/default")
    assert r.status_code == 405
    assert "GET" in r.headers["allow"]


def test_failed_precondition_is_412(client: httpx.Client) -> None:
    r = client.post("/v1/namespaces/does-not-exist/configmaps", json={"name": "c", "data": {}})
    assert r.status_code == 412, r.text
    assert r.json()["code"] == 9


def test_rate_limit_is_429_with_retry_after(runed_factory: RunedFactory, tmp_path: Path) -> None:
    cfg = tmp_path / "runefile.yaml"
    cfg.write_text("auth:\n  rate_limit:\n    requests_per_second: 1\n    burst: 3\n")
    r = runed_factory(tmp_path / "data", args=["--config", str(cfg)])
    with httpx.Client(base_url=r.http_base, timeout=10) as c:
        token = c.post("/v1/admin:bootstrap", json={}).json()["tokenSecret"]
        statuses = []
        for _ in range(10):
            resp = c.get("/v1/namespaces", headers={"authorization": f"Bearer {token}"})
            statuses.append(resp.status_code)
            if resp.status_code == 429:
                assert int(resp.headers["retry-after"]) >= 1
                assert resp.json()["code"] == 8
                break
    assert 429 in statuses


def test_oversized_body_is_413(client: httpx.Client) -> None:
    resp = client.post("/v1/namespaces", json={"name": "x", "description": "y" * 8192})
    assert resp.status_code == 413
    assert "4096" in resp.json()["message"]
    resp = client.post("/rune.api.NamespaceService/CreateNamespace", content=b"{" + b" " * 8192 + b"}")
    assert resp.status_code == 413


def test_request_id_is_echoed_and_logged(gw: tuple[Runed, str], anon: httpx.Client) -> None:
    runed = gw[0]
    r = anon.get("/v1/namespaces/default", headers={"x-request-id": "trace-me-42"})
    assert r.status_code == 401
    assert r.headers["x-request-id"] == "trace-me-42"
    assert any(d.get("requestId") == "trace-me-42" for d in r.json()["details"])
    generated = anon.get("/v1/namespaces/default").headers["x-request-id"]
    assert generated and generated != "trace-me-42"
    eventually(lambda: "trace-me-42" in runed.output(), what="request id in the logs")


def test_connect_unary_json(client: httpx.Client, anon: httpx.Client) -> None:
    headers = {"connect-protocol-version": "1", "content-type": "application/json"}
    r = client.post("/rune.api.NamespaceService/GetNamespace", content=b'{"name": "default"}', headers=headers)
    assert r.status_code == 200, r.text
    assert r.json()["namespace"]["name"] == "default"
    r = anon.post("/rune.api.NamespaceService/GetNamespace", content=b'{"name": "default"}', headers=headers)
    assert r.status_code == 401
    assert r.json()["code"] == "unauthenticated"
    r = client.post("/rune.api.NamespaceService/GetNamespace", content=b'{"name": "zzz"}', headers=headers)
    assert r.json()["code"] == "not_found"


def test_rpc_style_route_shapes(client: httpx.Client) -> None:
    # GET serves only side-effect-free methods (Connect's GET form: tests/integration/test_connect.py).
    r = client.get("/rune.api.NamespaceService/CreateNamespace")
    assert r.status_code == 405 and r.headers["allow"] == "POST"
    r = client.put("/rune.api.NamespaceService/GetNamespace")
    assert r.status_code == 405 and r.headers["allow"] == "GET, POST"
    r = client.post("/rune.api.NamespaceService/NoSuchMethod", json={})
    assert r.status_code == 404


def test_connect_unary_proto(client: httpx.Client) -> None:
    from rune.api import namespace_pb2

    req = namespace_pb2.GetNamespaceRequest(name="default").SerializeToString()
    r = client.post(
        "/rune.api.NamespaceService/GetNamespace",
        content=req,
        headers={"connect-protocol-version": "1", "content-type": "application/proto"},
    )
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("application/proto")
    assert namespace_pb2.GetNamespaceResponse.FromString(r.content).namespace.name == "default"


def test_admin_bootstrap_over_rest_sees_the_loopback_client(anon: httpx.Client) -> None:
    # The module fixture bootstrapped over REST, which only a loopback peer may do; a second call
    # is refused by the handler (not a transport error).
    r = anon.post("/v1/admin:bootstrap", json={})
    assert r.status_code == 412
    assert r.json()["code"] == 9


def test_a_list_page_is_the_same_on_grpc_rest_and_connect(gw: tuple[Runed, str], client: httpx.Client) -> None:
    """List pages are answered in their wire form (runed.pipeline.encoded): gRPC gets those bytes, REST and
    Connect decode them; every transport shows the same items, token, paging and status."""
    from google.protobuf import json_format

    from rune.api import service_pb2, service_pb2_grpc

    runed, token = gw
    ns = "pages"
    assert client.post("/v1/namespaces", json={"name": ns}).status_code == 200
    for i in range(5):
        body = {"name": f"svc-{i}", "runtime": "process", "scale": 0, "process": {"command": "true"}}
        r = client.post(f"/v1/namespaces/{ns}/services", json=body)
        assert r.status_code == 200, r.text
    stub = service_pb2_grpc.ServiceServiceStub(runed.channel())
    req = service_pb2.ListServicesRequest(namespace=ns, page_size=2)
    md = [("authorization", f"Bearer {token}")]
    first = stub.ListServices(req, metadata=md)
    assert [s.name for s in first.services] == ["svc-0", "svc-1"]
    assert first.next_page_token and first.paging.limit == 2 and first.status.message == "Found 2 services"
    second = stub.ListServices(
        service_pb2.ListServicesRequest(namespace=ns, page_size=2, page_token=first.next_page_token), metadata=md
    )
    assert [s.name for s in second.services] == ["svc-2", "svc-3"]

    r = client.get(f"/v1/namespaces/{ns}/services", params={"pageSize": 2})
    assert r.status_code == 200, r.text
    rest = json_format.ParseDict(r.json(), service_pb2.ListServicesResponse(), ignore_unknown_fields=True)
    r = client.post(
        "/rune.api.ServiceService/ListServices",
        content=req.SerializeToString(),
        headers={"connect-protocol-version": "1", "content-type": "application/proto"},
    )
    assert r.status_code == 200, r.text
    connect = service_pb2.ListServicesResponse.FromString(r.content)
    # The same page everywhere (the revision may move between the calls: the controller writes statuses).
    for other in (rest, connect):
        other.revision = first.revision
        assert [s.name for s in other.services] == ["svc-0", "svc-1"]
        assert other.next_page_token == first.next_page_token
        assert (other.paging, other.status) == (first.paging, first.status)


def test_a_listed_page_follows_what_the_controller_changes(gw: tuple[Runed, str], client: httpx.Client) -> None:
    """List pages kept between calls (runed.api.listing.Pages) never outlive a change: every status the
    controller (another process) writes shows in the next page, on gRPC and REST, while the same
    page asked again and again is served."""
    from rune.api import instance_pb2, instance_pb2_grpc, service_pb2, service_pb2_grpc

    runed, token = gw
    ns = "kept-pages"
    assert client.post("/v1/namespaces", json={"name": ns}).status_code == 200
    body = {"name": "web", "runtime": "process", "scale": 1, "process": {"command": "sleep", "args": ["60"]}}
    assert client.post(f"/v1/namespaces/{ns}/services", json=body).status_code == 200
    md = [("authorization", f"Bearer {token}")]
    instances = instance_pb2_grpc.InstanceServiceStub(runed.channel())
    services = service_pb2_grpc.ServiceServiceStub(runed.channel())
    page = instance_pb2.ListInstancesRequest(namespace=ns, page_size=10)

    def running() -> int:
        got = instances.ListInstances(page, metadata=md).instances
        return sum(i.status == instance_pb2.INSTANCE_STATUS_RUNNING for i in got)

    def service_status() -> int:
        got = services.ListServices(service_pb2.ListServicesRequest(namespace=ns, page_size=10), metadata=md)
        return int(got.services[0].status) if got.services else -1

    eventually(lambda: running() == 1, what="the first instance Running in the page")
    eventually(lambda: service_status() == service_pb2.SERVICE_STATUS_RUNNING, what="the service Running")
    for _ in range(3):
        assert running() == 1
    assert client.post(f"/v1/namespaces/{ns}/services/web:scale", json={"scale": 2}).status_code == 200
    eventually(lambda: running() == 2, what="the second instance Running in the page")
    assert len(client.get(f"/v1/namespaces/{ns}/instances", params={"pageSize": 10}).json()["instances"]) == 2
    assert client.post(f"/v1/namespaces/{ns}/services/web:scale", json={"scale": 0}).status_code == 200
    eventually(lambda: not instances.ListInstances(page, metadata=md).instances, what="the page empty")
    eventually(
        lambda: (
            client.get(f"/v1/namespaces/{ns}/instances", params={"pageSize": 10}).json().get("instances") in (None, [])
        ),
        what="the REST page empty",
    )
    assert client.delete(f"/v1/namespaces/{ns}/services/web").status_code == 200
    eventually(lambda: service_status() == -1, what="the service gone from the page")


def test_a_process_block_without_a_runtime_runs_as_a_process(gw: tuple[Runed, str], client: httpx.Client) -> None:
    """A client that sends a ``process`` block and no ``runtime`` (the cast format infers it) meant
    the process runtime, on REST and on gRPC: it runs, and reads back with ``runtime: process``. A
    container spec (an image) and an empty process block keep their own errors."""
    from rune.api import common_pb2, instance_pb2, instance_pb2_grpc, service_pb2, service_pb2_grpc

    runed, token = gw
    ns = "inferred-runtime"
    assert client.post("/v1/namespaces", json={"name": ns}).status_code == 200
    body = {"name": "web", "scale": 1, "process": {"command": "sleep", "args": ["60"]}}
    got = client.post(f"/v1/namespaces/{ns}/services", json=body)
    assert got.status_code == 200, got.text
    assert client.get(f"/v1/namespaces/{ns}/services/web").json()["service"]["runtime"] == "process"
    md = [("authorization", f"Bearer {token}")]
    services = service_pb2_grpc.ServiceServiceStub(runed.channel())
    svc = service_pb2.Service(
        name="api", namespace=ns, scale=1, process=common_pb2.ProcessSpec(command="sleep", args=["60"])
    )
    services.CreateService(service_pb2.CreateServiceRequest(service=svc), metadata=md)
    instances = instance_pb2_grpc.InstanceServiceStub(runed.channel())

    def running() -> int:
        got = instances.ListInstances(instance_pb2.ListInstancesRequest(namespace=ns), metadata=md).instances
        return sum(i.status == instance_pb2.INSTANCE_STATUS_RUNNING for i in got)

    eventually(lambda: running() == 2, what="both instances Running")
    empty = client.post(f"/v1/namespaces/{ns}/services", json={"name": "empty", "process": {}})
    assert empty.status_code == 400
    assert [v["field"] for v in _violations(empty.json())] == ["service.process.command"]
    for name in ("web", "api"):
        assert client.delete(f"/v1/namespaces/{ns}/services/{name}").status_code == 200
