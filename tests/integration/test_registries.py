"""Registry admin RPCs over real gRPC, tested against a small fake registry (HTTP /v2/ API)."""

from __future__ import annotations

import base64
import http.server
import threading
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from rune.api import admin_pb2, admin_pb2_grpc, secret_pb2, secret_pb2_grpc
from tests.harness import Runed, RunedFactory
from tests.support import bad_request_fields

Metadata = list[tuple[str, str]]
PASSWORD = "zq-REGISTRY-PASSWORD-93d1"
TOKEN = "zq-REGISTRY-TOKEN-5e7c"


class _FakeRegistry(http.server.BaseHTTPRequestHandler):
    """Answers like a registry: /v2/ and one manifest, behind basic or bearer auth."""

    def _authorized(self) -> bool:
        got = self.headers.get("Authorization", "")
        basic = "Basic " + base64.b64encode(f"robot:{PASSWORD}".encode()).decode()
        return got in (basic, f"Bearer {TOKEN}")

    def _answer(self, body: bool) -> None:
        if not self._authorized():
            self.send_response(401)
            self.send_header("WWW-Authenticate", 'Basic realm="fake"')
            self.end_headers()
            return
        if self.path in ("/v2/", "/v2/team/app/manifests/1.0"):
            self.send_response(200)
            self.send_header("Content-Length", "2")
            self.end_headers()
            if body:
                self.wfile.write(b"{}")
            return
        self.send_response(404)
        self.end_headers()

    def do_GET(self) -> None:
        self._answer(True)

    def do_HEAD(self) -> None:
        self._answer(False)

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def fake_registry() -> Iterator[str]:
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _FakeRegistry)
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    yield f"127.0.0.1:{srv.server_address[1]}"
    srv.shutdown()
    srv.server_close()
    t.join(5)


def _admin(runed: Runed) -> admin_pb2_grpc.AdminServiceStub:
    return admin_pb2_grpc.AdminServiceStub(runed.channel())


def _reg(name: str, host: str, **auth: object) -> admin_pb2.RegistryConfig:
    return admin_pb2.RegistryConfig(name=name, registry=host, auth=admin_pb2.RegistryAuthConfig(**auth))  # type: ignore[arg-type]


def test_crud_keeps_credentials_in_a_secret_and_never_echoes_them(
    runed: Runed, auth: Metadata, fake_registry: str
) -> None:
    admin = _admin(runed)
    added = admin.AddRegistry(
        admin_pb2.AddRegistryRequest(registry=_reg("fake", fake_registry, username="robot", password=PASSWORD)),
        metadata=auth,
    ).registry
    assert added.auth.type == "basic" and added.auth.password == "" and added.auth.username == ""
    responses = [
        added,
        admin.GetRegistry(admin_pb2.GetRegistryRequest(name="fake"), metadata=auth),
        admin.ListRegistries(admin_pb2.ListRegistriesRequest(), metadata=auth),
        admin.RegistriesStatus(admin_pb2.RegistriesStatusRequest(), metadata=auth),
    ]
    for r in responses:
        assert PASSWORD.encode() not in r.SerializeToString()
    status = responses[3].registries[0]
    assert status.name == "fake" and status.type == "basic" and status.auth_configured

    # The credentials live in a secret in the system namespace (readable with secrets:read).
    secrets = secret_pb2_grpc.SecretServiceStub(runed.channel())
    sec = secrets.GetSecret(secret_pb2.GetSecretRequest(name="registry-fake", namespace="system"), metadata=auth)
    assert dict(sec.secret.data) == {"username": "robot", "password": PASSWORD}

    with pytest.raises(grpc.RpcError) as e:
        admin.AddRegistry(admin_pb2.AddRegistryRequest(registry=_reg("fake", "ghcr.io")), metadata=auth)
    assert e.value.code() == grpc.StatusCode.ALREADY_EXISTS

    # Update without credentials keeps the stored ones.
    upd = admin.UpdateRegistry(
        admin_pb2.UpdateRegistryRequest(registry=_reg("fake", fake_registry, type="basic")), metadata=auth
    ).registry
    assert upd.auth.type == "basic"
    ok = admin.TestRegistry(admin_pb2.TestRegistryRequest(name="fake"), metadata=auth)
    assert ok.ok, ok.message
    with pytest.raises(grpc.RpcError) as e:
        admin.UpdateRegistry(admin_pb2.UpdateRegistryRequest(registry=_reg("ghost", "ghcr.io")), metadata=auth)
    assert e.value.code() == grpc.StatusCode.NOT_FOUND

    assert admin.RemoveRegistry(admin_pb2.RemoveRegistryRequest(name="fake"), metadata=auth).deleted
    for call in (
        lambda: admin.GetRegistry(admin_pb2.GetRegistryRequest(name="fake"), metadata=auth),
        lambda: admin.RemoveRegistry(admin_pb2.RemoveRegistryRequest(name="fake"), metadata=auth),
        lambda: secrets.GetSecret(secret_pb2.GetSecretRequest(name="registry-fake", namespace="system"), metadata=auth),
    ):
        with pytest.raises(grpc.RpcError) as e:
            call()
        assert e.value.code() == grpc.StatusCode.NOT_FOUND


