"""Loading the configuration: flags > RUNE_* env > runefile.yaml > defaults, coerced to the schema's types."""

from __future__ import annotations

import dataclasses
import os
import types
import typing
from pathlib import Path
from typing import Any

import yaml

from runed.core.config.checks import derive, problems
from runed.core.config.schema import Config, ConfigError
from runed.core.suggest import did_you_mean, meant

# RUNE_* environment variables and the dotted keys they set.
ENV_KEYS: dict[str, str] = {
    "RUNE_SERVER_GRPC_ADDRESS": "server.grpc_address",
    "RUNE_SERVER_HTTP_ADDRESS": "server.http_address",
    "RUNE_DATA_DIR": "data_dir",
    "RUNE_STORE_URL": "store.url",
    "RUNE_STORE_SQLITE_BUSY_TIMEOUT_SECONDS": "store.sqlite_busy_timeout_seconds",
    "RUNE_STORE_SQLITE_SYNCHRONOUS": "store.sqlite_synchronous",
    "RUNE_LOG_LEVEL": "log.level",
    "RUNE_LOG_FORMAT": "log.format",
    "RUNE_AUTH_ALLOW_REMOTE_ADMIN": "auth.allow_remote_admin",
    "RUNE_AUTH_RATE_LIMIT_REQUESTS_PER_SECOND": "auth.rate_limit.requests_per_second",
    "RUNE_AUTH_RATE_LIMIT_BURST": "auth.rate_limit.burst",
    "RUNE_DOCKER_API_VERSION": "docker.api_version",
    "RUNE_DOCKER_FALLBACK_API_VERSION": "docker.fallback_api_version",
    "RUNE_DOCKER_NEGOTIATION_TIMEOUT": "docker.negotiation_timeout_seconds",
    "RUNE_LIMITS_MAX_SCALE": "limits.max_scale",
    "RUNE_CONTROLLER_LEASE_SECONDS": "controller.lease_seconds",
    "RUNE_CONTROLLER_SHIM": "controller.shim",
    "RUNE_CONTROLLER_SPAWN_TIMEOUT_SECONDS": "controller.spawn_timeout_seconds",
    "RUNE_CONTROLLER_FINISHED_OPERATIONS_SECONDS": "controller.finished_operations_seconds",
    "RUNE_NODE_PORT": "node.port",
}

# Other RUNE_* variables a runed's environment may carry without them being settings of runed: the
# secrets' key (read where it is used), the rune CLI's, what runed gives its instances, and values
# of a runeset, by name or by prefix.
OTHER_ENV = frozenset(
    {
        "RUNE_MASTER_KEY",
        "RUNE_SERVER",
        "RUNE_TOKEN",
        "RUNE_CLI_CONFIG",
        "RUNE_DEBUG",
        "RUNE_SERVICE_NAME",
        "RUNE_SERVICE_NAMESPACE",
        "RUNE_INSTANCE_ID",
        "RUNE_INSTANCE_NAME",
        "RUNE_MOUNTS_DIR",
    }
)
OTHER_ENV_PREFIXES = ("RUNE_VALUES_", "RUNE_PORT_", "RUNE_TEST_")
# Upstream's bindings runed does not read, with the reason.
UNREAD_ENV: dict[str, str] = {
    "RUNE_AUTH_API_KEYS": "runed has no static API keys; create tokens with `rune admin token create`",
}


def unread_env(env: typing.Mapping[str, str] | None = None) -> list[str]:
    """The RUNE_* variables of ``env`` that set nothing, each with what it may have meant: a typo in
    one is otherwise ignored without a word (warned of at start, not refused: a shell carries more)."""
    env = os.environ if env is None else env
    out = []
    for name in sorted(env):
        if not name.startswith("RUNE_") or name in ENV_KEYS or name in OTHER_ENV:
            continue
        if name.startswith(OTHER_ENV_PREFIXES):
            continue
        if name in UNREAD_ENV:
            out.append(f"{name} is not read: {UNREAD_ENV[name]}")
            continue
        near = meant(name, ENV_KEYS)
        hint = f" ({did_you_mean(near)})" if near else ""
        out.append(f"{name} is not a runed setting{hint}; it is ignored")
    return out


