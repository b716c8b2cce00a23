"""Token scopes over gRPC and REST: a token's policies narrow its user's rights, never widen them."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import grpc
import httpx
import pytest

from rune.api import admin_pb2, admin_pb2_grpc, auth_pb2, auth_pb2_grpc, namespace_pb2, namespace_pb2_grpc
from tests.harness import Runed, run_runed
from tests.support import Metadata, bad_request_violations, bearer, code_of, rest_bootstrap


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Runed, str]]:
    """One runed for the module, bootstrapped over REST: (runed, root token)."""
    with run_runed(tmp_path_factory.mktemp("scope") / "data") as r:
        yield r, rest_bootstrap(r.http_base)


def _mint(r: Runed, md: Metadata, **kw: Any) -> auth_pb2.CreateTokenResponse:
    stub = auth_pb2_grpc.AuthServiceStub(r.channel())
    resp: auth_pb2.CreateTokenResponse = stub.CreateToken(auth_pb2.CreateTokenRequest(**kw), metadata=md)
    return resp


def _rest(r: Runed, token: str) -> httpx.Client:
    return httpx.Client(base_url=r.http_base, headers={"authorization": f"Bearer {token}"}, timeout=10)


def _rest_fields(resp: httpx.Response) -> list[str]:
    return [v["field"] for d in resp.json()["details"] if "fieldViolations" in d for v in d["fieldViolations"]]


def test_a_readonly_scoped_root_token_lists_but_cannot_create(server: tuple[Runed, str]) -> None:
    r, root = server
    tok = _mint(r, bearer(root), name="ro-root", subject_name="root", policies=["readonly"])
    ns = namespace_pb2_grpc.NamespaceServiceStub(r.channel())
    create = namespace_pb2.CreateNamespaceRequest(namespace=namespace_pb2.Namespace(name="scoped-grpc"))
    code, details = code_of(ns.CreateNamespace, create, metadata=bearer(tok.secret))
    assert code == grpc.StatusCode.PERMISSION_DENIED, details
    assert "readonly" in details and "namespaces:create@cluster" in details
    names = [
        n.name for n in ns.ListNamespaces(namespace_pb2.ListNamespacesRequest(), metadata=bearer(tok.secret)).namespaces
    ]
    assert "default" in names and "scoped-grpc" not in names
    # The same token over REST.
    with _rest(r, tok.secret) as c:
        assert c.post("/v1/namespaces", json={"name": "scoped-rest"}).status_code == 403
        listed = c.get("/v1/namespaces")
        assert listed.status_code == 200, listed.text
        assert "scoped-rest" not in {n["name"] for n in listed.json()["namespaces"]}
    # Nor can it mint itself a wider token: with no policies the new one inherits its scope.
    code, _ = code_of(
        auth_pb2_grpc.AuthServiceStub(r.channel()).CreateToken,
        auth_pb2.CreateTokenRequest(name="again", subject_name="root"),
        metadata=bearer(tok.secret),
    )
    assert code == grpc.StatusCode.PERMISSION_DENIED  # readonly has no tokens:create


def test_a_scoped_token_cannot_mint_itself_a_wider_one(server: tuple[Runed, str]) -> None:
    r, root = server
    rw = _mint(r, bearer(root), name="rw-root", subject_name="root", policies=["readwrite"])
    auth = auth_pb2_grpc.AuthServiceStub(r.channel())
    try:
        auth.CreateToken(
            auth_pb2.CreateTokenRequest(name="wider", subject_name="root", policies=["root"]),
            metadata=bearer(rw.secret),
        )
        raise AssertionError("a readwrite-scoped token minted a root-scoped one")
    except grpc.RpcError as e:
        assert e.code() == grpc.StatusCode.PERMISSION_DENIED
        assert list(bad_request_violations(e)) == ["policies[0]"]
    inherited = auth.CreateToken(
        auth_pb2.CreateTokenRequest(name="same", subject_name="root"), metadata=bearer(rw.secret)
    )
    me = auth.WhoAmI(auth_pb2.WhoAmIRequest(), metadata=bearer(inherited.secret))
    assert list(me.token_policies) == ["readwrite"]


def test_unknown_policies_are_refused_with_their_field(server: tuple[Runed, str]) -> None:
    r, root = server
    auth = auth_pb2_grpc.AuthServiceStub(r.channel())
    for subject in ("root", "newcomer"):  # an existing user (scope) and one this call would create
        try:
            auth.CreateToken(
                auth_pb2.CreateTokenRequest(name="typo", subject_name=subject, policies=["no-such-policy"]),
                metadata=bearer(root),
            )
            raise AssertionError(f"unknown policy accepted for {subject}")
        except grpc.RpcError as e:
            assert e.code() == grpc.StatusCode.INVALID_ARGUMENT
            violations = bad_request_violations(e)
            assert list(violations) == ["policies[0]"] and "no-such-policy" in violations["policies[0]"]
    with _rest(r, root) as c:
        resp = c.post("/v1/auth/tokens", json={"name": "typo", "subjectName": "root", "policies": ["readonly", "nope"]})
        assert resp.status_code == 400, resp.text
        assert _rest_fields(resp) == ["policies[1]"]


def test_a_scope_beyond_the_users_rights_is_refused(server: tuple[Runed, str]) -> None:
    r, root = server
    admin = admin_pb2_grpc.AdminServiceStub(r.channel())
    admin.UserCreate(admin_pb2.UserCreateRequest(name="rita", policies=["readonly"]), metadata=bearer(root))
    auth = auth_pb2_grpc.AuthServiceStub(r.channel())
    for policy in ("readwrite", "root"):
        try:
            auth.CreateToken(
                auth_pb2.CreateTokenRequest(name="too-wide", subject_name="rita", policies=["readonly", policy]),
                metadata=bearer(root),
            )
            raise AssertionError(f"{policy} scope granted to a readonly user")
        except grpc.RpcError as e:
            assert e.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert list(bad_request_violations(e)) == ["policies[1]"]
    # A custom policy whose rules the user's rules cover is fine, though the user does not hold it.
    rule = admin_pb2.PolicyRule(resource="services", verbs=["list"], namespace="default")
    admin.PolicyCreate(
        admin_pb2.PolicyCreateRequest(policy=admin_pb2.Policy(name="svc-lister", rules=[rule])), metadata=bearer(root)
    )
    ok = _mint(r, bearer(root), name="narrow", subject_name="rita", policies=["svc-lister"])
    assert ok.secret
    with _rest(r, root) as c:
        resp = c.post("/v1/auth/tokens", json={"name": "too-wide", "subjectName": "rita", "policies": ["root"]})
        assert resp.status_code == 400, resp.text
        assert _rest_fields(resp) == ["policies[0]"]


def test_whoami_and_the_token_list_show_the_scope(server: tuple[Runed, str]) -> None:
    r, root = server
    tok = _mint(r, bearer(root), name="shown", subject_name="root", policies=["readonly"])
    me = auth_pb2_grpc.AuthServiceStub(r.channel()).WhoAmI(auth_pb2.WhoAmIRequest(), metadata=bearer(tok.secret))
    assert (list(me.policies), list(me.token_policies), me.auth_method) == (["root"], ["readonly"], "token")
    with _rest(r, tok.secret) as c:
        body = c.get("/v1/auth/whoami").json()
        assert (body["policies"], body["tokenPolicies"]) == (["root"], ["readonly"])
    listed = admin_pb2_grpc.AdminServiceStub(r.channel()).TokenList(admin_pb2.TokenListRequest(), metadata=bearer(root))
    by_id = {t.id: t for t in listed.tokens}
    assert list(by_id[tok.id].policies) == ["readonly"]
    with _rest(r, root) as c:
        tokens = {t["id"]: t for t in c.get("/v1/admin/tokens").json()["tokens"]}
        assert tokens[tok.id]["policies"] == ["readonly"]
        me = c.get("/v1/auth/whoami").json()
        assert "tokenPolicies" not in me or me["tokenPolicies"] == []  # the bootstrap token is unscoped


def test_the_subject_is_found_by_id_or_by_name(server: tuple[Runed, str]) -> None:
    r, root = server
    admin = admin_pb2_grpc.AdminServiceStub(r.channel())
    alice = admin.UserCreate(
        admin_pb2.UserCreateRequest(name="alice", policies=["readonly"]), metadata=bearer(root)
    ).user
    auth = auth_pb2_grpc.AuthServiceStub(r.channel())
    for key in (alice.id, "alice"):
        tok = _mint(r, bearer(root), name=f"by-{key}", subject_id=key)
        me = auth.WhoAmI(auth_pb2.WhoAmIRequest(), metadata=bearer(tok.secret))
        assert (me.subject_name, me.subject_id) == ("alice", alice.id)
    with _rest(r, root) as c:
        resp = c.post("/v1/auth/tokens", json={"name": "rest-by-name", "subjectId": "alice"})
        assert resp.status_code == 200, resp.text
    code, details = code_of(
        auth.CreateToken, auth_pb2.CreateTokenRequest(name="x", subject_id="nobody"), metadata=bearer(root)
    )
    assert code == grpc.StatusCode.NOT_FOUND and 'user "nobody" not found' in details
