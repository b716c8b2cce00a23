"""The instance shim: JSON-lines logs with strictly increasing seq across rotations and restarts, exit records.

Shims run as the process runner starts them (:func:`runed.runner.process.shim_argv`): the native shim
(``shim.c``, built by :mod:`runed.runner.native`) and ``python -I -S`` importing the shim module, so
what is tested here is what every instance runs under. Tests of a running shim run under both, and
both must write the same records for the same output.
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import signal
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from runed.runner import native, shim
from runed.runner.process import SHIM_ROOT, shim_argv
from tests.support import GRACEFUL, eventually, wakeups


@pytest.fixture(params=["native", "python"])
def shim_native(request: pytest.FixtureRequest) -> str | None:
    """The native shim's path, or None: the Python shim (both are what instances run under)."""
    if request.param == "python":
        return None
    path = native.shim_path()
    assert path is not None, "the native shim did not build (is a C compiler installed?)"
    return path


def _records(d: Path) -> list[dict[str, object]]:
    out: list[dict[str, object]] = []
    names = sorted((p for p in d.glob("log.jsonl*")), key=lambda p: -int(p.suffix[1:]) if p.suffix != ".jsonl" else 0)
    for p in names:
        # Split at newlines only: a line may hold U+2028, which JSON leaves as it is and splitlines() splits at.
        out += [json.loads(line) for line in p.read_text().split("\n") if line]
    return out


def test_rotation_keeps_seq_increasing_and_backups_bounded(tmp_path: Path) -> None:
    w = shim.LogWriter(tmp_path, max_bytes=2048, backups=2)
    for i in range(200):
        w.write("stdout", f"line {i}".encode())
    w.close()
    files = sorted(p.name for p in tmp_path.glob("log.jsonl*"))
    assert files == ["log.jsonl", "log.jsonl.1", "log.jsonl.2"]
    assert all(p.stat().st_size <= 2048 for p in tmp_path.glob("log.jsonl*"))
    recs = _records(tmp_path)
    seqs = [int(str(r["seq"])) for r in recs]
    assert seqs == sorted(seqs) and seqs[-1] == 200
    # A new writer (the instance restarted) continues the numbering.
    w2 = shim.LogWriter(tmp_path, max_bytes=2048, backups=2)
    w2.write("stderr", b"after restart")
    w2.close()
    last = json.loads((tmp_path / "log.jsonl").read_text().splitlines()[-1])
    assert last == {"seq": 201, "ts": last["ts"], "stream": "stderr", "line": "after restart"}
    assert str(last["ts"]).endswith("Z") and len(str(last["ts"]).split(".")[1]) == 10


def test_rfc3339_nanoseconds() -> None:
    assert shim.rfc3339_ns(1_700_000_000_123_456_789) == "2023-11-14T22:13:20.123456789Z"


def _run_shim(tmp_path: Path, argv: list[str], native: str | None = None, **spec: object) -> dict[str, object]:
    (tmp_path / "launch.json").write_text(json.dumps({"argv": argv, "cwd": str(tmp_path), **spec}))
    subprocess.run(shim_argv(tmp_path, native), check=True, timeout=30, env={"X": "1"})
    data: dict[str, object] = json.loads((tmp_path / "exit.json").read_text())
    return data


def test_shim_records_streams_and_exit_code(tmp_path: Path, shim_native: str | None) -> None:
    prog = (
        "import os, sys; print('out', os.environ['X']); print('err', file=sys.stderr); "
        "print('partial', end=''); sys.exit(3)"
    )
    ex = _run_shim(tmp_path, [sys.executable, "-c", prog], shim_native)
    assert ex["code"] == 3 and ex["signal"] is None
    lines = {(r["stream"], r["line"]) for r in _records(tmp_path)}
    assert lines == {("stdout", "out 1"), ("stderr", "err"), ("stdout", "partial")}
    pid = json.loads((tmp_path / "pid.json").read_text())
    assert pid["pid"] > 0 and pid["pid_start"] is not None


def test_shim_records_signal_and_unstartable_command(tmp_path: Path, shim_native: str | None) -> None:
    prog = "import os, signal; os.kill(os.getpid(), signal.SIGKILL)"
    ex = _run_shim(tmp_path, [sys.executable, "-c", prog], shim_native)
    assert ex["code"] is None and ex["signal"] == 9
    other = tmp_path / "other"
    other.mkdir()
    ex = _run_shim(other, [str(tmp_path / "no-such-program")], shim_native)
    assert ex["code"] == 127 and "cannot start" in str(ex["error"])
    assert "cannot start" in str(_records(other)[-1]["line"])


