"""SecretService over real gRPC: lifecycle, encryption at rest, restart, KEK rotation, no leaks."""

from __future__ import annotations

import base64
import json
import sqlite3
from pathlib import Path

import grpc
import httpx
import pytest
from grpc_status import rpc_status

from rune.api import secret_pb2, secret_pb2_grpc
from runed.secrets.crypto import key_id
from tests.harness import Runed, RunedFactory, run_cli
from tests.support import bad_request_fields, file_contents

Metadata = list[tuple[str, str]]

# Distinctive values: if any of these bytes shows up on disk, in a log or in an error, it leaked.
VALUE = "zq-SECRET-VALUE-7f3a9c-do-not-leak"
VALUE2 = "zq-OTHER-SECRET-41b2e8-do-not-leak"


def _stub(runed: Runed) -> secret_pb2_grpc.SecretServiceStub:
    return secret_pb2_grpc.SecretServiceStub(runed.channel())


def _create(
    stub: secret_pb2_grpc.SecretServiceStub, auth: Metadata, name: str, data: dict[str, str], ns: str = ""
) -> secret_pb2.Secret:
    req = secret_pb2.CreateSecretRequest(secret=secret_pb2.Secret(name=name, namespace=ns, data=data))
    resp: secret_pb2.SecretResponse = stub.CreateSecret(req, metadata=auth)
    return resp.secret


def _on_disk(data_dir: Path) -> bytes:
    """Every byte runed keeps in its data dir (database, WAL, keys, run files)."""
    return b"".join(data for _, data in file_contents(data_dir))


def _kids_in_db(data_dir: Path) -> set[str]:
    conn = sqlite3.connect(data_dir / "runed.db")
    try:
        rows = conn.execute("SELECT data FROM objects WHERE kind = 'secret'").fetchall()
    finally:
        conn.close()
    return {json.loads(r[0])["enc"]["kid"] for r in rows}


def test_lifecycle_and_versions(runed: Runed, auth: Metadata) -> None:
    stub = _stub(runed)
    created = _create(stub, auth, "db", {"password": VALUE, "user": "app"})
    assert created.version == 1 and created.namespace == "default" and created.type == "static"
    assert dict(created.data) == {}, "create must not echo values"

    # Namespace defaults on Get and Delete (upstream bug fixed).
    got = stub.GetSecret(secret_pb2.GetSecretRequest(name="db"), metadata=auth).secret
    assert dict(got.data) == {"password": VALUE, "user": "app"}

    same = stub.UpdateSecret(
        secret_pb2.UpdateSecretRequest(secret=secret_pb2.Secret(name="db", data={"password": VALUE, "user": "app"})),
        metadata=auth,
    ).secret
    assert same.version == 1, "no effective change, no new version"
    changed = stub.UpdateSecret(
        secret_pb2.UpdateSecretRequest(secret=secret_pb2.Secret(name="db", data={"password": VALUE2})), metadata=auth
    ).secret
    assert changed.version == 2 and changed.created_at == created.created_at
    # Create on an existing secret is an upsert (upstream behaviour) and also bumps the version.
    again = _create(stub, auth, "db", {"password": VALUE})
    assert again.version == 3
    assert dict(stub.GetSecret(secret_pb2.GetSecretRequest(name="db"), metadata=auth).secret.data) == {
        "password": VALUE
    }

    _create(stub, auth, "api", {"token": VALUE2, "url": "x"})
    listed = stub.ListSecrets(secret_pb2.ListSecretsRequest(), metadata=auth).secrets
    assert [s.name for s in listed] == ["api", "db"]
    assert dict(listed[0].data) == {"token": "", "url": ""}, "list shows key names, never values"
    paged = stub.ListSecrets(secret_pb2.ListSecretsRequest(paging={"limit": 1, "offset": 1}), metadata=auth).secrets
    assert [s.name for s in paged] == ["db"]

    with pytest.raises(grpc.RpcError) as e:
        stub.UpdateSecret(
            secret_pb2.UpdateSecretRequest(secret=secret_pb2.Secret(name="nope", data={"k": "v"})), metadata=auth
        )
    assert e.value.code() == grpc.StatusCode.NOT_FOUND

    stub.DeleteSecret(secret_pb2.DeleteSecretRequest(name="db"), metadata=auth)
    for call in (
        lambda: stub.GetSecret(secret_pb2.GetSecretRequest(name="db"), metadata=auth),
        lambda: stub.DeleteSecret(secret_pb2.DeleteSecretRequest(name="db"), metadata=auth),
    ):
        with pytest.raises(grpc.RpcError) as e:
            call()
        assert e.value.code() == grpc.StatusCode.NOT_FOUND
        assert 'secret "db" not found in namespace "default"' in (e.value.details() or "")


