"""Every value is checked and every problem is reported at once, each with its key path; unread keys are refused."""

from __future__ import annotations

from pathlib import Path

import pytest

from runed.core.config import ConfigError, load
from runed.core.config.redact import REDACTED, redacted
from tests.harness import run_cli


def problems_of(tmp_path: Path, text: str) -> list[str]:
    f = tmp_path / "runefile.yaml"
    f.write_text(text)
    with pytest.raises(ConfigError) as ei:
        load({}, env={}, config_file=str(f))
    return ei.value.problems


@pytest.mark.parametrize(
    ("text", "line"),
    [
        # Ranges
        ("server:\n  max_body_bytes: -5\n", "server.max_body_bytes: must be positive, got -5"),
        ("server:\n  sse_keepalive_seconds: 0\n", "server.sse_keepalive_seconds: must be positive"),
        ("server:\n  shutdown_grace_seconds: -1\n", "server.shutdown_grace_seconds: must not be negative"),
        ("history:\n  revisions: 0\n", "history.revisions: must be positive"),
        ("exec:\n  max_sessions_per_instance: 0\n", "exec.max_sessions_per_instance: must be positive"),
        ("secret:\n  limits:\n    max_object_bytes: 0\n", "secret.limits.max_object_bytes: must be positive"),
        ("auth:\n  rate_limit:\n    burst: 0\n", "auth.rate_limit.burst: must be at least 1"),
        ("docker:\n  negotiation_timeout_seconds: 0\n", "docker.negotiation_timeout_seconds: must be positive"),
        ("controller:\n  spawn_timeout_seconds: 0.5\n", "controller.spawn_timeout_seconds: must be between 1 and 3600"),
        (
            "controller:\n  finished_operations_seconds: -1\n",
            "controller.finished_operations_seconds: must not be negative",
        ),
        # Types: whole numbers are whole, lists are lists
        ("server:\n  max_body_bytes: 1.5\n", "server.max_body_bytes: expected a whole number, got 1.5"),
        ("controller:\n  host_mount_paths: 7\n", "controller.host_mount_paths: expected a list, got int"),
        ("log:\n  level: [debug]\n", "log.level: expected a string, got a list"),
        # Paths and addresses
        ("controller:\n  host_mount_paths: [rel/dir]\n", "controller.host_mount_paths[0]: must be an absolute path"),
        ("docker:\n  socket: docker.sock\n", "docker.socket: must be an absolute path"),
        ("server:\n  http_address: 'bad host!:80'\n", "server.http_address: 'bad host!' is neither an IP address"),
        ("server:\n  grpc_address: '127.0.0.1:70000'\n", "server.grpc_address: port out of range"),
        ("docker:\n  fallback_api_version: latest\n", "docker.fallback_api_version: must look like 1.43"),
        # Enumerations
        ("controller:\n  shim: rust\n", "controller.shim: must be one of service, shared, auto, python, got 'rust'"),
        (
            "store:\n  sqlite_synchronous: always\n",
            "store.sqlite_synchronous: must be one of normal, full, got 'always'",
        ),
        (
            "docker:\n  registries:\n    - name: r\n      registry: r.example\n      auth: {type: magic}\n",
            "docker.registries[0].auth.type: must be one of basic, token, ecr, dockerconfigjson, got 'magic'",
        ),
        (
            "secret:\n  encryption:\n    enabled: false\n",
            "secret.encryption.enabled: secret values are always encrypted",
        ),
    ],
)
def test_each_value_is_checked(tmp_path: Path, text: str, line: str) -> None:
    found = problems_of(tmp_path, text)
    assert any(p.startswith(line) for p in found), found


def test_every_problem_at_once_each_with_its_key_path(tmp_path: Path) -> None:
    text = (
        "server:\n  max_body_bytes: -5\n  grpc_adress: ':1'\n  http_address: nohost\n"
        "log:\n  level: loud\n"
        "auth:\n  rate_limit:\n    burst: lots\n"
        "controller:\n  resync_seconds: 0\n"
    )
    found = problems_of(tmp_path, text)
    keys = ["server.max_body_bytes", "server.http_address", "log.level", "auth.rate_limit.burst"]
    keys += ["controller.resync_seconds"]
    for key in keys:
        assert any(p.startswith(f"{key}: ") for p in found), (key, found)
    assert any(p.startswith('unknown key server.grpc_adress (did you mean "server.grpc_address"?)') for p in found)
    assert len(found) == 6, found
    f = tmp_path / "runefile.yaml"
    with pytest.raises(ConfigError) as ei:
        load({}, env={}, config_file=str(f))
    assert str(ei.value).startswith(f"{f}: 6 problems:\n")


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("client:\n  timeout: 30s\n", "client: not read by runed"),
        ("namespace: prod\n", "namespace: not read by runed"),
        ("server:\n  tls:\n    cert_file: /etc/x.crt\n", "server.tls.cert_file: is set but nothing reads it"),
        (
            "server:\n  cors:\n    allow_credentials: true\n",
            "server.cors.allow_credentials: is set but nothing reads it",
        ),
        ("auth:\n  oidc:\n    issuer: https://idp.example\n", "auth.oidc.issuer: is set but nothing reads it"),
        ("secret:\n  encryption:\n    kek:\n      source: env\n      file: /k\n", "secret.encryption.kek.file: is set"),
    ],
)
def test_keys_nothing_reads_are_refused(tmp_path: Path, text: str, key: str) -> None:
    found = problems_of(tmp_path, text)
    assert any(p.startswith(key) for p in found), found