def test_proc_start_time_identifies_a_process() -> None:
    import os

    assert shim.proc_start_time(os.getpid()) is not None
    assert shim.proc_start_time(2**22 + 12345) is None


def test_children_left_behind_end_with_the_instance(tmp_path: Path, shim_native: str | None) -> None:
    prog = (
        "import subprocess, sys; "
        "p = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)']); "
        "print(p.pid, flush=True)"
    )
    ex = _run_shim(tmp_path, [sys.executable, "-c", prog], shim_native)
    assert ex["code"] == 0
    orphan = int(str(_records(tmp_path)[0]["line"]))
    assert shim.proc_start_time(orphan) is None, "the grandchild was killed with its group"


def test_the_exit_record_comes_after_the_group_has_ended(tmp_path: Path, shim_native: str | None) -> None:
    """A restart follows the exit record: what the instance left in its group (here holding 1 GB and
    a listening port, so its end takes a while) must be over by then, or the restart meets the port taken."""
    held = tmp_path / "held"
    grandchild = textwrap.dedent(
        f"""
        import socket, sys, time
        hold = b"x" * (1 << 30)
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", 0))
        s.listen()
        print(s.getsockname()[1], flush=True)
        open({str(held)!r}, "w").close()
        time.sleep(60)
        """
    )
    # The instance ends once its grandchild holds the memory and the port (however long that takes).
    prog = textwrap.dedent(
        f"""
        import os, subprocess, sys, time
        p = subprocess.Popen([sys.executable, "-c", {grandchild!r}])
        print(p.pid, flush=True)
        deadline = time.monotonic() + 60
        while not os.path.exists({str(held)!r}) and time.monotonic() < deadline:
            time.sleep(0.05)
        """
    )
    ex = _run_shim(tmp_path, [sys.executable, "-c", prog], shim_native)
    assert ex["code"] == 0
    lines = [str(r["line"]) for r in _records(tmp_path)]
    orphan, port = int(lines[0]), int(lines[1])
    assert shim.proc_start_time(orphan) is None, "the grandchild still runs after the exit record"
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        s.bind(("127.0.0.1", port))  # free: a restart can listen on it again
    finally:
        s.close()


def test_json_without_the_json_package_round_trips() -> None:
    value = {"argv": ["sh", "-c", 'echo "é\\n\x01"'], "cwd": None, "uid": 0, "ok": True, "ts": 1.5, "n": [1, -2]}
    assert json.loads(shim.dumps(value)) == value
    assert shim.dumps(value) == json.dumps(value)
    assert shim.loads(json.dumps(value)) == value
    with pytest.raises(ValueError):
        shim.loads('{"a": 1} trailing')


def test_log_records_are_what_json_dumps_writes(tmp_path: Path) -> None:
    w = shim.LogWriter(tmp_path, max_bytes=1 << 20, backups=1)
    w.write("stdout", 'quote " backslash \\ tab \t é \x7f'.encode())
    w.close()
    raw = (tmp_path / "log.jsonl").read_text(encoding="utf-8").splitlines()[0]
    rec = json.loads(raw)
    assert raw == json.dumps(rec, ensure_ascii=False)
    assert rec["line"] == 'quote " backslash \\ tab \t é \x7f'


def test_the_shim_imports_only_small_builtin_modules(tmp_path: Path) -> None:
    """Each instance pays for what its shim imports: no site, json (re), signal (enum), subprocess, pathlib."""
    (tmp_path / "launch.json").write_text(json.dumps({"argv": ["true"]}))
    # The runner's command, with the module list printed after the shim's work is done.
    argv = shim_argv(tmp_path)
    code = (
        f"import sys; sys.path.append({SHIM_ROOT!r}); from runed.runner.shim import main; main(); "
        "print(' '.join(sorted(sys.modules)))"
    )
    flags = argv[1 : argv.index("-c")]
    out = subprocess.run(
        [sys.executable, *flags, "-c", code, str(tmp_path)], capture_output=True, text=True, timeout=30
    )
    assert out.returncode == 0, out.stderr
    assert json.loads((tmp_path / "exit.json").read_text())["code"] == 0
    loaded = set(out.stdout.split())
    heavy = {"site", "json", "re", "enum", "signal", "subprocess", "threading", "selectors", "pathlib", "datetime"}
    heavy |= {"warnings"}  # os.get_exec_path's import: a start looks the program up without it
    assert "runed.runner.shim" in loaded
    assert not loaded & (heavy | {"typing", "collections", "functools", "contextlib"}), sorted(loaded & heavy)


