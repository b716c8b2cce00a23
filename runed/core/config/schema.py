"""The settings tree: one frozen dataclass per section, with its defaults (a table of settings, kept whole).

Each field's name is its key in runefile.yaml; comments say what a value means. Loading and
checking live beside it (``loading``, ``checks``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from runed.core.errors import FatalStartError


class ConfigError(FatalStartError):
    """A configuration that cannot be used: every problem found, each naming its key.

    ``problems`` holds one ``"<key path>: <what is wrong>"`` line per problem; the message is that
    line when there is one, else a count followed by the lines.
    """

    def __init__(self, message: str, problems: list[str] | None = None) -> None:
        self.problems = list(problems) if problems else [message]
        super().__init__(message)

    @classmethod
    def of(cls, problems: list[str], where: str = "") -> ConfigError:
        """One error carrying ``problems`` (at least one), prefixed with ``where`` (the file) when given."""
        prefix = f"{where}: " if where else ""
        if len(problems) == 1:
            return cls(prefix + problems[0], problems)
        lines = "\n".join(f"  {p}" for p in problems)
        return cls(f"{prefix}{len(problems)} problems:\n{lines}", problems)


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
class CORSConfig:
    """Cross-origin REST calls from browsers (a dashboard served from another origin). Off by default."""

    # Origins (scheme://host[:port]) whose pages may call the REST port, or "*" for any. Empty: CORS off.
    allowed_origins: tuple[str, ...] = ()
    allowed_methods: tuple[str, ...] = ("GET", "POST", "PUT", "DELETE", "PATCH")
    # Request headers a page may send (beyond the CORS-safelisted ones).
    allowed_headers: tuple[str, ...] = (
        "authorization",
        "content-type",
        "x-request-id",
        "last-event-id",
        "connect-protocol-version",
        "connect-timeout-ms",
    )
    # Response headers a page may read (beyond the CORS-safelisted ones).
    exposed_headers: tuple[str, ...] = ("x-request-id", "retry-after", "ratelimit", "ratelimit-policy")
    # Cookies and client certificates on cross-origin calls; not with "*" (browsers refuse that).
    allow_credentials: bool = False
    # How long a browser may cache a preflight answer.
    max_age_seconds: int = 600


@dataclass(frozen=True)
class ServerConfig:
    grpc_address: str = ":7863"
    http_address: str = ":7861"
    tls: TLSConfig = field(default_factory=TLSConfig)
    # Seconds in-flight calls get to finish on SIGTERM before they are cancelled.
    shutdown_grace_seconds: float = 10.0
    # Largest REST request body accepted (bytes); larger ones get 413.
    max_body_bytes: int = 4 * 1024 * 1024
    # A REST request's line and headers must arrive within this many seconds (else 408, closed)
    # and take at most max_header_bytes (else 431, closed): slow or huge heads hold no connection.
    header_timeout_seconds: float = 10.0
    max_header_bytes: int = 64 * 1024
    # A REST request's body must have arrived this many seconds after its head (else 408, closed):
    # a client trickling a body holds no connection and no handler.
    body_timeout_seconds: float = 30.0
    # Seconds of silence on a REST event stream before a keep-alive comment is sent.
    sse_keepalive_seconds: float = 15.0
    cors: CORSConfig = field(default_factory=CORSConfig)


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
class ApiLimitsConfig:
    # Largest scale a service may ask for (CreateService, UpdateService, ScaleService): every
    # instance is a supervised process, so a slip such as 2000000 is refused, not attempted.
    max_scale: int = 1000


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
    # Safety-net resync period (longer while a full pass costs more than 0.2 % of a core over it, at
    # most 60 s); changes themselves wake the reconciler at once.
    resync_seconds: float = 5.0
    restart_backoff_initial_seconds: float = 1.0
    restart_backoff_max_seconds: float = 60.0
    # A run at least this long ends a crash loop: the next restart delay starts from the initial one.
    restart_backoff_reset_seconds: float = 10.0
    stop_grace_seconds: float = 10.0
    log_max_bytes: int = 10 * 1024 * 1024
    log_backups: int = 3
    # Instance logs stop (lines are dropped, then a marker line says how many) while the data dir's
    # filesystem has less than this free, so the store keeps room to write. 0: no floor.
    log_min_free_bytes: int = 32 * 1024 * 1024
    # Host directories where secret/configmap mounts may be written as they are (shared, opt-in);
    # every other mount path is placed under the instance's own directory.
    host_mount_paths: tuple[str, ...] = ()
    # Controllers sharing a store elect one leader: it renews within a third of this, steps down
    # after three quarters of it without a renewal, and a standby takes over after all of it.
    lease_seconds: float = 10.0
    # A start whose shim has not claimed it this long after it was asked for (the zygote held up,
    # the machine overloaded) is given up and fenced, so its shim runs nothing if it comes later.
    spawn_timeout_seconds: float = 15.0
    # What supervises the instances: "service" runs one native keeper per service (built from
    # runed/runner/shim.c with the machine's C compiler on first use): no process but its own per
    # instance, a keeper's death ends one service's instances (restarted by their policy). "shared"
    # runs one keeper for all instances. "auto" runs a native shim per instance (a keeper's death,
    # or a shim's, ends one instance; every instance is two processes); "python" the Python shim.
    # Without a compiler, each runs the Python shim per instance.
    shim: str = "service"
    # Finished scaling and deletion operations are kept this long after they ended (GetDeletionStatus
    # and ListDeletionOperations show them), then removed by the leading controller; 0 keeps them.
    finished_operations_seconds: float = 86400.0


@dataclass(frozen=True)
class StoreConfig:
    # sqlite:///<path> or postgresql://user@host:port/db; "" is the data dir's runed.db (SQLite).
    url: str = ""
    # SQLite: how long a write waits for another process's write lock before it fails (and is
    # retried: a controller's writes on its next pass, an API call's with a clear error).
    sqlite_busy_timeout_seconds: float = 10.0
    # SQLite: when a commit is durable. "normal": once in the write-ahead log, which survives runed
    # or any process being killed; an OS crash or a power loss can lose the last commits. "full":
    # each commit waits for the log to reach the disk (fsync), surviving those too, at about a
    # quarter of the serial write rate (runed.store.sqlite.connection).
    sqlite_synchronous: str = "normal"


@dataclass(frozen=True)
class HistoryConfig:
    # Spec revisions kept per service (older ones are pruned).
    revisions: int = 20
    # Change-log entries kept (watch resume older than that must re-list).
    changelog_entries: int = 100_000
    # Audit records kept (the newest; older ones are removed as new ones arrive).
    audit_entries: int = 100_000
    # Events a watcher may have pending before it is cut off with "too slow, re-list".
    watch_queue_events: int = 10_000


@dataclass(frozen=True)
class ExecConfig:
    max_sessions_per_instance: int = 8
    timeout_seconds: float = 3600.0


@dataclass(frozen=True)
class NodeTLSConfig:
    """TLS on the node channel: a node serves it with its certificate; API hosts check that
    certificate against the CA (and the node's address) before any log line or exec byte goes."""

    enabled: bool = False
    # This node's certificate for its channel (its address among the certificate's names).
    cert_file: str = ""
    key_file: str = ""
    # The CA that signs the nodes' certificates (what an API host trusts).
    ca_file: str = ""


@dataclass(frozen=True)
class NodeConfig:
    """This host as a node (it runs the instances the scheduler places on it) and the node timings."""

    # The node's id; "" is the hostname.
    id: str = ""
    # The address other hosts reach this node's instances at.
    address: str = "127.0.0.1"
    # The node channel's port on ``address``: API hosts reach this node's logs and exec there
    # (0: any free port, recorded in the node's record).
    port: int = 7864
    labels: dict[str, str] = field(default_factory=dict)
    # Kept back from the OS's CPU cores and memory for runed and the host itself.
    reserve_cpu: str = "0"
    reserve_memory: str = "0"
    # False: the controller role only schedules (a control-plane host that runs no instances).
    enabled: bool = True
    heartbeat_seconds: float = 5.0
    # No heartbeat for this long: the scheduler marks the node NotReady (and places nothing there).
    not_ready_seconds: float = 20.0
    # NotReady for this long: its instances are lost and placed on other nodes.
    lost_after_seconds: float = 30.0
    tls: NodeTLSConfig = field(default_factory=NodeTLSConfig)


@dataclass(frozen=True)
class Config:
    server: ServerConfig = field(default_factory=ServerConfig)
    data_dir: str = ""
    store: StoreConfig = field(default_factory=StoreConfig)
    log: LogConfig = field(default_factory=LogConfig)
    auth: AuthConfig = field(default_factory=AuthConfig)
    secret: SecretConfig = field(default_factory=SecretConfig)
    config: ConfigmapConfig = field(default_factory=ConfigmapConfig)
    docker: DockerConfig = field(default_factory=DockerConfig)
    controller: ControllerConfig = field(default_factory=ControllerConfig)
    history: HistoryConfig = field(default_factory=HistoryConfig)
    exec: ExecConfig = field(default_factory=ExecConfig)
    limits: ApiLimitsConfig = field(default_factory=ApiLimitsConfig)
    node: NodeConfig = field(default_factory=NodeConfig)
    # Where the config was loaded from ("" when only defaults/env/flags applied).
    source: str = ""

    @property
    def data_path(self) -> Path:
        return Path(self.data_dir)