def test_tls_files_must_exist(tmp_path: Path) -> None:
    found = problems_of(tmp_path, f"server:\n  tls:\n    enabled: true\n    cert_file: {tmp_path}/none.crt\n")
    assert f"server.tls.cert_file: file {tmp_path}/none.crt does not exist" in found
    assert "server.tls.key_file: required when server.tls.enabled is true" in found


@pytest.mark.parametrize(
    ("origin", "needle"),
    [
        ("https://dash.example/", "no path"),
        ("dash.example", "must be http(s)://host[:port] or *"),
        ("ftp://dash.example", "must be http(s)://host[:port] or *"),
    ],
)
def test_cors_origins_are_origins(tmp_path: Path, origin: str, needle: str) -> None:
    found = problems_of(tmp_path, f"server:\n  cors:\n    allowed_origins: ['{origin}']\n")
    assert any(p.startswith("server.cors.allowed_origins[0]: ") and needle in p for p in found), found


def test_cors_wildcard_with_credentials_is_refused(tmp_path: Path) -> None:
    found = problems_of(tmp_path, "server:\n  cors:\n    allowed_origins: ['*']\n    allow_credentials: true\n")
    assert any(p.startswith("server.cors.allow_credentials: cannot be true") for p in found), found


def test_a_full_valid_runefile_loads(tmp_path: Path) -> None:
    f = tmp_path / "runefile.yaml"
    f.write_text(
        "server:\n  max_body_bytes: 1024\n  cors:\n    allowed_origins: ['https://dash.example:8443']\n"
        "    max_age_seconds: 60\n"
        "docker:\n  registries:\n    - name: r\n      registry: r.example\n      auth: {type: token, token: x}\n"
        "controller:\n  host_mount_paths: [/srv/shared]\n"
    )
    cfg = load({}, env={}, config_file=str(f))
    assert cfg.server.cors.allowed_origins == ("https://dash.example:8443",)
    assert cfg.server.max_body_bytes == 1024


def test_redacted_config_hides_credentials_and_keeps_the_rest(tmp_path: Path) -> None:
    f = tmp_path / "runefile.yaml"
    f.write_text(
        "docker:\n  registries:\n    - name: r\n      registry: r.example\n"
        "      auth: {type: basic, username: robot, password: hunter2, data: {awsSecretAccessKey: abc}}\n"
        "auth:\n  oidc:\n    enabled: true\n    issuer: https://idp.example\n"
        "    jwks_url: https://bob:pw@idp.example/keys\n"
    )
    cfg = load({}, env={}, config_file=str(f))
    tree = redacted(cfg)
    auth = tree["docker"]["registries"][0]["auth"]
    assert auth["password"] == REDACTED and auth["data"] == {"awsSecretAccessKey": REDACTED}
    assert auth["username"] == "robot" and auth["token"] == ""
    assert tree["auth"]["oidc"]["jwks_url"] == f"https://bob:{REDACTED}@idp.example/keys"
    assert tree["server"]["tls"]["key_file"] == ""  # a path, not a key: shown as it is
    assert "hunter2" not in repr(tree) and "abc" not in repr(tree)


def test_runed_validate_lists_every_problem_and_fails(tmp_path: Path) -> None:
    f = tmp_path / "runefile.yaml"
    f.write_text("server:\n  max_body_bytes: -5\n  bogus: 1\nlog:\n  format: xml\nclient:\n  retries: 3\n")
    r = run_cli(["validate", "--config", str(f)])
    assert r.returncode == 1, r.stdout + r.stderr
    lines = r.stderr.splitlines()
    assert lines[0] == f"{f}: invalid (4 problems)", r.stderr
    assert sorted(ln.strip().split(":")[0] for ln in lines[1:]) == [
        "client",
        "log.format",
        "server.max_body_bytes",
        "unknown key server.bogus (known here",
    ], r.stderr
    assert "Traceback" not in r.stderr