@pytest.fixture
def sleeping_shim(tmp_path: Path, shim_native: str | None) -> Iterator[tuple[int, int]]:
    """A shim (as the runner starts it) whose instance sleeps: (shim pid, instance pid); both killed after."""
    (tmp_path / "launch.json").write_text(json.dumps({"argv": ["sleep", "60"], "cwd": str(tmp_path)}))
    proc = subprocess.Popen(shim_argv(tmp_path, shim_native), start_new_session=True, stdin=subprocess.DEVNULL)
    try:
        pid_file = tmp_path / "pid.json"

        def started() -> dict[str, int]:
            assert pid_file.exists(), "no pid.json yet"
            info: dict[str, int] = json.loads(pid_file.read_text())
            return info

        info = eventually(started, what="the instance started")
        yield proc.pid, int(info["pid"])
    finally:
        if (tmp_path / "pid.json").exists():
            try:
                os.killpg(int(json.loads((tmp_path / "pid.json").read_text())["pid"]), signal.SIGKILL)
            except ProcessLookupError:
                pass
        proc.kill()
        proc.wait(10)


def test_an_idle_shim_does_not_wake_up(sleeping_shim: tuple[int, int]) -> None:
    """A shim waits in poll() for output or the instance's end (a pidfd), not on a timer: idle costs no CPU."""
    shim_pid, _ = sleeping_shim
    before = wakeups(shim_pid)
    time.sleep(1.5)  # a measuring window, not a wait for something to happen
    assert wakeups(shim_pid) - before <= 1


def test_the_instance_runs_in_its_own_group_with_default_signals(sleeping_shim: tuple[int, int]) -> None:
    """What subprocess did for the shim before: own process group, no signal left ignored, no stray fds."""
    shim_pid, pid = sleeping_shim
    assert os.getpgid(pid) == pid and os.getsid(pid) == os.getsid(shim_pid) != pid
    status = dict(
        line.split(":\t", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines() if ":\t" in line
    )
    # The shim's own ignores (HUP, INT, TERM) and Python's (PIPE, XFSZ) must not leak into the instance;
    # whatever the test run itself inherited ignored (a CI runner may ignore a realtime signal) passes on.
    own = dict(line.split(":\t", 1) for line in Path("/proc/self/status").read_text().splitlines() if ":\t" in line)
    shim_set = sum(1 << (s - 1) for s in (signal.SIGHUP, signal.SIGINT, signal.SIGTERM, signal.SIGPIPE, signal.SIGXFSZ))
    assert int(status["SigIgn"], 16) == int(own["SigIgn"], 16) & ~shim_set, (status["SigIgn"], own["SigIgn"])
    assert sorted(int(fd) for fd in os.listdir(f"/proc/{pid}/fd")) == [0, 1, 2]


def test_a_sigterm_to_the_shim_and_its_instance_together_records_the_graceful_exit(
    tmp_path: Path, shim_native: str | None
) -> None:
    """As ``systemctl stop`` signals every process of runed's unit: the shim is not one to end by it;
    the instance shuts down by its own SIGTERM and the shim records its exit (SIGKILL ends a shim)."""
    (tmp_path / "launch.json").write_text(json.dumps({"argv": ["sh", "-c", GRACEFUL], "cwd": str(tmp_path)}))
    proc = subprocess.Popen(shim_argv(tmp_path, shim_native), start_new_session=True, stdin=subprocess.DEVNULL)
    pid = 0
    try:

        def up() -> int:
            assert [r["line"] for r in _records(tmp_path)] == ["up"], "the trap is not set yet"
            return int(json.loads((tmp_path / "pid.json").read_text())["pid"])

        pid = eventually(up, what="the instance set its trap")
        proc.send_signal(signal.SIGTERM)
        os.killpg(pid, signal.SIGTERM)
        assert proc.wait(10) == 0
        assert json.loads((tmp_path / "exit.json").read_text())["code"] == 7
        lines = [r["line"] for r in _records(tmp_path)]
        # (sh says "Terminated" of the sleep the same SIGTERM ended: the whole group gets it.)
        assert lines[0] == "up" and lines[-1] == "graceful", lines
    finally:
        if pid:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGKILL)
        proc.kill()
        proc.wait(10)


