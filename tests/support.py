"""Test helpers shared by test modules: waiting for conditions, bootstrap credentials, reading errors and streams.

Starting a runed is not here but in :mod:`tests.harness` (shared with the benchmarks); fixtures live
in the conftest modules. No test module imports another one: what two modules share lives here.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

import grpc
import httpx
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from rune.api import admin_pb2, admin_pb2_grpc, auth_pb2, auth_pb2_grpc
from runed.logs.files import LOG_NAME
from runed.logs.timeparse import format_ns
from runed.runner.base import LaunchSpec, Observation
from runed.runner.process import ProcessRunner
from tests.harness import Runed, run_runed

T = TypeVar("T")
Metadata = list[tuple[str, str]]


# A program that shuts down gracefully on SIGTERM, taking 0.3 s to (its trap is set once "up" is
# out), and exits 7: what a shim or keeper signalled with it must let end and record.
GRACEFUL = 'trap "sleep 0.3; echo graceful; exit 7" TERM; echo up; while :; do sleep 0.05; done'


def eventually(check: Callable[[], T], timeout: float = 10.0, interval: float = 0.05, what: str = "") -> T:
    """Poll ``check`` until it returns a truthy value (or stops raising AssertionError)."""
    deadline = time.monotonic() + timeout
    last: BaseException | None = None
    while True:
        try:
            value = check()
            if value:
                return value
        except AssertionError as e:
            last = e
        if time.monotonic() > deadline:
            msg = f"condition not met within {timeout}s" + (f": {what}" if what else "")
            raise AssertionError(msg) from last
        time.sleep(interval)


class Clock:
    """A monotonic clock a test moves by hand (``clock.now += 5``), for what takes a clock to call."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def file_contents(root: Path) -> Iterator[tuple[Path, bytes]]:
    """Every regular file under ``root`` (no symlink, socket or pipe) with its bytes, while runed
    goes on. A directory or file that goes while it is walked (a deleted instance's directory,
    moved out once its record is gone; a run file replaced) holds nothing: ``os.walk`` passes over
    it, where ``Path.rglob`` raised FileNotFoundError."""
    for top, _, files in os.walk(root):
        for name in sorted(files):
            path = Path(top, name)
            try:
                if path.is_symlink() or not path.is_file():
                    continue
                yield path, path.read_bytes()
            except OSError:
                continue


def bootstrap_metadata(channel: grpc.Channel) -> Metadata:
    """AdminBootstrap over ``channel`` (loopback) and the root token as gRPC call metadata."""
    token = admin_pb2_grpc.AdminServiceStub(channel).AdminBootstrap(admin_pb2.AdminBootstrapRequest()).token_secret
    return [("authorization", f"Bearer {token}")]


def bearer(secret: str) -> Metadata:
    """gRPC call metadata carrying ``secret`` as a bearer token."""
    return [("authorization", f"Bearer {secret}")]


def code_of(fn: object, *args: object, **kw: object) -> tuple[grpc.StatusCode, str]:
    """Call ``fn`` and return its status code and details (``OK`` and "" when it succeeds)."""
    try:
        fn(*args, **kw)  # type: ignore[operator]
    except grpc.RpcError as e:
        return e.code(), e.details() or ""
    return grpc.StatusCode.OK, ""


def make_token(runed: Runed, auth: Metadata, user: str, policies: list[str], ttl: int = 0) -> str:
    """A token (``<user>-tok``) for ``user`` with ``policies``, created with ``auth``; its secret."""
    stub = auth_pb2_grpc.AuthServiceStub(runed.channel())
    resp = stub.CreateToken(
        auth_pb2.CreateTokenRequest(name=f"{user}-tok", subject_name=user, policies=policies, ttl_seconds=ttl),
        metadata=auth,
    )
    return str(resp.secret)


def rest_bootstrap(base_url: str) -> str:
    """AdminBootstrap over REST (loopback) and the root token it returns."""
    resp = httpx.post(base_url + "/v1/admin:bootstrap", json={}, timeout=10)
    assert resp.status_code == 200, resp.text
    return str(resp.json()["tokenSecret"])


@contextlib.contextmanager
def rest_bootstrapped_runed(tmp: Path, runefile: str = "") -> Iterator[tuple[Runed, str]]:
    """A runed configured by ``runefile``, bootstrapped over REST from loopback: (runed, root token)."""
    args: list[str] = []
    if runefile:
        cfg = tmp / "runefile.yaml"
        cfg.write_text(runefile)
        args = ["--config", str(cfg)]
    with run_runed(tmp / "data", args=args) as r:
        yield r, rest_bootstrap(r.http_base)


def bad_request_fields(err: grpc.RpcError) -> list[str]:
    """Field paths from the google.rpc.BadRequest details of an INVALID_ARGUMENT error."""
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT, err
    status = rpc_status.from_call(err)  # type: ignore[arg-type]
    assert status is not None
    fields: list[str] = []
    for detail in status.details:
        br = error_details_pb2.BadRequest()
        if detail.Unpack(br):
            fields += [v.field for v in br.field_violations]
    return fields


