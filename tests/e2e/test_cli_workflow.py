"""The CLI workflow against one real runed: bootstrap, login, cast, get, describe, logs, exec, scale, rollback."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import pty
import select
import signal
import struct
import sys
import termios
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

import runed
from tests.e2e.rune import Rune, rune_command
from tests.harness import Runed
from tests.support import eventually

PY = sys.executable
# A service that logs its config and secret-derived env, then a counter line every 0.2 s.
WEB_SCRIPT = (
    "import os, sys, time\\n"
    "print('greeting', os.environ.get('GREETING'), 'pw-len', len(os.environ.get('DB_PASSWORD', '')), flush=True)\\n"
    "print('to-stderr', file=sys.stderr, flush=True)\\n"
    "i = 0\\n"
    "while True:\\n"
    "    i += 1; print('tick', i, flush=True); time.sleep(0.2)"
)


def cast_file(tmp: Path, greeting: str = "hello", scale: int = 2) -> Path:
    f = tmp / f"app-{greeting}.yaml"
    f.write_text(
        f"""
configmap:
  name: web-config
  data:
    GREETING: {greeting}
secret:
  name: db-pass
  data:
    password: s3cr3t-value
services:
  - name: web
    runtime: process
    process:
      command: {PY}
      args: ["-u", "-c", "{WEB_SCRIPT}"]
    scale: {scale}
    labels: {{app: shop, tier: front}}
    envFrom:
      - configmap: web-config
    env:
      DB_PASSWORD: "{{{{secret:db-pass/password}}}}"
      LANG_TAG: {greeting}
  - name: worker
    runtime: process
    process:
      command: {PY}
      args: ["-c", "import time; time.sleep(3600)"]
    restartPolicy: OnFailure
    labels: {{app: shop, tier: back}}
    dependencies: [web]