def test_a_deletion_signal_pending_at_the_start_still_counts(tmp_path: Path) -> None:
    """The shim unblocks DISCARD_SIGNAL for the moment of the spawn (the instance inherits the mask at
    the fork); one already pending is then delivered and ignored by default, so the shim must have
    noted it first. In a process of its own: the spawn changes the caller's signal state meanwhile."""
    code = textwrap.dedent(
        f"""
        import os, signal, sys
        sys.path.insert(0, {SHIM_ROOT!r})
        from runed.runner import shim
        signal.pthread_sigmask(signal.SIG_BLOCK, {{shim.DISCARD_SIGNAL}})
        os.kill(os.getpid(), shim.DISCARD_SIGNAL)
        pid, out, err = shim.spawn({{"argv": ["sleep", "30"]}}, dict(os.environ))
        bit = 1 << (shim.DISCARD_SIGNAL - 1)
        def blocked(who):
            return bool(int(open(f"/proc/{{who}}/status").read().split("SigBlk:")[1].split()[0], 16) & bit)
        instance = blocked(pid)
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        print(shim._discarded(), instance, blocked("self"))
        """
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    # Noted by the shim, unblocked in the instance, blocked again in the shim.
    assert out.stdout.split() == ["True", "False", "True"]


def test_a_start_that_fails_says_what_is_missing(tmp_path: Path) -> None:
    """The reasons a program cannot start name what is missing: the program, or the working directory."""
    with pytest.raises(OSError, match=r"No such file or directory: '/nonexistent/prog'"):
        shim.spawn({"argv": ["/nonexistent/prog"]}, {"PATH": os.defpath})
    with pytest.raises(OSError, match=r"No such file or directory: 'no-such-prog-here'"):
        shim.spawn({"argv": ["no-such-prog-here"]}, {"PATH": str(tmp_path)})
    gone = tmp_path / "gone"
    with pytest.raises(OSError, match=f"No such file or directory: '{gone}'"):
        shim.spawn({"argv": ["true"], "cwd": str(gone)}, {"PATH": os.defpath})
    # Refused before any fork (a bad limit): nothing of the attempt stays open.
    before = sorted(os.listdir("/proc/self/fd"))
    with pytest.raises(ValueError):
        shim.spawn({"argv": ["true"], "nofile": "many"}, {"PATH": os.defpath})
    assert sorted(os.listdir("/proc/self/fd")) == before
    # Found on the instance's PATH, not on the caller's.
    prog = tmp_path / "hello"
    prog.write_text("#!/bin/sh\necho hi\n")
    prog.chmod(0o755)
    pid, out, err = shim.spawn({"argv": ["hello"]}, {"PATH": f"/nonexistent:{tmp_path}"})
    try:
        assert os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) == 0
        assert os.read(out, 100) == b"hi\n"
    finally:
        os.close(out)
        os.close(err)


