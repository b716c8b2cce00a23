"""Where a role process announces it is ready: the marker the supervisor and the REST role's /readyz read."""

from __future__ import annotations

from pathlib import Path

from runed.core.config import Config


def ready_file(config: Config, role: str) -> Path:
    """``<data_dir>/run/<role>.json``: written (atomically) once the role serves, removed when it stops."""
    return config.data_path / "run" / f"{role}.json"
