"""Runesets: a directory with ``runeset.yaml``, ``casts/`` and ``values/``, rendered with values.

Templates reference values as ``{{ .Values.a.b }}`` (or ``{{ values.a.b }}``); values merge in
this order, later wins: runeset ``defaults``, ``values/values.yaml``, each ``--values`` file,
``RUNE_VALUES_a__b=v`` environment variables, ``--set a.b=v``.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from rune.cli.errors import EXIT_INVALID, CliError

_REF = re.compile(r"\{\{\s*\.?[Vv]alues\.([A-Za-z0-9_.-]+)\s*(?:\|\s*default\s+(\"[^\"]*\"|'[^']*'|\S+)\s*)?\}\}")
_RELEASE = re.compile(r"\{\{\s*\.?[Rr]elease\.([Nn]ame|[Nn]amespace)\s*\}\}")
MANIFEST_KEYS = {"name", "version", "description", "namespace", "defaults"}


@dataclass
class Rendered:
    """One rendered cast file of a runeset."""

    path: Path
    text: str


def is_runeset(path: Path) -> bool:
    return path.is_dir() and (path / "runeset.yaml").is_file()


def _merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in extra.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def _set_path(values: dict[str, Any], dotted: str, value: Any) -> None:
    parts = dotted.split(".")
    cur = values
    for p in parts[:-1]:
        nxt = cur.get(p)
        if not isinstance(nxt, dict):
            nxt = cur[p] = {}
        cur = nxt
    cur[parts[-1]] = value


def _load_yaml(path: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise CliError(f"{path}: not valid YAML: {e}", EXIT_INVALID) from e
    if not isinstance(data, dict):
        raise CliError(f"{path}: expected a mapping", EXIT_INVALID)
    return data


def values_for(root: Path, values_files: list[str], sets: list[str]) -> tuple[dict[str, Any], dict[str, Any]]:
    """The manifest and the merged values of the runeset at ``root``."""
    manifest = _load_yaml(root / "runeset.yaml")
    unknown = set(manifest) - MANIFEST_KEYS
    if unknown:
        raise CliError(f"{root / 'runeset.yaml'}: unknown keys {', '.join(sorted(unknown))}", EXIT_INVALID)
    values: dict[str, Any] = dict(manifest.get("defaults") or {})
    default_values = root / "values" / "values.yaml"
    if default_values.is_file():
        values = _merge(values, _load_yaml(default_values))
    for f in values_files:
        values = _merge(values, _load_yaml(Path(f)))
    for key, val in os.environ.items():
        if key.startswith("RUNE_VALUES_"):
            _set_path(values, key.removeprefix("RUNE_VALUES_").replace("__", "."), yaml.safe_load(val))
    for item in sets:
        k, sep, v = item.partition("=")
        if not sep or not k:
            raise CliError(f"--set {item!r}: expected key=value", 2)
        _set_path(values, k, yaml.safe_load(v) if v else "")
    return manifest, values


def _lookup(values: dict[str, Any], dotted: str) -> Any:
    cur: Any = values
    for p in dotted.split("."):
        if not isinstance(cur, dict) or p not in cur:
            return None
        cur = cur[p]
    return cur


def render_text(text: str, values: dict[str, Any], where: str) -> str:
    """Substitute value references; a reference with no value and no default is an error."""
    missing: list[str] = []

    def sub(m: re.Match[str]) -> str:
        v = _lookup(values, m.group(1))
        if v is None:
            if m.group(2) is not None:
                return m.group(2).strip("\"'")
            missing.append(m.group(1))
            return ""
        if isinstance(v, dict | list):
            return yaml.safe_dump(v, default_flow_style=True).strip()
        return str(v).lower() if isinstance(v, bool) else str(v)

    out = _REF.sub(sub, text)
    if missing:
        raise CliError(f"{where}: no value for {', '.join(sorted(set(missing)))} (use --set or --values)", EXIT_INVALID)
    return out


def render_release(text: str, name: str, namespace: str) -> str:
    """``{{ .Release.Name }}`` and ``{{ .Release.Namespace }}``: the release being cast (``--release``)."""
    return _RELEASE.sub(lambda m: name if m.group(1).lower() == "name" else namespace, text)


def render(
    root: Path, values_files: list[str], sets: list[str], release: str = "", namespace: str = ""
) -> tuple[dict[str, Any], list[Rendered]]:
    """Render every cast of the runeset at ``root`` (as release ``release``, default the runeset's name)."""
    manifest, values = values_for(root, values_files, sets)
    name = release or str(manifest.get("name") or root.name)
    ns = namespace or str(manifest.get("namespace") or "default")
    casts = root / "casts"
    files = sorted(p for p in casts.rglob("*") if p.suffix in (".yaml", ".yml")) if casts.is_dir() else []
    if not files:
        raise CliError(f"{root}: runeset has no casts/*.yaml", EXIT_INVALID)
    return manifest, [Rendered(p, render_text(render_release(p.read_text(), name, ns), values, str(p))) for p in files]


def is_archive(path: Path) -> bool:
    return path.is_file() and path.name.endswith((".runeset.tgz", ".tgz", ".tar.gz"))


def extract(archive: Path) -> Path:
    """Unpack a runeset archive into a temporary directory (removed at exit) and return its root.

    The ``data`` extraction filter refuses absolute paths, ``..`` escapes, links out of the tree
    and device files, so an archive cannot write outside its directory.
    """
    import atexit
    import shutil
    import tarfile
    import tempfile

    dest = Path(tempfile.mkdtemp(prefix="runeset-"))
    atexit.register(shutil.rmtree, dest, True)
    try:
        with tarfile.open(archive, "r:gz") as tar:
            tar.extractall(dest, filter="data")
    except (tarfile.TarError, OSError) as e:
        raise CliError(f"{archive}: cannot unpack runeset: {e}", EXIT_INVALID) from e
    if is_runeset(dest):
        return dest
    subdirs = [d for d in dest.iterdir() if is_runeset(d)]
    if len(subdirs) != 1:
        raise CliError(f"{archive}: no runeset.yaml at the top of the archive", EXIT_INVALID)
    return subdirs[0]


def pack(root: Path, out: Path) -> str:
    """Write ``root`` as a gzipped tar with one top directory; returns the archive's sha256."""
    import hashlib
    import tarfile

    if not is_runeset(root):
        raise CliError(f"{root}: not a runeset (no runeset.yaml)", EXIT_INVALID)
    with tarfile.open(out, "w:gz") as tar:
        for p in sorted(root.rglob("*")):
            if p.is_file():
                tar.add(p, arcname=f"{root.name}/{p.relative_to(root)}")
    return hashlib.sha256(out.read_bytes()).hexdigest()
