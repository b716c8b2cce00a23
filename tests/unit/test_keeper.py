"""The keeper (``rune-shim --keeper <socket>``): many instances in one process, each with the shim's files.

Real processes throughout: the native binary as :mod:`runed.runner.native` builds it, a client speaking
its protocol (4-byte big-endian length, a JSON object; a start's or a watch's reply carries a pipe's
read end that reaches end of file once the exit record is written, or the keeper is gone).
"""

from __future__ import annotations

import contextlib
import json
import os
import resource
import select
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest

from runed.runner import native
from runed.runner.keeper import ALL, Keepers
from tests.support import GRACEFUL

T = TypeVar("T")

SHIM = native.shim_path()
if SHIM is None:
    pytest.skip("the native shim did not build (no C compiler?)", allow_module_level=True)

ENV = {"PATH": os.defpath}


def _wait(check: Callable[[], T], timeout: float = 10.0, what: str = "") -> T:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout}s: {what}")
        time.sleep(0.02)


def _launch(d: Path, attempt: str, argv: list[str], **extra: object) -> Path:
    """launch.json as ProcessRunner.start writes it."""
    d.mkdir(parents=True, exist_ok=True)
    spec = {
        "attempt": attempt,
        "argv": argv,
        "cwd": str(d),
        "uid": None,
        "gid": None,
        "rlimit_as": None,
        "nofile": None,
        "max_bytes": 10 << 20,
        "backups": 3,
        "umask": 0o022,
        "min_free_bytes": 0,
        **extra,
    }
    (d / "launch.json").write_text(json.dumps(spec))
    return d


def _records(d: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (d / "log.jsonl").read_text().split("\n") if line]


