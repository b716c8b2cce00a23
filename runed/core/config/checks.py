"""Checks on a loaded configuration that types alone cannot express, and the parsers they share.

:func:`problems` looks at every value and returns every problem at once, each as
``"<key path>: <what is wrong>"`` (the Kubernetes habit: a field error list, not the first one
found); :func:`validate` raises them as one :class:`ConfigError` and fills derived defaults.
Settings that nothing reads in the configuration they appear in (TLS files with TLS off, CORS
settings with no allowed origin, OIDC settings with OIDC off) are refused too: a value that is
silently ignored is a mistake waiting to be found in production.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
import re
from pathlib import Path

from cryptography import x509

from runed.core import pem
from runed.core.config.schema import Config, ConfigError, CORSConfig, OIDCConfig, TLSConfig
from runed.core.quantity import QuantityError, parse_cpu, parse_memory

LOG_LEVELS = ("debug", "info", "warning", "warn", "error")
LOG_FORMATS = ("text", "json")
# Scales travel as int32 on the wire.
INT32_MAX = 2**31 - 1
# What the registry admin API accepts (runed/api/registries/checks.py says the same).
REGISTRY_AUTH_TYPES = ("", "basic", "token", "ecr", "dockerconfigjson")
# controller.shim: a native keeper per service ("service") or one for all instances ("shared",
# runed/runner/keeper.py); a shim per instance: the native one when it can be built, else the Python
# one ("auto"), or always Python.
SHIMS = ("service", "shared", "auto", "python")
# store.sqlite_synchronous: SQLite's own names for its synchronous settings, lower-cased.
SQLITE_SYNCHRONOUS = ("normal", "full")
REGISTRY_MANAGE_MODES = ("", "create", "update", "ignore")
HTTP_METHODS = ("GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS")
# RFC 9110 token: what a header name may be made of.
_TOKEN = re.compile(r"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$")
_HOSTNAME = re.compile(
    r"^(?=.{1,253}$)([A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*$"
)
_API_VERSION = re.compile(r"^\d+\.\d+$")


def default_data_dir() -> str:
    """XDG data dir, as upstream: $XDG_DATA_HOME/rune, else ~/.local/share/rune."""
    xdg = os.environ.get("XDG_DATA_HOME")
    base = Path(xdg) if xdg else Path.home() / ".local" / "share"
    return str(base / "rune")


def validate(cfg: Config) -> Config:
    """Check every value (raising one ConfigError that lists every problem), then fill derived defaults."""
    found = problems(cfg)
    if found:
        raise ConfigError.of(found)
    return derive(cfg)


def derive(cfg: Config) -> Config:
    """Fill the defaults that depend on other values or the environment (the data dir)."""
    data_dir = cfg.data_dir or default_data_dir()
    data_dir = str(Path(data_dir).expanduser().resolve())
    store = cfg.store
    if not store.url:
        store = dataclasses.replace(store, url=f"sqlite://{Path(data_dir) / 'runed.db'}")
    return dataclasses.replace(cfg, data_dir=data_dir, store=store)


class _Found:
    """The problems found so far, and the small rules most keys share."""

    def __init__(self) -> None:
        self.lines: list[str] = []

    def add(self, key: str, message: str) -> None:
        self.lines.append(f"{key}: {message}")

    def positive(self, key: str, value: float) -> None:
        if value <= 0:
            self.add(key, f"must be positive, got {value!r}")

    def not_negative(self, key: str, value: float) -> None:
        if value < 0:
            self.add(key, f"must not be negative, got {value!r}")

    def between(self, key: str, value: float, low: float, high: float) -> None:
        if not low <= value <= high:
            self.add(key, f"must be between {low:g} and {high:g}, got {value!r}")

    def one_of(self, key: str, value: str, allowed: tuple[str, ...]) -> None:
        if value not in allowed:
            self.add(key, f"must be one of {', '.join(a for a in allowed if a)}, got {value!r}")

    def file(self, key: str, path: str) -> None:
        """A file that must exist and be readable now (TLS material, a JWKS file)."""
        p = Path(path).expanduser()
        if not p.exists():
            self.add(key, f"file {path} does not exist")
        elif not p.is_file():
            self.add(key, f"{path} is not a regular file")
        elif not os.access(p, os.R_OK):
            self.add(key, f"file {path} is not readable")

    def unread(self, key: str, why: str) -> None:
        self.add(key, f"is set but nothing reads it ({why})")

    def tls_pair(self, prefix: str, cert_file: str, key_file: str) -> None:
        """``prefix``.cert_file and .key_file, once both exist: a PEM certificate and its own
        unencrypted PEM key (else the listener fails later, with a message naming neither)."""
        if self._broken(cert_file) or self._broken(key_file):
            return
        try:
            cert = pem.certificate(Path(cert_file).expanduser().read_bytes())
        except ValueError:
            cert = None
            self.add(f"{prefix}.cert_file", f"{cert_file} is not a PEM certificate")
        try:
            key = pem.private_key(Path(key_file).expanduser().read_bytes())
        except ValueError:
            self.add(f"{prefix}.key_file", f"{key_file} is not an unencrypted PEM private key")
            return
        if cert is not None and not pem.belongs(key, cert):
            self.add(f"{prefix}.key_file", f"{key_file} is not the key of {prefix}.cert_file")

    def ca(self, key: str, path: str) -> None:
        """A CA file, once it exists: one or more PEM certificates."""
        if self._broken(path):
            return
        try:
            x509.load_pem_x509_certificates(Path(path).expanduser().read_bytes())
        except ValueError:
            self.add(key, f"{path} holds no PEM certificate")

    @staticmethod
    def _broken(path: str) -> bool:
        """Not a readable file (said already by :meth:`file`), or not given."""
        p = Path(path).expanduser() if path else None
        return p is None or not p.is_file() or not os.access(p, os.R_OK)


def problems(cfg: Config) -> list[str]:
    """Every problem with ``cfg``'s values, as ``"<key path>: <what is wrong>"`` lines (empty: fine)."""
    f = _Found()
    _log(f, cfg)
    _server(f, cfg)
    _auth(f, cfg)
    _secret(f, cfg)
    _docker(f, cfg)
    _controller(f, cfg)
    h = cfg.history
    _store(f, cfg)
    f.positive("history.revisions", h.revisions)
    f.positive("history.changelog_entries", h.changelog_entries)
    f.positive("history.audit_entries", h.audit_entries)
    f.positive("history.watch_queue_events", h.watch_queue_events)
    f.positive("exec.max_sessions_per_instance", cfg.exec.max_sessions_per_instance)
    f.positive("exec.timeout_seconds", cfg.exec.timeout_seconds)
    f.between("limits.max_scale", cfg.limits.max_scale, 1, INT32_MAX)
    _node(f, cfg)
    if cfg.data_dir:
        d = Path(cfg.data_dir).expanduser()
        if d.exists() and not d.is_dir():
            f.add("data_dir", f"{cfg.data_dir} exists and is not a directory")
    return f.lines


