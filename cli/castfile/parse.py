"""Reading cast files: documents and top-level keys dispatched to each kind, problems of all files reported together."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from rune.cli.castfile import data
from rune.cli.castfile.checks import CastErrors, Problems
from rune.cli.castfile.lines import LineDict, load_documents
from rune.cli.castfile.service import UNTRANSPORTED, service
from rune.cli.errors import EXIT_INVALID, CliError

TOP_KEYS = ("service", "services", "secret", "secrets", "configmap", "configmaps")


@dataclass
class Cast:
    """Everything one or more cast files declare, in apply order."""

    configmaps: list[Any] = field(default_factory=list)
    secrets: list[Any] = field(default_factory=list)
    services: list[Any] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    # Each object as declared: (kind, namespace as written, name, "file:line").
    declared: list[tuple[str, str, str, str]] = field(default_factory=list)

    def extend(self, other: Cast) -> None:
        self.configmaps += other.configmaps
        self.secrets += other.secrets
        self.services += other.services
        self.warnings += other.warnings
        self.declared += other.declared

    def duplicates(self) -> list[str]:
        """A problem for each object declared again (same kind, namespace and name, in any of the
        files read together): applied in turn, the later would silently replace the earlier."""
        first: dict[tuple[str, str, str], str] = {}
        out: list[str] = []
        for kind, namespace, name, where in self.declared:
            at = first.setdefault((kind, namespace, name), where)
            if at is not where:
                out.append(f"{where}: {kind} '{name}' is declared again (first at {at})")
        return out


def parse_text(text: str, filename: str = "<input>", namespace: str | None = None) -> Cast:
    """Parse one cast document set; raises :class:`CastErrors` listing every problem."""
    c = Problems(filename)
    try:
        docs = load_documents(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        line = mark.line + 1 if mark is not None else 0
        problem = getattr(e, "problem", None) or str(e)
        raise CastErrors([f"{filename}:{line}: not valid YAML: {problem}"]) from e
    cast = Cast()
    for doc in docs:
        if doc is None:
            continue
        if not isinstance(doc, LineDict):
            c.err(getattr(doc, "line", 1), "a cast file must be a mapping with service(s), secret(s), configmap(s)")
            continue
        for key, value in doc.items():
            line = doc.key_lines.get(key, doc.line)
            if key not in TOP_KEYS:
                c.err(line, f"unknown top-level key '{key}' (expected one of {', '.join(TOP_KEYS)})")
                continue
            plural = key.endswith("s")
            specs = value if plural else [value]
            if plural and not isinstance(value, list):
                c.err(line, f"'{key}' must be a list")
                continue
            for spec in specs:
                kind = key.rstrip("s")
                if kind == "service":
                    obj = service(c, spec, namespace)
                    if obj is not None:
                        cast.services.append(obj)
                        cast.warnings += [
                            f"{filename}:{spec.key_lines[k]}: '{k}' is accepted but not applied by runed"
                            for k in UNTRANSPORTED
                            if k in spec
                        ]
                elif kind == "secret":
                    obj = data.secret(c, spec, namespace)
                    if obj is not None:
                        cast.secrets.append(obj)
                else:
                    obj = data.configmap(c, spec, namespace)
                    if obj is not None:
                        cast.configmaps.append(obj)
                if obj is not None:
                    cast.declared.append((kind, obj.namespace, obj.name, f"{filename}:{c.line(spec, 'name')}"))
    if c.problems:
        raise CastErrors(c.problems)
    return cast


def collect_files(paths: list[str], recursive: bool = False) -> list[Path]:
    """Expand directories into their ``*.yaml``/``*.yml`` files (sorted)."""
    out: list[Path] = []
    for raw in paths:
        p = Path(raw)
        if p.is_dir():
            pattern = "**/*" if recursive else "*"
            out += sorted(f for f in p.glob(pattern) if f.suffix in (".yaml", ".yml") and f.is_file())
        elif p.exists():
            out.append(p)
        else:
            raise CliError(f"{raw}: no such file or directory", EXIT_INVALID)
    return out


def parse_files(paths: list[Path], namespace: str | None = None) -> Cast:
    """Parse many files, reporting the problems of all of them together."""
    cast, problems = Cast(), []
    for p in paths:
        try:
            cast.extend(parse_text(p.read_text(), str(p), namespace))
        except CastErrors as e:
            problems += e.problems
    if problems:
        raise CastErrors(problems)
    return cast
