"""ExecService.StreamExec over gRPC: stdin, exit codes, signals, TTY resize, limits, disconnects."""

from __future__ import annotations

import os
import queue
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from rune.api import exec_pb2, exec_pb2_grpc
from runed.store.sqlite import open_store
from tests.harness import Runed, run_runed
from tests.integration.instance_fixtures import Instances
from tests.support import Metadata, alive, bootstrap_metadata, eventually


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Runed]:
    tmp_path = tmp_path_factory.mktemp("api")
    data = tmp_path / "data"
    data.mkdir()
    (data / "runefile.yaml").write_text("exec:\n  max_sessions_per_instance: 2\n  timeout_seconds: 3\n")
    with run_runed(data, role="grpc") as p:
        yield p


@pytest.fixture(scope="module")
def stub(api: Runed) -> exec_pb2_grpc.ExecServiceStub:
    return exec_pb2_grpc.ExecServiceStub(api.channel())


@pytest.fixture(scope="module")
def md(api: Runed) -> list[tuple[str, str]]:
    return bootstrap_metadata(api.channel())


@pytest.fixture
def inst(api: Runed) -> tuple[Instances, str]:
    insts = Instances(api.data_dir).reset()
    insts.add("web", 1, env={"GREETING": "from-instance"})
    iid = insts.add("web", 0, env={"GREETING": "from-instance"})
    insts.add("web", 2, state="STOPPED")
    return insts, iid


ExecStub = exec_pb2_grpc.ExecServiceStub
Inst = tuple[Instances, str]


class Session:
    """A bidi exec call fed from a queue; collects stdout, stderr, status and exit."""

    def __init__(self, stub: exec_pb2_grpc.ExecServiceStub, md: list[tuple[str, str]], **init: object) -> None:
        self.q: queue.Queue[exec_pb2.ExecRequest | None] = queue.Queue()
        self.q.put(exec_pb2.ExecRequest(init=exec_pb2.ExecInitRequest(**init)))  # type: ignore[arg-type]
        self.call = stub.StreamExec(self._requests(), metadata=md, timeout=20)
        self.stdout = b""
        self.stderr = b""
        self.exit: exec_pb2.ExitInfo | None = None
        self.statuses: list[str] = []

    def _requests(self) -> Iterator[exec_pb2.ExecRequest]:
        while (r := self.q.get()) is not None:
            yield r

    def send(self, **kw: object) -> None:
        self.q.put(exec_pb2.ExecRequest(**kw))  # type: ignore[arg-type]

    def read_until(self, pred: object = None) -> None:
        """Consume responses until ``pred(self)`` holds, or to the end."""
        for resp in self.call:
            which = resp.WhichOneof("response")
            if which == "stdout":
                self.stdout += resp.stdout
            elif which == "stderr":
                self.stderr += resp.stderr
            elif which == "status":
                self.statuses.append(resp.status.message)
            elif which == "exit":
                self.exit = resp.exit
            if callable(pred) and pred(self):
                return

    def finish(self) -> exec_pb2.ExitInfo:
        self.read_until()
        self.q.put(None)
        assert self.exit is not None
        return self.exit


def test_echo_through_stdin_and_close(stub: ExecStub, md: Metadata, inst: Inst) -> None:
    _, iid = inst
    s = Session(stub, md, service_name="web", command=["cat"])
    s.send(stdin=b"hello ")
    s.send(stdin=b"world\n")
    s.send(stdin=b"")  # EOF
    ex = s.finish()
    assert s.stdout == b"hello world\n"
    assert ex.code == 0 and not ex.signaled
    # The service target picked its first running instance.
    assert any(iid in m for m in s.statuses)


def test_env_working_dir_and_separate_streams(stub: ExecStub, md: Metadata, inst: Inst, api: Runed) -> None:
    _, iid = inst
    (api.data_dir / "instances" / iid / "work" / "sub").mkdir()
    s = Session(
        stub,
        md,
        instance_id=iid,
        command=["sh", "-c", 'echo "$GREETING $EXTRA"; pwd; echo oops >&2'],
        env={"EXTRA": "from-init"},
        working_dir="sub",
    )
    ex = s.finish()
    assert ex.code == 0
    out = s.stdout.decode().splitlines()
    assert out[0] == "from-instance from-init"
    assert out[1].endswith(f"/instances/{iid}/work/sub")
    assert s.stderr == b"oops\n"


@pytest.mark.parametrize(
    ("command", "code"),
    [(["sh", "-c", "exit 3"], 3), (["true"], 0), (["no-such-command-xyz"], 127)],
)
def test_exit_codes(stub: ExecStub, md: Metadata, inst: Inst, command: list[str], code: int) -> None:
    s = Session(stub, md, service_name="web", command=command)
    ex = s.finish()
    assert (ex.code, ex.signaled) == (code, False)
    if code == 127:
        assert b"not found" in s.stderr


def test_not_executable_is_126(stub: ExecStub, md: Metadata, inst: Inst, api: Runed) -> None:
    _, iid = inst
    script = api.data_dir / "instances" / iid / "work" / "script.sh"
    script.write_text("#!/bin/sh\necho hi\n")
    script.chmod(0o644)
    s = Session(stub, md, instance_id=iid, command=[str(script)])
    ex = s.finish()
    assert ex.code == 126 and not ex.signaled


