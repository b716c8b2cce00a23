"""The upstream CLI's habits, driven through the real `rune` against a real runed (issue 12).

Persistent flags after the command, `delete --help`, piped stdin for exec, `get svc NAME -w`, exec's target forms,
the newest audit records, the address in a lost-connection error, READY/PORTS columns and `rune events`.
"""

from __future__ import annotations

import json
import signal
import sys
import threading
from collections.abc import Callable
from pathlib import Path

import yaml

from rune.api import health_pb2, health_pb2_grpc
from tests.e2e.rune import Rune
from tests.e2e.shop import cast_file
from tests.harness import Runed, run_runed
from tests.support import eventually

SLEEPER = f"""
services:
  - name: {{name}}
    runtime: process
    process:
      command: {sys.executable}
      args: ["-c", "import time; time.sleep(3600)"]
"""


def _cast_sleeper(rune: Rune, tmp: Path, name: str) -> None:
    f = tmp / f"{name}.yaml"
    f.write_text(SLEEPER.format(name=name))
    r = rune("cast", str(f), "--timeout", "60s", timeout=90)
    assert r.returncode == 0, r.stdout + r.stderr


def test_persistent_flags_work_after_the_command(rune: Rune, cast_app: Path) -> None:
    nowhere = {"RUNE_SERVER": "127.0.0.1:1"}
    assert rune("get", "services", env=nowhere).returncode == 9
    after = rune("get", "services", "-o", "name", "--api-server", rune.server, env=nowhere)
    assert after.returncode == 0, after.stderr
    assert after.stdout.split() == ["web", "worker"]
    server = rune("get", "svc", "-o", "name", "--server", rune.server, "-n", "default", env=nowhere)
    assert server.stdout.split() == ["web", "worker"], server.stderr
    # Subcommands of groups take them too, as does a command whose own flags do not include them.
    audit = rune("admin", "audit", "--limit", "1", "--api-server", rune.server, env=nowhere)
    assert audit.returncode == 0, audit.stderr
    deletions = rune("delete", "list", "--api-server", rune.server, env=nowhere)
    assert deletions.returncode == 0, deletions.stderr
    # -n before the command (the root's) reaches the command.
    elsewhere = rune("-n", "nowhere", "get", "svc")
    assert elsewhere.returncode == 0 and 'No services found in namespace "nowhere"' in elsewhere.stderr


def test_delete_help_lists_its_flags(rune: Rune) -> None:
    for args in (("delete", "--help"), ("rm", "-h")):
        out = rune(*args).stdout
        for flag in ("--namespace", "--force", "--dry-run", "--detach", "--grace-period", "--ignore-not-found"):
            assert flag in out, (flag, out)


def test_exec_forwards_piped_stdin(rune: Rune, cast_app: Path) -> None:
    piped = rune("exec", "web", "--", "cat", input="hello from a pipe\n")
    assert piped.returncode == 0, piped.stderr
    assert piped.stdout == "hello from a pipe\n"


def test_exec_accepts_the_targets_logs_accepts(rune: Rune, cast_app: Path) -> None:
    # instance/NAME as well as instance/ID; flags may follow TARGET when `--` ends them.
    by_name = rune("exec", "instance/web-1", "--", "echo", "ok")
    assert (by_name.returncode, by_name.stdout) == (0, "ok\n"), by_name.stderr
    flags_after = rune("exec", "inst/web-0", "-n", "default", "--", "echo", "hi")
    assert (flags_after.returncode, flags_after.stdout) == (0, "hi\n"), flags_after.stderr
    missing = rune("exec", "instance/web-9", "--", "true")
    assert missing.returncode != 0 and "not found" in missing.stderr


def test_get_one_service_watches_it(rune: Rune, cast_app: Path, tmp_path: Path) -> None:
    _cast_sleeper(rune, tmp_path, "solo")
    out = tmp_path / "watch.txt"
    watcher = rune.popen("get", "svc", "solo", "-w", out=out)
    eventually(lambda: "solo" in out.read_text(), timeout=20, what="the service printed")
    scaled = rune("scale", "solo", "2", timeout=90)
    assert scaled.returncode == 0, scaled.stdout + scaled.stderr
    rows = eventually(
        lambda: [ln for ln in out.read_text().splitlines() if ln.startswith("Modified")], timeout=20, what="a change"
    )
    assert watcher.poll() is None
    assert all(ln.split()[1] == "solo" for ln in rows), rows
    # Only that service: a change to another one is not printed.
    assert rune("scale", "worker", "1", timeout=90).returncode == 0
    assert not [ln for ln in out.read_text().splitlines() if " worker " in ln]
    assert rune("delete", "solo", timeout=90).returncode == 0


