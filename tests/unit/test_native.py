"""Building the native shim: with the machine's compiler, into a place named by the source's hash."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from runed.runner import native


def test_a_build_puts_a_complete_binary_under_its_name(tmp_path: Path) -> None:
    cc = native._compiler()
    assert cc is not None, "no C compiler on this machine"
    first, second = tmp_path / f"{native.PREFIX}aaaa", tmp_path / f"{native.PREFIX}bbbb"
    assert native._build(cc, b"int main(void) { return 3; }\n", first) is None
    assert subprocess.run([first], check=False).returncode == 3
    assert native._build(cc, b"int main(void) { return 4; }\n", second) is None
    assert subprocess.run([second], check=False).returncode == 4
    # The earlier source's binary goes (a controller still starting shims from it finds the new one:
    # test_forkserver), and no temporary file is left.
    assert sorted(p.name for p in tmp_path.iterdir()) == [second.name]


def test_a_failed_build_says_why_and_leaves_nothing(tmp_path: Path) -> None:
    cc = native._compiler()
    assert cc is not None
    why = native._build(cc, b"this is not C\n", tmp_path / f"{native.PREFIX}cccc")
    assert why is not None and "error" in why
    assert list(tmp_path.iterdir()) == []


def test_without_a_compiler_there_is_none_to_build_with(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.delenv("CC", raising=False)
    assert native._compiler() is None
    monkeypatch.setenv("CC", "/bin/true")
    assert native._compiler() == "/bin/true"


def test_the_shim_in_use_is_built_from_the_shipped_source() -> None:
    path = native.shim_path()
    assert path is not None and os.access(path, os.X_OK)
    assert Path(path).name.startswith(native.PREFIX)
    assert native.chosen("python") is None and native.chosen("auto") == path


def test_a_binary_that_does_not_run_here_is_not_taken(tmp_path: Path) -> None:
    """A file system mounted noexec, or a binary of another machine, is found out before any start."""
    path = native.shim_path()
    assert path is not None and native.runs(Path(path))
    other = tmp_path / f"{native.PREFIX}other"
    other.write_bytes(b"\x7fELF not really")
    other.chmod(0o755)
    assert not native.runs(other)
    assert not native.runs(tmp_path / "missing")