def test_signals_in_band_and_by_the_command(stub: ExecStub, md: Metadata, inst: Inst) -> None:
    s = Session(stub, md, service_name="web", command=["sh", "-c", "echo started; exec sleep 30"])
    s.read_until(lambda s: b"started" in s.stdout)
    s.send(signal=exec_pb2.Signal(name="INT"))
    ex = s.finish()
    assert ex.signaled and ex.signal == "SIGINT" and ex.code == 130
    s = Session(stub, md, service_name="web", command=["sh", "-c", "kill -TERM $$"])
    ex = s.finish()
    assert ex.signaled and ex.signal == "SIGTERM" and ex.code == 143


def test_tty_with_resize(stub: ExecStub, md: Metadata, inst: Inst) -> None:
    s = Session(
        stub,
        md,
        service_name="web",
        command=["sh", "-c", "stty size; read line; stty size"],
        tty=True,
        terminal_size=exec_pb2.TerminalSize(width=100, height=30),
    )
    s.read_until(lambda s: b"30 100" in s.stdout)
    s.send(resize=exec_pb2.TerminalSize(width=120, height=40))
    s.send(stdin=b"go\r")
    ex = s.finish()
    assert ex.code == 0
    assert b"40 120" in s.stdout
    assert s.stderr == b""  # one merged stream under a TTY


def test_disconnect_kills_the_command(stub: ExecStub, md: Metadata, inst: Inst) -> None:
    s = Session(stub, md, service_name="web", command=["sh", "-c", "sleep 60 & echo $!; wait"])
    s.read_until(lambda s: s.stdout.endswith(b"\n"))
    pid = int(s.stdout.split()[0])
    assert alive(pid)
    s.call.cancel()
    s.q.put(None)
    eventually(lambda: not alive(pid), timeout=5, what="the exec child is killed with its session")


def test_session_limit_timeout_and_audit(stub: ExecStub, md: Metadata, inst: Inst, api: Runed) -> None:
    _, iid = inst
    a = Session(stub, md, instance_id=iid, command=["sleep", "30"], env={"SECRET_TOKEN": "hunter2"})
    b = Session(stub, md, instance_id=iid, command=["sleep", "30"])
    a.read_until(lambda s: s.statuses)
    b.read_until(lambda s: s.statuses)
    c = Session(stub, md, instance_id=iid, command=["true"])
    with pytest.raises(grpc.RpcError) as e:
        c.read_until()
    assert e.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    c.q.put(None)
    # Past exec.timeout_seconds (3 s) the sessions are killed: exit first, then the status.
    t0 = time.monotonic()
    with pytest.raises(grpc.RpcError) as e:
        a.read_until()
    assert e.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert a.exit is not None and a.exit.signaled and a.exit.signal == "SIGKILL"
    assert time.monotonic() - t0 < 10
    b.call.cancel()
    a.q.put(None)
    b.q.put(None)
    store = open_store(api.data_dir)
    try:
        entries = [e for e in store.list_audit(limit=1000) if e.method.endswith("StreamExec")]
    finally:
        store.close()
    details = " ".join(e.detail for e in entries)
    assert "command=sleep 30" in details
    assert "SECRET_TOKEN" in details and "hunter2" not in details


def test_targets_must_exist_and_run(stub: ExecStub, md: Metadata, inst: Inst) -> None:
    insts, _ = inst
    stopped = list(insts.writers)[-1]
    for init, code in [
        ({"service_name": "nope", "command": ["true"]}, grpc.StatusCode.NOT_FOUND),
        ({"instance_id": "nope", "command": ["true"]}, grpc.StatusCode.NOT_FOUND),
        ({"instance_id": stopped, "command": ["true"]}, grpc.StatusCode.FAILED_PRECONDITION),
        ({"service_name": "web", "command": []}, grpc.StatusCode.INVALID_ARGUMENT),
    ]:
        s = Session(stub, md, **init)
        with pytest.raises(grpc.RpcError) as e:
            s.read_until()
        s.q.put(None)
        assert e.value.code() == code


NOBODY = 65534


@pytest.mark.parametrize("user", [None, NOBODY], ids=["as runed", "as another user"])
@pytest.mark.parametrize("tty", [False, True], ids=["pipes", "tty"])
def test_a_killed_api_process_takes_its_exec_commands_with_it(tmp_path: Path, tty: bool, user: int | None) -> None:
    """The process serving an exec session is killed (SIGKILL: nothing of it runs after): the
    command it started must not run on orphaned, unseen and unstoppable; also in an instance that
    runs as another user, whose command runs as that user, without runed's groups."""
    if user is not None and os.geteuid() != 0:
        pytest.skip("only root runs instances as another user")
    data = tmp_path / "data"
    data.mkdir()
    with run_runed(data, role="grpc") as r:
        Instances(data).reset().add("web", 0, uid=user, gid=user)
        s = Session(
            exec_pb2_grpc.ExecServiceStub(r.channel()),
            bootstrap_metadata(r.channel()),
            service_name="web",
            command=["sh", "-c", "echo $$ $(id -u) $(id -G); exec sleep 60"],
            tty=tty,
        )
        s.read_until(lambda s: s.stdout.endswith(b"\n"))
        pid, uid, *groups = s.stdout.split()
        if user is not None:
            assert (int(uid), [int(g) for g in groups]) == (user, [user])
        assert alive(int(pid))
        assert r.proc is not None
        r.proc.kill()
        r.proc.wait(10)
        eventually(lambda: not alive(int(pid)), timeout=5, what="the command ended with the process that ran it")
