"""Helpers for orchestration tests: a runed with fast controller settings, programs to cast, store reads.

The fixtures built on them (``shared_orch``, ``orch``, ``own_orch``) live in ``tests/integration/conftest.py``.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc

from rune.api import common_pb2, service_pb2, service_pb2_grpc
from runed.store.base import Store
from runed.store.open import open_url
from runed.store.sqlite import SQLiteStore
from tests.harness import Runed, RunedFactory
from tests.support import Metadata, bootstrap_metadata, eventually

# Short periods and back-offs keep every test a few seconds long.
RUNEFILE = """
controller:
  resync_seconds: 1
  restart_backoff_initial_seconds: 0.3
  restart_backoff_max_seconds: 1.2
  restart_backoff_reset_seconds: 30
  stop_grace_seconds: 3
"""

# A small HTTP server: prints its env, answers /healthz per files in its working directory.
SERVER = textwrap.dedent(
    """
    import http.server, os, sys, json
    print("env", json.dumps({k: v for k, v in os.environ.items() if k.isupper()}), flush=True)
    print("started", flush=True)
    class H(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            if os.path.exists("unhealthy") and self.path == "/live":
                self.send_response(500)
            elif not os.path.exists(os.environ.get("READY_FILE", "/nonexistent")) and self.path == "/ready" \\
                    and os.environ.get("READY_FILE"):
                self.send_response(503)
            else:
                self.send_response(200)
            self.end_headers()
            self.wfile.write(b"ok")
        def log_message(self, *a):
            pass
    http.server.ThreadingHTTPServer(("127.0.0.1", int(os.environ["PORT"])), H).serve_forever()
    """
)

# Exits with the code given in argv[1] after argv[2] seconds.
EXITER = textwrap.dedent(
    """
    import sys, time
    print("run", flush=True)
    time.sleep(float(sys.argv[2]))
    sys.exit(int(sys.argv[1]))
    """
)

# Ignores SIGTERM: only SIGKILL ends it.
STUBBORN = textwrap.dedent(
    """
    import signal, time
    signal.signal(signal.SIGTERM, lambda *a: print("got TERM, ignoring", flush=True))
    print("started", flush=True)
    while True:
        time.sleep(0.1)
    """
)


def runefile_args(tmp: Path, extra: str = "") -> list[str]:
    """Write RUNEFILE (plus ``extra`` lines under ``controller:``) into ``tmp``: the runed flags that load it."""
    cfg = tmp / "runefile.yaml"
    cfg.write_text(RUNEFILE + extra)
    return ["--config", str(cfg)]


@dataclass
class Orch:
    """A running runed plus an authenticated ServiceService stub and a read-only view of its store."""

    runed: Runed
    auth: Metadata
    tmp: Path

    @classmethod
    def on(cls, runed: Runed, tmp: Path) -> Orch:
        """Orchestration helpers over a started ``runed``, with a root token bootstrapped over gRPC."""
        return cls(runed, bootstrap_metadata(runed.channel()), tmp)

    @property
    def services(self) -> service_pb2_grpc.ServiceServiceStub:
        return service_pb2_grpc.ServiceServiceStub(self.runed.channel())

    def kill_runed(self) -> None:
        """kill -9 of runed's whole process group (the zygote, the shims and keepers are in sessions of
        their own: the instances run on)."""
        first = self.runed
        assert first.proc is not None
        os.killpg(first.proc.pid, signal.SIGKILL)
        first.proc.wait(10)

    def restart_runed(self, runed_factory: RunedFactory) -> None:
        """A runed started anew on the same data dir, arguments and environment."""
        first = self.runed
        self.runed = runed_factory(first.data_dir, args=first.args, env=first.env)

    def store(self) -> Store:
        """The runed's store, read directly: its SQLite file, or the database ``RUNE_STORE_URL`` names."""
        url = self.runed.env.get("RUNE_STORE_URL")
        return open_url(url) if url else SQLiteStore(self.runed.data_dir / "runed.db", notify=False)

    def program(self, name: str, source: str) -> Path:
        path = self.tmp / f"{name}.py"
        path.write_text(source)
        return path

    def cast(self, name: str, script: Path, *args: str, scale: int = 1, namespace: str = "default", **kw: Any) -> None:
        self.cast_command(name, [sys.executable, str(script), *args], scale=scale, namespace=namespace, **kw)

    def cast_shell(self, name: str, script: str, *, scale: int = 1, **kw: Any) -> None:
        """A service running ``sh -c script``."""
        self.cast_command(name, ["sh", "-c", script], scale=scale, **kw)

    def cast_command(
        self,
        name: str,
        argv: list[str],
        *,
        scale: int = 1,
        namespace: str = "default",
        process: dict[str, Any] | None = None,
        **kw: Any,
    ) -> None:
        """A service running ``argv``; ``process``: more ProcessSpec fields, ``kw``: Service fields."""
        svc = service_pb2.Service(
            name=name,
            namespace=namespace,
            scale=scale,
            runtime="process",
            process=common_pb2.ProcessSpec(command=argv[0], args=argv[1:], **(process or {})),
            **kw,
        )
        self.services.CreateService(service_pb2.CreateServiceRequest(service=svc), metadata=self.auth)

    def service_gone(self, name: str, namespace: str = "default") -> bool:
        """Whether GetService says NOT_FOUND (any other error is raised)."""
        try:
            self.services.GetService(service_pb2.GetServiceRequest(name=name, namespace=namespace), metadata=self.auth)
        except grpc.RpcError as e:
            if e.code() == grpc.StatusCode.NOT_FOUND:
                return True
            raise
        return False

    def instances(self, service: str, namespace: str = "default") -> list[dict[str, Any]]:
        st = self.store()
        try:
            recs = st.list("instance", namespace).items
        finally:
            st.close()
        out = [dict(r.data, id=r.name) for r in recs if r.data.get("service") == service]
        return sorted(out, key=lambda d: (d["index"], d["instance"].get("created_at", "")))

    def one(self, service: str, namespace: str = "default") -> dict[str, Any]:
        """The service's only instance (or an AssertionError for eventually())."""
        insts = self.instances(service, namespace)
        assert len(insts) == 1, insts
        return insts[0]

    def running(self, service: str, n: int, namespace: str = "default") -> list[dict[str, Any]]:
        """Exactly ``n`` instances, all RUNNING and ready (or an AssertionError for eventually())."""
        insts = self.instances(service, namespace)
        states = [(d["instance"]["name"], d["state"], d.get("ready")) for d in insts]
        assert len(insts) == n and all(d["state"] == "RUNNING" and d.get("ready") for d in insts), states
        return insts

    def clear(self) -> None:
        """Delete every service at once (no grace) and wait until no instance is left."""
        st = self.store()
        try:
            names = [(r.namespace, r.name) for r in st.list("service").items]
        finally:
            st.close()
        for ns, name in names:
            with contextlib.suppress(grpc.RpcError):
                self.services.DeleteService(
                    service_pb2.DeleteServiceRequest(name=name, namespace=ns, force=True, now=True), metadata=self.auth
                )

        def empty() -> bool:
            st = self.store()
            try:
                assert st.count("instance") == 0 and st.count("service") == 0
            finally:
                st.close()
            return True

        eventually(empty, timeout=20, what="every service deleted")

    def log_lines(self, inst: dict[str, Any]) -> list[str]:
        path = Path(inst["log_dir"]) / "log.jsonl"
        if not path.exists():
            return []
        return [json.loads(line)["line"] for line in path.read_text().splitlines() if line.strip()]