def test_test_registry_uses_stored_credentials(runed: Runed, auth: Metadata, fake_registry: str) -> None:
    admin = _admin(runed)
    admin.AddRegistry(admin_pb2.AddRegistryRequest(registry=_reg("tok", fake_registry, token=TOKEN)), metadata=auth)
    admin.AddRegistry(
        admin_pb2.AddRegistryRequest(registry=_reg("wrong", fake_registry, username="robot", password="nope")),
        metadata=auth,
    )
    admin.AddRegistry(admin_pb2.AddRegistryRequest(registry=_reg("anon", fake_registry)), metadata=auth)

    ok = admin.TestRegistry(admin_pb2.TestRegistryRequest(name="tok", image_ref="team/app:1.0"), metadata=auth)
    assert ok.ok, ok.message
    missing = admin.TestRegistry(admin_pb2.TestRegistryRequest(name="tok", image_ref="team/app:2.0"), metadata=auth)
    assert not missing.ok and "404" in missing.message
    for name in ("wrong", "anon"):
        denied = admin.TestRegistry(admin_pb2.TestRegistryRequest(name=name), metadata=auth)
        assert not denied.ok and "401" in denied.message
        assert PASSWORD not in denied.message and TOKEN not in denied.message
    down = admin.AddRegistry(admin_pb2.AddRegistryRequest(registry=_reg("down", "127.0.0.1:9")), metadata=auth)
    assert down.registry.name == "down"
    unreachable = admin.TestRegistry(admin_pb2.TestRegistryRequest(name="down"), metadata=auth)
    assert not unreachable.ok and "127.0.0.1:9" in unreachable.message


def test_bootstrap_auth_resolves_from_secrets(runed: Runed, auth: Metadata) -> None:
    admin = _admin(runed)
    secrets = secret_pb2_grpc.SecretServiceStub(runed.channel())
    secrets.CreateSecret(
        secret_pb2.CreateSecretRequest(
            secret=secret_pb2.Secret(name="ghcr-creds", namespace="system", data={"token": TOKEN})
        ),
        metadata=auth,
    )
    admin.AddRegistry(
        admin_pb2.AddRegistryRequest(registry=_reg("ghcr", "ghcr.io", from_secret="system/ghcr-creds")), metadata=auth
    )
    admin.AddRegistry(
        admin_pb2.AddRegistryRequest(registry=_reg("lost", "quay.io", from_secret="nowhere")), metadata=auth
    )
    assert admin.BootstrapAuth(admin_pb2.BootstrapAuthRequest(name="ghcr"), metadata=auth).updated == 1
    assert admin.BootstrapAuth(admin_pb2.BootstrapAuthRequest(all=True), metadata=auth).updated == 1
    by_name = {s.name: s for s in admin.RegistriesStatus(admin_pb2.RegistriesStatusRequest(), metadata=auth).registries}
    assert by_name["ghcr"].type == "token" and by_name["ghcr"].auth_configured
    assert by_name["ghcr"].last_bootstrap_at and by_name["ghcr"].last_error == ""
    assert not by_name["lost"].auth_configured
    assert 'secret "nowhere" not found in namespace "system"' in by_name["lost"].last_error
    with pytest.raises(grpc.RpcError) as e:
        admin.BootstrapAuth(admin_pb2.BootstrapAuthRequest(name="ghost"), metadata=auth)
    assert e.value.code() == grpc.StatusCode.NOT_FOUND