def _json(path: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(path.read_text())
    return data


def _readable(fd: int, timeout: float) -> bool:
    return bool(select.select([fd], [], [], timeout)[0])


def _alive(pid: int) -> bool:
    """Running (not gone, not a zombie)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] not in ("Z", "X")


class Client:
    def __init__(self, path: str) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(30)
        try:
            self.sock.connect(path)
        except OSError:
            self.sock.close()
            raise

    def send(self, msg: object) -> None:
        body = json.dumps(msg).encode()
        self.sock.sendall(len(body).to_bytes(4, "big") + body)

    def recv(self) -> tuple[dict[str, Any], list[int]]:
        head, fds = b"", []
        while len(head) < 4:
            data, got, _, _ = socket.recv_fds(self.sock, 4 - len(head), 4)
            assert data, "the keeper closed the connection"
            head += data
            fds += got
        size = int.from_bytes(head, "big")
        body = b""
        while len(body) < size:
            chunk = self.sock.recv(size - len(body))
            assert chunk, "the keeper closed the connection mid-reply"
            body += chunk
        reply: dict[str, Any] = json.loads(body)
        return reply, fds

    def call(self, msg: object) -> tuple[dict[str, Any], list[int]]:
        self.send(msg)
        return self.recv()

    def close(self) -> None:
        self.sock.close()


class Keeper:
    def __init__(self, sockdir: Path, sock: str = "", env: dict[str, str] | None = None, **popen: Any) -> None:
        self.dir = sockdir
        self.path = str(sockdir / "k.sock")
        self.err = sockdir / "keeper.err"
        with self.err.open("wb") as err:
            self.proc = subprocess.Popen(
                [str(SHIM), "--keeper", sock or self.path],
                start_new_session=True,
                cwd=sockdir,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=err,
                env=env,
                **popen,
            )
        self.clients: list[Client] = []
        self.fds: list[int] = []
        self.pids: list[int] = []

    def connect(self) -> Client:
        def attempt() -> Client | None:
            try:
                return Client(self.path)
            except (FileNotFoundError, ConnectionRefusedError):
                return None

        c = _wait(attempt, 5, "the keeper listens")
        assert c is not None
        self.clients.append(c)
        return c

    def start(self, c: Client, d: Path, attempt: str, env: dict[str, str] | None = None) -> tuple[dict[str, Any], int]:
        reply, fds = c.call({"op": "start", "dir": str(d), "attempt": attempt, "env": ENV if env is None else env})
        self.fds += fds
        if reply.get("pid"):
            self.pids.append(int(reply["pid"]))
            assert len(fds) == 1, reply
            return reply, fds[0]
        assert fds == [], reply
        return reply, -1

    def close(self) -> None:
        for c in self.clients:
            c.close()
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(10)
        for pid in self.pids:
            try:
                os.killpg(pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        for fd in self.fds:
            try:
                os.close(fd)
            except OSError:
                pass


@pytest.fixture
def sockdir() -> Iterator[Path]:
    """A short directory for the socket (sun_path holds 108 bytes; pytest's tmp_path may be longer)."""
    d = Path(tempfile.mkdtemp(prefix="kp", dir="/tmp"))
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def keeper(sockdir: Path) -> Iterator[Keeper]:
    k = Keeper(sockdir, env={**os.environ, "KEEPER_MARKER": "leaked"})
    try:
        yield k
    finally:
        k.close()


def test_a_start_records_output_and_exit_and_the_fd_ends_with_the_record(keeper: Keeper, tmp_path: Path) -> None:
    c = keeper.connect()
    hello, _ = c.call({"op": "ping"})
    assert hello["pid"] == keeper.proc.pid and hello["instances"] == 0 and hello["start"] > 0
    prog = 'echo "x=$X m=${KEEPER_MARKER-unset}"; echo err >&2; exit 3'
    d = _launch(tmp_path / "one", "a1", ["sh", "-c", prog])
    reply, fd = keeper.start(c, d, "a1", {**ENV, "X": "hello"})
    assert reply["pid"] > 0 and isinstance(reply["pid_start"], int)
    assert _readable(fd, 10), "the pipe did not end with the instance"
    # Readable means recorded: the exit record is there the moment the pipe ends.
    ex = _json(d / "exit.json")
    assert ex["code"] == 3 and ex["signal"] is None and ex["attempt"] == "a1"
    assert os.read(fd, 10) == b""
    lines = {(r["stream"], r["line"]) for r in _records(d)}
    # The environment given is the whole environment: the keeper's own does not leak in.
    assert lines == {("stdout", "x=hello m=unset"), ("stderr", "err")}
    pid = _json(d / "pid.json")
    assert pid["pid"] == reply["pid"] and pid["pid_start"] == reply["pid_start"]
    assert pid["shim_pid"] == keeper.proc.pid and pid["shim_start"] == hello["start"] and pid["attempt"] == "a1"
    claim = _json(d / "claim-a1.json")
    assert claim == {"attempt": "a1", "shim_pid": keeper.proc.pid, "shim_start": hello["start"]}
    assert c.call({"op": "ping"})[0]["instances"] == 0
    assert not list(d.glob("*.reserve")) and not list(d.glob("*.tmp"))


def test_a_chatty_instance_is_logged_to_its_last_line(keeper: Keeper, tmp_path: Path) -> None:
    c = keeper.connect()
    d = _launch(tmp_path / "chatty", "a1", ["sh", "-c", "seq 1 200000; exit 0"], max_bytes=1 << 30)
    # A quiet neighbour started meanwhile ends on time: the chatty one does not starve it.
    quiet = _launch(tmp_path / "quiet", "q1", ["sh", "-c", "sleep 0.2; echo done"])
    _, fd = keeper.start(c, d, "a1")
    _, qfd = keeper.start(c, quiet, "q1")
    assert _readable(fd, 30) and _readable(qfd, 10)
    assert _json(d / "exit.json")["code"] == 0
    recs = _records(d)
    assert recs[-1]["line"] == "200000" and len(recs) == 200000
    assert [r["seq"] for r in recs] == list(range(1, 200001))
    assert [r["line"] for r in _records(quiet)] == ["done"]


def _sleepers(keeper: Keeper, c: Client, root: Path, prefix: str, n: int) -> list[tuple[Path, int, int]]:
    """``n`` instances of ``sleep 100`` started on ``c``: (directory, pid, end descriptor) each."""
    started = []
    for i in range(n):
        d = _launch(root / f"{prefix}{i}", f"a{i}", ["sleep", "100"])
        reply, fd = keeper.start(c, d, f"a{i}")
        started.append((d, int(reply["pid"]), fd))
    return started


def test_fifty_instances_on_one_connection_end_by_sigterm_and_leave_no_zombie(keeper: Keeper, tmp_path: Path) -> None:
    c = keeper.connect()
    started = _sleepers(keeper, c, tmp_path, "i", 50)
    hello = c.call({"op": "ping"})[0]
    assert (hello["instances"], hello["live"]) == (50, 50)
    assert not any(_readable(fd, 0) for _, _, fd in started)
    for _, pid, _ in started:
        os.killpg(pid, signal.SIGTERM)
    deadline = time.monotonic() + 20
    for d, _, fd in started:
        assert _readable(fd, max(0.0, deadline - time.monotonic())), d
        assert _json(d / "exit.json")["signal"] == signal.SIGTERM
    children = Path(f"/proc/{keeper.proc.pid}/task/{keeper.proc.pid}/children")
    assert children.read_text().split() == [], "the keeper left zombies"
    assert c.call({"op": "ping"})[0]["instances"] == 0


def test_the_record_comes_after_what_the_instance_left_in_its_group_has_ended(keeper: Keeper, tmp_path: Path) -> None:
    c = keeper.connect()
    d = _launch(tmp_path / "g", "a1", ["sh", "-c", "sleep 100 & echo $!; exit 0"])
    began = time.monotonic()
    _, fd = keeper.start(c, d, "a1")
    assert _readable(fd, 10)
    assert time.monotonic() - began < 5, "the grandchild held the output past the drain"
    grandchild = int(_records(d)[0]["line"])
    keeper.pids.append(grandchild)
    assert not _alive(grandchild), "the grandchild still runs after the exit record"
    assert _json(d / "exit.json")["code"] == 0


def _held_open(keeper: Keeper, c: Client, d: Path) -> tuple[int, int, int]:
    """An instance whose grandchild ignores SIGTERM and holds the output open (the drain waits for
    it), started in ``d``: its pid, its end descriptor and the grandchild's pid. The grandchild logs
    its pid once it ignores SIGTERM, so a signal sent after that line cannot end it first."""
    _launch(d, "a1", ["sh", "-c", "sh -c 'trap \"\" TERM; echo $$; exec sleep 100' & exec sleep 100"])
    reply, fd = keeper.start(c, d, "a1")
    logged = _wait(lambda: _records(d) if (d / "log.jsonl").exists() else [], what="the pid logged")
    grandchild = int(logged[0]["line"])
    keeper.pids.append(grandchild)
    return int(reply["pid"]), fd, grandchild


def _killed(pid: int) -> bool:
    """Gone, or SIGKILL on its way (pending: it runs nothing of its own again)."""
    if not _alive(pid):
        return True
    with contextlib.suppress(FileNotFoundError):
        status = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines())
        return any(int(status[k], 16) & 1 << (signal.SIGKILL - 1) for k in ("SigPnd", "ShdPnd"))
    return True


def test_a_discarded_instance_ends_when_its_process_does_and_what_its_group_left_goes_with_it(
    keeper: Keeper, tmp_path: Path
) -> None:
    """Its end pipe closes once the process has ended, not after the drain of what its group left
    (no exit record is written, its directory goes next); what is left is killed before it closes."""
    c = keeper.connect()
    pid, fd, grandchild = _held_open(keeper, c, tmp_path / "d")
    c.send({"op": "signal", "dirs": [str(tmp_path / "d")], "signal": int(signal.SIGTERM), "discard": True})
    assert _readable(fd, 10)
    ended = time.monotonic()
    assert not _alive(pid)
    assert _killed(grandchild), "what the group left was not killed with the end"
    # Reaped later (DISCARD_REAP_DELAY_MS), off the deletion's path: counted until then, a zombie
    # meanwhile, and gone after, with no zombie left.
    counted = c.call({"op": "ping"})[0]["instances"]
    if time.monotonic() - ended < 0.2:
        assert counted == 1, "the discarded instance was reaped with its end, not after it"
    _wait(lambda: c.call({"op": "ping"})[0]["instances"] == 0, what="the discarded instance reaped")
    assert not (tmp_path / "d" / "exit.json").exists()
    children = Path(f"/proc/{keeper.proc.pid}/task/{keeper.proc.pid}/children")
    assert pid not in map(int, children.read_text().split()), "the discarded instance left a zombie"
    _wait(lambda: not _alive(grandchild), what="the grandchild gone")
    # Not discarded: the end comes with the exit record, after the group has ended.
    _, end, left = _held_open(keeper, c, tmp_path / "e")
    c.send({"op": "signal", "dirs": [str(tmp_path / "e")], "signal": int(signal.SIGTERM), "discard": False})
    assert _readable(end, 10)
    assert not _alive(left) and _json(tmp_path / "e" / "exit.json")["signal"] == signal.SIGTERM


def test_a_start_that_fails_is_recorded_and_the_keeper_serves_on(keeper: Keeper, tmp_path: Path) -> None:
    c = keeper.connect()
    d = _launch(tmp_path / "f", "a1", [str(tmp_path / "no-such-program")])
    reply, _ = keeper.start(c, d, "a1")
    assert reply == {"pid": 0, "ended": True}
    ex = _json(d / "exit.json")
    assert ex["code"] == 127 and "cannot start" in ex["error"] and ex["attempt"] == "a1"
    assert "No such file or directory" in ex["error"]
    assert str(_records(d)[-1]["line"]).startswith("runed: cannot start")
    assert not (d / "pid.json").exists()
    # No launch.json: the reason in the reply and in that directory's shim.err; the keeper lives on.
    empty = tmp_path / "empty"
    empty.mkdir()
    reply, _ = keeper.start(c, empty, "a2")
    assert "cannot read launch.json" in reply["error"]
    assert "cannot read launch.json" in (empty / "shim.err").read_text()
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "launch.json").write_text('{"attempt": "a3", "argv": 5}')
    reply, _ = keeper.start(c, bad, "a3")
    assert "argv" in reply["error"]
    reply, _ = keeper.start(c, tmp_path / "missing", "a4")
    assert "cannot enter" in reply["error"]
    assert c.call({"op": "ping"})[0]["pid"] == keeper.proc.pid