# Top-level keys of upstream's runefile that runed does not read: refused with the reason, not
# accepted and ignored.
UNREAD_KEYS: dict[str, str] = {
    "client": "client settings belong to the rune CLI's ~/.rune/config.yaml",
    "namespace": "requests name their namespace; an empty one means default",
    "plugins": "runed has no plugins",
    "resources": "there are no server-wide default resources; set them per service",
}


class _Problems(list[str]):
    """Problems found while reading the tree (every one, not the first)."""


def _convert(value: Any, tp: Any, key: str, found: _Problems) -> Any:
    """Coerce a YAML/env/flag value to the annotated type; a problem is noted (naming the key) and
    the value comes back as ``_BAD`` so the field keeps its default while reading goes on."""
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        if value is None:
            value = {}
        if not isinstance(value, dict):
            return _bad(found, key, f"expected a mapping, got {_kind(value)}")
        return _build(tp, value, key + ".", found)
    if origin is tuple:
        (item_tp, _) = typing.get_args(tp)
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        if value is None:
            value = []
        if not isinstance(value, list | tuple):
            return _bad(found, key, f"expected a list, got {_kind(value)}")
        items = [_convert(v, item_tp, f"{key}[{i}]", found) for i, v in enumerate(value)]
        return _BAD if any(i is _BAD for i in items) else tuple(items)
    if origin is dict:
        if not isinstance(value, dict):
            return _bad(found, key, f"expected a mapping, got {_kind(value)}")
        bad = [k for k, v in value.items() if isinstance(v, dict | list)]
        for k in bad:
            found.append(f"{key}.{k}: expected a string, got {_kind(value[k])}")
        return _BAD if bad else {str(k): "" if v is None else str(v) for k, v in value.items()}
    if origin in (types.UnionType, typing.Union):
        tp = next(a for a in typing.get_args(tp) if a is not type(None))
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("1", "true", "yes", "on", "0", "false", "no", "off"):
            return value.lower() in ("1", "true", "yes", "on")
        return _bad(found, key, f"expected true or false, got {value!r}")
    if tp is int:
        # Whole numbers only: 1.5 bytes or 2.7 sessions is a typo, not something to round.
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            try:
                return int(value.strip())
            except ValueError:
                pass
        return _bad(found, key, f"expected a whole number, got {value!r}")
    if tp is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value.strip())
            except ValueError:
                pass
        return _bad(found, key, f"expected a number, got {value!r}")
    if tp is str:
        if isinstance(value, dict | list):
            return _bad(found, key, f"expected a string, got {_kind(value)}")
        return "" if value is None else str(value)
    return value


class _Bad:
    """Marks a value that could not be read (its problem is noted); the field keeps its default."""


_BAD = _Bad()


def _bad(found: _Problems, key: str, message: str) -> _Bad:
    found.append(f"{key}: {message}")
    return _BAD


def _key_path(problem: str) -> str:
    """The key a problem line names (what the lines are sorted by, so a section's problems stay together)."""
    if problem.startswith("unknown key "):
        return problem.removeprefix("unknown key ").split(" ", 1)[0]
    return problem.split(": ", 1)[0]


def _kind(value: Any) -> str:
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    return type(value).__name__


def _build(cls: Any, data: dict[str, Any], prefix: str, found: _Problems) -> Any:
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    if cls is Config:
        names.discard("source")  # where the config came from: set by load, not a key
    for k in sorted(set(data) - names, key=str):
        why = UNREAD_KEYS.get(str(k)) if not prefix else None
        if why:
            found.append(f"{k}: not read by runed: {why}")
        else:
            near = meant(str(k), names)
            hint = f" ({did_you_mean(prefix + near)})" if near else f" (known here: {', '.join(sorted(names))})"
            found.append(f"unknown key {prefix}{k!s}{hint}")
    kwargs = {}
    for k, v in data.items():
        if k in names:
            converted = _convert(v, hints[k], prefix + k, found)
            if converted is not _BAD:
                kwargs[k] = converted
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
    # Every problem at once: those reading the tree, then those of the values that could be read.
    found = _Problems()
    cfg: Config = _build(Config, tree, "", found)
    found.extend(problems(cfg))
    if found:
        raise ConfigError.of(sorted(found, key=_key_path), str(path) if path else "")
    return dataclasses.replace(derive(cfg), source=str(path) if path else "")