def test_invalid_requests_report_every_field_without_values(runed: Runed, auth: Metadata) -> None:
    stub = _stub(runed)
    with pytest.raises(grpc.RpcError) as e:
        stub.CreateSecret(
            secret_pb2.CreateSecretRequest(
                secret=secret_pb2.Secret(
                    name="Bad Name",
                    namespace="-ns",
                    data={"ok": VALUE, "bad/key": VALUE2, "k" * 257: VALUE},
                )
            ),
            metadata=auth,
        )
    fields = bad_request_fields(e.value)
    assert set(fields) == {"secret.name", "secret.namespace", "secret.data[bad/key]", f"secret.data[{'k' * 64}]"}
    status = rpc_status.from_call(e.value)  # type: ignore[arg-type]
    blob = (e.value.details() or "") + (status.SerializeToString().decode(errors="replace") if status else "")
    assert VALUE not in blob and VALUE2 not in blob

    with pytest.raises(grpc.RpcError) as e:
        stub.CreateSecret(
            secret_pb2.CreateSecretRequest(secret=secret_pb2.Secret(name="big", data={"blob": "x" * (1024 * 1024)})),
            metadata=auth,
        )
    assert bad_request_fields(e.value) == ["secret.data"]
    assert "1048576" in (e.value.details() or "")

    with pytest.raises(grpc.RpcError) as e:
        stub.GetSecret(secret_pb2.GetSecretRequest(name="", namespace="UPPER"), metadata=auth)
    assert set(bad_request_fields(e.value)) == {"name", "namespace"}
    with pytest.raises(grpc.RpcError) as e:
        stub.CreateSecret(secret_pb2.CreateSecretRequest(), metadata=auth)
    assert bad_request_fields(e.value) == ["secret"]


def test_values_never_stored_logged_or_echoed(runed_factory: RunedFactory, tmp_path: Path) -> None:
    data_dir = tmp_path / "leak"
    r = runed_factory(data_dir, args=["--log-level", "debug"])
    from rune.api import admin_pb2, admin_pb2_grpc

    token = admin_pb2_grpc.AdminServiceStub(r.channel()).AdminBootstrap(admin_pb2.AdminBootstrapRequest()).token_secret
    auth = [("authorization", f"Bearer {token}")]
    stub = _stub(r)
    _create(stub, auth, "db", {"password": VALUE, "config.json": VALUE2 * 100})
    stub.UpdateSecret(
        secret_pb2.UpdateSecretRequest(secret=secret_pb2.Secret(name="db", data={"password": VALUE2})), metadata=auth
    )
    assert dict(stub.GetSecret(secret_pb2.GetSecretRequest(name="db"), metadata=auth).secret.data) == {
        "password": VALUE2
    }
    # Errors on the way: a bad update and a wrong-namespace read.
    with pytest.raises(grpc.RpcError) as e:
        stub.UpdateSecret(
            secret_pb2.UpdateSecretRequest(secret=secret_pb2.Secret(name="db", data={"bad key": VALUE})),
            metadata=auth,
        )
    assert VALUE not in (e.value.details() or "")
    with pytest.raises(grpc.RpcError) as e:
        stub.UpdateSecret(
            secret_pb2.UpdateSecretRequest(secret=secret_pb2.Secret(name="ghost", data={"k": VALUE})), metadata=auth
        )
    assert VALUE not in (e.value.details() or "")

    # The REST gateway (its own role process, same debug logging) handles values as carefully.
    with httpx.Client(base_url=r.http_base, headers={"authorization": f"Bearer {token}"}, timeout=10) as http:
        created = http.post("/v1/namespaces/default/secrets", json={"name": "web", "data": {"key": VALUE}})
        assert created.status_code == 200, created.text
        assert VALUE not in created.text
        assert http.get("/v1/namespaces/default/secrets/web").json()["secret"]["data"] == {"key": VALUE}
        bad = http.post("/v1/namespaces/default/secrets", json={"name": "Bad!", "data": {"bad key": VALUE}})
        assert bad.status_code == 400 and VALUE not in bad.text

    disk = _on_disk(data_dir)
    assert b"password" in disk, "sanity: key names are stored, so the scan does see the records"
    for v in (VALUE, VALUE2):
        assert v.encode() not in disk
        assert base64.b64encode(v.encode()) not in disk
    assert VALUE not in r.output() and VALUE2 not in r.output()
    r.stop()
    # The stopped server's log and files still hold no value.
    assert VALUE.encode() not in _on_disk(data_dir) and VALUE not in r.output()


