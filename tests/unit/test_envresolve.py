"""Computed instance environment: precedence, templates, cross-namespace refs, and what may be stored."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest

from rune.api import common_pb2, service_pb2
from runed.core import config
from runed.secrets import envresolve
from runed.secrets.access import secret_record
from runed.secrets.crypto import SecretCrypto
from runed.store.base import Record
from runed.store.sqlite import SQLiteStore


@pytest.fixture
def store(tmp_path: Path) -> SQLiteStore:
    return SQLiteStore(tmp_path / "runed.db", notify=False)


def test_env_precedence_templates_and_stored_form(tmp_path: Path, store: SQLiteStore) -> None:
    cfg = config.load({"data_dir": str(tmp_path)}, env={})
    crypto = SecretCrypto(cfg, env={})
    store.put(
        "secret",
        "other",
        "db",
        secret_record(
            crypto, "other", "db", type_="static", data={"PASSWORD": "pw"}, version=1, created_at="", updated_at=""
        ),
    )
    store.put("configmap", "default", "cm", {"data": {"MODE": "fast", "lower": "x"}})
    svc = service_pb2.Service(
        name="my-app",
        namespace="default",
        env={"MODE": "override", "PW": "pre-{{ secret : db.other.rune/PASSWORD }}-post", "C": "{{configmap:cm/MODE}}"},
        env_from=[
            service_pb2.EnvFromSource(configmap_name="cm", prefix="CM_"),
            service_pb2.EnvFromSource(secret_name="db", namespace="other", prefix="S_"),
            service_pb2.EnvFromSource(configmap_name="cm"),
        ],
        ports=[common_pb2.ServicePort(name="web-ui", port=80), common_pb2.ServicePort(name="admin", port=81)],
    )
    kw = {"instance_id": "iid", "instance_name": "my-app-0", "ports": {"web-ui": 4000, "admin": 4001}}
    env = envresolve.compute_env(store, crypto, svc, reveal=True, **kw)  # type: ignore[arg-type]
    assert env["CM_MODE"] == "fast" and "CM_lower" not in env and "lower" not in env
    assert env["S_PASSWORD"] == "pw"
    assert env["MODE"] == "override", "service env wins over envFrom"
    assert env["PW"] == "pre-pw-post" and env["C"] == "fast"
    assert env["MY_APP_SERVICE_HOST"] == "127.0.0.1", "a reachable address, not a name nothing resolves"
    assert env["MY_APP_SERVICE_PORT"] == "4000" == env["PORT"] == env["RUNE_PORT_WEB_UI"]
    assert env["MY_APP_SERVICE_PORT_ADMIN"] == "4001"
    stored = envresolve.compute_env(store, crypto, svc, reveal=False, **kw)  # type: ignore[arg-type]
    assert "pw" not in stored.values() and stored["PW"] == "pre-{{secret:db.other.rune/PASSWORD}}-post"
    assert stored["S_PASSWORD"] == "{{secret:db.other.rune/PASSWORD}}"
    # The stored form resolves back to the real one (what exec does).
    src = envresolve.Sources(store, crypto, "default", True)
    back = {k: envresolve.TEMPLATE.sub(lambda m: src.lookup(m.group(1), m.group(2)), v) for k, v in stored.items()}
    assert back == env


def test_the_stored_environment_is_the_real_one_exactly_when_no_secret_feeds_it(
    tmp_path: Path, store: SQLiteStore
) -> None:
    """A start computes the environment once when no secret feeds it (the stored form is then the
    real one), twice otherwise: env_has_secrets must say so for every way a secret gets in."""
    cfg = config.load({"data_dir": str(tmp_path)}, env={})
    crypto = SecretCrypto(cfg, env={})
    store.put(
        "secret",
        "default",
        "db",
        secret_record(
            crypto, "default", "db", type_="static", data={"K": "v"}, version=1, created_at="", updated_at=""
        ),
    )
    store.put("configmap", "default", "cm", {"data": {"K": "c"}})
    kw = {"instance_id": "iid", "instance_name": "a-0", "ports": {}}
    cases = [
        (service_pb2.Service(name="a", env={"X": "1"}), False),
        (service_pb2.Service(name="a", env={"X": "{{configmap:cm/K}}"}), False),
        (service_pb2.Service(name="a", env_from=[service_pb2.EnvFromSource(configmap_name="cm")]), False),
        (service_pb2.Service(name="a", secret_mounts=[service_pb2.SecretMount(name="db", mount_path="/s")]), False),
        (service_pb2.Service(name="a", env={"X": "{{ secret : db/K }}"}), True),
        (service_pb2.Service(name="a", env_from=[service_pb2.EnvFromSource(secret_name="db")]), True),
    ]
    for svc, has in cases:
        svc.namespace = "default"
        stored = envresolve.compute_env(store, crypto, svc, reveal=False, **kw)  # type: ignore[arg-type]
        real = envresolve.compute_env(store, crypto, svc, reveal=True, **kw)  # type: ignore[arg-type]
        assert envresolve.env_has_secrets(svc) is has, svc
        assert (stored != real) is has, svc


@dataclass
class Ahead:
    """Records read in advance; reading any other one fails."""

    records: dict[tuple[str, str, str], Record | None]

    def get(self, kind: str, namespace: str, name: str) -> Record | None:
        return self.records[(kind, namespace, name)]


def test_a_resolution_reads_only_its_references_and_decodes_each_once(tmp_path: Path, store: SQLiteStore) -> None:
    cfg = config.load({"data_dir": str(tmp_path)}, env={})
    crypto = SecretCrypto(cfg, env={})
    for ns, name in (("other", "db"), ("default", "tls")):
        rec = secret_record(crypto, ns, name, type_="static", data={"K": ns}, version=1, created_at="", updated_at="")
        store.put("secret", ns, name, rec)
    store.put("configmap", "default", "cm", {"data": {"MODE": "fast"}})
    store.put("configmap", "default", "files", {"data": {"a.conf": "a"}})
    svc = service_pb2.Service(
        name="app",
        namespace="default",
        env={"PW": "{{secret:db.other.rune/K}}", "C": "{{ configmap : cm/MODE }}"},
        env_from=[service_pb2.EnvFromSource(secret_name="tls", prefix="T_")],
        secret_mounts=[service_pb2.SecretMount(name="certs", mount_path="/certs", secret_name="tls")],
        configmap_mounts=[service_pb2.ConfigmapMount(name="files", mount_path="/etc/app")],
    )
    refs = envresolve.references(svc)
    assert refs == {("secret", "other", "db"), ("secret", "default", "tls"), ("configmap", "default", "cm")} | {
        ("configmap", "default", "files")
    }
    ahead = Ahead({k: store.get(*k) for k in refs})
    decoded: envresolve.Decoded = {}
    kw = {"ports": {}, "reveal": True, "decoded": decoded}
    env = envresolve.compute_env(ahead, crypto, svc, instance_id="i0", instance_name="app-0", **kw)  # type: ignore[arg-type]
    assert env["PW"] == "other" and env["T_K"] == "default" and env["C"] == "fast"
    files = envresolve.mount_files(ahead, crypto, svc, tmp_path / "m", decoded=decoded)
    assert sorted(f.content for f in files) == [b"a", b"default"]
    # The next instance of the pass finds everything decoded: it reads (and decrypts) nothing.
    nothing = Ahead({})
    again = envresolve.compute_env(nothing, crypto, svc, instance_id="i1", instance_name="app-1", **kw)  # type: ignore[arg-type]
    assert again == {**env, "RUNE_INSTANCE_ID": "i1", "RUNE_INSTANCE_NAME": "app-1"}
    assert len(envresolve.mount_files(nothing, crypto, svc, tmp_path / "m1", decoded=decoded)) == 2


def test_missing_reference_is_a_resolve_error(tmp_path: Path, store: SQLiteStore) -> None:
    svc = service_pb2.Service(name="a", namespace="default", env={"X": "{{secret:nope/key}}"})
    with pytest.raises(envresolve.ResolveError, match='secret "nope" not found'):
        envresolve.compute_env(store, None, svc, instance_id="i", instance_name="a-0", ports={}, reveal=False)
    svc = service_pb2.Service(name="a", namespace="default", env={"X": "{{configmap:cm}}"})
    with pytest.raises(envresolve.ResolveError, match="needs a key"):
        envresolve.compute_env(store, None, svc, instance_id="i", instance_name="a-0", ports={}, reveal=True)


def test_mount_paths_stay_under_the_instance_root_unless_the_operator_allows_the_host_path(tmp_path: Path) -> None:
    root = tmp_path / "inst" / "mounts"
    assert envresolve.mount_dir("/etc/app", root) == (root / "etc/app", False)
    assert envresolve.mount_dir("/x/../../../etc", root) == (root / "etc", False), "'..' cannot climb out"
    allowed = ["/srv/rune-mounts"]
    assert envresolve.mount_dir("/srv/rune-mounts/app", root, allowed) == (Path("/srv/rune-mounts/app"), True)
    assert envresolve.mount_dir("/srv/rune-mounts-other", root, allowed) == (root / "srv/rune-mounts-other", False)
    assert envresolve.mount_dir("/srv/rune-mounts/../etc", root, allowed) == (root / "srv/etc", False)


def test_dependency_endpoints_are_reachable_host_and_ports() -> None:
    ep = envresolve.Endpoint("my-db", "127.0.0.1", [("wire", 41000), ("5433", 41001)])
    assert envresolve.endpoint_env(ep) == {
        "MY_DB_SERVICE_HOST": "127.0.0.1",
        "MY_DB_SERVICE_PORT": "41000",
        "MY_DB_SERVICE_PORT_WIRE": "41000",
        "MY_DB_SERVICE_PORT_5433": "41001",
    }