def bad_request_violations(err: grpc.RpcError) -> dict[str, str]:
    """Field path -> description from the google.rpc.BadRequest details of an error."""
    status = rpc_status.from_call(err)  # type: ignore[arg-type]
    assert status is not None
    out: dict[str, str] = {}
    for detail in status.details:
        br = error_details_pb2.BadRequest()
        if detail.Unpack(br):
            out.update({v.field: v.description for v in br.field_violations})
    return out


def error_info(err: grpc.RpcError) -> error_details_pb2.ErrorInfo:
    """The one google.rpc.ErrorInfo among an error's details (its reason and metadata)."""
    status = rpc_status.from_call(err)  # type: ignore[arg-type]
    assert status is not None, err
    infos = []
    for d in status.details:
        info = error_details_pb2.ErrorInfo()
        if d.Unpack(info):
            infos.append(info)
    assert len(infos) == 1, status
    return infos[0]


def wakeups(pid: int) -> int:
    """Context switches of every thread of ``pid`` so far: each sleep that ended is one."""
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        for line in (task / "status").read_text().splitlines():
            if "ctxt_switches:" in line:
                total += int(line.split()[1])
    return total


def alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie, or a process gone between two checks, does not)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        state = Path(f"/proc/{pid}/stat").read_text().split(")")[-1][:3]
    except OSError:
        # Gone between the two checks (reading a vanished /proc entry raises ESRCH).
        return False
    return "Z" not in state


def sse_events(lines: Iterator[str]) -> Iterator[dict[str, str]]:
    """Server-Sent Events as dicts of their fields (comments skipped), from an iterator of lines."""
    ev: dict[str, str] = {}
    for line in lines:
        if not line:
            if "data" in ev:
                yield ev
            ev = {}
        elif not line.startswith(":"):
            k, _, v = line.partition(": ")
            ev[k] = v


class LogWriter:
    """Writes an instance's log files the way the per-instance shim does (seq, ts, stream, line; size rotation).

    A line without ``ns`` is stamped now, or ``base_ns`` + 1 ms per line when a test wants fixed times.
    """

    def __init__(self, log_dir: Path, backups: int = 3, base_ns: int | None = None) -> None:
        self.dir = log_dir
        self.dir.mkdir(parents=True, exist_ok=True)
        self.backups = backups
        self.base_ns = base_ns
        self.seq = 0

    def write(self, line: str, stream: str = "stdout", ns: int | None = None) -> int:
        """Append one line; returns its seq."""
        self.seq += 1
        if ns is None:
            ns = time.time_ns() if self.base_ns is None else self.base_ns + self.seq * 1_000_000
        rec = {"seq": self.seq, "ts": format_ns(ns), "stream": stream, "line": line}
        with open(self.dir / LOG_NAME, "a") as f:
            f.write(json.dumps(rec) + "\n")
        return self.seq

    def rotate(self) -> None:
        """Shift ``log.N`` to ``log.N+1`` and the live file to ``log.1``, as size rotation does."""
        for i in range(self.backups - 1, 0, -1):
            src = self.dir / f"{LOG_NAME}.{i}"
            if src.exists():
                src.rename(self.dir / f"{LOG_NAME}.{i + 1}")
        live = self.dir / LOG_NAME
        if live.exists():
            live.rename(self.dir / f"{LOG_NAME}.1")


def fs_type(path: Path) -> str:
    """The file system type of ``path`` as coreutils' ``stat -f`` names it ("ext2/ext3", "tmpfs", ...)."""
    out = subprocess.run(["stat", "-f", "-c", "%T", str(path)], capture_output=True, text=True, check=True).stdout
    return out.strip()


def attributes(path: Path) -> str:
    """The ext2/3/4 attributes of the directory ``path`` as e2fsprogs' ``lsattr -d`` shows them."""
    out = subprocess.run(["lsattr", "-d", str(path)], capture_output=True, text=True, check=True).stdout
    return out.split()[0]


def start_python(runner: ProcessRunner, directory: Path, source: str, *, iid: str, name: str) -> Observation:
    """Start the Python program ``source`` (which prints "started" once it runs) as instance ``iid``
    in ``directory`` under ``runner``, its file and working directory beside it; its observation
    once it runs and has said so."""
    prog = directory.parent / f"{iid}.py"
    prog.parent.mkdir(parents=True, exist_ok=True)
    prog.write_text(source)
    spec = LaunchSpec(
        instance_id=iid,
        namespace="default",
        name=name,
        service="svc",
        directory=directory,
        argv=[sys.executable, str(prog)],
        env={"PATH": os.environ.get("PATH", "")},
        cwd=str(directory.parent),
    )
    handle = runner.start(spec)

    def running() -> Observation:
        obs = runner.observe(directory, handle)
        assert obs.state == "running", obs
        assert (directory / LOG_NAME).exists() and b"started" in (directory / LOG_NAME).read_bytes()
        return obs

    return eventually(running, timeout=30, what=f"{iid} runs")