def test_a_start_already_claimed_or_superseded_does_not_run(keeper: Keeper, tmp_path: Path) -> None:
    c = keeper.connect()
    d = _launch(tmp_path / "c", "a1", ["sh", "-c", "echo ran"])
    (d / "claim-a1.json").write_text('{"attempt": "a1", "shim_pid": 1, "shim_start": 1}')
    reply, _ = keeper.start(c, d, "a1")
    assert reply == {"claimed": False}
    assert not (d / "pid.json").exists() and not (d / "log.jsonl").exists() and not (d / "exit.json").exists()
    # launch.json names a later attempt: nothing runs and the claim goes.
    other = _launch(tmp_path / "o", "a-later", ["sh", "-c", "echo ran"])
    reply, _ = keeper.start(c, other, "a-earlier")
    assert reply == {"claimed": False}
    assert not (other / "claim-a-earlier.json").exists() and not (other / "log.jsonl").exists()
    assert [p.name for p in other.iterdir()] == ["launch.json"]


def test_watch_from_another_connection_and_discard(keeper: Keeper, tmp_path: Path) -> None:
    first = keeper.connect()
    d = _launch(tmp_path / "w", "a1", ["sleep", "100"])
    reply, fd = keeper.start(first, d, "a1")
    second = keeper.connect()
    watched, fds = second.call({"op": "watch", "dir": str(d), "attempt": "a1"})
    keeper.fds += fds
    assert watched == {"pid": reply["pid"], "pid_start": reply["pid_start"], "ts": reply["ts"]} and len(fds) == 1
    # The start's time, as its pid record says it.
    assert reply["ts"] == _json(d / "pid.json")["ts"]
    assert second.call({"op": "watch", "dir": str(tmp_path / "nothing"), "attempt": "a1"}) == ({"gone": True}, [])
    assert second.call({"op": "watch", "dir": str(d), "attempt": "a0"}) == ({"gone": True}, [])
    assert not _readable(fds[0], 0.2) and not _readable(fd, 0)
    assert second.call({"op": "ping"})[0] | {"pid": 0, "start": 0} == {"pid": 0, "start": 0, "instances": 1, "live": 1}
    # A discard has no reply: the next reply on that connection is the ping's. A discarded
    # instance (being deleted) is no longer live, though the keeper has it until it ends.
    second.send({"op": "discard", "dir": str(d)})
    assert {k: v for k, v in second.call({"op": "ping"})[0].items() if k in ("instances", "live")} == {
        "instances": 1,
        "live": 0,
    }
    os.killpg(int(reply["pid"]), signal.SIGTERM)
    assert _readable(fds[0], 10) and _readable(fd, 10)
    # Discarded (its directory goes next): its end comes without an exit record.
    assert not (d / "exit.json").exists()
    assert second.call({"op": "watch", "dir": str(d), "attempt": "a1"}) == ({"gone": True}, [])


