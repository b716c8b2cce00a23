"""Identity end to end: bootstrap, tokens, users, policies, namespace scoping, audit, rate limits."""

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
from tests.harness import Runed, RunedFactory, run_cli, run_runed
from tests.support import eventually

Metadata = list[tuple[str, str]]


def bearer(secret: str) -> Metadata:
    return [("authorization", f"Bearer {secret}")]


def code_of(fn: object, *args: object, **kw: object) -> tuple[grpc.StatusCode, str]:
    try:
        fn(*args, **kw)  # type: ignore[operator]
    except grpc.RpcError as e:
        return e.code(), e.details() or ""
    return grpc.StatusCode.OK, ""


def make_token(runed: Runed, auth: Metadata, user: str, policies: list[str], ttl: int = 0) -> str:
    stub = auth_pb2_grpc.AuthServiceStub(runed.channel())
    resp = stub.CreateToken(
        auth_pb2.CreateTokenRequest(name=f"{user}-tok", subject_name=user, policies=policies, ttl_seconds=ttl),
        metadata=auth,
    )
    return str(resp.secret)


def write_runefile(path: Path, tree: dict[str, object]) -> Path:
    path.write_text(yaml.safe_dump(tree))
    return path


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Runed, Metadata]]:
    """One runed for the tests that only add objects of their own (each uses distinct names)."""
    with run_runed(tmp_path_factory.mktemp("auth-shared") / "data") as r:
        stub = admin_pb2_grpc.AdminServiceStub(r.channel())
        yield r, bearer(stub.AdminBootstrap(admin_pb2.AdminBootstrapRequest()).token_secret)


# -- bootstrap ----------------------------------------------------------------------------------
def test_bootstrap_once_then_failed_precondition(runed: Runed) -> None:
    admin = admin_pb2_grpc.AdminServiceStub(runed.channel())
    first = admin.AdminBootstrap(admin_pb2.AdminBootstrapRequest())
    assert first.token_secret.startswith("rune_") and first.token_id and first.subject_id
    code, details = code_of(admin.AdminBootstrap, admin_pb2.AdminBootstrapRequest())
    assert code == grpc.StatusCode.FAILED_PRECONDITION
    assert "already bootstrapped" in details
    me = auth_pb2_grpc.AuthServiceStub(runed.channel()).WhoAmI(
        auth_pb2.WhoAmIRequest(), metadata=bearer(first.token_secret)
    )
    assert (me.subject_name, list(me.policies), me.subject_id) == ("root", ["root"], first.subject_id)


def test_bootstrap_reset_on_the_server_host_replaces_root_tokens(runed: Runed, root_token: str) -> None:
    out = run_cli(["--data-dir", str(runed.data_dir), "bootstrap", "--reset"])
    assert out.returncode == 0, out.stderr
    new = out.stdout.strip()
    assert new.startswith("rune_") and new != root_token
    who = auth_pb2_grpc.AuthServiceStub(runed.channel()).WhoAmI
    # The server learns of the revocation from the store's change log (another process wrote it).
    eventually(
        lambda: (
            code_of(who, auth_pb2.WhoAmIRequest(), metadata=bearer(root_token))[0] == grpc.StatusCode.UNAUTHENTICATED
        ),
        timeout=3,
        what="old root token refused after reset",
    )
    assert who(auth_pb2.WhoAmIRequest(), metadata=bearer(new)).subject_name == "root"


