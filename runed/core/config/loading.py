"""Loading the configuration: flags > RUNE_* env > runefile.yaml > defaults, coerced to the schema's types."""

from __future__ import annotations

import dataclasses
import os
import types
import typing
from pathlib import Path
from typing import Any

import yaml

from runed.core.config.checks import validate
from runed.core.config.schema import Config, ConfigError

# RUNE_* environment variables and the dotted keys they set.
ENV_KEYS: dict[str, str] = {
    "RUNE_SERVER_GRPC_ADDRESS": "server.grpc_address",
    "RUNE_SERVER_HTTP_ADDRESS": "server.http_address",
    "RUNE_DATA_DIR": "data_dir",
    "RUNE_LOG_LEVEL": "log.level",
    "RUNE_LOG_FORMAT": "log.format",
    "RUNE_AUTH_ALLOW_REMOTE_ADMIN": "auth.allow_remote_admin",
    "RUNE_AUTH_RATE_LIMIT_REQUESTS_PER_SECOND": "auth.rate_limit.requests_per_second",
    "RUNE_AUTH_RATE_LIMIT_BURST": "auth.rate_limit.burst",
    "RUNE_DOCKER_API_VERSION": "docker.api_version",
    "RUNE_DOCKER_FALLBACK_API_VERSION": "docker.fallback_api_version",
    "RUNE_DOCKER_NEGOTIATION_TIMEOUT": "docker.negotiation_timeout_seconds",
    "RUNE_LIMITS_MAX_SCALE": "limits.max_scale",
}


def _convert(value: Any, tp: Any, key: str) -> Any:
    """Coerce a YAML/env/flag value to the annotated type, or fail naming the key."""
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        if value is None:
            value = {}
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {type(value).__name__}")
        return _build(tp, value, key + ".")
    if origin is tuple:
        (item_tp, _) = typing.get_args(tp)
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{key}: expected a list, got {type(value).__name__}")
        return tuple(_convert(v, item_tp, f"{key}[{i}]") for i, v in enumerate(value))
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {type(value).__name__}")
        return {str(k): str(v) for k, v in value.items()}
    if origin in (types.UnionType, typing.Union):
        tp = next(a for a in typing.get_args(tp) if a is not type(None))
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("1", "true", "yes", "on", "0", "false", "no", "off"):
            return value.lower() in ("1", "true", "yes", "on")
        raise ConfigError(f"{key}: expected true or false, got {value!r}")
    if tp in (int, float):
        if isinstance(value, bool):
            raise ConfigError(f"{key}: expected a number, got {value!r}")
        try:
            return tp(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{key}: expected a number, got {value!r}") from None
    if tp is str:
        if isinstance(value, dict | list):
            raise ConfigError(f"{key}: expected a string, got {type(value).__name__}")
        return "" if value is None else str(value)
    return value


def _build(cls: Any, data: dict[str, Any], prefix: str = "") -> Any:
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names - {"source"})
    if unknown:
        raise ConfigError(f"unknown key {prefix}{unknown[0]!s}")
    kwargs = {k: _convert(v, hints[k], prefix + k) for k, v in data.items() if k in names}
    return cls(**kwargs)


def _set_dotted(tree: dict[str, Any], dotted: str, value: Any) -> None:
    parts = dotted.split(".")
    node = tree
    for p in parts[:-1]:
        child = node.get(p)
        if not isinstance(child, dict):
            child = {}
            node[p] = child
        node = child
    node[parts[-1]] = value


def _find_config_file(explicit: str | None, data_dir: str | None) -> Path | None:
    if explicit:
        p = Path(explicit)
        if not p.is_file():
            raise ConfigError(f"--config: file {explicit} does not exist")
        return p
    local = Path("runefile.yaml")
    if local.is_file():
        return local
    if data_dir:
        candidate = Path(data_dir) / "runefile.yaml"
        if candidate.is_file():
            return candidate
    return None


def read_file(path: Path) -> dict[str, Any]:
    """Parse a runefile; YAML errors are reported with their line."""
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        raise ConfigError(f"{path}: invalid YAML{where}") from None
    except OSError as e:
        raise ConfigError(f"{path}: cannot read: {e.strerror}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level")
    return raw


def load(
    flags: dict[str, Any] | None = None,
    env: typing.Mapping[str, str] | None = None,
    config_file: str | None = None,
) -> Config:
    """Load the configuration once. ``flags`` holds dotted keys set on the command line."""
    flags = {k: v for k, v in (flags or {}).items() if v is not None}
    env = os.environ if env is None else env
    env_values = {dotted: env[name] for name, dotted in ENV_KEYS.items() if env.get(name)}
    data_dir_hint = flags.get("data_dir") or env_values.get("data_dir")
    path = _find_config_file(config_file, data_dir_hint)
    tree: dict[str, Any] = read_file(path) if path else {}
    for dotted, value in env_values.items():
        _set_dotted(tree, dotted, value)
    for dotted, value in flags.items():
        _set_dotted(tree, dotted, value)
    try:
        cfg: Config = _build(Config, tree)
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}" if path else str(e)) from None
    cfg = validate(cfg)
    return dataclasses.replace(cfg, source=str(path) if path else "")