def test_bad_messages_get_an_error_and_the_keeper_serves_on(keeper: Keeper) -> None:
    c = keeper.connect()

    def raw(body: bytes) -> dict[str, Any]:
        c.sock.sendall(len(body).to_bytes(4, "big") + body)
        reply, fds = c.recv()
        assert fds == []
        return reply

    assert "malformed JSON" in raw(b"{not json")["error"]
    assert "malformed JSON" in raw(b"[1, 2]")["error"]
    assert "malformed JSON" in raw(b'{"op": "ping"} trailing')["error"]
    assert "unknown op" in raw(b'{"op": "explode"}')["error"]
    assert "no op" in raw(b"{}")["error"]
    assert "env" in raw(b'{"op": "start", "dir": "/x", "attempt": "a", "env": {"A": 1}}')["error"]
    # More than 64 MiB: an error naming the size; the body that follows is dropped, not read as requests.
    size = (64 << 20) + 1
    c.sock.sendall(size.to_bytes(4, "big"))
    reply, _ = c.recv()
    assert str(size) in reply["error"]
    c.sock.sendall(b"x" * size)
    assert c.call({"op": "ping"})[0]["pid"] == keeper.proc.pid
    # A message cut short by its sender's going: that connection closes, the keeper serves others.
    cut = keeper.connect()
    cut.sock.sendall((100).to_bytes(4, "big") + b'{"op": ')
    cut.close()
    assert c.call({"op": "ping"})[0]["pid"] == keeper.proc.pid
    assert keeper.connect().call({"op": "ping"})[0]["pid"] == keeper.proc.pid