def _node(f: _Found, cfg: Config) -> None:
    n = cfg.node
    for name in ("heartbeat_seconds", "not_ready_seconds", "lost_after_seconds"):
        f.positive(f"node.{name}", getattr(n, name))
    if n.not_ready_seconds <= n.heartbeat_seconds:
        f.add("node.not_ready_seconds", "must be above node.heartbeat_seconds")
    if n.id and not _HOSTNAME.match(n.id):
        f.add("node.id", f"must be a hostname-like name, got {n.id!r}")
    if not 0 <= n.port <= 65535:
        f.add("node.port", f"must be between 0 and 65535 (0: any free port), got {n.port}")
    try:
        if parse_cpu(n.reserve_cpu) < 0 or parse_memory(n.reserve_memory) < 0:
            raise QuantityError("negative")
    except QuantityError as e:
        f.add("node.reserve_cpu" if "cpu" in str(e) else "node.reserve_memory", str(e))
    _node_tls(f, cfg)


def _node_tls(f: _Found, cfg: Config) -> None:
    tls = cfg.node.tls
    if not tls.enabled:
        for name in ("cert_file", "key_file", "ca_file"):
            if getattr(tls, name):
                f.unread(f"node.tls.{name}", "node.tls.enabled is false")
        return
    # Every host reaches nodes (the CA); a host that is a node also serves (its certificate).
    needed = ("cert_file", "key_file", "ca_file") if cfg.node.enabled else ("ca_file",)
    for name in ("cert_file", "key_file", "ca_file"):
        value = getattr(tls, name)
        if not value:
            if name in needed:
                f.add(f"node.tls.{name}", "required when node.tls.enabled is true")
        else:
            f.file(f"node.tls.{name}", value)
    f.tls_pair("node.tls", tls.cert_file, tls.key_file)
    f.ca("node.tls.ca_file", tls.ca_file)