def test_admin_audit_shows_the_newest_records(rune: Rune, cast_app: Path) -> None:
    for i in range(3):
        made = rune("create", "configmap", f"audit-mark-{i}", "--data", "k=v")
        assert made.returncode == 0, made.stderr
    newest = json.loads(rune("admin", "audit", "--limit", "2", "-o", "json").stdout)["events"]
    assert [e.get("name") for e in newest] == ["audit-mark-1", "audit-mark-2"], newest
    everything = json.loads(rune("admin", "audit", "--limit", "1000", "-o", "json").stdout)["events"]
    assert len(everything) > 2 and everything[-2:] == newest
    oldest = json.loads(rune("admin", "audit", "--since-id", "1", "--limit", "1", "-o", "json").stdout)["events"]
    assert int(oldest[0]["id"]) == 2


def test_ready_and_ports_columns(rune: Rune, cast_app: Path) -> None:
    def ready_web() -> list[str]:
        head, *rows = rune("get", "services").stdout.splitlines()
        cols = head.split()
        assert "READY" in cols and "PORTS" in cols, cols
        web = next(r.split() for r in rows if r.startswith("web "))
        assert web[cols.index("READY")] == "2/2", web
        return cols

    eventually(ready_web, timeout=20, what="web 2/2 ready")
    head, *rows = rune("get", "instances", "--service", "web").stdout.splitlines()
    cols = head.split()
    assert "READY" in cols and "PORTS" in cols, cols
    assert {r.split()[cols.index("READY")] for r in rows} == {"1/1"}, rows
    one = rune("get", "inst", "web-0").stdout.splitlines()
    assert one[1].split()[one[0].split().index("READY")] == "1/1"
    head, *rows = rune("get", "svc", "-A").stdout.splitlines()
    web = next(r.split() for r in rows if r.startswith("web "))
    assert web[head.split().index("READY")] == "2/2"


def test_events_lists_and_follows_lifecycle_events(rune: Rune, cast_app: Path, tmp_path: Path) -> None:
    listed = rune("events", "--service", "web")
    assert listed.returncode == 0, listed.stderr
    lines = listed.stdout.splitlines()
    assert any("  web-0  Started: pid " in ln for ln in lines), lines
    assert not any("tick" in ln or "greeting" in ln for ln in lines)
    assert all(" web-" in ln for ln in lines)
    everything = rune("events").stdout
    assert "  worker-0  " in everything and "  web-1  " in everything
    only = rune("events", "--service", "web", "--instance", "web-1").stdout.splitlines()
    assert only and all("  web-1  " in ln for ln in only)
    assert len(rune("events", "web", "--tail", "1").stdout.splitlines()) == 1
    _cast_sleeper(rune, tmp_path, "brief")
    out = tmp_path / "events.txt"
    follower = rune.popen("events", "-f", "brief", out=out)
    eventually(lambda: "  brief-0  Started" in out.read_text(), timeout=20, what="the start event")
    assert rune("delete", "brief", timeout=90).returncode == 0
    # The follow ends with the service, its last event saying so.
    assert follower.wait(60) == 0
    assert "service brief was deleted" in out.read_text().splitlines()[-1]


def test_lost_connection_error_names_the_full_address(rune_factory: Callable[[str], Rune], tmp_path: Path) -> None:
    with run_runed(tmp_path / "data") as runed:
        target = runed.grpc_target
        r = rune_factory(target)
        token = tmp_path / "root.token"
        assert r("admin", "bootstrap", "--out-file", str(token)).returncode == 0
        assert r("login", "--token-file", str(token)).returncode == 0
        _cast_sleeper(r, tmp_path, "held")
        out = tmp_path / "exec.txt"
        exe = r.popen("exec", "held", "--", "sh", "-c", "echo up; exec sleep 300", out=out)
        eventually(lambda: "up" in out.read_text(), timeout=20, what="the exec session")
        runed.signal(signal.SIGKILL)
        assert exe.wait(60) == 9
        text = out.read_text()
        assert f"runed at {target} " in text, text


# Ready 1.5 s after each start: the file the readiness probe looks for is made anew by every process.
SLOW_START = (
    "import pathlib, time\\np = pathlib.Path('ready')\\np.unlink(missing_ok=True)\\n"
    "time.sleep(1.5)\\np.touch()\\ntime.sleep(3600)"
)
SLOW_READY = f"""
services:
  - name: rolling
    runtime: process
    process:
      command: {sys.executable}
      args: ["-c", "{SLOW_START}"]
    scale: 2
    health:
      readiness: {{type: exec, command: [test, -f, ready], periodSeconds: 1}}
"""