def test_a_killed_keeper_ends_every_watch_and_every_program_with_it(keeper: Keeper, tmp_path: Path) -> None:
    """A keeper's instances die with it (the controller starts them again): a program it started
    just before it died, whose pid nobody had recorded yet, would otherwise run on orphaned."""
    c = keeper.connect()
    started = _sleepers(keeper, c, tmp_path, "k", 3)
    assert not any(_readable(fd, 0) for _, _, fd in started)
    keeper.proc.kill()
    for d, _, fd in started:
        assert _readable(fd, 5), "the pipe outlived the keeper"
        assert not (d / "exit.json").exists()
    _wait(lambda: not any(_alive(pid) for _, pid, _ in started), 5, "every program ended with its keeper")


def test_a_sigterm_to_the_keeper_and_its_instances_together_lets_them_end_within_their_grace(
    keeper: Keeper, tmp_path: Path
) -> None:
    """As ``systemctl stop`` signals every process of runed's unit: the keeper is not one to end by
    it (its instances would die with it at once, SIGKILLed, with no grace); each instance shuts
    down by its own SIGTERM, its exit is recorded, and the keeper leaves once nothing runs."""
    c = keeper.connect()
    d = _launch(tmp_path / "t", "a1", ["sh", "-c", GRACEFUL])
    reply, fd = keeper.start(c, d, "a1")
    _wait(lambda: (d / "log.jsonl").exists() and "up" in [r["line"] for r in _records(d)], 10, "the trap is set")
    keeper.proc.send_signal(signal.SIGTERM)
    os.killpg(int(reply["pid"]), signal.SIGTERM)
    assert _readable(fd, 10), "the instance's end was not recorded"
    assert _json(d / "exit.json")["code"] == 7
    lines = [r["line"] for r in _records(d)]
    # (sh says "Terminated" of the sleep the same SIGTERM ended: the whole group gets it.)
    assert lines[0] == "up" and lines[-1] == "graceful", lines
    c.close()
    assert keeper.proc.wait(5) == 0


