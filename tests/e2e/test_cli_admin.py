"""The CLI's create, status, health and version commands, and admin: policies, users, tokens, registries, audit."""

from __future__ import annotations

import json
from pathlib import Path

import runed
from tests.e2e.rune import Rune


def test_create_and_status_and_health(rune: Rune) -> None:
    assert rune("create", "namespace", "team-a", "--label", "team=a").returncode == 0
    assert rune("create", "secret", "tok", "-n", "team-a", "--data", "k=v").returncode == 0
    assert rune("create", "configmap", "cfg", "-n", "team-a", "--data", "a=1", "--data", "b=2").returncode == 0
    assert "a,b" in rune("get", "cm", "-n", "team-a").stdout
    assert rune("get", "ns", "-l", "team=a", "-o", "name").stdout.split() == ["team-a"]
    dup = rune("create", "namespace", "team-a")
    assert dup.returncode == 6
    bad = rune("create", "secret", "BAD_NAME", "--data", "a=b")
    assert bad.returncode == 8 and "secret.name: must be a DNS-1123 label" in bad.stderr
    assert rune("status").returncode == 0
    h = rune("health")
    assert h.returncode == 0 and "api-server" in h.stdout and "Healthy" in h.stdout
    v = rune("version")
    assert v.returncode == 0 and "Client: rune" in v.stdout
    assert f"Server: runed {runed.__version__} at " in v.stdout
    assert json.loads(rune("version", "-o", "json").stdout)["server"] == runed.__version__


def test_admin_tokens_users_policies_audit(rune: Rune, tmp_path: Path) -> None:
    pol = tmp_path / "viewer.yaml"
    pol.write_text("name: viewer\nrules:\n  - {resource: services, verbs: [get, list], namespace: '*'}\n")
    assert rune("admin", "policy", "create", "--file", str(pol)).returncode == 0
    assert "viewer" in rune("admin", "policy", "list").stdout
    assert rune("admin", "user", "create", "--name", "alice", "--policy", "viewer").returncode == 0
    tok = rune("admin", "token", "create", "--name", "alice-cli", "--subject-name", "alice")
    assert tok.returncode == 0, tok.stderr
    secret = tok.stdout.strip()
    assert "alice-cli" in rune("admin", "token", "list").stdout
    # RUNE_TOKEN is only the fallback: with a config file holding no context it is what gets used.
    as_alice = rune("--config", str(tmp_path / "none.yaml"), "get", "svc", env={"RUNE_TOKEN": secret})
    assert as_alice.returncode == 0, as_alice.stderr
    denied = rune("--context", "nope", "get", "svc")
    assert denied.returncode == 3
    add = rune(
        "admin", "registries", "add", "--name", "hub", "--registry", "docker.io", "--username", "u", "--password", "p"
    )
    assert add.returncode == 0, add.stderr
    assert "docker.io" in rune("admin", "registries", "list").stdout
    shown = rune("admin", "registries", "show", "hub").stdout
    assert "registry: docker.io" in shown and "password: p\n" not in shown
    assert "hub" in rune("admin", "registries", "status").stdout
    assert rune("admin", "registries", "remove", "hub").returncode == 0
    assert rune("admin", "registries", "show", "hub").returncode == 3
    audit = rune("admin", "audit", "--limit", "1000")
    assert audit.returncode == 0 and "PolicyCreate" in audit.stdout


def test_readonly_token_is_denied_writes(rune: Rune, tmp_path: Path) -> None:
    tok = rune("admin", "token", "create", "--name", "bob-cli", "--subject-name", "bob", "--policy", "readonly")
    assert tok.returncode == 0, tok.stderr
    cfg = tmp_path / "bob.yaml"
    login = rune("--config", str(cfg), "login", "bob", "--token", tok.stdout.strip())
    assert login.returncode == 0, login.stderr
    r = rune("--config", str(cfg), "create", "secret", "nope", "--data", "a=b")
    assert r.returncode == 5
    assert r.stderr.startswith("error: permission denied")
