"""Authorization end to end: policies and users, namespace-scoped rules, the audit log, per-token rate limits."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
import yaml
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from rune.api import (
    admin_pb2,
    admin_pb2_grpc,
    auth_pb2,
    auth_pb2_grpc,
    exec_pb2,
    exec_pb2_grpc,
    logs_pb2,
    logs_pb2_grpc,
    namespace_pb2,
    namespace_pb2_grpc,
    secret_pb2,
    secret_pb2_grpc,
    service_pb2,
    service_pb2_grpc,
)
from tests.harness import Runed, RunedFactory
from tests.support import Metadata, bearer, code_of, eventually, make_token


def write_runefile(path: Path, tree: dict[str, object]) -> Path:
    path.write_text(yaml.safe_dump(tree))
    return path


# -- policies and users -------------------------------------------------------------------------
def test_policy_lifecycle_and_builtins_are_protected(module_runed: tuple[Runed, Metadata]) -> None:
    runed, auth = module_runed
    admin = admin_pb2_grpc.AdminServiceStub(runed.channel())
    names = {p.name: p for p in admin.PolicyList(admin_pb2.PolicyListRequest(), metadata=auth).policies}
    assert {"root", "admin", "readwrite", "readonly"} <= set(names)
    assert all(names[n].builtin for n in ("root", "admin", "readwrite", "readonly"))
    rule = admin_pb2.PolicyRule(resource="services", verbs=["get", "list"], namespace="team-a")
    created = admin.PolicyCreate(
        admin_pb2.PolicyCreateRequest(policy=admin_pb2.Policy(name="viewer", rules=[rule])), metadata=auth
    ).policy
    assert created.id and not created.builtin
    # Create is an upsert (as upstream): same id, new rules.
    again = admin.PolicyCreate(
        admin_pb2.PolicyCreateRequest(policy=admin_pb2.Policy(name="viewer", description="v2", rules=[rule])),
        metadata=auth,
    ).policy
    assert again.id == created.id and again.description == "v2"
    rule2 = admin_pb2.PolicyRule(resource="services", verbs=["get"], namespace="*")
    updated = admin.PolicyUpdate(
        admin_pb2.PolicyUpdateRequest(policy=admin_pb2.Policy(name="viewer", description="d", rules=[rule2])),
        metadata=auth,
    ).policy
    assert updated.id == created.id and updated.description == "d" and list(updated.rules[0].verbs) == ["get"]
    got = admin.PolicyGet(admin_pb2.PolicyGetRequest(name="viewer"), metadata=auth).policy
    assert got == updated
    for builtin in ("root", "readonly"):
        code, _ = code_of(admin.PolicyDelete, admin_pb2.PolicyDeleteRequest(name=builtin), metadata=auth)
        assert code == grpc.StatusCode.FAILED_PRECONDITION
        code, _ = code_of(
            admin.PolicyCreate,
            admin_pb2.PolicyCreateRequest(policy=admin_pb2.Policy(name=builtin, rules=[rule2])),
            metadata=auth,
        )
        assert code == grpc.StatusCode.FAILED_PRECONDITION
        code, _ = code_of(
            admin.PolicyUpdate,
            admin_pb2.PolicyUpdateRequest(policy=admin_pb2.Policy(name=builtin, rules=[rule2])),
            metadata=auth,
        )
        assert code == grpc.StatusCode.FAILED_PRECONDITION
    assert admin.PolicyDelete(admin_pb2.PolicyDeleteRequest(name="viewer"), metadata=auth).deleted
    code, _ = code_of(admin.PolicyGet, admin_pb2.PolicyGetRequest(name="viewer"), metadata=auth)
    assert code == grpc.StatusCode.NOT_FOUND
    code, details = code_of(
        admin.PolicyCreate,
        admin_pb2.PolicyCreateRequest(
            policy=admin_pb2.Policy(name="Bad_Name", rules=[admin_pb2.PolicyRule(resource="", verbs=[])])
        ),
        metadata=auth,
    )
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    for path in ("policy.name", "policy.rules[0].resource", "policy.rules[0].verbs"):
        assert path in details


def test_a_rule_naming_an_unknown_resource_or_verb_is_refused_naming_it(module_runed: tuple[Runed, Metadata]) -> None:
    """A rule with a misspelt word grants nothing, silently: it is refused with the word meant."""
    runed, auth = module_runed
    admin = admin_pb2_grpc.AdminServiceStub(runed.channel())
    rule = admin_pb2.PolicyRule(resource="servcies", verbs=["get", "lsit", "patch"], namespace="*")
    code, details = code_of(
        admin.PolicyCreate,
        admin_pb2.PolicyCreateRequest(policy=admin_pb2.Policy(name="typo", rules=[rule])),
        metadata=auth,
    )
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert 'policy.rules[0].resource: unknown resource "servcies" (did you mean "services"?)' in details, details
    assert 'policy.rules[0].verbs[1]: unknown verb "lsit" (did you mean "list"?)' in details, details
    assert 'policy.rules[0].verbs[2]: unknown verb "patch"' in details, details
    assert "policy.rules[0].verbs[0]" not in details
    code, _ = code_of(admin.PolicyGet, admin_pb2.PolicyGetRequest(name="typo"), metadata=auth)
    assert code == grpc.StatusCode.NOT_FOUND
    # Every word of the built-in policies and of upstream's table is one a rule may name.
    fine = admin_pb2.PolicyRule(resource="auth", verbs=["get", "watch", "scale", "exec", "read"], namespace="*")
    assert (
        admin.PolicyCreate(
            admin_pb2.PolicyCreateRequest(policy=admin_pb2.Policy(name="words", rules=[fine])), metadata=auth
        ).policy.name
        == "words"
    )
    assert admin.PolicyDelete(admin_pb2.PolicyDeleteRequest(name="words"), metadata=auth).deleted


def test_attach_and_detach_change_access(module_runed: tuple[Runed, Metadata]) -> None:
    runed, auth = module_runed
    admin = admin_pb2_grpc.AdminServiceStub(runed.channel())
    user = admin.UserCreate(admin_pb2.UserCreateRequest(name="frank", email="frank@example.com"), metadata=auth).user
    assert user.id and list(user.policies) == []
    tok = auth_pb2_grpc.AuthServiceStub(runed.channel()).CreateToken(
        auth_pb2.CreateTokenRequest(name="frank-tok", subject_id=user.id), metadata=auth
    )
    ns = namespace_pb2_grpc.NamespaceServiceStub(runed.channel())

    def listing() -> grpc.StatusCode:
        return code_of(ns.ListNamespaces, namespace_pb2.ListNamespacesRequest(), metadata=bearer(tok.secret))[0]

    assert listing() == grpc.StatusCode.PERMISSION_DENIED
    assert admin.PolicyAttachToSubject(
        admin_pb2.PolicyAttachToSubjectRequest(policy_name="readonly", subject_name="frank"), metadata=auth
    ).attached
    eventually(lambda: listing() != grpc.StatusCode.PERMISSION_DENIED, what="attached policy applies")
    users = {u.name: u for u in admin.UserList(admin_pb2.UserListRequest(), metadata=auth).users}
    assert list(users["frank"].policies) == ["readonly"] and users["frank"].email == "frank@example.com"
    assert admin.PolicyDetachFromSubject(
        admin_pb2.PolicyDetachFromSubjectRequest(policy_name="readonly", subject_id=user.id), metadata=auth
    ).detached
    eventually(lambda: listing() == grpc.StatusCode.PERMISSION_DENIED, what="detached policy no longer applies")
    code, _ = code_of(
        admin.PolicyAttachToSubject,
        admin_pb2.PolicyAttachToSubjectRequest(policy_name="nope", subject_name="frank"),
        metadata=auth,
    )
    assert code == grpc.StatusCode.NOT_FOUND


# -- namespace-scoped rules ---------------------------------------------------------------------
def _first_message_code(call: object, first: object, metadata: Metadata) -> tuple[grpc.StatusCode, str]:
    done = threading.Event()

    def requests() -> Iterator[object]:
        yield first
        done.wait(0.5)

    try:
        for _ in call(requests(), metadata=metadata, timeout=0.5):  # type: ignore[operator]
            break
    except grpc.RpcError as e:
        return e.code(), e.details() or ""
    finally:
        done.set()
    return grpc.StatusCode.OK, ""


def test_namespace_scoped_rules_on_nested_and_streaming_requests(module_runed: tuple[Runed, Metadata]) -> None:
    runed, auth = module_runed
    admin = admin_pb2_grpc.AdminServiceStub(runed.channel())
    rules = [
        admin_pb2.PolicyRule(resource=r, verbs=v, namespace="team-a")
        for r, v in (("services", ["create", "get"]), ("logs", ["get"]), ("exec", ["exec"]), ("secrets", ["create"]))
    ]
    admin.PolicyCreate(
        admin_pb2.PolicyCreateRequest(policy=admin_pb2.Policy(name="team-a", rules=rules)), metadata=auth
    )
    md = bearer(make_token(runed, auth, "gina", ["team-a"]))
    ch = runed.channel()
    svc = service_pb2_grpc.ServiceServiceStub(ch)
    for ns, allowed in (("team-a", True), ("team-b", False)):
        code, details = code_of(
            svc.CreateService,
            service_pb2.CreateServiceRequest(service=service_pb2.Service(name="web", namespace=ns)),
            metadata=md,
            timeout=5,
        )
        assert (code != grpc.StatusCode.PERMISSION_DENIED) == allowed, (ns, code, details)
        if not allowed:
            assert "services:create@team-b" in details
        code, details = code_of(
            secret_pb2_grpc.SecretServiceStub(ch).CreateSecret,
            secret_pb2.CreateSecretRequest(secret=secret_pb2.Secret(name="s", namespace=ns)),
            metadata=md,
            timeout=5,
        )
        assert (code != grpc.StatusCode.PERMISSION_DENIED) == allowed, (ns, code, details)
        code, details = _first_message_code(
            logs_pb2_grpc.LogServiceStub(ch).StreamLogs, logs_pb2.LogRequest(resource_target="web", namespace=ns), md
        )
        assert (code != grpc.StatusCode.PERMISSION_DENIED) == allowed, (ns, code, details)
        if not allowed:
            assert "logs:get@team-b" in details
        first = exec_pb2.ExecRequest(init=exec_pb2.ExecInitRequest(service_name="web", namespace=ns, command=["true"]))
        code, details = _first_message_code(exec_pb2_grpc.ExecServiceStub(ch).StreamExec, first, md)
        assert (code != grpc.StatusCode.PERMISSION_DENIED) == allowed, (ns, code, details)
        if not allowed:
            assert "exec:exec@team-b" in details
    # A namespace rule never grants cluster-scoped calls.
    code, details = code_of(
        namespace_pb2_grpc.NamespaceServiceStub(ch).ListNamespaces, namespace_pb2.ListNamespacesRequest(), metadata=md
    )
    assert code == grpc.StatusCode.PERMISSION_DENIED and "namespaces:list@cluster" in details


# -- audit --------------------------------------------------------------------------------------
def test_audit_records_mutations_and_secret_reads_for_admins_only(runed: Runed, auth: Metadata) -> None:
    ch = runed.channel()
    ro = bearer(make_token(runed, auth, "hank", ["readonly"]))
    code, _ = code_of(
        namespace_pb2_grpc.NamespaceServiceStub(ch).CreateNamespace,
        namespace_pb2.CreateNamespaceRequest(namespace=namespace_pb2.Namespace(name="audited")),
        metadata=ro,
    )
    assert code == grpc.StatusCode.PERMISSION_DENIED
    value = "s3cr3t-audit-probe-value"
    secrets = secret_pb2_grpc.SecretServiceStub(ch)
    secrets.CreateSecret(
        secret_pb2.CreateSecretRequest(secret=secret_pb2.Secret(name="db", namespace="default", data={"pw": value})),
        metadata=auth,
    )
    got = secrets.GetSecret(secret_pb2.GetSecretRequest(name="db", namespace="default"), metadata=auth)
    assert got.secret.data["pw"] == value
    # Reads other than secret values leave no record.
    admin = admin_pb2_grpc.AdminServiceStub(ch)
    admin.PolicyList(admin_pb2.PolicyListRequest(), metadata=auth)
    listing = admin.ListAuditEvents(admin_pb2.ListAuditEventsRequest(), metadata=auth)
    assert value.encode() not in listing.SerializeToString()
    events = listing.events
    by_method = {e.method: e for e in events}
    assert "/rune.api.AdminService/PolicyList" not in by_method
    boot = by_method["/rune.api.AdminService/AdminBootstrap"]
    assert boot.outcome == "success" and boot.peer == "127.0.0.1"
    token = by_method["/rune.api.AuthService/CreateToken"]
    assert (token.subject, token.verb, token.name, token.code) == ("root", "create", "hank-tok", "OK")
    denied = by_method["/rune.api.NamespaceService/CreateNamespace"]
    assert (denied.subject, denied.outcome, denied.code, denied.name) == (
        "hank",
        "failure",
        "PERMISSION_DENIED",
        "audited",
    )
    read = by_method["/rune.api.SecretService/GetSecret"]
    assert (read.subject, read.resource, read.verb, read.namespace, read.name) == (
        "root",
        "secrets",
        "read",
        "default",
        "db",
    )
    assert all(e.timestamp_ms > 0 and e.request_id for e in events)
    page = admin.ListAuditEvents(admin_pb2.ListAuditEventsRequest(limit=1), metadata=auth)
    assert len(page.events) == 1 and page.next_since_id == page.events[0].id
    rest = admin.ListAuditEvents(admin_pb2.ListAuditEventsRequest(since_id=page.next_since_id), metadata=auth)
    assert [e.id for e in rest.events] == [e.id for e in events[1:]]
    only_hank = admin.ListAuditEvents(admin_pb2.ListAuditEventsRequest(subject="hank"), metadata=auth).events
    assert [e.method for e in only_hank] == ["/rune.api.NamespaceService/CreateNamespace"]
    code, details = code_of(admin.ListAuditEvents, admin_pb2.ListAuditEventsRequest(), metadata=ro)
    assert code == grpc.StatusCode.PERMISSION_DENIED and "admin:list@cluster" in details


# -- rate limits --------------------------------------------------------------------------------
def test_rate_limit_per_token_with_retry_info(runed_factory: RunedFactory, tmp_path: Path) -> None:
    cfg = write_runefile(tmp_path / "runefile.yaml", {"auth": {"rate_limit": {"requests_per_second": 0.5, "burst": 3}}})
    r = runed_factory(tmp_path / "data", args=["--config", str(cfg)])
    admin = admin_pb2_grpc.AdminServiceStub(r.channel())
    root = bearer(admin.AdminBootstrap(admin_pb2.AdminBootstrapRequest()).token_secret)
    who = auth_pb2_grpc.AuthServiceStub(r.channel()).WhoAmI
    for _ in range(3):
        who(auth_pb2.WhoAmIRequest(), metadata=root)
    try:
        who(auth_pb2.WhoAmIRequest(), metadata=root)
    except grpc.RpcError as e:
        assert e.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        status = rpc_status.from_call(e)
        assert status is not None
        info = error_details_pb2.RetryInfo()
        assert any(d.Unpack(info) for d in status.details)
        assert 0 < info.retry_delay.ToTimedelta().total_seconds() <= 2.0
    else:
        pytest.fail("fourth call within the burst window was not limited")