"""
    )
    return f


@pytest.fixture(scope="module")
def rune(shared_runed: Runed, rune_factory: Callable[[str], Rune], tmp_path_factory: pytest.TempPathFactory) -> Rune:
    """A logged-in CLI: bootstrap writes the token to a file, login verifies it with WhoAmI."""
    r = rune_factory(shared_runed.grpc_target)
    token_file = tmp_path_factory.mktemp("tok") / "root.token"
    boot = r("admin", "bootstrap", "--out-file", str(token_file))
    assert boot.returncode == 0, boot.stderr
    assert token_file.stat().st_mode & 0o777 == 0o600
    login = r("login", "--token-file", str(token_file))
    assert login.returncode == 0, login.stderr
    assert "as root" in login.stdout
    return r


@pytest.fixture(scope="module")
def cast_app(rune: Rune, tmp_path_factory: pytest.TempPathFactory) -> Path:
    f = cast_file(tmp_path_factory.mktemp("cast"))
    r = rune("cast", str(f), "--timeout", "60s", timeout=90)
    assert r.returncode == 0, r.stdout + r.stderr
    return f


def test_login_rejects_a_bad_token(rune: Rune, tmp_path: Path) -> None:
    r = rune("login", "other", "--token", "not-a-token")
    assert r.returncode == 4
    assert "unauthenticated" in r.stderr and "Traceback" not in r.stderr
    assert "other" not in yaml.safe_load(rune.config_path.read_text())["contexts"]


def test_whoami(rune: Rune) -> None:
    r = rune("whoami", "-o", "json")
    assert r.returncode == 0, r.stderr
    data = json.loads(r.stdout)
    assert data["subjectName"] == "root" and "root" in data["policies"]


def test_cast_dry_run_changes_nothing(rune: Rune, tmp_path: Path) -> None:
    f = tmp_path / "dry.yaml"
    f.write_text(f"service:\n  name: dry\n  runtime: process\n  process: {{command: {PY}}}\n")
    r = rune("cast", "--dry-run", str(f))
    assert r.returncode == 0, r.stderr
    assert "service/dry (namespace default) would be created (dry run)" in r.stdout
    assert rune("get", "svc", "dry").returncode == 3


def test_cast_dry_run_is_checked_by_the_server(rune: Rune, tmp_path: Path) -> None:
    # References to objects the same cast creates are fine, in a namespace it would create.
    whole = rune("cast", "--dry-run", "-n", "dry-ns", "--create-namespace", str(cast_file(tmp_path)))
    assert whole.returncode == 0, whole.stderr
    for ref in ("configmap/web-config", "secret/db-pass", "service/web", "service/worker"):
        assert f"{ref} (namespace dry-ns) would be created (dry run)" in whole.stdout
    assert "dry-ns" not in rune("get", "ns", "-o", "name").stdout.split()
    # What only runed knows is checked too: a secret that neither exists nor is cast here.
    f = tmp_path / "dangling.yaml"
    f.write_text(
        f"service:\n  name: dangling\n  runtime: process\n  process: {{command: {PY}}}\n"
        "  env:\n    PW: '{{secret:nowhere/pw}}'\n"
    )
    bad = rune("cast", "--dry-run", str(f))
    assert bad.returncode == 8, bad.stdout + bad.stderr
    assert 'secret "nowhere" not found in namespace "default"' in bad.stderr
    missing_ns = rune("cast", "--dry-run", "-n", "no-such-ns", str(f))
    assert missing_ns.returncode == 7 and "no-such-ns" in missing_ns.stderr


def test_cast_applies_configmap_secret_services_and_waits(rune: Rune, cast_app: Path) -> None:
    r = rune("get", "services", "-o", "json")
    assert r.returncode == 0, r.stderr
    services = {s["name"]: s for s in json.loads(r.stdout)["services"]}
    assert services["web"]["status"] == "SERVICE_STATUS_RUNNING" and services["web"]["scale"] == 2
    assert services["worker"]["restartPolicy"] == "RESTART_POLICY_ON_FAILURE"
    insts = json.loads(rune("get", "instances", "-o", "json").stdout)["instances"]
    assert sorted(i["name"] for i in insts if i["status"] == "INSTANCE_STATUS_RUNNING") == [
        "web-0",
        "web-1",
        "worker-0",
    ]
    # Re-casting the same file is a no-op apply that is ready at once.
    again = rune("cast", str(cast_app), "--timeout", "30s")
    assert again.returncode == 0 and "ready: web, worker" in again.stdout


def test_dry_run_shows_what_would_change(rune: Rune, cast_app: Path, tmp_path: Path) -> None:
    r = rune("cast", "--dry-run", str(cast_file(tmp_path, scale=4)))
    assert r.returncode == 0, r.stderr
    assert "service/web (namespace default) would be updated: scale 2 -> 4 (dry run)" in r.stdout
    assert "service/worker (namespace default) unchanged (dry run)" in r.stdout
    assert "configmap/web-config (namespace default) unchanged (dry run)" in r.stdout
    assert json.loads(rune("get", "svc", "web", "-o", "json").stdout)["scale"] == 2


def test_get_every_output_format(rune: Rune, cast_app: Path) -> None:
    table = rune("get", "svc")
    assert table.returncode == 0
    head, *rows = table.stdout.splitlines()
    assert head.split()[:3] == ["NAME", "STATUS", "SCALE"] and {r.split()[0] for r in rows} == {"web", "worker"}
    wide = rune("get", "svc", "-o", "wide", "--no-headers")
    assert "NAME" not in wide.stdout and "app=shop,tier=front" in wide.stdout
    y = yaml.safe_load(rune("get", "svc", "web", "-o", "yaml").stdout)
    assert y["name"] == "web" and y["labels"] == {"app": "shop", "tier": "front"}
    assert rune("get", "svc", "-o", "name").stdout.split() == ["web", "worker"]
    assert rune("get", "svc", "-l", "tier=back", "-o", "name").stdout.split() == ["worker"]
    assert rune("get", "svc", "--field-selector", "name=web", "-o", "name").stdout.split() == ["web"]
    everywhere = rune("get", "svc", "-A", "--sort-by", "name")
    assert everywhere.stdout.splitlines()[0].split()[:2] == ["NAME", "NAMESPACE"]
    ns = rune("get", "ns", "-o", "name").stdout.split()
    assert {"default", "system"} <= set(ns)
    assert "web-0" in rune("get", "inst", "--service", "web").stdout
    cm = json.loads(rune("get", "configmaps", "-o", "json").stdout)["configmaps"]
    assert cm[0]["data"] == {"GREETING": "hello"}


def test_get_with_small_pages_reads_everything(rune: Rune, cast_app: Path) -> None:
    assert rune("get", "svc", "--limit", "1", "-o", "name").stdout.split() == ["web", "worker"]


def test_secrets_show_keys_unless_values_asked(rune: Rune, cast_app: Path) -> None:
    keys = rune("get", "secrets")
    assert "password" in keys.stdout and "s3cr3t-value" not in keys.stdout
    desc = rune("describe", "secret", "db-pass")
    assert "s3cr3t-value" not in desc.stdout and "hidden" in desc.stdout
    shown = rune("get", "secret", "db-pass", "--show-values", "-o", "json")
    assert json.loads(shown.stdout)["data"] == {"password": "s3cr3t-value"}


def test_describe_service(rune: Rune, cast_app: Path) -> None:
    r = rune("describe", "svc", "web")
    assert r.returncode == 0, r.stderr
    for part in ("Name:        web", "Status:      Running", "Instances:", "web-0", "web-1", "Recent revisions:"):
        assert part in r.stdout
    assert "Events:" in r.stdout and "CreateService" in r.stdout


def test_logs_prefixed_per_instance_and_stream_filter(rune: Rune, cast_app: Path) -> None:
    def has_both() -> str:
        out = rune("logs", "web").stdout
        assert "[web-0] greeting hello pw-len 12" in out and "[web-1] greeting hello" in out
        return out

    eventually(has_both, timeout=15)
    err = rune("logs", "web", "--stderr")
    assert "to-stderr" in err.stdout and "tick" not in err.stdout
    filtered = rune("logs", "web", "--filter", "greeting", "--no-prefix")
    assert filtered.stdout.splitlines() and all(ln.startswith("greeting") for ln in filtered.stdout.splitlines())
    tail = rune("logs", "web", "--tail", "1", "--timestamps").stdout.splitlines()
    assert 1 <= len(tail) <= 2 and all("T" in ln.split()[1] for ln in tail)
    events = rune("logs", "web", "--events", "--stderr").stdout.splitlines()
    assert "[web-0] [event] Starting" in events and "[web-0] to-stderr" in events
    assert any(ln.startswith("[web-1] [event] Started: pid ") for ln in events), events
    assert "[event]" not in rune("logs", "web", "--stderr").stdout


def test_logs_colour_each_instance_on_a_terminal(rune: Rune, cast_app: Path) -> None:
    pid, fd = pty.fork()
    if pid == 0:
        try:
            os.environ.clear()
            os.environ.update(rune.env())
            cmd = rune_command()
            os.execv(cmd[0], [*cmd, "logs", "web", "--filter", "greeting"])
        finally:
            os._exit(127)
    out = bytearray()
    try:
        while True:
            try:
                chunk = os.read(fd, 4096)
            except OSError:  # EIO once the child has exited and the pty is drained
                break
            if not chunk:
                break
            out.extend(chunk)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
    finally:
        with contextlib.suppress(ProcessLookupError, ChildProcessError):
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
        os.close(fd)
    text = out.decode()
    colours = {text[i : text.index("m", i)] for i in range(len(text)) if text.startswith("\x1b[3", i)}
    assert "[web-0]" in text and "[web-1]" in text and len(colours) == 2, text
    plain = rune("logs", "web", "--filter", "greeting")
    assert "\x1b[" not in plain.stdout


def test_logs_follow_streams_new_lines(rune: Rune, cast_app: Path, tmp_path: Path) -> None:
    out = tmp_path / "follow.txt"
    p = rune.popen("logs", "-f", "web", "--since", "1s", out=out)

    def ticks() -> set[str]:
        seen = {ln.split()[-1] for ln in out.read_text().splitlines() if " tick " in ln}
        assert len(seen) >= 5
        return seen

    eventually(ticks, timeout=20)
    assert p.poll() is None, "a follow stream keeps running"


def test_exec_passes_exit_code_and_stdin(rune: Rune, cast_app: Path) -> None:
    r = rune("exec", "web", "--", "sh", "-c", "echo out; echo err >&2; exit 7")
    assert r.returncode == 7
    assert r.stdout == "out\n" and "err" in r.stderr
    cat = rune("exec", "-i", "web", "--", "cat", input="piped input\n")
    assert cat.returncode == 0 and cat.stdout == "piped input\n"
    env = rune("exec", "--env", "FOO=bar", "--workdir", "/", "web", "--", "sh", "-c", "echo $FOO $(pwd)")
    assert env.stdout.strip() == "bar /"
    by_name = rune("exec", "web-1", "--", "sh", "-c", "echo $RUNE_INSTANCE_NAME")
    assert by_name.returncode == 0 and by_name.stdout.strip() == "web-1"
    missing = rune("exec", "nope", "--", "true")
    assert missing.returncode in (3, 7) and "Traceback" not in missing.stderr


# Prints its terminal size, then waits until a resize reaches it and exits 3.
WAIT_FOR_RESIZE = 'stty size; while [ "$(stty size)" = "30 100" ]; do sleep 0.05; done; stty size; exit 3'


def test_exec_tty_raw_terminal_follows_resizes(rune: Rune, cast_app: Path) -> None:
    pid, fd = pty.fork()
    if pid == 0:  # the child becomes `rune` on the pty's slave side
        try:
            os.environ.clear()
            os.environ.update(rune.env())
            cmd = rune_command()
            os.execv(cmd[0], [*cmd, "exec", "-t", "web", "--", "sh", "-c", WAIT_FOR_RESIZE])
        finally:
            os._exit(127)
    try:
        fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", 30, 100, 0, 0))
        out = bytearray()

        def read_until(marker: bytes) -> bool:
            if select.select([fd], [], [], 0.1)[0]:
                out.extend(os.read(fd, 1024))
            return marker in out

        eventually(lambda: read_until(b"30 100"), timeout=20)
        fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))
        eventually(lambda: read_until(b"40 120"), timeout=20)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 3
    finally:
        with contextlib.suppress(ProcessLookupError, ChildProcessError):
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
        os.close(fd)


def test_exec_forwards_ctrl_c_to_the_remote_command(rune: Rune, cast_app: Path, tmp_path: Path) -> None:
    out = tmp_path / "exec.txt"
    script = "trap 'echo got-int; exit 42' INT; echo armed; while true; do sleep 0.05; done"
    p = rune.popen("exec", "web", "--", "sh", "-c", script, out=out)
    eventually(lambda: "armed" in out.read_text(), timeout=20)
    p.send_signal(signal.SIGINT)
    assert p.wait(20) == 42
    assert "got-int" in out.read_text()


def test_cast_timeout_names_what_is_not_ready(rune: Rune, tmp_path: Path) -> None:
    f = tmp_path / "broken.yaml"
    f.write_text("service:\n  name: broken\n  runtime: process\n  process: {command: /nonexistent/binary}\n")
    r = rune("cast", str(f), "--timeout", "3s")
    assert r.returncode == 10
    assert "timed out after 3s" in r.stderr and "broken 0/1" in r.stderr
    assert rune("delete", "broken", "--timeout", "30").returncode == 0


def test_scale_shows_progress_and_converges(rune: Rune, cast_app: Path) -> None:
    r = rune("scale", "web", "3", "--timeout", "60s", timeout=90)
    assert r.returncode == 0, r.stderr
    assert "service/web scaled to 3 (3 running)" in r.stdout
    running = [ln for ln in rune("get", "inst", "--service", "web").stdout.splitlines() if "Running" in ln]
    assert len(running) == 3
    down = rune("scale", "web", "2", "--timeout", "60s", timeout=90)
    assert down.returncode == 0 and "scaled to 2" in down.stdout


def test_stop_and_restart(rune: Rune, cast_app: Path) -> None:
    assert rune("stop", "worker", "--timeout", "60s", timeout=90).returncode == 0
    assert "worker-0" not in rune("get", "inst").stdout
    r = rune("restart", "worker", "--timeout", "60s", timeout=90)
    assert r.returncode == 0, r.stderr
    assert "worker-0" in rune("get", "inst", "--field-selector", "status=Running").stdout


def test_history_and_rollback(rune: Rune, cast_app: Path, tmp_path: Path) -> None:
    changed = cast_file(tmp_path, greeting="bonjour")
    r = rune("cast", str(changed), "--change-cause", "french", "--timeout", "60s", timeout=90)
    assert r.returncode == 0, r.stderr
    hist = rune("history", "web")
    assert "french" in hist.stdout
    back = rune("rollback", "web", "--timeout", "60s", timeout=90)
    assert back.returncode == 0, back.stderr
    assert "rolled back" in back.stdout
    assert "rollback to" in rune("history", "web").stdout
    desc = json.loads(rune("get", "svc", "web", "-o", "json").stdout)
    assert desc["env"]["LANG_TAG"] == "hello"


def test_watch_prints_changes(rune: Rune, cast_app: Path, tmp_path: Path) -> None:
    out = tmp_path / "watch.txt"
    p = rune.popen("get", "svc", "-w", out=out)
    eventually(lambda: "worker" in out.read_text(), timeout=15)
    f = tmp_path / "late.yaml"
    proc = f"{{command: {PY}, args: [-c, 'import time; time.sleep(60)']}}"
    f.write_text(f"service:\n  name: late\n  runtime: process\n  process: {proc}\n")
    assert rune("cast", str(f), "--detach").returncode == 0
    eventually(
        lambda: any(ln.startswith("Added") and " late " in f" {ln} " for ln in out.read_text().splitlines()), timeout=15
    )
    assert p.poll() is None
    assert rune("delete", "late", "--timeout", "30").returncode == 0


def test_deps_validate_graph_dependents(rune: Rune, cast_app: Path) -> None:
    ok = rune("deps", "validate")
    assert ok.returncode == 0, ok.stderr
    dot = rune("deps", "graph", "--format", "dot").stdout
    assert '"default/worker" -> "default/web";' in dot
    assert rune("deps", "dependents", "web").stdout.split() == ["default/worker"]
    assert rune("deps", "check", "worker").returncode == 0


def test_cast_runeset_into_its_namespace(rune: Rune, tmp_path: Path) -> None:
    rs = tmp_path / "tools"
    (rs / "casts").mkdir(parents=True)
    (rs / "runeset.yaml").write_text("name: tools\nnamespace: tools\ndefaults: {message: hi}\n")
    (rs / "casts" / "cm.yaml").write_text("configmap:\n  name: motd\n  data: {text: '{{ .Values.message }}'}\n")
    r = rune("cast", str(rs), "--set", "message=hello", "--create-namespace")
    assert r.returncode == 0, r.stderr
    got = json.loads(rune("get", "cm", "motd", "-n", "tools", "-o", "json").stdout)
    assert got["data"] == {"text": "hello"}


def test_delete_refuses_dependents_then_forces(rune: Rune, cast_app: Path) -> None:
    refused = rune("delete", "web")
    assert refused.returncode == 7 and "dependents" in refused.stderr
    assert rune("delete", "worker").returncode == 0
    gone = rune("delete", "service", "web", "--timeout", "60")
    assert gone.returncode == 0, gone.stderr
    assert "service/web deleted" in gone.stdout
    eventually(lambda: "web-" not in rune("get", "inst").stdout, timeout=20)
    assert rune("get", "svc", "web").returncode == 3
    assert rune("delete", "web", "--ignore-not-found").returncode == 0
    ops = rune("delete", "list", "-A")
    assert "web" in ops.stdout and "completed" in ops.stdout
    assert rune("delete", "secret", "db-pass").returncode == 0
    assert rune("delete", "configmap", "web-config").returncode == 0


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
