"""The controller's store work waits off its event loop: a write stuck behind a lock stalls no probe.

One runed on PostgreSQL runs a service whose readiness probe hits an HTTP server every second; the
server logs each answer. A psql-like session takes the revision row lock every write transaction
needs and keeps it; then the server starts failing readiness, so the controller must record the
instance as not ready, a write that now waits in the database. While it waits, the probes go on
(the server keeps being asked): with the store called on the controller's event loop, the loop
would sit inside that write and probe nothing until the lock goes. Once the lock goes, the write
lands.
"""

from __future__ import annotations

import json
import sys
import textwrap
from pathlib import Path

import psycopg
import pytest

from rune.api import common_pb2, service_pb2, service_pb2_grpc
from tests.harness import RunedFactory
from tests.pgsupport import lock_waiters, pg_database, pg_url  # noqa: F401  (fixtures)
from tests.support import bootstrap_metadata, eventually

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


def _hits(path: Path) -> list[str]:
    return path.read_text().split() if path.exists() else []


def _ready(conn: psycopg.Connection) -> list[bool]:
    rows = conn.execute("SELECT data FROM objects WHERE kind = 'instance'").fetchall()
    datas = [r[0] if isinstance(r[0], dict) else json.loads(r[0]) for r in rows]
    return [bool(d.get("ready")) for d in datas if d.get("state") == "RUNNING"]


def test_probes_go_on_while_a_controller_write_waits_on_a_lock(
    runed_factory: RunedFactory,
    tmp_path: Path,
    pg_url: str,  # noqa: F811
) -> None:
    host = runed_factory(tmp_path / "data", args=["--store-url", pg_url], env=ENV, timeout=90)
    auth = bootstrap_metadata(host.channel())
    script = tmp_path / "server.py"
    script.write_text(SERVER)
    hits, fail = tmp_path / "hits", tmp_path / "fail"
    ready = common_pb2.Probe(type=common_pb2.PROBE_TYPE_HTTP, path="/ready", port=8080, period_seconds=1)
    svc = service_pb2.Service(
        name="probed",
        namespace="default",
        scale=1,
        runtime="process",
        process=common_pb2.ProcessSpec(command=sys.executable, args=[str(script)]),
        ports=[common_pb2.ServicePort(name="http", port=8080)],
        env={"HITS_FILE": str(hits), "FAIL_FILE": str(fail)},
        health=common_pb2.HealthCheck(readiness=ready),
    )
    service_pb2_grpc.ServiceServiceStub(host.channel()).CreateService(
        service_pb2.CreateServiceRequest(service=svc), metadata=auth
    )
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
