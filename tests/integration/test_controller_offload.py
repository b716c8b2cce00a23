"""The controller's store work waits off its event loop: a write or a start's reads stuck behind a
lock stall no probe.

One runed on PostgreSQL runs a service whose readiness probe hits an HTTP server every second; the
server logs each answer. A psql-like session takes the revision row lock every write transaction
needs and keeps it; then the server starts failing readiness, so the controller must record the
instance as not ready, a write that now waits in the database. While it waits, the probes go on
(the server keeps being asked): with the store called on the controller's event loop, the loop
would sit inside that write and probe nothing until the lock goes. Once the lock goes, the write
lands.

The same for a start: an instance asked to restart is stopped, then started again, and the start
reads its service (and its secrets, configmaps, dependencies). With the ``objects`` table locked
against every read as the stop ends, the start must wait, and the probes of another instance go on
meanwhile: read on the controller's loop, they would stop until the lock goes. The start happens
once it goes.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import textwrap
from pathlib import Path
from typing import Any

import psycopg
import pytest

from rune.api import (
    common_pb2,
    configmap_pb2,
    configmap_pb2_grpc,
    instance_pb2,
    instance_pb2_grpc,
    service_pb2,
    service_pb2_grpc,
)
from tests.harness import Runed, RunedFactory
from tests.pgsupport import lock_waiters, pg_database, pg_url  # noqa: F401  (fixtures)
from tests.support import Metadata, bootstrap_metadata, eventually

SERVER = textwrap.dedent(
    """
    import http.server, os
    class H(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            code = 503 if os.path.exists(os.environ["FAIL_FILE"]) else 200
            self.send_response(code)
            self.end_headers()
            self.wfile.write(b"ok")
            with open(os.environ["HITS_FILE"], "a") as f:
                f.write(f"{code}\\n")
        def log_message(self, *a):
            pass
    http.server.ThreadingHTTPServer(("127.0.0.1", int(os.environ["PORT"])), H).serve_forever()
    """
)

pytestmark = pytest.mark.slow

# A lease far longer than the lock is held: its renewals wait on the lock too, and the controller
# must not step down meanwhile.
ENV = {"RUNE_CONTROLLER_LEASE_SECONDS": "300"}


# An instance that outlives SIGTERM: its stop ends when the test kills it.
STUBBORN = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(3600)"


def _ignores(pid: int, sig: int) -> bool:
    status = Path(f"/proc/{pid}/status").read_text()
    return bool(int(status.split("SigIgn:")[1].split()[0], 16) & (1 << (sig - 1)))


def _hits(path: Path) -> list[str]:
    return path.read_text().split() if path.exists() else []


def _ready(conn: psycopg.Connection) -> list[bool]:
    rows = conn.execute("SELECT data FROM objects WHERE kind = 'instance'").fetchall()
    datas = [r[0] if isinstance(r[0], dict) else json.loads(r[0]) for r in rows]
    return [bool(d.get("ready")) for d in datas if d.get("state") == "RUNNING"]


def _instances(conn: psycopg.Connection, service: str) -> list[dict[str, Any]]:
    rows = conn.execute("SELECT data FROM objects WHERE kind = 'instance'").fetchall()
    datas = [r[0] if isinstance(r[0], dict) else json.loads(r[0]) for r in rows]
    return [d for d in datas if d.get("service") == service]


def _probed(script: Path, hits: Path, fail: Path) -> service_pb2.Service:
    """A service whose readiness probe asks an HTTP server every second; the server logs each answer."""
    ready = common_pb2.Probe(type=common_pb2.PROBE_TYPE_HTTP, path="/ready", port=8080, period_seconds=1)
    return service_pb2.Service(
        name="probed",
        namespace="default",
        scale=1,
        runtime="process",
        process=common_pb2.ProcessSpec(command=sys.executable, args=[str(script)]),
        ports=[common_pb2.ServicePort(name="http", port=8080)],
        env={"HITS_FILE": str(hits), "FAIL_FILE": str(fail)},
        health=common_pb2.HealthCheck(readiness=ready),
    )


def _probed_host(runed_factory: RunedFactory, tmp_path: Path, url: str) -> tuple[Runed, Metadata]:
    """A runed on ``url`` running the probed server (its hits in ``hits``, failing once ``fail`` exists)."""
    host = runed_factory(tmp_path / "data", args=["--store-url", url], env=ENV, timeout=90)
    auth = bootstrap_metadata(host.channel())
    script = tmp_path / "server.py"
    script.write_text(SERVER)
    service_pb2_grpc.ServiceServiceStub(host.channel()).CreateService(
        service_pb2.CreateServiceRequest(service=_probed(script, tmp_path / "hits", tmp_path / "fail")),
        metadata=auth,
    )
    return host, auth


def test_probes_go_on_while_a_controller_write_waits_on_a_lock(
    runed_factory: RunedFactory,
    tmp_path: Path,
    pg_url: str,  # noqa: F811
) -> None:
    _probed_host(runed_factory, tmp_path, pg_url)
    hits, fail = tmp_path / "hits", tmp_path / "fail"
    with (
        psycopg.connect(pg_url) as locker,
        psycopg.connect(pg_url, autocommit=True) as observer,
    ):
        eventually(lambda: _ready(observer) == [True], timeout=60, what="the instance is ready")
        # Every write transaction takes this row lock first; this session keeps it until rollback.
        locker.execute("SELECT value FROM revision WHERE id = 1 FOR UPDATE")
        fail.write_text("x")
        # The failing answer makes the controller record "not ready": that write waits on the lock.
        eventually(lambda: "503" in _hits(hits), timeout=30, what="a failing readiness answer")
        eventually(lambda: lock_waiters(observer) >= 1, timeout=30, what="a controller write waits")
        asked = len(_hits(hits))
        # Probes go on meanwhile (one a second): the controller's loop is not inside the write.
        eventually(lambda: len(_hits(hits)) >= asked + 3, timeout=60, what="probes while the write waits")
        assert lock_waiters(observer) >= 1
        assert _ready(observer) == [True]
        locker.rollback()
        # The write was only delayed: "not ready" lands once the lock goes.
        eventually(lambda: _ready(observer) == [False], timeout=30, what="the instance recorded not ready")


def test_probes_go_on_while_a_start_waits_to_read_the_store(
    runed_factory: RunedFactory,
    tmp_path: Path,
    pg_url: str,  # noqa: F811
) -> None:
    host, auth = _probed_host(runed_factory, tmp_path, pg_url)
    hits = tmp_path / "hits"
    services = service_pb2_grpc.ServiceServiceStub(host.channel())
    # What its start reads: its service, a configmap of its environment.
    configmap_pb2_grpc.ConfigmapServiceStub(host.channel()).CreateConfigmap(
        configmap_pb2.CreateConfigmapRequest(
            configmap=configmap_pb2.Configmap(name="conf", namespace="default", data={"greeting": "hi"})
        ),
        metadata=auth,
    )
    stubborn = service_pb2.Service(
        name="stubborn",
        namespace="default",
        scale=1,
        runtime="process",
        process=common_pb2.ProcessSpec(command=sys.executable, args=["-c", STUBBORN]),
        env={"GREETING": "{{configmap:conf/greeting}}"},
    )
    services.CreateService(service_pb2.CreateServiceRequest(service=stubborn), metadata=auth)
    with (
        psycopg.connect(pg_url) as locker,
        psycopg.connect(pg_url, autocommit=True) as observer,
    ):
        eventually(lambda: _ready(observer) == [True, True], timeout=60, what="both instances are running")
        [inst] = _instances(observer, "stubborn")
        pid, iid = int(inst["pid"]), str(inst["instance"]["id"])
        # Running is recorded at exec; a TERM before the program ignores it would end it at once.
        eventually(lambda: _ignores(pid, signal.SIGTERM), timeout=30, what="the program ignores TERM")
        instance_pb2_grpc.InstanceServiceStub(host.channel()).RestartInstance(
            instance_pb2.InstanceActionRequest(id=iid, namespace="default", timeout_seconds=600), metadata=auth
        )
        eventually(
            lambda: [d["state"] for d in _instances(observer, "stubborn")] == ["STOPPING"],
            timeout=30,
            what="the instance is stopping",
        )
        # Every read of an object waits from now on; then the stop ends, and the restart reads.
        locker.execute("LOCK TABLE objects IN ACCESS EXCLUSIVE MODE")
        os.kill(pid, signal.SIGKILL)
        eventually(lambda: lock_waiters(observer) >= 1, timeout=30, what="the controller waits to read")
        asked = len(_hits(hits))
        # Probes go on meanwhile (one a second): the controller's loop is not inside a read.
        eventually(lambda: len(_hits(hits)) >= asked + 3, timeout=60, what="probes while the start waits")
        assert lock_waiters(observer) >= 1
        locker.rollback()
        # The start was only delayed: the instance runs again once the lock goes.

        def restarted() -> bool:
            [d] = _instances(observer, "stubborn")
            return d["state"] == "RUNNING" and d.get("restart_count") == 1 and d.get("pid") not in (None, 0, pid)

        eventually(restarted, timeout=30, what="the instance restarted")