def test_restart_is_rolling_and_waits_for_readiness(rune: Rune, shared_runed: Runed, tmp_path: Path) -> None:
    f = tmp_path / "rolling.yaml"
    f.write_text(SLOW_READY)
    cast = rune("cast", str(f), "--timeout", "60s", timeout=90)
    assert cast.returncode == 0, cast.stdout + cast.stderr
    token = yaml.safe_load(rune.config_path.read_text())["contexts"]["default"]["token"]
    health = health_pb2_grpc.HealthServiceStub(shared_runed.channel())
    req = health_pb2.GetHealthRequest(component_type="instance", namespace="default")

    def ready_states() -> dict[str, int]:
        comps = health.GetHealth(req, metadata=[("authorization", f"Bearer {token}")]).components
        return {c.name: c.status for c in comps if c.name.startswith("rolling-")}

    eventually(
        lambda: list(ready_states().values()) == [health_pb2.HEALTH_STATUS_HEALTHY] * 2, timeout=30, what="both ready"
    )
    pids = {
        i["name"]: i["pid"]
        for i in json.loads(rune("get", "inst", "--service", "rolling", "-o", "json").stdout)["instances"]
    }
    fewest: list[int] = []
    stop = threading.Event()

    def observe() -> None:
        while not stop.is_set():
            fewest.append(sum(1 for v in ready_states().values() if v == health_pb2.HEALTH_STATUS_HEALTHY))
            stop.wait(0.05)  # a sample every 50 ms, well inside the credential's rate limit

    watcher = threading.Thread(target=observe)
    watcher.start()
    try:
        restarted = rune("restart", "rolling", "--timeout", "60s", timeout=90)
    finally:
        stop.set()
        watcher.join()
    assert restarted.returncode == 0, restarted.stdout + restarted.stderr
    assert restarted.stdout.splitlines() == ["instance/rolling-0 restarted", "instance/rolling-1 restarted"]
    after = {
        i["name"]: i["pid"]
        for i in json.loads(rune("get", "inst", "--service", "rolling", "-o", "json").stdout)["instances"]
    }
    assert after.keys() == pids.keys() and all(after[n] != pids[n] for n in pids), (pids, after)
    # One instance at a time, the next only once the last is ready again: one was always ready.
    assert fewest and min(fewest) >= 1, fewest
    assert rune("delete", "rolling", timeout=90).returncode == 0


def test_scale_rollback_on_fail(rune: Rune, tmp_path: Path) -> None:
    program = tmp_path / "gated.sh"
    program.write_text("#!/bin/sh\nexec sleep 3600\n")
    program.chmod(0o755)
    f = tmp_path / "gated.yaml"
    f.write_text(
        f"""
services:
  - name: gated
    runtime: process
    process:
      command: {program}
    restartPolicy: Never
"""
    )
    cast = rune("cast", str(f), "--timeout", "60s", timeout=90)
    assert cast.returncode == 0, cast.stdout + cast.stderr
    # Instances started from now on cannot start at all (never Running, not even for a moment).
    program.unlink()
    r = rune("scale", "gated", "3", "--rollback-on-fail", "--timeout", "60s", timeout=120)
    assert r.returncode == 7, r.stdout + r.stderr
    assert "service/gated rolled back to scale 1" in r.stderr
    assert "scaling gated to 3 failed; rolled back to 1" in r.stderr
    svc = json.loads(rune("get", "svc", "gated", "-o", "json").stdout)
    assert svc["scale"] == 1
    names = [i["name"] for i in json.loads(rune("get", "inst", "--service", "gated", "-o", "json").stdout)["instances"]]
    assert names == ["gated-0"]
    assert rune("delete", "gated", timeout=90).returncode == 0


def test_cast_dry_run_shows_the_servers_diff(rune: Rune, cast_app: Path, tmp_path: Path) -> None:
    r = rune("cast", "--dry-run", str(cast_file(tmp_path, greeting="bonjour", scale=3)))
    assert r.returncode == 0, r.stdout + r.stderr
    web = next(ln for ln in r.stdout.splitlines() if ln.startswith("service/web "))
    # Values, old -> new, as runed compares them with what it holds; nothing else of the spec.
    assert (
        web
        == 'service/web (namespace default) would be updated: env.LANG_TAG "hello" -> "bonjour", scale 2 -> 3 (dry run)'
    )
    assert json.loads(rune("get", "svc", "web", "-o", "json").stdout)["env"]["LANG_TAG"] == "hello"


