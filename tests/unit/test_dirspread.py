"""The instances' root marked as the top of a hierarchy (runed.core.dirspread), checked with e2fsprogs' lsattr."""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytest

from runed.core import dirspread
from tests.support import attributes, fs_type


def test_an_ext_directory_is_marked_and_keeps_its_other_attributes(tmp_path: Path) -> None:
    if not fs_type(tmp_path).startswith("ext"):
        pytest.skip(f"the test directory is on {fs_type(tmp_path)}, not ext2/3/4")
    d = tmp_path / "instances"
    d.mkdir()
    before = attributes(d)
    assert "T" not in before
    assert dirspread.spread_subdirectories(d)
    after = attributes(d)
    assert "T" in after
    assert after.replace("T", "-") == before, "no other attribute changed"
    # Again: nothing to do, still marked.
    assert dirspread.spread_subdirectories(d)
    assert attributes(d) == after


def test_a_file_system_without_the_attribute_refuses_quietly() -> None:
    shm = Path("/dev/shm")
    if not shm.is_dir() or fs_type(shm) != "tmpfs":
        pytest.skip("no tmpfs at /dev/shm")
    with tempfile.TemporaryDirectory(dir=shm) as tmp:
        assert dirspread.spread_subdirectories(Path(tmp)) is False
