"""``store.sqlite_synchronous``: with ``full`` an acknowledged write is on the disk before the call
returns (the write-ahead log synced at its commit), so a power loss cannot take it; by default
(``normal``) the commit does not wait for the disk. Seen from outside with strace: the syncs the
gRPC role makes while a CreateNamespace is in flight, and those ``runed bootstrap`` makes (it opens
the store itself, beside the running server)."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from rune.api import namespace_pb2, namespace_pb2_grpc
from tests.harness import marked_env, run_runed, runed_argv
from tests.support import bearer, bootstrap_metadata


@pytest.fixture(autouse=True)
def _strace() -> None:
    if shutil.which("strace") is None:
        if os.environ.get("CI") == "true":
            pytest.fail("strace is required in CI (CI=true): .ci/run installs it")
        pytest.skip("needs strace")


def _traced(pid: int) -> bool:
    """Whether every thread of ``pid`` has a tracer (strace attached to all of them)."""
    for status in Path(f"/proc/{pid}/task").glob("*/status"):
        try:
            text = status.read_text()
        except OSError:
            continue  # a thread that ended meanwhile needs no tracer
        line = next(x for x in text.splitlines() if x.startswith("TracerPid:"))
        if line.split()[1] == "0":
            return False
    return True


def _wal_syncs_while(pid: int, out: Path, call: Callable[[], object]) -> list[str]:
    """The fsync and fdatasync calls on the database's WAL that ``pid`` makes during ``call()``."""
    st = subprocess.Popen(
        ["strace", "-f", "-qq", "-y", "-e", "trace=fsync,fdatasync", "-o", str(out), "-p", str(pid)],
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 20
        while not _traced(pid):
            assert st.poll() is None, "strace could not attach"
            assert time.monotonic() < deadline, "strace did not attach within 20 s"
            time.sleep(0.05)
        call()
    finally:
        st.send_signal(signal.SIGINT)
        st.wait(20)
    return [line for line in out.read_text().splitlines() if "runed.db-wal" in line]


@pytest.mark.parametrize(("mode", "synced"), [("full", True), ("normal", False)])
def test_full_syncs_each_acknowledged_write_normal_does_not(tmp_path: Path, mode: str, synced: bool) -> None:
    with run_runed(tmp_path / "data", env={"RUNE_STORE_SQLITE_SYNCHRONOUS": mode}) as r:
        channel = r.channel()
        md = bootstrap_metadata(channel)
        namespaces = namespace_pb2_grpc.NamespaceServiceStub(channel)

        def create() -> None:
            req = namespace_pb2.CreateNamespaceRequest(namespace=namespace_pb2.Namespace(name="durable"))
            namespaces.CreateNamespace(req, metadata=md)

        syncs = _wal_syncs_while(r.role_pid("grpc"), tmp_path / "strace.out", create)
        assert bool(syncs) is synced, syncs
        got = namespaces.GetNamespace(namespace_pb2.GetNamespaceRequest(name="durable"), metadata=md)
        assert got.namespace.name == "durable"


@pytest.mark.parametrize(("mode", "synced"), [("full", True), ("normal", False)])
def test_bootstrap_commits_its_token_as_the_server_is_configured_to(tmp_path: Path, mode: str, synced: bool) -> None:
    env = {"RUNE_STORE_SQLITE_SYNCHRONOUS": mode}
    with run_runed(tmp_path / "data", env=env) as r:
        channel = r.channel()
        bootstrap_metadata(channel)  # the first root token: --reset below revokes it and issues another
        out = tmp_path / "strace.out"
        # The server keeps the database open: closing its last connection (which syncs the log to
        # checkpoint it in either mode) is not bootstrap's to do.
        trace = ["strace", "-f", "-qq", "-y", "-e", "trace=fsync,fdatasync", "-o", str(out)]
        cli = runed_argv("--data-dir", str(r.data_dir), "bootstrap", "--reset")
        done = subprocess.run([*trace, *cli], capture_output=True, text=True, timeout=60, env=marked_env(env))
        assert done.returncode == 0, done.stderr
        syncs = [line for line in out.read_text().splitlines() if "runed.db-wal" in line]
        assert bool(syncs) is synced, syncs
        # The token it printed is the one it committed.
        md = bearer(done.stdout.strip())
        got = namespace_pb2_grpc.NamespaceServiceStub(channel).ListNamespaces(
            namespace_pb2.ListNamespacesRequest(), metadata=md
        )
        assert any(ns.name == "default" for ns in got.namespaces)
