"""The CLI's contexts file: ``~/.rune/config.yaml`` (0600 in a 0700 directory).

Layout: ``{current-context: NAME, contexts: {NAME: {server, token, defaultNamespace, tls...}}}``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rune.cli.errors import EXIT_INVALID, CliError

DEFAULT_PORT = 7863
DEFAULT_SERVER = f"localhost:{DEFAULT_PORT}"
CONTEXT_KEYS = ("server", "token", "defaultNamespace", "tls", "caFile", "certFile", "keyFile", "serverName")


def default_path() -> Path:
    """``RUNE_CLI_CONFIG`` or ``~/.rune/config.yaml``."""
    env = os.environ.get("RUNE_CLI_CONFIG")
    if env:
        return Path(env).expanduser()
    return Path.home() / ".rune" / "config.yaml"


def normalise_server(server: str) -> str:
    """``http://host`` / ``grpc://host:1`` / ``host`` -> ``host:port`` (default port 7863)."""
    s = server.strip()
    for scheme in ("grpcs://", "grpc://", "https://", "http://", "dns:///"):
        if s.startswith(scheme):
            s = s[len(scheme) :]
    s = s.rstrip("/")
    if not s:
        return DEFAULT_SERVER
    if s.endswith(":") and not s.endswith("::"):
        # ``host:`` (an empty port, e.g. a variable that was not set): the default port, never a bare colon.
        s = s[:-1]
    if s.startswith("["):  # [v6]:port
        return s if "]:" in s else f"{s}:{DEFAULT_PORT}"
    if s.startswith(":"):
        return f"localhost{s}"
    if ":" not in s:
        return f"{s}:{DEFAULT_PORT}"
    return s


@dataclass
class CliConfig:
    """The parsed contexts file."""

    path: Path
    current: str = ""
    contexts: dict[str, dict[str, Any]] = field(default_factory=dict)

    @classmethod
    def load(cls, path: Path | None = None) -> CliConfig:
        p = path or default_path()
        if not p.exists():
            return cls(path=p)
        import yaml

        try:
            raw = yaml.safe_load(p.read_text()) or {}
        except yaml.YAMLError as e:
            raise CliError(f"{p}: not valid YAML: {e}", EXIT_INVALID) from e
        if not isinstance(raw, dict):
            raise CliError(f"{p}: expected a mapping at the top level", EXIT_INVALID)
        contexts = raw.get("contexts") or {}
        if not isinstance(contexts, dict):
            raise CliError(f"{p}: 'contexts' must be a mapping", EXIT_INVALID)
        return cls(path=p, current=str(raw.get("current-context") or ""), contexts=dict(contexts))

    def save(self) -> None:
        import yaml

        self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chmod(self.path.parent, 0o700)
        data = {"current-context": self.current, "contexts": self.contexts}
        # Create with 0600 from the start so the token is never briefly world-readable.
        tmp = self.path.with_name(self.path.name + ".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            yaml.safe_dump(data, f, sort_keys=False)
        os.chmod(tmp, 0o600)
        os.replace(tmp, self.path)

    def context(self, name: str | None = None) -> dict[str, Any]:
        """The named (or current) context; empty if there is none."""
        ctx_name = name or self.current
        if name and name not in self.contexts:
            raise CliError(f'context "{name}" not found in {self.path}', 3)
        return dict(self.contexts.get(ctx_name) or {})