# -- credentials --------------------------------------------------------------------------------
def test_bad_credentials_are_refused_without_saying_which(shared: tuple[Runed, Metadata]) -> None:
    runed, auth = shared
    auth_stub = auth_pb2_grpc.AuthServiceStub(runed.channel())
    revoked = auth_stub.CreateToken(auth_pb2.CreateTokenRequest(name="gone", subject_name="carol"), metadata=auth)
    assert auth_stub.WhoAmI(auth_pb2.WhoAmIRequest(), metadata=bearer(revoked.secret)).subject_name == "carol"
    assert auth_stub.RevokeToken(auth_pb2.RevokeTokenRequest(id=revoked.id), metadata=auth).revoked
    expiring = make_token(runed, auth, "dave", ["readonly"], ttl=1)
    assert auth_stub.WhoAmI(auth_pb2.WhoAmIRequest(), metadata=bearer(expiring)).subject_name == "dave"

    def expired() -> bool:
        return code_of(auth_stub.WhoAmI, auth_pb2.WhoAmIRequest(), metadata=bearer(expiring))[0] != grpc.StatusCode.OK

    eventually(expired, timeout=5, what="a 1s token expires")
    reasons = set()
    for secret in (revoked.secret, expiring, "rune_" + "A" * 43, "garbage"):
        code, details = code_of(auth_stub.WhoAmI, auth_pb2.WhoAmIRequest(), metadata=bearer(secret))
        assert code == grpc.StatusCode.UNAUTHENTICATED
        reasons.add(details)
    assert len(reasons) == 1, reasons
    code, details = code_of(auth_stub.WhoAmI, auth_pb2.WhoAmIRequest(), metadata=[("authorization", "Basic x")])
    assert code == grpc.StatusCode.UNAUTHENTICATED and "Bearer" in details
    code, details = code_of(auth_stub.WhoAmI, auth_pb2.WhoAmIRequest())
    assert code == grpc.StatusCode.UNAUTHENTICATED and "missing" in details


def test_token_list_never_shows_secrets(shared: tuple[Runed, Metadata]) -> None:
    runed, auth = shared
    root_token = auth[0][1].removeprefix("Bearer ")
    secret = make_token(runed, auth, "erin", ["readonly"], ttl=3600)
    auth_pb2_grpc.AuthServiceStub(runed.channel()).WhoAmI(auth_pb2.WhoAmIRequest(), metadata=bearer(secret))
    resp = admin_pb2_grpc.AdminServiceStub(runed.channel()).TokenList(admin_pb2.TokenListRequest(), metadata=auth)
    raw = resp.SerializeToString()
    assert secret.encode() not in raw and root_token.encode() not in raw
    mine = [t for t in resp.tokens if t.name == "erin-tok"]
    assert len(mine) == 1
    assert 3590 <= mine[0].expires_at - mine[0].issued_at <= 3610
    assert not mine[0].revoked
    assert mine[0].last_used_at >= mine[0].issued_at


def test_create_token_validation_lists_every_violation(shared: tuple[Runed, Metadata]) -> None:
    runed, auth = shared
    stub = auth_pb2_grpc.AuthServiceStub(runed.channel())
    try:
        stub.CreateToken(auth_pb2.CreateTokenRequest(subject_type="service", ttl_seconds=-1), metadata=auth)
    except grpc.RpcError as e:
        assert e.code() == grpc.StatusCode.INVALID_ARGUMENT
        status = rpc_status.from_call(e)
        assert status is not None
        br = error_details_pb2.BadRequest()
        assert any(d.Unpack(br) for d in status.details)
        assert {v.field for v in br.field_violations} == {"subject_type", "ttl_seconds", "name"}
    else:
        pytest.fail("invalid CreateToken accepted")


# -- policies and users -------------------------------------------------------------------------
def test_policy_lifecycle_and_builtins_are_protected(shared: tuple[Runed, Metadata]) -> None:
    runed, auth = shared
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


def test_attach_and_detach_change_access(shared: tuple[Runed, Metadata]) -> None:
    runed, auth = shared
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


def test_namespace_scoped_rules_on_nested_and_streaming_requests(shared: tuple[Runed, Metadata]) -> None:
    runed, auth = shared
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


