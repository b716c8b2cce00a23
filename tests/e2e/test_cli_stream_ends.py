"""`rune exec` and `rune logs -f` end, with the right exit status, when the service they follow is deleted."""

from __future__ import annotations

import sys
from pathlib import Path

from tests.e2e.rune import Rune
from tests.support import alive, eventually

TICKER = "import time\\nwhile True:\\n    print('tick', flush=True); time.sleep(0.1)"


def test_exec_and_logs_follow_end_when_the_service_is_deleted(rune: Rune, tmp_path: Path) -> None:
    f = tmp_path / "ticker.yaml"
    f.write_text(
        f"""
services:
  - name: ticker
    runtime: process
    process:
      command: {sys.executable}
      args: ["-c", "{TICKER}"]
"""
    )
    cast = rune("cast", str(f), "--timeout", "60s", timeout=90)
    assert cast.returncode == 0, cast.stdout + cast.stderr
    logs_out, exec_out = tmp_path / "logs.txt", tmp_path / "exec.txt"
    logs = rune.popen("logs", "-f", "ticker", out=logs_out)
    exe = rune.popen("exec", "ticker", "--", "sh", "-c", "echo $$; exec sleep 5555", out=exec_out)

    def printed_pid() -> int:
        words = exec_out.read_text().split()
        assert words and words[0].isdigit(), words
        return int(words[0])

    pid = eventually(printed_pid, timeout=20, what="the exec's pid")
    eventually(lambda: "tick" in logs_out.read_text(), timeout=20, what="followed lines")
    gone = rune("delete", "ticker", timeout=90)
    assert gone.returncode == 0, gone.stdout + gone.stderr
    # The remote command was killed (137), and the CLI says why; the follow ends normally, saying why.
    # The instance ends at once on SIGTERM: it goes from running to deleted (a stop that takes longer
    # is recorded as Stopping first, and the exec ends on that: "is stopping").
    assert exe.wait(60) == 137
    said = exec_out.read_text().splitlines()[-1]
    assert said in ("rune exec: instance ticker-0 was deleted: the exec session ends",) or said.startswith(
        "rune exec: instance ticker-0 is stopping"
    ), said
    assert logs.wait(60) == 0
    assert logs_out.read_text().splitlines()[-1] == "[event] service ticker was deleted: end of the log stream"
    eventually(lambda: not alive(pid), timeout=10, what="`sleep 5555` gone with its session")
