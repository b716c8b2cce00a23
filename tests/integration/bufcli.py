"""``buf curl`` as an outside client: the buf CLI of the dev extra (PyPI's ``buf-bin``), run as a subprocess."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import httpx

from tests.harness import Runed


def buf_path() -> str:
    """The buf binary beside this interpreter (``pip install -e '.[dev]'`` puts it there), else on PATH."""
    beside = Path(sys.executable).parent / "buf"
    found = str(beside) if beside.exists() else shutil.which("buf")
    # Installable from PyPI (buf-bin, in the dev extra), so a missing buf is a broken setup, not a skip.
    assert found, "buf is not installed: run `pip install -e '.[dev]'` (the dev extra brings buf-bin)"
    return found


def buf(*args: str, stdin: bytes | None = None, timeout: float = 60) -> subprocess.CompletedProcess[bytes]:
    """Run ``buf`` with ``args``; its output is bytes (streams of JSON, or an error on stderr)."""
    return subprocess.run(
        [buf_path(), *args],
        input=stdin,
        capture_output=True,
        timeout=timeout,
        env={"PATH": "/usr/bin:/bin", "HOME": "/nonexistent", "BUF_CACHE_DIR": "/tmp/buf-cache-tests"},
    )


def fetch_schema(runed: Runed, where: Path) -> Path:
    """runed's FileDescriptorSet (``/descriptor.binpb``) as a file for ``buf curl --schema``."""
    r = httpx.get(runed.http_base + "/descriptor.binpb", timeout=10)
    assert r.status_code == 200, r.text
    out = where / "rune.binpb"
    out.write_bytes(r.content)
    return out