def test_registries_from_the_runefile_join_at_start(runed_factory: RunedFactory, tmp_path: Path) -> None:
    cfg = tmp_path / "runefile.yaml"
    cfg.write_text(
        "docker:\n  registries:\n"
        "    - name: corp\n      registry: registry.corp.example:5000\n"
        f"      auth:\n        type: basic\n        username: robot\n        password: {PASSWORD}\n"
    )
    r = runed_factory(tmp_path / "data", args=["--config", str(cfg)])
    admin = _admin(r)
    token = admin.AdminBootstrap(admin_pb2.AdminBootstrapRequest()).token_secret
    md = [("authorization", f"Bearer {token}")]
    # Imported at start, credentials into system/registry-corp.
    reg = admin.GetRegistry(admin_pb2.GetRegistryRequest(name="corp"), metadata=md).registry
    assert reg.registry == "registry.corp.example:5000" and reg.auth.type == "basic" and not reg.auth.password
    sec = secret_pb2_grpc.SecretServiceStub(r.channel()).GetSecret(
        secret_pb2.GetSecretRequest(name="registry-corp", namespace="system"), metadata=md
    )
    assert sec.secret.data["password"] == PASSWORD
    assert admin.BootstrapAuth(admin_pb2.BootstrapAuthRequest(all=True), metadata=md).updated == 1
    assert PASSWORD not in r.output()
    r.stop()

    # With manage: update, a restart refreshes the stored credentials from the runefile.
    cfg.write_text(
        "docker:\n  registries:\n"
        "    - name: corp\n      registry: registry.corp.example:5000\n"
        f"      auth:\n        manage: update\n        username: robot\n        password: {TOKEN}\n"
    )
    r2 = runed_factory(tmp_path / "data", args=["--config", str(cfg)])
    sec = secret_pb2_grpc.SecretServiceStub(r2.channel()).GetSecret(
        secret_pb2.GetSecretRequest(name="registry-corp", namespace="system"), metadata=md
    )
    assert sec.secret.data["password"] == TOKEN and sec.secret.version == 2


def test_invalid_requests_list_every_field(runed: Runed, auth: Metadata) -> None:
    admin = _admin(runed)
    with pytest.raises(grpc.RpcError) as e:
        admin.AddRegistry(
            admin_pb2.AddRegistryRequest(
                registry=_reg("Bad_Name", "https://ghcr.io/x", type="magic", manage="sometimes", username="u")
            ),
            metadata=auth,
        )
    assert set(bad_request_fields(e.value)) == {
        "registry.name",
        "registry.registry",
        "registry.auth.type",
        "registry.auth.manage",
        "registry.auth",
    }
    with pytest.raises(grpc.RpcError) as e:
        admin.AddRegistry(admin_pb2.AddRegistryRequest(registry=_reg("ecr", "x.ecr.aws", type="ecr")), metadata=auth)
    assert bad_request_fields(e.value) == ["registry.auth.region"]
    with pytest.raises(grpc.RpcError) as e:
        admin.BootstrapAuth(admin_pb2.BootstrapAuthRequest(), metadata=auth)
    assert bad_request_fields(e.value) == ["name"]
    with pytest.raises(grpc.RpcError) as e:
        admin.TestRegistry(admin_pb2.TestRegistryRequest(name="x", image_ref="UPPER/Case"), metadata=auth)
    assert bad_request_fields(e.value) == ["image_ref"]
