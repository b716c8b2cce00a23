"""The native shim (``shim.c``): built once per source with the machine's C compiler, then found by hash.

Why a compiled shim beside the Python one: the shim is the per-instance cost of supervision. The
Python shim, forked from the zygote, costs ≈0.9 MB PSS and ≈0.3 ms of CPU to end; the native shim
does the same work (the same files, record for record) at ≈0.11 MB PSS, and 1,000 processes under
native shims end ≈2.2 times as slowly as the same processes killed bare, ≈5 times under Python shims
(bench/README.md, "Native shim").

The binary is built from the source shipped in the package, into the package's directory when it
is writable (an editable install, a venv) or the user's cache directory, under a name holding the
source's hash: a changed source builds anew (and the binaries of earlier ones go), an unchanged one
is found with one ``stat``. It is built into a temporary name and renamed, so concurrent builds
(several controllers starting at once) all end with the same complete file. Without a C compiler
(``cc``, ``gcc`` or ``clang``, or ``$CC``), or when the build fails, runed runs the Python shim and
says so once in its log.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import logging
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

log = logging.getLogger("runed.runner")

SOURCE = Path(__file__).with_name("shim.c")
FLAGS = ("-O2", "-std=c11", "-Wall", "-Wextra")
PREFIX = "rune-shim-"


def _compiler() -> str | None:
    for name in (os.environ.get("CC"), "cc", "gcc", "clang"):
        if name and (found := shutil.which(name)):
            return found
    return None


def _places() -> list[Path]:
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "runed"
    return [SOURCE.parent / "_native", cache]


def _build(cc: str, src: bytes, target: Path) -> str | None:
    """Compile ``src`` to ``target``; None, or why it failed."""
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".build-", dir=target.parent)
    os.close(fd)
    try:
        done = subprocess.run(
            [cc, *FLAGS, "-o", tmp, "-x", "c", "-"],
            input=src,
            capture_output=True,
            timeout=120,
            check=False,
        )
        if done.returncode != 0:
            return done.stderr.decode(errors="replace").strip()[-2000:] or f"{cc} exited {done.returncode}"
        os.chmod(tmp, 0o755)
        os.replace(tmp, target)
        # Binaries of earlier sources go: running shims keep theirs open, and a controller started
        # before that still starts shims from one finds it gone and takes this one (``ProcessRunner``).
        for old in target.parent.glob(f"{PREFIX}*"):
            if old.name != target.name:
                with contextlib.suppress(OSError):
                    old.unlink()
        return None
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def runs(path: Path) -> bool:
    """Whether ``path`` runs here as the shim (a file system mounted noexec, or a binary of another
    machine copied along with a virtual environment, would not): without arguments it says its usage."""
    try:
        done = subprocess.run([path], capture_output=True, timeout=10, check=False)
    except (OSError, subprocess.SubprocessError):
        return False
    return done.returncode == 2 and done.stderr.startswith(b"usage: rune-shim")


@functools.cache
def shim_path() -> str | None:
    """The native shim's path (built now if needed), or None: the Python shim runs instead."""
    try:
        src = SOURCE.read_bytes()
    except OSError as e:
        log.warning("native shim source missing (%s): instances run under the Python shim", e)
        return None
    digest = hashlib.sha256(src + " ".join(FLAGS).encode()).hexdigest()[:16]
    name = f"{PREFIX}{digest}"
    for place in _places():
        if os.access(place / name, os.X_OK) and runs(place / name):
            return str(place / name)
    cc = _compiler()
    if cc is None:
        log.warning("no C compiler (cc, gcc, clang or $CC): instances run under the Python shim")
        return None
    why = "no writable place"
    for place in _places():
        try:
            failed = _build(cc, src, place / name)
        except (OSError, subprocess.SubprocessError) as e:
            why = str(e)
            continue
        if failed is None and runs(place / name):
            return str(place / name)
        if failed is None:
            why = f"{place / name} does not run here"
            continue
        why = failed
        break  # the compiler said no: another place will not change its mind
    log.warning("native shim not built (%s): instances run under the Python shim", why)
    return None


def chosen(choice: str) -> str | None:
    """The native shim for ``choice`` (``controller.shim``), or None for the Python shim."""
    if choice == "python":
        return None
    return shim_path()