def test_readable_after_restart_and_after_kek_rotation(runed_factory: RunedFactory, tmp_path: Path) -> None:
    data_dir = tmp_path / "rot"
    r1 = runed_factory(data_dir)
    from rune.api import admin_pb2, admin_pb2_grpc

    token = admin_pb2_grpc.AdminServiceStub(r1.channel()).AdminBootstrap(admin_pb2.AdminBootstrapRequest()).token_secret
    auth = [("authorization", f"Bearer {token}")]
    stub = _stub(r1)
    for i in range(5):
        _create(stub, auth, f"s{i}", {"v": f"{VALUE}-{i}"})
    kek_file = data_dir / "kek.b64"
    first_kid = key_id(base64.b64decode(kek_file.read_text()))
    assert _kids_in_db(data_dir) == {first_kid}

    # Rotate while the server runs: readers keep working, no restart needed.
    out = run_cli(["kek", "rotate", "--data-dir", str(data_dir)])
    assert out.returncode == 0, out.stderr
    assert "5 data keys re-wrapped" in out.stdout
    new_kid = key_id(base64.b64decode(kek_file.read_text()))
    assert new_kid != first_kid
    assert _kids_in_db(data_dir) == {new_kid}
    assert not list(data_dir.glob("kek.b64.*.retired")), "old KEK dropped once nothing uses it"
    conn = sqlite3.connect(data_dir / "runed.db")
    try:
        audited = conn.execute("SELECT detail FROM audit WHERE method = 'runed kek rotate'").fetchall()
    finally:
        conn.close()
    assert audited == [(f"{first_kid} -> {new_kid}, 5 data keys re-wrapped",)]
    for i in range(5):
        got = stub.GetSecret(secret_pb2.GetSecretRequest(name=f"s{i}"), metadata=auth).secret
        assert dict(got.data) == {"v": f"{VALUE}-{i}"}
    # New writes from the running server use the new KEK.
    _create(stub, auth, "after", {"v": VALUE})
    assert _kids_in_db(data_dir) == {new_kid}

    r1.stop()
    r2 = runed_factory(data_dir)
    stub2 = _stub(r2)
    for i in range(5):
        got = stub2.GetSecret(secret_pb2.GetSecretRequest(name=f"s{i}"), metadata=auth).secret
        assert dict(got.data) == {"v": f"{VALUE}-{i}"}
    assert dict(stub2.GetSecret(secret_pb2.GetSecretRequest(name="after"), metadata=auth).secret.data) == {"v": VALUE}


def test_env_master_key(runed_factory: RunedFactory, tmp_path: Path) -> None:
    key = base64.b64encode(b"k" * 32).decode()
    data_dir = tmp_path / "envkek"
    cfg = tmp_path / "runefile.yaml"
    cfg.write_text("secret:\n  encryption:\n    kek:\n      source: env\n")
    env = {"RUNE_MASTER_KEY": key}
    r = runed_factory(data_dir, args=["--config", str(cfg)], env=env)
    from rune.api import admin_pb2, admin_pb2_grpc

    token = admin_pb2_grpc.AdminServiceStub(r.channel()).AdminBootstrap(admin_pb2.AdminBootstrapRequest()).token_secret
    auth = [("authorization", f"Bearer {token}")]
    _create(_stub(r), auth, "db", {"password": VALUE})
    assert not (data_dir / "kek.b64").exists()
    assert _kids_in_db(data_dir) == {key_id(b"k" * 32)}
    assert dict(_stub(r).GetSecret(secret_pb2.GetSecretRequest(name="db"), metadata=auth).secret.data) == {
        "password": VALUE
    }