def test_cast_release(rune: Rune, tmp_path: Path) -> None:
    rs = tmp_path / "shopset"
    (rs / "casts").mkdir(parents=True)
    (rs / "runeset.yaml").write_text("name: shopset\nversion: 0.1.0\n")
    (rs / "casts" / "api.yaml").write_text(SLEEPER.format(name="{{ .Release.Name }}-api"))
    rendered = rune("cast", str(rs), "--render")
    assert "name: shopset-api" in rendered.stdout, rendered.stdout + rendered.stderr
    r = rune("cast", str(rs), "--release", "blue", "--timeout", "60s", timeout=90)
    assert r.returncode == 0, r.stdout + r.stderr
    assert rune("get", "svc", "-l", "release=blue", "-o", "name").stdout.split() == ["blue-api"]
    history = rune("history", "blue-api").stdout
    assert "release blue" in history, history
    assert rune("delete", "blue-api", timeout=90).returncode == 0


def test_delete_takes_several_names_and_deletes_every_one_it_can(rune: Rune, tmp_path: Path) -> None:
    """`rune delete a b` (as `kubectl delete svc a b`): both go; a missing one among them is said,
    the others are still deleted, and the exit code is the missing one's."""
    for name in ("pair-a", "pair-b"):
        _cast_sleeper(rune, tmp_path, name)
    r = rune("delete", "pair-a", "pair-missing", "pair-b", timeout=90)
    assert r.returncode == 3, r.stdout + r.stderr  # not found
    assert "service/pair-a deleted" in r.stdout and "service/pair-b deleted" in r.stdout, r.stdout
    assert "error: service/pair-missing: not found" in r.stderr, r.stderr
    assert "1 of 3 deletions failed" in r.stderr, r.stderr
    listed = rune("get", "services", "-o", "json").stdout
    assert "pair-a" not in listed and "pair-b" not in listed, listed
    # Another kind, named first: every name after it is of that kind.
    for name in ("pair-s1", "pair-s2"):
        assert rune("create", "secret", name, "--data", "k=v").returncode == 0
    r = rune("delete", "secret", "pair-s1", "pair-s2")
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.splitlines() == ["secret/pair-s1 deleted", "secret/pair-s2 deleted"], r.stdout
    assert rune("get", "secret", "pair-s1").returncode == 3


def test_delete_output_is_one_document_naming_each_object(rune: Rune, tmp_path: Path) -> None:
    """`rune delete ... -o json|yaml` prints one document a pipeline can parse: a name's own, or
    {"items": [...]} for several, each naming its object; a waited deletion carries how it ended,
    and kinds other than service answer in the format asked for, not in text."""
    for name in ("doc-a", "doc-b"):
        _cast_sleeper(rune, tmp_path, name)
    r = rune("delete", "doc-a", "doc-missing", "doc-b", "-o", "json", timeout=90)
    assert r.returncode == 3, r.stdout + r.stderr
    assert "error: service/doc-missing: not found" in r.stderr, r.stderr
    items = json.loads(r.stdout)["items"]
    assert [(d["kind"], d["name"], d["namespace"]) for d in items] == [
        ("service", "doc-a", "default"),
        ("service", "doc-b", "default"),
    ], items
    for d in items:
        assert d["deletionId"] and d["operation"]["id"] == d["deletionId"], d
        assert d["operation"]["status"] == "completed" and d["operation"]["serviceName"] == d["name"], d
    # One name: its document alone, in YAML too.
    _cast_sleeper(rune, tmp_path, "doc-c")
    one = rune("delete", "doc-c", "-o", "yaml", timeout=90)
    assert one.returncode == 0, one.stdout + one.stderr
    doc = yaml.safe_load(one.stdout)
    assert doc["name"] == "doc-c" and doc["operation"]["status"] == "completed", doc
    # Another kind, and one not found with --ignore-not-found.
    for name in ("doc-s1", "doc-s2"):
        assert rune("create", "secret", name, "--data", "k=v").returncode == 0
    r = rune("delete", "secret", "doc-s1", "doc-s2", "doc-s3", "--ignore-not-found", "-o", "json")
    assert r.returncode == 0, r.stdout + r.stderr
    items = json.loads(r.stdout)["items"]
    assert [(d["kind"], d["name"]) for d in items] == [("secret", "doc-s1"), ("secret", "doc-s2"), ("secret", "doc-s3")]
    assert items[2]["notFound"] is True and "notFound" not in items[0], items
    single = rune("delete", "configmap", "doc-none", "--ignore-not-found", "-o", "json")
    assert json.loads(single.stdout) == {
        "kind": "configmap",
        "name": "doc-none",
        "namespace": "default",
        "notFound": True,
    }
