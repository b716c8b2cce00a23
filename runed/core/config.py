"""One typed, frozen configuration, loaded once: flags > RUNE_* env > runefile.yaml > defaults."""

from __future__ import annotations

import dataclasses
import os
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml


class ConfigError(Exception):
    """A configuration problem, always naming the key at fault."""


@dataclass(frozen=True)
class TLSConfig:
    enabled: bool = False
    cert_file: str = ""
    key_file: str = ""
    # CA that signs client certificates: when set, clients may authenticate with mTLS
    # (the certificate's subject CN names the user).
    client_ca_file: str = ""
    require_client_cert: bool = False


@dataclass(frozen=True)
class ServerConfig:
    grpc_address: str = ":7863"
    http_address: str = ":7861"
    tls: TLSConfig = field(default_factory=TLSConfig)
    # Seconds in-flight calls get to finish on SIGTERM before they are cancelled.
    shutdown_grace_seconds: float = 10.0
    # Largest REST request body accepted (bytes); larger ones get 413.
    max_body_bytes: int = 4 * 1024 * 1024
    # Seconds of silence on a REST event stream before a keep-alive comment is sent.
    sse_keepalive_seconds: float = 15.0


@dataclass(frozen=True)
class LogConfig:
    level: str = "info"
    format: str = "text"


@dataclass(frozen=True)
class RateLimitConfig:
    # Token bucket per credential: sustained requests per second and burst size. 0 disables.
    requests_per_second: float = 200.0
    burst: int = 400


@dataclass(frozen=True)
class OIDCConfig:
    enabled: bool = False
    issuer: str = ""
    audience: str = ""
    jwks_url: str = ""
    jwks_file: str = ""
    user_claim: str = "sub"
    policies_claim: str = ""
    default_policies: tuple[str, ...] = ()
    algorithms: tuple[str, ...] = ("RS256", "ES256")
    clock_skew_seconds: int = 60


@dataclass(frozen=True)
class AuthConfig:
    allow_remote_admin: bool = False
    rate_limit: RateLimitConfig = field(default_factory=RateLimitConfig)
    oidc: OIDCConfig = field(default_factory=OIDCConfig)


@dataclass(frozen=True)
class KEKConfig:
    source: str = "file"  # file | env
    file: str = ""  # default <data_dir>/kek.b64


@dataclass(frozen=True)
class EncryptionConfig:
    enabled: bool = True
    kek: KEKConfig = field(default_factory=KEKConfig)


@dataclass(frozen=True)
class LimitsConfig:
    max_object_bytes: int = 1024 * 1024
    max_key_name_length: int = 256


@dataclass(frozen=True)
class SecretConfig:
    encryption: EncryptionConfig = field(default_factory=EncryptionConfig)
    limits: LimitsConfig = field(default_factory=LimitsConfig)


@dataclass(frozen=True)
class ConfigmapConfig:
    limits: LimitsConfig = field(default_factory=LimitsConfig)


@dataclass(frozen=True)
class RegistryAuth:
    type: str = ""
    username: str = ""
    password: str = ""
    token: str = ""
    region: str = ""
    from_secret: str = ""
    bootstrap: bool = False
    manage: str = "create"
    immutable: bool = False
    data: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class RegistryEntry:
    name: str = ""
    registry: str = ""
    auth: RegistryAuth = field(default_factory=RegistryAuth)


@dataclass(frozen=True)
class DockerConfig:
    socket: str = "/var/run/docker.sock"
    api_version: str = ""
    fallback_api_version: str = "1.43"
    negotiation_timeout_seconds: float = 3.0
    registries: tuple[RegistryEntry, ...] = ()


@dataclass(frozen=True)
class ControllerConfig:
    # Safety-net resync period; changes themselves wake the reconciler at once.
    resync_seconds: float = 5.0
    restart_backoff_initial_seconds: float = 1.0
    restart_backoff_max_seconds: float = 60.0
    # A run at least this long ends a crash loop: the next restart delay starts from the initial one.
    restart_backoff_reset_seconds: float = 10.0
    stop_grace_seconds: float = 10.0
    log_max_bytes: int = 10 * 1024 * 1024
    log_backups: int = 3


@dataclass(frozen=True)
class HistoryConfig:
    # Spec revisions kept per service (older ones are pruned).
    revisions: int = 20
    # Change-log entries kept (watch resume older than that must re-list).
    changelog_entries: int = 100_000
    # Events a watcher may have pending before it is cut off with "too slow, re-list".
    watch_queue_events: int = 10_000


@dataclass(frozen=True)
class ExecConfig:
    max_sessions_per_instance: int = 8
    timeout_seconds: float = 3600.0


@dataclass(frozen=True)
class ClientConfig:
    timeout: str = "30s"
    retries: int = 3