def test_the_keeper_leaves_once_nothing_runs_and_nobody_is_connected(sockdir: Path, tmp_path: Path) -> None:
    # A relative socket path: the keeper's working directory moves from instance to instance.
    k = Keeper(sockdir, sock="k.sock")
    try:
        time.sleep(0.5)
        assert k.proc.poll() is None, "left before its first client"
        c = k.connect()
        d = _launch(tmp_path / "e", "a1", ["true"])
        _, fd = k.start(c, d, "a1")
        assert _readable(fd, 10)
        time.sleep(0.3)
        assert k.proc.poll() is None, "left with a client connected"
        assert c.call({"op": "ping"})[0]["instances"] == 0
        assert Path(k.path).exists()
        c.close()
        assert k.proc.wait(5) == 0
        assert not Path(k.path).exists(), "the socket stayed"
        assert k.err.read_text() == ""
    finally:
        k.close()


def test_an_instance_gets_the_file_limit_a_shim_would_have_passed_on(sockdir: Path, tmp_path: Path) -> None:
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard <= 256:
        pytest.skip("hard file limit too low to tell")

    def lower() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (200, hard))

    k = Keeper(sockdir, preexec_fn=lower)
    try:
        c = k.connect()
        limits = Path(f"/proc/{k.proc.pid}/limits").read_text()
        own = next(line for line in limits.splitlines() if line.startswith("Max open files")).split()
        assert own[3] == own[4] != "200", "the keeper raises its own soft limit to the hard one"
        plain = _launch(tmp_path / "plain", "a1", ["sh", "-c", "ulimit -n"])
        given = _launch(tmp_path / "given", "a2", ["sh", "-c", "ulimit -n"], nofile=150)
        _, fd = k.start(c, plain, "a1")
        _, fd2 = k.start(c, given, "a2")
        assert _readable(fd, 10) and _readable(fd2, 10)
        assert [r["line"] for r in _records(plain)] == ["200"]
        assert [r["line"] for r in _records(given)] == ["150"]
    finally:
        k.close()


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def test_out_of_descriptors_the_keeper_waits_instead_of_spinning_and_serves_again(sockdir: Path) -> None:
    """A connection the keeper cannot accept (no descriptor left) stays in the backlog: the keeper
    stops listening for a moment instead of trying again at once (a core spent on failed accepts),
    and serves it once descriptors are free again."""

    def few() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (24, 24))

    k = Keeper(sockdir, preexec_fn=few)
    try:
        first = k.connect()
        assert first.call({"op": "ping"})[0]["instances"] == 0
        # Connect until one is left unanswered: the keeper's descriptors are spent.
        waiting: Client | None = None
        for _ in range(40):
            c = k.connect()
            c.sock.settimeout(1.0)
            try:
                c.call({"op": "ping"})
            except TimeoutError:
                waiting = c
                break
        assert waiting is not None, "the keeper never ran out of descriptors"
        before = _cpu_seconds(k.proc.pid)
        time.sleep(1.0)
        spent = _cpu_seconds(k.proc.pid) - before
        assert spent < 0.3, f"the keeper spun on accept: {spent:.2f} s of CPU in 1 s"
        # Descriptors freed: the waiting connection is accepted and answered.
        for c in k.clients[1:]:
            if c is not waiting:
                c.close()
        waiting.sock.settimeout(10)
        assert waiting.recv()[0]["instances"] == 0
        assert k.proc.poll() is None
        said = k.err.read_text()
        assert said.count("cannot accept a connection: Too many open files") == 1, said
    finally:
        k.close()