def _store(f: _Found, cfg: Config) -> None:
    f.between("store.sqlite_busy_timeout_seconds", cfg.store.sqlite_busy_timeout_seconds, 0.1, 600)
    f.one_of("store.sqlite_synchronous", cfg.store.sqlite_synchronous, SQLITE_SYNCHRONOUS)
    url = cfg.store.url
    if not url:
        return
    if url.startswith("sqlite://"):
        if not url.startswith("sqlite:///") or url == "sqlite:///":
            f.add("store.url", f"a SQLite URL names an absolute file (sqlite:///path/runed.db), got {url!r}")
    elif not url.startswith(("postgresql://", "postgres://")):
        f.add("store.url", f"must be sqlite:///path or postgresql://user@host:port/database, got {url!r}")


def _log(f: _Found, cfg: Config) -> None:
    if cfg.log.level.lower() not in LOG_LEVELS:
        f.add("log.level", f"must be one of {', '.join(LOG_LEVELS)}, got {cfg.log.level!r}")
    if cfg.log.format not in LOG_FORMATS:
        f.add("log.format", f"must be text or json, got {cfg.log.format!r}")


def _server(f: _Found, cfg: Config) -> None:
    s = cfg.server
    for key, addr in (("server.grpc_address", s.grpc_address), ("server.http_address", s.http_address)):
        try:
            host, _ = parse_address(addr)
        except ValueError as e:
            f.add(key, str(e))
            continue
        if host and not _is_host(host):
            f.add(key, f"{host!r} is neither an IP address nor a host name")
    f.not_negative("server.shutdown_grace_seconds", s.shutdown_grace_seconds)
    f.positive("server.max_body_bytes", s.max_body_bytes)
    f.positive("server.header_timeout_seconds", s.header_timeout_seconds)
    f.positive("server.body_timeout_seconds", s.body_timeout_seconds)
    f.positive("server.max_header_bytes", s.max_header_bytes)
    f.positive("server.sse_keepalive_seconds", s.sse_keepalive_seconds)
    _tls(f, s.tls)
    _cors(f, s.cors)


def _tls(f: _Found, tls: TLSConfig) -> None:
    if not tls.enabled:
        for name in ("cert_file", "key_file", "client_ca_file", "require_client_cert"):
            if getattr(tls, name) != getattr(TLSConfig, name):
                f.unread(f"server.tls.{name}", "server.tls.enabled is false")
        return
    for name in ("cert_file", "key_file"):
        value = getattr(tls, name)
        if not value:
            f.add(f"server.tls.{name}", "required when server.tls.enabled is true")
        else:
            f.file(f"server.tls.{name}", value)
    f.tls_pair("server.tls", tls.cert_file, tls.key_file)
    if tls.client_ca_file:
        f.file("server.tls.client_ca_file", tls.client_ca_file)
        f.ca("server.tls.client_ca_file", tls.client_ca_file)
    elif tls.require_client_cert:
        f.add(
            "server.tls.require_client_cert", "needs server.tls.client_ca_file (the CA that signs client certificates)"
        )