@dataclass(frozen=True)
class Config:
    server: ServerConfig = field(default_factory=ServerConfig)
    data_dir: str = ""
    log: LogConfig = field(default_factory=LogConfig)
    auth: AuthConfig = field(default_factory=AuthConfig)
    secret: SecretConfig = field(default_factory=SecretConfig)
    config: ConfigmapConfig = field(default_factory=ConfigmapConfig)
    docker: DockerConfig = field(default_factory=DockerConfig)
    controller: ControllerConfig = field(default_factory=ControllerConfig)
    history: HistoryConfig = field(default_factory=HistoryConfig)
    exec: ExecConfig = field(default_factory=ExecConfig)
    client: ClientConfig = field(default_factory=ClientConfig)
    namespace: str = "default"
    # Where the config was loaded from ("" when only defaults/env/flags applied).
    source: str = ""

    @property
    def data_path(self) -> Path:
        return Path(self.data_dir)


LOG_LEVELS = ("debug", "info", "warning", "warn", "error")
LOG_FORMATS = ("text", "json")

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
}


def default_data_dir() -> str:
    """XDG data dir, as upstream: $XDG_DATA_HOME/rune, else ~/.local/share/rune."""
    xdg = os.environ.get("XDG_DATA_HOME")
    base = Path(xdg) if xdg else Path.home() / ".local" / "share"
    return str(base / "rune")


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


def validate(cfg: Config) -> Config:
    """Check values that types alone cannot, and fill derived defaults."""
    if cfg.log.level.lower() not in LOG_LEVELS:
        raise ConfigError(f"log.level: must be one of {', '.join(LOG_LEVELS)}, got {cfg.log.level!r}")
    if cfg.log.format not in LOG_FORMATS:
        raise ConfigError(f"log.format: must be text or json, got {cfg.log.format!r}")
    for key, addr in (
        ("server.grpc_address", cfg.server.grpc_address),
        ("server.http_address", cfg.server.http_address),
    ):
        try:
            parse_address(addr)
        except ValueError as e:
            raise ConfigError(f"{key}: {e}") from None
    if cfg.secret.encryption.kek.source not in ("file", "env"):
        raise ConfigError(
            f"secret.encryption.kek.source: must be file or env, got {cfg.secret.encryption.kek.source!r}"
        )
    if cfg.server.tls.enabled and not (cfg.server.tls.cert_file and cfg.server.tls.key_file):
        raise ConfigError("server.tls: cert_file and key_file are required when tls is enabled")
    if cfg.auth.rate_limit.requests_per_second < 0 or cfg.auth.rate_limit.burst < 0:
        raise ConfigError("auth.rate_limit: values must not be negative")
    oidc = cfg.auth.oidc
    if oidc.enabled:
        if not oidc.issuer:
            raise ConfigError("auth.oidc.issuer: required when oidc is enabled")
        if bool(oidc.jwks_url) == bool(oidc.jwks_file):
            raise ConfigError("auth.oidc: set exactly one of jwks_url and jwks_file")
        if oidc.jwks_url and not _is_safe_key_url(oidc.jwks_url):
            raise ConfigError("auth.oidc.jwks_url: must be https (plain http only to localhost)")
        bad = [a for a in oidc.algorithms if a not in ("RS256", "ES256")]
        if bad:
            raise ConfigError(f"auth.oidc.algorithms: only RS256 and ES256 are accepted, got {bad[0]!r}")
    ctl = cfg.controller
    for key, value in (
        ("resync_seconds", ctl.resync_seconds),
        ("restart_backoff_initial_seconds", ctl.restart_backoff_initial_seconds),
        ("restart_backoff_max_seconds", ctl.restart_backoff_max_seconds),
        ("log_max_bytes", ctl.log_max_bytes),
    ):
        if value <= 0:
            raise ConfigError(f"controller.{key}: must be positive, got {value!r}")
    if ctl.restart_backoff_max_seconds < ctl.restart_backoff_initial_seconds:
        raise ConfigError("controller.restart_backoff_max_seconds: must not be below restart_backoff_initial_seconds")
    if ctl.stop_grace_seconds < 0 or ctl.log_backups < 0 or ctl.restart_backoff_reset_seconds < 0:
        raise ConfigError(
            "controller: stop_grace_seconds, log_backups and restart_backoff_reset_seconds must not be negative"
        )
    data_dir = cfg.data_dir or default_data_dir()
    data_dir = str(Path(data_dir).expanduser().resolve())
    return dataclasses.replace(cfg, data_dir=data_dir)


def _is_safe_key_url(url: str) -> bool:
    """Signing keys fetched over plain http could be swapped in transit: https, or the local host."""
    from urllib.parse import urlparse

    u = urlparse(url)
    return u.scheme == "https" or (u.scheme == "http" and u.hostname in ("localhost", "127.0.0.1", "::1"))


def parse_address(addr: str) -> tuple[str, int]:
    """``:7863`` / ``host:port`` / ``[::1]:port`` -> (host, port); empty host means all interfaces."""
    if not addr or ":" not in addr:
        raise ValueError(f"expected host:port, got {addr!r}")
    host, _, port_s = addr.rpartition(":")
    host = host.strip("[]")
    try:
        port = int(port_s)
    except ValueError:
        raise ValueError(f"port must be a number in {addr!r}") from None
    if not 0 <= port <= 65535:
        raise ValueError(f"port out of range in {addr!r}")
    return host, port
