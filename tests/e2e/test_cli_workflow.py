"""The CLI workflow against one real runed: login, cast, get, describe, scale, stop, rollback, watch, deps, delete."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import yaml

from tests.e2e.rune import Rune
from tests.e2e.shop import PY, cast_file
from tests.support import eventually


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


def test_get_instances_of_a_service_name_points_to_the_service_filter(rune: Rune, cast_app: Path) -> None:
    r = rune("get", "instances", "web")
    assert r.returncode == 3
    assert 'instance "web" not found' in r.stderr and "rune get instances --service-name web" in r.stderr, r.stderr
    assert "--service-name" not in rune("get", "instances", "nosuch").stderr


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
    calls = r.stdout.split("API calls:", 1)
    assert len(calls) == 2 and "CreateService" in calls[1], r.stdout
    assert "Events:" in calls[0] and "Started: pid" in calls[0], r.stdout


def test_describe_instance_shows_why_it_stopped(rune: Rune, tmp_path: Path) -> None:
    """Its last lifecycle events (what ``rune events`` prints), not only the API calls about it."""
    f = tmp_path / "quits.yaml"
    f.write_text(
        "service:\n  name: quits\n  runtime: process\n  restartPolicy: Never\n"
        "  process: {command: sh, args: ['-c', 'echo bye; exit 3']}\n"
    )
    assert rune("cast", str(f), "--detach").returncode == 0

    def described() -> str:
        out = rune("describe", "instance", "quits-0").stdout
        assert "Not restarted (restart policy Never)" in out, out
        return out

    out = eventually(described, timeout=20)
    events, calls = out.split("Events:", 1)[1].split("API calls:", 1)
    assert calls.strip() == "<none>", out  # no call named the instance itself
    assert "quits-0  Exited: exit code 3" in events and "bye" not in events, out
    assert rune("delete", "quits", "--timeout", "30").returncode == 0


def test_cast_timeout_names_what_is_not_ready(rune: Rune, tmp_path: Path) -> None:
    f = tmp_path / "broken.yaml"
    f.write_text("service:\n  name: broken\n  runtime: process\n  process: {command: /nonexistent/binary}\n")
    r = rune("cast", str(f), "--timeout", "3s")
    assert r.returncode == 10
    assert "timed out after 3s" in r.stderr and "broken 0/1" in r.stderr
    assert rune("delete", "broken", "--timeout", "30").returncode == 0


def test_cast_timeout_says_a_process_listens_on_its_declared_port_instead_of_its_host_port(
    rune: Rune, tmp_path: Path
) -> None:
    """The first thing a new user casts: a server on the port its runefile declares. A process
    instance is served on a host port of its own ($PORT), so the probe is refused; the wait counts
    it as not ready (not "1/1") and says why, naming the host port and where it is given."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    f = tmp_path / "literal.yaml"
    f.write_text(
        f"""service:
  name: literal
  runtime: process
  process: {{command: {PY}, args: ["-m", "http.server", "{port}", "--bind", "127.0.0.1"]}}
  ports: [{{name: http, port: {port}}}]
  health:
    readiness: {{type: http, path: /, port: {port}, periodSeconds: 1}}
"""
    )
    r = rune("cast", str(f), "--timeout", "4s")
    assert r.returncode == 10, r.stdout + r.stderr
    host = json.loads(rune("get", "instances", "-o", "json").stdout)
    hp = next(i for i in host["instances"] if i["name"] == "literal-0")["environment"]["RUNE_PORT_HTTP"]
    assert "literal 0/1 ready, Pending" in r.stderr, r.stderr
    assert (
        f"not ready: GET http://127.0.0.1:{hp}/: connection refused (a process instance listens for port http "
        f"on its host port {hp}, given in $PORT and $RUNE_PORT_HTTP (args may say $(PORT)), not on {port})"
    ) in r.stderr, r.stderr
    assert rune("delete", "literal", "--timeout", "30").returncode == 0


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
    assert "service/web: Rolled back to revision 1 (generation 3)" in back.stdout, back.stdout
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
