"""A rotated server certificate is served on both ports without a restart, in every TLS mode (grpcio's
own TLS without or with required client certificates, the TLS front for optional ones, uvicorn's);
a rotation half written keeps the pair in use; a client CA taken out of its file is no longer trusted."""

from __future__ import annotations

import ssl
import time
from pathlib import Path

import grpc
import httpx
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tests.harness import Runed, RunedFactory
from tests.pki import PKI, der, replace_file, served_certificate, tls_args
from tests.support import eventually

Cert = tuple[bytes, bytes]


def _client_context(pki: PKI, tmp: Path, client: Cert | None, alpn: str) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cadata=pki.ca_pem.decode())
    ctx.set_alpn_protocols([alpn])
    if client is not None:
        (tmp / "client.key").write_bytes(client[0])
        (tmp / "client.crt").write_bytes(client[1])
        ctx.load_cert_chain(tmp / "client.crt", tmp / "client.key")
    return ctx


def _calls_work(r: Runed, pki: PKI, tmp: Path, client: Cert | None) -> None:
    """A gRPC call and a REST request over new connections, verified against the CA."""
    creds = grpc.ssl_channel_credentials(pki.ca_pem, client[0] if client else None, client[1] if client else None)
    with grpc.secure_channel(r.grpc_target, creds) as ch:
        health = health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=10)
    assert health.status == health_pb2.HealthCheckResponse.SERVING
    ctx = _client_context(pki, tmp, client, "http/1.1")
    with httpx.Client(base_url="https://" + r.address("rest"), verify=ctx, timeout=10) as c:
        assert c.get("/healthz").status_code == 200


@pytest.mark.parametrize("mode", ["no-client-ca", "client-cert-required", "client-cert-optional"])
def test_a_rotated_certificate_is_served_on_both_ports_without_a_restart(
    runed_factory: RunedFactory, tmp_path: Path, mode: str
) -> None:
    pki = PKI()
    args = tls_args(tmp_path, pki, client_ca=mode != "no-client-ca", require=mode == "client-cert-required")
    r = runed_factory(tmp_path / "data", args=args)
    client = pki.issue("alice") if mode == "client-cert-required" else None
    grpc_ctx = _client_context(pki, tmp_path, client, "h2")
    rest_ctx = _client_context(pki, tmp_path, client, "http/1.1")
    first = der((tmp_path / "server.crt").read_bytes())
    assert served_certificate(r.grpc_target, grpc_ctx) == first
    assert served_certificate(r.address("rest"), rest_ctx) == first

    key, cert = pki.issue("runed", server=True)
    # Half a rotation (the certificate written, not its key yet): the pair in use is kept, and
    # handshakes go on succeeding with it.
    replace_file(tmp_path / "server.crt", cert)
    deadline = time.monotonic() + 2.5
    while time.monotonic() < deadline:
        assert served_certificate(r.grpc_target, grpc_ctx) == first
        assert served_certificate(r.address("rest"), rest_ctx) == first
        time.sleep(0.25)
    _calls_work(r, pki, tmp_path, client)
    # Said once by each port's role, not at every handshake.
    said = r.output().count("keeping the certificate in use")
    assert 1 <= said <= 2, r.output()

    # The key follows: the new pair is served to new connections on both ports.
    replace_file(tmp_path / "server.key", key)
    eventually(
        lambda: served_certificate(r.grpc_target, grpc_ctx) == der(cert), what="the gRPC port serving the new pair"
    )
    eventually(
        lambda: served_certificate(r.address("rest"), rest_ctx) == der(cert), what="the REST port serving the new pair"
    )
    _calls_work(r, pki, tmp_path, client)
    assert r.proc is not None and r.proc.poll() is None, "runed restarted"


def _handshakes(r: Runed, pki: PKI, tmp: Path, client: Cert) -> tuple[bool, bool]:
    """Whether a new connection with ``client``'s certificate gets through on the gRPC port, and on
    the REST port (the server's certificate verified against ``pki``)."""
    creds = grpc.ssl_channel_credentials(pki.ca_pem, client[0], client[1])
    # A channel of its own: no connection is shared with an earlier channel's.
    with grpc.secure_channel(r.grpc_target, creds, options=[("grpc.use_local_subchannel_pool", 1)]) as ch:
        try:
            health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=10)
            on_grpc = True
        except grpc.RpcError as e:
            assert e.code() == grpc.StatusCode.UNAVAILABLE, e
            on_grpc = False
    try:
        with httpx.Client(
            base_url="https://" + r.address("rest"), verify=_client_context(pki, tmp, client, "http/1.1")
        ) as c:
            on_rest = c.get("/healthz").status_code == 200
    except httpx.TransportError:
        on_rest = False
    return on_grpc, on_rest


@pytest.mark.parametrize("mode", ["client-cert-required", "client-cert-optional"])
def test_a_client_ca_taken_out_of_its_file_is_no_longer_trusted_on_either_port(
    runed_factory: RunedFactory, tmp_path: Path, mode: str
) -> None:
    old = PKI()  # the server's CA, and the clients' at first
    r = runed_factory(
        tmp_path / "data", args=tls_args(tmp_path, old, client_ca=True, require=mode == "client-cert-required")
    )
    # Named apart: a verifier looks a certificate's issuer up by name.
    new = PKI("test-ca-2")
    by_old, by_new = old.issue("alice"), new.issue("alice")
    assert _handshakes(r, old, tmp_path, by_old) == (True, True)
    assert _handshakes(r, old, tmp_path, by_new) == (False, False)

    # The clients' CA is replaced: the new one is trusted on both ports, the old one on neither.
    replace_file(tmp_path / "clients-ca.crt", new.ca_pem)
    eventually(lambda: _handshakes(r, old, tmp_path, by_new) == (True, True), what="the new client CA trusted")
    assert _handshakes(r, old, tmp_path, by_old) == (False, False)
    # Both in the file: both trusted.
    replace_file(tmp_path / "clients-ca.crt", old.ca_pem + new.ca_pem)
    eventually(lambda: _handshakes(r, old, tmp_path, by_old) == (True, True), what="the old client CA trusted again")
    assert _handshakes(r, old, tmp_path, by_new) == (True, True)
    assert r.proc is not None and r.proc.poll() is None, "runed restarted"
