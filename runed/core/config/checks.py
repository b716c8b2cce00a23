"""Checks on a loaded configuration that types alone cannot express, and the parsers they share."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

from runed.core.config.schema import Config, ConfigError

LOG_LEVELS = ("debug", "info", "warning", "warn", "error")
LOG_FORMATS = ("text", "json")
# Scales travel as int32 on the wire.
INT32_MAX = 2**31 - 1


def default_data_dir() -> str:
    """XDG data dir, as upstream: $XDG_DATA_HOME/rune, else ~/.local/share/rune."""
    xdg = os.environ.get("XDG_DATA_HOME")
    base = Path(xdg) if xdg else Path.home() / ".local" / "share"
    return str(base / "rune")


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
    if ctl.log_min_free_bytes < 0:
        raise ConfigError(f"controller.log_min_free_bytes: must not be negative, got {ctl.log_min_free_bytes!r}")
    for path in ctl.host_mount_paths:
        if not path.startswith("/"):
            raise ConfigError(f"controller.host_mount_paths: must be absolute paths, got {path!r}")
    if not 1 <= cfg.limits.max_scale <= INT32_MAX:
        raise ConfigError(f"limits.max_scale: must be between 1 and {INT32_MAX}, got {cfg.limits.max_scale!r}")
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