def _status(pid: int) -> dict[str, str]:
    return dict(line.split(":\t", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines() if ":\t" in line)


def test_the_deletion_signal_stays_pending_in_the_shim_and_never_reaches_the_instance(
    sleeping_shim: tuple[int, int], tmp_path: Path
) -> None:
    """A stop that deletes the instance tells the shim with ``DISCARD_SIGNAL``: kept blocked, it wakes
    no shim (a delete of a thousand signals a thousand), the shim finds it pending at the end and
    writes no exit record (the directory goes next); the instance runs with it unblocked."""
    shim_pid, pid = sleeping_shim
    bit = 1 << (shim.DISCARD_SIGNAL - 1)
    assert int(_status(shim_pid)["SigBlk"], 16) & bit, "blocked in the shim"
    assert not int(_status(pid)["SigBlk"], 16) & bit, "not blocked in the instance"
    before = wakeups(shim_pid)
    os.kill(shim_pid, shim.DISCARD_SIGNAL)
    time.sleep(0.3)  # a window for a wake-up that must not happen
    assert wakeups(shim_pid) - before <= 1
    assert int(_status(shim_pid)["ShdPnd"], 16) & bit, "pending until the shim looks"
    shim_end = os.pidfd_open(shim_pid)
    try:
        os.killpg(pid, signal.SIGTERM)
        assert select.select([shim_end], [], [], 10)[0], "the shim ended"
    finally:
        os.close(shim_end)
    assert not (tmp_path / "exit.json").exists(), "a deleted instance's exit record is not written"


def test_the_zygote_has_what_an_instance_s_last_step_before_exec_imports() -> None:
    """Setting the instance's limits needs ``resource``: imported by the zygote once, not loaded from
    disk by each forked shim's child (≈0.4 ms of every start)."""
    code = f"import sys; sys.path.append({SHIM_ROOT!r}); import runed.runner.zygote; print('resource' in sys.modules)"
    out = subprocess.run([sys.executable, "-I", "-S", "-c", code], capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["True"]


# -- the native shim writes what the Python shim writes ---------------------------------------------
# Output no well-behaved program writes: bytes that are not UTF-8 (a stray continuation, a cut
# sequence, an encoded surrogate, an overlong form, a code point past U+10FFFF), control bytes, a NUL,
# quotes and backslashes, CR before LF and alone, text past every script, a line longer than one read,
# an empty line, and a last line without its newline.
TRICKY = (
    "import os\n"
    "w = lambda fd, b: os.write(fd, b)\n"
    "w(1, b'plain\\n')\n"
    "w(1, b'bad \\x80 \\xff \\xe2\\x82 \\xed\\xa0\\x80 \\xc0\\xaf \\xf4\\x90\\x80\\x80 \\xf0\\x9f\\x98 end\\n')\n"
    "w(2, b'ctl \\x00 \\x01 \\x1f \\x7f \\t tab \\x08 \\x0c\\n')\n"
    "w(1, b'q \"x\" \\\\ back\\r\\n')\n"
    "w(1, b'cr \\r mid\\r\\r\\n')\n"
    "w(2, 'unicode \\u00e9 \\u4e2d \\U0001f600 \\u2028'.encode() + b'\\n')\n"
    "w(1, b'\\n')\n"
    "w(1, b'x' * 70000 + b'y' * 10 + b'\\n')\n"
    "w(2, b'last without newline \\xe2')\n"
)


def _lines(d: Path) -> dict[str, list[object]]:
    """Each stream's (seq order, line) as written: the streams' order between each other is the kernel's."""
    out: dict[str, list[tuple[object, object]]] = {"stdout": [], "stderr": []}
    for r in _records(d):
        out[str(r["stream"])].append((r["seq"], r["line"]))
    return {k: [line for _, line in sorted(v, key=lambda x: int(str(x[0])))] for k, v in out.items()}


def _both(tmp_path: Path, argv: list[str], **spec: object) -> dict[str, tuple[dict[str, object], Path]]:
    """The exit record and directory of ``argv`` run under each shim."""
    path = native.shim_path()
    assert path is not None, "the native shim did not build (is a C compiler installed?)"
    runs = {}
    for kind, program in (("python", None), ("native", path)):
        d = tmp_path / kind
        d.mkdir()
        runs[kind] = (_run_shim(d, argv, program, **spec), d)
    return runs


def test_both_shims_write_the_same_records_for_the_same_output(tmp_path: Path) -> None:
    runs = _both(tmp_path, [sys.executable, "-c", TRICKY + "raise SystemExit(7)"])
    (py_exit, py_dir), (c_exit, c_dir) = runs["python"], runs["native"]
    assert py_exit["code"] == c_exit["code"] == 7 and py_exit["signal"] is c_exit["signal"] is None
    python, compiled = _lines(py_dir), _lines(c_dir)
    assert compiled == python
    long = "".join(str(line) for line in python["stdout"] if str(line)[:1] in "xy" and line)
    assert long == "x" * 70000 + "y" * 10, "the line longer than a read is all there"
    assert "\ufffd" in str(python["stdout"][1]) and "\x00" in str(python["stderr"][0])
    # Every record is one JSON object per line, with seq 1..n over both streams.
    records = _records(c_dir)
    assert sorted(int(str(r["seq"])) for r in records) == list(range(1, len(records) + 1))
    assert all(str(r["ts"]).endswith("Z") and len(str(r["ts"])) == 30 for r in records)


def test_both_shims_word_a_failed_start_alike(tmp_path: Path) -> None:
    for case, (argv, spec) in enumerate(
        [
            ([str(tmp_path / "no-such-program")], {}),
            (["no-such-program-here"], {}),
            (["true"], {"cwd": str(tmp_path / "gone")}),
            (["it's"], {}),
        ]
    ):
        (tmp_path / str(case)).mkdir()
        runs = _both(tmp_path / str(case), argv, **spec)
        (py_exit, py_dir), (c_exit, c_dir) = runs["python"], runs["native"]
        assert py_exit["code"] == c_exit["code"] == 127
        assert c_exit["error"] == py_exit["error"] and "No such file or directory" in str(py_exit["error"])
        assert _lines(c_dir) == _lines(py_dir)


def test_both_shims_rotate_alike_and_number_on_across_restarts(tmp_path: Path) -> None:
    prog = [sys.executable, "-c", "for i in range(150): print('line', i)"]
    spec = {"max_bytes": 2048, "backups": 2}
    runs = _both(tmp_path, prog, **spec)
    for _, d in runs.values():
        _run_shim(d, prog, None if d.name == "python" else native.shim_path(), **spec)
    (_, py_dir), (_, c_dir) = runs["python"], runs["native"]
    names = sorted(p.name for p in py_dir.glob("log.jsonl*"))
    assert names == sorted(p.name for p in c_dir.glob("log.jsonl*")) == ["log.jsonl", "log.jsonl.1", "log.jsonl.2"]
    py_records, c_records = _records(py_dir), _records(c_dir)
    assert [(r["seq"], r["line"]) for r in c_records] == [(r["seq"], r["line"]) for r in py_records]
    assert [r["seq"] for r in c_records][-1] == 300, "the second run numbered on from the first"


def test_both_shims_drop_lines_below_the_floor_and_count_them(tmp_path: Path) -> None:
    """With a free-space floor above what the disk has, every line is dropped; the end says how many."""
    floor = os.statvfs(tmp_path).f_bavail * os.statvfs(tmp_path).f_frsize + (1 << 40)
    runs = _both(tmp_path, [sys.executable, "-c", "for i in range(25): print(i)"], min_free_bytes=floor)
    (_, py_dir), (_, c_dir) = runs["python"], runs["native"]
    assert _lines(c_dir) == _lines(py_dir)
    assert _lines(c_dir)["stderr"] == [
        f"runed: 25 lines dropped: the disk holding this log had less than {floor} bytes free"
    ]


def test_the_native_shim_claims_its_attempt_once_and_keeps_its_variables_from_the_instance(tmp_path: Path) -> None:
    path = native.shim_path()
    assert path is not None
    prog = "import os; print(sorted(k for k in os.environ if k.startswith('RUNED') or k == 'X'))"
    (tmp_path / "launch.json").write_text(json.dumps({"attempt": "a1", "argv": [sys.executable, "-c", prog]}))
    env = {"X": "1", shim.ATTEMPT_ENV: "a1"}
    subprocess.run(shim_argv(tmp_path, path), check=True, timeout=30, env=env)
    claim = json.loads((tmp_path / shim.claim_name("a1")).read_text())
    assert claim["attempt"] == "a1" and claim["shim_pid"] > 0 and claim["shim_start"] > 0
    assert json.loads((tmp_path / "exit.json").read_text())["attempt"] == "a1"
    assert [r["line"] for r in _records(tmp_path)] == ["['X']"]
    # The same attempt again: claimed already, nothing runs.
    (tmp_path / "exit.json").unlink()
    subprocess.run(shim_argv(tmp_path, path), check=True, timeout=30, env=env)
    assert not (tmp_path / "exit.json").exists() and len(_records(tmp_path)) == 1
    # An attempt launch.json no longer names (a later start was asked for): nothing runs, no claim stays.
    subprocess.run(shim_argv(tmp_path, path), check=True, timeout=30, env={**env, shim.ATTEMPT_ENV: "a0"})
    assert not (tmp_path / shim.claim_name("a0")).exists() and not (tmp_path / "exit.json").exists()