def _cors(f: _Found, cors: CORSConfig) -> None:
    if not cors.allowed_origins:
        for fld in dataclasses.fields(CORSConfig):
            if fld.name != "allowed_origins" and getattr(cors, fld.name) != fld.default:
                f.unread(f"server.cors.{fld.name}", "server.cors.allowed_origins is empty: CORS is off")
        return
    for i, origin in enumerate(cors.allowed_origins):
        problem = origin_problem(origin)
        if problem:
            f.add(f"server.cors.allowed_origins[{i}]", problem)
    if cors.allow_credentials and "*" in cors.allowed_origins:
        f.add("server.cors.allow_credentials", 'cannot be true with the origin "*" (browsers refuse credentials then)')
    for i, m in enumerate(cors.allowed_methods):
        if m != "*" and m.upper() not in HTTP_METHODS:
            f.add(f"server.cors.allowed_methods[{i}]", f"must be one of {', '.join(HTTP_METHODS)} or *, got {m!r}")
    for key in ("allowed_headers", "exposed_headers"):
        for i, h in enumerate(getattr(cors, key)):
            if h != "*" and not _TOKEN.match(h):
                f.add(f"server.cors.{key}[{i}]", f"is not a header name: {h!r}")
    f.between("server.cors.max_age_seconds", cors.max_age_seconds, 0, 86400)


def origin_problem(origin: str) -> str:
    """What is wrong with a CORS origin (``scheme://host[:port]`` or ``*``), or ""."""
    if origin == "*":
        return ""
    from urllib.parse import urlsplit

    try:
        u = urlsplit(origin)
        port = u.port
    except ValueError as e:
        return f"not an origin ({e}): {origin!r}"
    if u.scheme not in ("http", "https") or not u.hostname:
        return f"must be http(s)://host[:port] or *, got {origin!r}"
    if u.path or u.query or u.fragment or u.username or u.password:
        return f"an origin is scheme://host[:port] with nothing after it (no path, not even /), got {origin!r}"
    if port is not None and not 1 <= port <= 65535:
        return f"port out of range in {origin!r}"
    return ""


def _auth(f: _Found, cfg: Config) -> None:
    rl = cfg.auth.rate_limit
    f.not_negative("auth.rate_limit.requests_per_second", rl.requests_per_second)
    f.not_negative("auth.rate_limit.burst", rl.burst)
    if rl.requests_per_second > 0 and rl.burst < 1:
        f.add("auth.rate_limit.burst", "must be at least 1 while the rate limit is on (requests_per_second > 0)")
    _oidc(f, cfg.auth.oidc)


def _oidc(f: _Found, oidc: OIDCConfig) -> None:
    if not oidc.enabled:
        for fld in dataclasses.fields(OIDCConfig):
            if fld.name != "enabled" and getattr(oidc, fld.name) != fld.default:
                f.unread(f"auth.oidc.{fld.name}", "auth.oidc.enabled is false")
        return
    if not oidc.issuer:
        f.add("auth.oidc.issuer", "required when oidc is enabled")
    if bool(oidc.jwks_url) == bool(oidc.jwks_file):
        f.add("auth.oidc", "set exactly one of jwks_url and jwks_file")
    if oidc.jwks_url and not _is_safe_key_url(oidc.jwks_url):
        f.add("auth.oidc.jwks_url", "must be https (plain http only to localhost)")
    if oidc.jwks_file:
        f.file("auth.oidc.jwks_file", oidc.jwks_file)
    for i, alg in enumerate(oidc.algorithms):
        if alg not in ("RS256", "ES256"):
            f.add(f"auth.oidc.algorithms[{i}]", f"only RS256 and ES256 are accepted, got {alg!r}")
    if not oidc.algorithms:
        f.add("auth.oidc.algorithms", "must name at least one of RS256 and ES256")
    if not oidc.user_claim:
        f.add("auth.oidc.user_claim", "must name the claim that names the user")
    f.between("auth.oidc.clock_skew_seconds", oidc.clock_skew_seconds, 0, 300)


