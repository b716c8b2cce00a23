"""Identity end to end: bootstrap, credentials, tokens (own and others'), revocation across API processes."""

from __future__ import annotations

import socket
from pathlib import Path

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from rune.api import (
    admin_pb2,
    admin_pb2_grpc,
    auth_pb2,
    auth_pb2_grpc,
)
from tests.harness import Runed, RunedFactory, run_cli
from tests.support import Metadata, bearer, code_of, eventually, make_token


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
def test_bad_credentials_are_refused_without_saying_which(module_runed: tuple[Runed, Metadata]) -> None:
    runed, auth = module_runed
    auth_stub = auth_pb2_grpc.AuthServiceStub(runed.channel())
    revoked = auth_stub.CreateToken(auth_pb2.CreateTokenRequest(name="gone", subject_name="carol"), metadata=auth)
    assert auth_stub.WhoAmI(auth_pb2.WhoAmIRequest(), metadata=bearer(revoked.secret)).subject_name == "carol"
    assert auth_stub.RevokeToken(auth_pb2.RevokeTokenRequest(id=revoked.id), metadata=auth).revoked
    expiring = make_token(runed, auth, "dave", ["readonly"], ttl=1)
    assert auth_stub.WhoAmI(auth_pb2.WhoAmIRequest(), metadata=bearer(expiring)).subject_name == "dave"

    def expired() -> bool:
        code, _ = code_of(auth_stub.WhoAmI, auth_pb2.WhoAmIRequest(), metadata=bearer(expiring))
        return bool(code != grpc.StatusCode.OK)

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


def test_token_list_never_shows_secrets(module_runed: tuple[Runed, Metadata]) -> None:
    runed, auth = module_runed
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


def test_create_token_validation_lists_every_violation(module_runed: tuple[Runed, Metadata]) -> None:
    runed, auth = module_runed
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


def _ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as s:
            s.bind(("::1", 0))
    except OSError:
        return False
    return True


def test_bootstrap_over_the_ipv6_loopback_is_from_the_server_host(runed_factory: RunedFactory, tmp_path: Path) -> None:
    """`rune admin bootstrap` on the server host, where `localhost` is ::1 first: gRPC names that
    peer ``ipv6:%5B::1%5D:port`` (percent-encoded), which was taken for a remote one and refused."""
    if not _ipv6_loopback():
        pytest.skip("no IPv6 loopback on this host")
    r = runed_factory(tmp_path / "data", args=["--grpc-addr", "[::1]:0"])
    port = r.grpc_target.rpartition(":")[2]
    with grpc.insecure_channel(f"[::1]:{port}") as ch:
        first = admin_pb2_grpc.AdminServiceStub(ch).AdminBootstrap(admin_pb2.AdminBootstrapRequest())
    assert first.token_secret.startswith("rune_")


def test_tokens_for_others_need_admin(module_runed: tuple[Runed, Metadata]) -> None:
    """tokens:create/delete cover one's own tokens; readwrite must not mint or revoke anyone else's."""
    runed, auth = module_runed
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


def test_revocation_reaches_the_other_api_process(module_runed: tuple[Runed, Metadata]) -> None:
    """The REST role caches the credential; a revocation made through gRPC still ends it promptly."""
    import httpx

    runed, auth = module_runed
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
