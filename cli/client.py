"""Connection settings resolved from flags, environment and the current context, and lazy gRPC stubs."""

from __future__ import annotations

import importlib
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rune.cli.config import CliConfig, normalise_server

# Stub name -> generated module (only the one a command needs gets imported).
_STUB_MODULES = {
    "ServiceService": "service",
    "InstanceService": "instance",
    "LogService": "logs",
    "ExecService": "exec",
    "HealthService": "health",
    "SecretService": "secret",
    "ConfigmapService": "configmap",
    "NamespaceService": "namespace",
    "AuthService": "auth",
    "AdminService": "admin",
    "NodeService": "node",
}


def pb2(module: str) -> Any:
    """The generated message module ``rune.api.<module>_pb2``."""
    return importlib.import_module(f"rune.api.{module}_pb2")


@dataclass
class Session:
    """Everything a command needs to call runed; the channel is opened on first use."""

    config_path: Path | None = None
    server_flag: str | None = None
    token_flag: str | None = None
    context_flag: str | None = None
    namespace_flag: str | None = None
    tls_flag: bool | None = None
    ca_file_flag: str | None = None
    timeout: float = 30.0
    verbose: bool = False
    _channel: Any = None
    _config: CliConfig | None = None
    _stubs: dict[str, Any] = field(default_factory=dict)

    @property
    def config(self) -> CliConfig:
        if self._config is None:
            self._config = CliConfig.load(self.config_path)
        return self._config

    @property
    def context(self) -> dict[str, Any]:
        return self.config.context(self.context_flag)

    @property
    def target(self) -> str:
        server = self.server_flag or os.environ.get("RUNE_SERVER") or self.context.get("server") or ""
        return normalise_server(server)

    @property
    def token(self) -> str:
        return self.token_flag or self.context.get("token") or os.environ.get("RUNE_TOKEN") or ""

    def namespace(self, flag: str | None = None, default: str = "default") -> str:
        """``-n`` flag > context defaultNamespace > ``default``."""
        return flag or self.namespace_flag or self.context.get("defaultNamespace") or default

    def metadata(self) -> list[tuple[str, str]]:
        tok = self.token
        return [("authorization", f"Bearer {tok}")] if tok else []

    def channel(self) -> Any:
        if self._channel is None:
            import grpc

            ctx = self.context
            use_tls = self.tls_flag if self.tls_flag is not None else bool(ctx.get("tls"))
            opts: list[tuple[str, Any]] = [("grpc.max_receive_message_length", 64 * 1024 * 1024)]
            if ctx.get("serverName"):
                opts.append(("grpc.ssl_target_name_override", str(ctx["serverName"])))
            if use_tls:
                ca = self.ca_file_flag or ctx.get("caFile")
                cert, key = ctx.get("certFile"), ctx.get("keyFile")
                creds = grpc.ssl_channel_credentials(
                    root_certificates=Path(ca).read_bytes() if ca else None,
                    private_key=Path(key).read_bytes() if key else None,
                    certificate_chain=Path(cert).read_bytes() if cert else None,
                )
                self._channel = grpc.secure_channel(self.target, creds, options=opts)
            else:
                host = self.target.rsplit(":", 1)[0].strip("[]")
                if self.token and host not in ("localhost", "::1") and not host.startswith("127."):
                    # A bearer token over plaintext to another host can be read on the way.
                    sys.stderr.write(f"warning: sending a token to {self.target} without TLS (use --tls)\n")
                self._channel = grpc.insecure_channel(self.target, options=opts)
        return self._channel

    def stub(self, service: str) -> Any:
        """A stub for ``rune.api.<service>``, e.g. ``stub("ServiceService")``."""
        if service not in self._stubs:
            mod = importlib.import_module(f"rune.api.{_STUB_MODULES[service]}_pb2_grpc")
            self._stubs[service] = getattr(mod, f"{service}Stub")(self.channel())
        return self._stubs[service]

    def call(self, service: str, method: str, request: Any, timeout: float | None = None) -> Any:
        """A unary call with the token and a deadline."""
        from rune.cli.errors import EXIT_UNIMPLEMENTED, CliError

        fn = getattr(self.stub(service), method, None)
        if fn is None:
            raise CliError(f"this rune client has no {service}.{method} RPC", EXIT_UNIMPLEMENTED)
        return fn(request, metadata=self.metadata(), timeout=timeout or self.timeout)

    def has_rpc(self, service: str, method: str) -> bool:
        """Whether the generated stubs know ``method`` (RPCs added by newer protos)."""
        return hasattr(self.stub(service), method)

    def close(self) -> None:
        if self._channel is not None:
            self._channel.close()
            self._channel = None