def _non_loopback_ipv4() -> str | None:
    import socket

    for probe in ("10.255.255.255", "192.0.2.255", "198.51.100.1"):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            try:
                s.connect((probe, 9))  # no packet is sent: this only picks the outgoing address
            except OSError:
                continue
            addr: str = s.getsockname()[0]
        if not addr.startswith("127.") and addr != "0.0.0.0":
            return addr
    return None


@pytest.mark.parametrize("allow_remote", [False, True])
def test_bootstrap_from_a_remote_peer_needs_allow_remote_admin(
    runed_factory: RunedFactory, tmp_path: Path, allow_remote: bool
) -> None:
    ip = _non_loopback_ipv4()
    if ip is None:
        pytest.skip("no non-loopback IPv4 address on this host")
    env = {"RUNE_AUTH_ALLOW_REMOTE_ADMIN": "true"} if allow_remote else {}
    r = runed_factory(tmp_path / "data", args=["--grpc-addr", f"{ip}:0"], env=env)
    with grpc.insecure_channel(r.grpc_target) as ch:
        code, details = code_of(admin_pb2_grpc.AdminServiceStub(ch).AdminBootstrap, admin_pb2.AdminBootstrapRequest())
    if allow_remote:
        assert code == grpc.StatusCode.OK
    else:
        assert code == grpc.StatusCode.PERMISSION_DENIED and "allow_remote_admin" in details


def test_tokens_for_others_need_admin(shared: tuple[Runed, Metadata]) -> None:
    """tokens:create/delete cover one's own tokens; readwrite must not mint or revoke anyone else's."""
    runed, auth = shared
    stub = auth_pb2_grpc.AuthServiceStub(runed.channel())
    rw = bearer(make_token(runed, auth, "ivan", ["readwrite"]))
    root_tok = stub.CreateToken(auth_pb2.CreateTokenRequest(name="spare", subject_name="root"), metadata=auth)
    for req in (
        auth_pb2.CreateTokenRequest(name="mine-now", subject_name="root"),
        auth_pb2.CreateTokenRequest(name="x", subject_name="judy", policies=["root"]),
    ):
        code, details = code_of(stub.CreateToken, req, metadata=rw)
        assert code == grpc.StatusCode.PERMISSION_DENIED and "admin:create@cluster" in details
    code, details = code_of(stub.RevokeToken, auth_pb2.RevokeTokenRequest(id=root_tok.id), metadata=rw)
    assert code == grpc.StatusCode.PERMISSION_DENIED and "admin:delete@cluster" in details
    own = stub.CreateToken(auth_pb2.CreateTokenRequest(name="second", subject_name="ivan"), metadata=rw)
    assert stub.WhoAmI(auth_pb2.WhoAmIRequest(), metadata=bearer(own.secret)).subject_name == "ivan"
    assert stub.RevokeToken(auth_pb2.RevokeTokenRequest(id=own.id), metadata=rw).revoked
    assert stub.WhoAmI(auth_pb2.WhoAmIRequest(), metadata=bearer(root_tok.secret)).subject_name == "root"


def test_revocation_reaches_the_other_api_process(shared: tuple[Runed, Metadata]) -> None:
    """The REST role caches the credential; a revocation made through gRPC still ends it promptly."""
    import httpx

    runed, auth = shared
    stub = auth_pb2_grpc.AuthServiceStub(runed.channel())
    tok = stub.CreateToken(auth_pb2.CreateTokenRequest(name="kate-tok", subject_name="kate"), metadata=auth)
    headers = {"authorization": f"Bearer {tok.secret}"}
    with httpx.Client(base_url=runed.http_base, timeout=5) as http:
        for _ in range(3):
            r = http.get("/v1/auth/whoami", headers=headers)
            assert r.status_code == 200 and r.json()["subjectName"] == "kate"
        assert stub.RevokeToken(auth_pb2.RevokeTokenRequest(id=tok.id), metadata=auth).revoked
        eventually(
            lambda: http.get("/v1/auth/whoami", headers=headers).status_code == 401,
            timeout=3,
            what="revoked token refused by the REST role",
        )