def test_a_keeper_is_found_for_its_own_group_and_one_named_without_a_group_is_the_one_for_all(sockdir: Path) -> None:
    """A runed started anew sends a service's starts to that service's keeper, found by its
    socket's name, and never to another's. A keeper of an earlier runed (its socket named without a
    group) was the one keeper for all instances: it takes the starts of ``shared`` again."""
    earlier = Keeper(sockdir, sock=".keeper-0123456789ab.sock")
    earlier.path = str(sockdir / ".keeper-0123456789ab.sock")
    earlier.connect()
    keepers = Keepers(str(SHIM))
    try:
        assert keepers.ours(sockdir, ALL).pid == earlier.proc.pid
        web = keepers.ours(sockdir, "0f" * 8)
        assert web.pid != earlier.proc.pid and web.group == "0f" * 8
        assert web.path.name.startswith(f".keeper-{'0f' * 8}.")
        db = keepers.ours(sockdir, "1e" * 8)
        assert db.pid not in (earlier.proc.pid, web.pid)
        # Another runner of the same directory (a runed started anew) finds each of them again.
        again = Keepers(str(SHIM))
        try:
            assert [again.ours(sockdir, g).pid for g in (ALL, "0f" * 8, "1e" * 8)] == [
                earlier.proc.pid,
                web.pid,
                db.pid,
            ]
        finally:
            again.close()
    finally:
        keepers.close()
        earlier.close()
        for proc in keepers._procs:  # with nothing running and nobody connected, they leave
            proc.wait(15)


def test_a_keeper_handed_a_listening_socket_serves_on_it_and_one_handed_no_socket_says_so(sockdir: Path) -> None:
    """``rune-shim --keeper <path> <fd>``: the socket bound at ``path`` and listening, handed over
    as ``fd``, is served at once (its starter connected before it ran); anything else that is not
    such a socket is refused with a message, not served as one."""
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(sockdir / "h.sock"))
    listener.listen()
    early = Client(str(sockdir / "h.sock"))  # queued: nothing has accepted it yet
    proc = subprocess.Popen(
        [str(SHIM), "--keeper", "h.sock", str(listener.fileno())], cwd=sockdir, pass_fds=(listener.fileno(),)
    )
    listener.close()
    try:
        assert early.call({"op": "ping"})[0]["pid"] == proc.pid
    finally:
        early.close()
    assert proc.wait(10) == 0, "it leaves once nothing runs and its client is gone"
    assert not (sockdir / "h.sock").exists()
    for bad in ("", "x", "-1", "99999999999"):
        run = subprocess.run(
            [str(SHIM), "--keeper", "bad.sock", bad], cwd=sockdir, capture_output=True, text=True, timeout=10
        )
        assert run.returncode == 1 and "cannot listen on bad.sock" in run.stderr, (bad, run)