def _secret(f: _Found, cfg: Config) -> None:
    enc = cfg.secret.encryption
    if not enc.enabled:
        f.add("secret.encryption.enabled", "secret values are always encrypted: false is not supported")
    f.one_of("secret.encryption.kek.source", enc.kek.source, ("file", "env"))
    if enc.kek.source == "env" and enc.kek.file:
        f.unread("secret.encryption.kek.file", "the KEK comes from the environment with source env")
    if enc.kek.file:
        p = Path(enc.kek.file).expanduser()
        if p.exists() and not p.is_file():
            f.add("secret.encryption.kek.file", f"{enc.kek.file} is not a regular file")
    for section, limits in (("secret", cfg.secret.limits), ("config", cfg.config.limits)):
        f.positive(f"{section}.limits.max_object_bytes", limits.max_object_bytes)
        f.positive(f"{section}.limits.max_key_name_length", limits.max_key_name_length)


def _docker(f: _Found, cfg: Config) -> None:
    d = cfg.docker
    if not d.socket:
        f.add("docker.socket", "must be the path of the Docker daemon's socket")
    elif not d.socket.startswith("/"):
        f.add("docker.socket", f"must be an absolute path, got {d.socket!r}")
    if d.api_version and not _API_VERSION.match(d.api_version):
        f.add("docker.api_version", f"must look like 1.43 (or be empty: negotiate), got {d.api_version!r}")
    if not _API_VERSION.match(d.fallback_api_version):
        f.add("docker.fallback_api_version", f"must look like 1.43, got {d.fallback_api_version!r}")
    f.positive("docker.negotiation_timeout_seconds", d.negotiation_timeout_seconds)
    seen: set[str] = set()
    for i, r in enumerate(d.registries):
        key = f"docker.registries[{i}]"
        if not r.name:
            f.add(f"{key}.name", "required")
        elif r.name in seen:
            f.add(f"{key}.name", f"{r.name!r} is declared twice")
        seen.add(r.name)
        if not r.registry:
            f.add(f"{key}.registry", "required (the registry host, e.g. ghcr.io)")
        f.one_of(f"{key}.auth.type", r.auth.type, REGISTRY_AUTH_TYPES)
        f.one_of(f"{key}.auth.manage", r.auth.manage, REGISTRY_MANAGE_MODES)


def _controller(f: _Found, cfg: Config) -> None:
    ctl = cfg.controller
    for name in ("resync_seconds", "restart_backoff_initial_seconds", "restart_backoff_max_seconds", "log_max_bytes"):
        f.positive(f"controller.{name}", getattr(ctl, name))
    if ctl.restart_backoff_max_seconds < ctl.restart_backoff_initial_seconds:
        f.add("controller.restart_backoff_max_seconds", "must not be below restart_backoff_initial_seconds")
    for name in (
        "stop_grace_seconds",
        "log_backups",
        "restart_backoff_reset_seconds",
        "log_min_free_bytes",
        "finished_operations_seconds",
    ):
        f.not_negative(f"controller.{name}", getattr(ctl, name))
    f.between("controller.lease_seconds", ctl.lease_seconds, 1, 3600)
    f.between("controller.spawn_timeout_seconds", ctl.spawn_timeout_seconds, 1, 3600)
    f.one_of("controller.shim", ctl.shim, SHIMS)
    for i, path in enumerate(ctl.host_mount_paths):
        if not path.startswith("/"):
            f.add(f"controller.host_mount_paths[{i}]", f"must be an absolute path, got {path!r}")


def _is_host(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return bool(_HOSTNAME.match(host))
    return True


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
