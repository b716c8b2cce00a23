"""Optional mutual TLS (client CA set, certificate not required): the same credential works, or fails, on both ports."""

from __future__ import annotations

import ssl
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import httpx
import pytest

from rune.api import admin_pb2, admin_pb2_grpc, auth_pb2, auth_pb2_grpc
from tests.harness import Runed, run_runed
from tests.pki import PKI, tls_args
from tests.support import bearer, code_of

Cert = tuple[bytes, bytes]


@dataclass
class OptionalMTLS:
    """A runed with optional client certificates, the PKI behind it and its root token."""

    runed: Runed
    pki: PKI
    tmp: Path
    root: str = ""

    def grpc_channel(self, cert: Cert | None = None) -> grpc.Channel:
        creds = grpc.ssl_channel_credentials(
            root_certificates=self.pki.ca_pem,
            private_key=cert[0] if cert else None,
            certificate_chain=cert[1] if cert else None,
        )
        return grpc.secure_channel(self.runed.grpc_target, creds)

    def rest_client(self, cert: Cert | None = None, token: str = "") -> httpx.Client:
        ctx = ssl.create_default_context(cadata=self.pki.ca_pem.decode())
        if cert is not None:
            (self.tmp / "client.key").write_bytes(cert[0])
            (self.tmp / "client.crt").write_bytes(cert[1])
            ctx.load_cert_chain(self.tmp / "client.crt", self.tmp / "client.key")
        headers = {"authorization": f"Bearer {token}"} if token else {}
        return httpx.Client(base_url="https://" + self.runed.address("rest"), verify=ctx, headers=headers, timeout=10)

    def grpc_whoami(self, cert: Cert | None = None, token: str = "") -> tuple[grpc.StatusCode, str]:
        with self.grpc_channel(cert) as ch:
            who = auth_pb2_grpc.AuthServiceStub(ch).WhoAmI
            try:
                me = who(auth_pb2.WhoAmIRequest(), metadata=bearer(token) if token else None, timeout=10)
            except grpc.RpcError as e:
                return e.code(), ""
            return grpc.StatusCode.OK, f"{me.subject_name}/{me.auth_method}"

    def rest_whoami(self, cert: Cert | None = None, token: str = "") -> tuple[int, str]:
        try:
            with self.rest_client(cert, token) as c:
                resp = c.get("/v1/auth/whoami")
        except httpx.TransportError:
            return 0, "handshake failed"
        if resp.status_code != 200:
            return resp.status_code, ""
        return 200, f"{resp.json()['subjectName']}/{resp.json()['authMethod']}"


@pytest.fixture(scope="module")
def optional(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OptionalMTLS]:
    tmp = tmp_path_factory.mktemp("mtls-optional")
    pki = PKI()
    with run_runed(tmp / "data", args=tls_args(tmp, pki, client_ca=True, require=False)) as r:
        o = OptionalMTLS(r, pki, tmp)
        # Over gRPC without a certificate: AdminBootstrap's local-only check sees the client's own address.
        with o.grpc_channel() as ch:
            admin = admin_pb2_grpc.AdminServiceStub(ch)
            o.root = admin.AdminBootstrap(admin_pb2.AdminBootstrapRequest(), timeout=10).token_secret
            admin.UserCreate(
                admin_pb2.UserCreateRequest(name="alice", policies=["readonly"]), metadata=bearer(o.root), timeout=10
            )
        yield o


def test_a_verified_client_certificate_authenticates_on_both_ports(optional: OptionalMTLS) -> None:
    alice = optional.pki.issue("alice")
    assert optional.grpc_whoami(alice) == (grpc.StatusCode.OK, "alice/mtls")
    assert optional.rest_whoami(alice) == (200, "alice/mtls")
    # Authenticated as alice (readonly), then authorized as alice.
    with optional.grpc_channel(alice) as ch:
        code, _ = code_of(admin_pb2_grpc.AdminServiceStub(ch).PolicyList, admin_pb2.PolicyListRequest(), timeout=10)
        assert code == grpc.StatusCode.PERMISSION_DENIED
    # A bearer token wins over the certificate on both.
    assert optional.grpc_whoami(alice, optional.root) == (grpc.StatusCode.OK, "root/token")
    assert optional.rest_whoami(alice, optional.root) == (200, "root/token")
    # A verified certificate of no known user is refused on both.
    nobody = optional.pki.issue("nobody")
    assert optional.grpc_whoami(nobody) == (grpc.StatusCode.UNAUTHENTICATED, "")
    assert optional.rest_whoami(nobody) == (401, "")
    # The gRPC role still sees the client's own address (AdminBootstrap's local check, the audit log).
    with optional.grpc_channel(alice) as ch:
        admin = admin_pb2_grpc.AdminServiceStub(ch)
        events = admin.ListAuditEvents(admin_pb2.ListAuditEventsRequest(), metadata=bearer(optional.root), timeout=10)
    boot = next(e for e in events.events if e.method == "/rune.api.AdminService/AdminBootstrap")
    assert boot.peer == "127.0.0.1"


def test_a_certificate_from_an_unknown_ca_fails_the_handshake_on_both_ports(optional: OptionalMTLS) -> None:
    stranger = PKI().issue("alice")
    assert optional.grpc_whoami(stranger)[0] == grpc.StatusCode.UNAVAILABLE
    assert optional.grpc_whoami(stranger, optional.root)[0] == grpc.StatusCode.UNAVAILABLE
    assert optional.rest_whoami(stranger) == (0, "handshake failed")
    assert optional.rest_whoami(stranger, optional.root) == (0, "handshake failed")
    # No certificate at all is fine: a token is then needed, on both.
    assert optional.grpc_whoami() == (grpc.StatusCode.UNAUTHENTICATED, "")
    assert optional.rest_whoami() == (401, "")
    assert optional.grpc_whoami(token=optional.root) == (grpc.StatusCode.OK, "root/token")
    assert optional.rest_whoami(token=optional.root) == (200, "root/token")
