"""Configuration precedence and errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from runed.core.config import ENV_KEYS, ConfigError, load, unread_env
from tests.pki import PKI


def test_precedence_flags_over_env_over_file(tmp_path: Path) -> None:
    f = tmp_path / "runefile.yaml"
    f.write_text("server:\n  grpc_address: 127.0.0.1:1\n  http_address: 127.0.0.1:2\nlog:\n  level: debug\n")
    env = {"RUNE_SERVER_HTTP_ADDRESS": "127.0.0.1:3", "RUNE_LOG_LEVEL": "warning"}
    cfg = load({"log.level": "error"}, env=env, config_file=str(f))
    assert cfg.server.grpc_address == "127.0.0.1:1"  # file
    assert cfg.server.http_address == "127.0.0.1:3"  # env beats file
    assert cfg.log.level == "error"  # flag beats env
    assert cfg.source == str(f)


def test_defaults() -> None:
    cfg = load({}, env={"XDG_DATA_HOME": "/nonexistent-xdg"})
    assert cfg.server.grpc_address == ":7863"
    assert cfg.server.http_address == ":7861"
    assert cfg.log.format == "text"


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("bogus: 1\n", "unknown key bogus"),
        ("auth:\n  allow_remote_admin: perhaps\n", "auth.allow_remote_admin"),
        ("server:\n  grpc_address: nope\n", "server.grpc_address"),
        ("auth:\n  rate_limit:\n    burst: lots\n", "auth.rate_limit.burst"),
        ("server: [1, 2]\n", "server"),
        ("server:\n  grpc_address: [\n", "invalid YAML at line"),
        ("limits:\n  max_scale: 0\n", "limits.max_scale: must be between 1 and"),
        ("limits:\n  max_scale: lots\n", "limits.max_scale"),
    ],
)
def test_bad_values_name_the_key(tmp_path: Path, text: str, needle: str) -> None:
    f = tmp_path / "runefile.yaml"
    f.write_text(text)
    with pytest.raises(ConfigError) as ei:
        load({}, env={}, config_file=str(f))
    assert needle in str(ei.value)


def test_max_scale_defaults_to_1000_and_is_a_setting(tmp_path: Path) -> None:
    assert load({}, env={}).limits.max_scale == 1000
    assert load({}, env={"RUNE_LIMITS_MAX_SCALE": "50"}).limits.max_scale == 50
    f = tmp_path / "runefile.yaml"
    f.write_text("limits:\n  max_scale: 5\n")
    assert load({}, env={}, config_file=str(f)).limits.max_scale == 5


def test_config_is_frozen() -> None:
    cfg = load({}, env={})
    with pytest.raises(AttributeError):
        cfg.log = None  # type: ignore[misc,assignment]


def test_the_controller_s_shim_and_spawn_timeout_are_set_from_the_environment() -> None:
    cfg = load({}, env={"RUNE_CONTROLLER_SHIM": "python", "RUNE_CONTROLLER_SPAWN_TIMEOUT_SECONDS": "300"})
    assert (cfg.controller.shim, cfg.controller.spawn_timeout_seconds) == ("python", 300.0)
    assert (load({}, env={}).controller.shim, load({}, env={}).controller.spawn_timeout_seconds) == ("service", 15.0)


def test_a_rune_variable_that_sets_nothing_is_named_with_what_it_may_have_meant() -> None:
    env = {
        "RUNE_CONTROLLER_SPAWN_TIMEOUT": "300",  # the _SECONDS left off
        "RUNE_AUTH_API_KEYS": "k1,k2",  # upstream's, not read here
        "RUNE_SOMETHING": "x",
        # Not runed's settings, but at home in its environment: quiet.
        "RUNE_TOKEN": "t",
        "RUNE_SERVER": "localhost:7863",
        "RUNE_MASTER_KEY": "k",
        "RUNE_VALUES_replicas": "3",
        "RUNE_PORT_HTTP": "8080",
        "RUNE_LOG_LEVEL": "debug",
        "HOME": "/root",
    }
    assert unread_env(env) == [
        "RUNE_AUTH_API_KEYS is not read: runed has no static API keys; create tokens with `rune admin token create`",
        'RUNE_CONTROLLER_SPAWN_TIMEOUT is not a runed setting (did you mean "RUNE_CONTROLLER_SPAWN_TIMEOUT_SECONDS"?); '
        "it is ignored",
        "RUNE_SOMETHING is not a runed setting; it is ignored",
    ]
    assert unread_env({name: "1" for name in ENV_KEYS}) == []


def test_node_tls_needs_its_files_and_is_not_set_half(tmp_path: Path) -> None:
    ca = tmp_path / "ca.crt"
    ca.write_bytes(PKI().ca_pem)
    f = tmp_path / "runefile.yaml"
    f.write_text("node:\n  tls:\n    enabled: true\n    cert_file: /no/such.crt\n")
    with pytest.raises(ConfigError) as e:
        load({}, env={}, config_file=str(f))
    assert "node.tls.ca_file: required when node.tls.enabled is true" in str(e.value)
    assert "node.tls.key_file: required when node.tls.enabled is true" in str(e.value)
    assert "node.tls.cert_file: file /no/such.crt does not exist" in str(e.value)
    # A host that runs no instances serves no channel: the CA alone.
    f.write_text(f"node:\n  enabled: false\n  tls:\n    enabled: true\n    ca_file: {ca}\n")
    assert load({}, env={}, config_file=str(f)).node.tls.ca_file == str(ca)
    f.write_text(f"node:\n  tls:\n    ca_file: {ca}\n")
    with pytest.raises(ConfigError) as e:
        load({}, env={}, config_file=str(f))
    assert "node.tls.ca_file: is set but nothing reads it (node.tls.enabled is false)" in str(e.value)


def test_tls_material_is_checked_at_start_naming_the_key(tmp_path: Path) -> None:
    """Not a certificate, not a key, another certificate's key, a CA file with no certificate: each
    named by its key at start (and by ``runed validate``), not a listener failing later."""
    pki = PKI()
    key, cert = pki.issue("node", server=True)
    other_key, _ = pki.issue("other", server=True)
    files = {"cert": cert, "key": key, "other.key": other_key, "bogus": b"-----BEGIN NOTHING-----\n", "ca": pki.ca_pem}
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
    f = tmp_path / "runefile.yaml"

    def errors_of(yaml_text: str) -> str:
        f.write_text(yaml_text)
        with pytest.raises(ConfigError) as e:
            load({}, env={}, config_file=str(f))
        return str(e.value)

    t = tmp_path
    node = "node:\n  tls:\n    enabled: true\n"
    out = errors_of(node + f"    cert_file: {t / 'bogus'}\n    key_file: {t / 'bogus'}\n    ca_file: {t / 'bogus'}\n")
    assert f"node.tls.cert_file: {t / 'bogus'} is not a PEM certificate" in out
    assert f"node.tls.key_file: {t / 'bogus'} is not an unencrypted PEM private key" in out
    assert f"node.tls.ca_file: {t / 'bogus'} holds no PEM certificate" in out
    out = errors_of(node + f"    cert_file: {t / 'cert'}\n    key_file: {t / 'other.key'}\n    ca_file: {t / 'ca'}\n")
    assert out.endswith(f"node.tls.key_file: {t / 'other.key'} is not the key of node.tls.cert_file"), out
    server = f"server:\n  tls:\n    enabled: true\n    cert_file: {t / 'cert'}\n    key_file: {t / 'other.key'}\n"
    assert f"server.tls.key_file: {t / 'other.key'} is not the key of server.tls.cert_file" in errors_of(server)
    # The right pair and CA: no problem.
    f.write_text(node + f"    cert_file: {t / 'cert'}\n    key_file: {t / 'key'}\n    ca_file: {t / 'ca'}\n")
    assert load({}, env={}, config_file=str(f)).node.tls.enabled
