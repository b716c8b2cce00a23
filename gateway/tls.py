"""TLS on the REST port: uvicorn settings from ``server.tls`` and the verified client certificate's CN.

uvicorn (httptools) puts nothing about the TLS session in the ASGI scope, so the protocol classes
below read the peer certificate from the transport once per connection and put its subject CN in
the scope under :data:`CN_KEY`; :func:`rune.gateway.http.call_context` copies it to
``CallContext.tls_client_cn``, which the authenticator maps to a user.
"""

from __future__ import annotations

import asyncio
import ssl
from typing import Any

import uvicorn
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol

from runed.core.config import TLSConfig
from runed.transport import tls as shared

CN_KEY = "rune.tls_client_cn"


def verified_cn(transport: asyncio.BaseTransport) -> str:
    """The subject CN of the peer's certificate, or "" unless the handshake verified it (as on the gRPC port)."""
    return shared.verified_cn(transport.get_extra_info("ssl_object"))


class TLSHttpToolsProtocol(HttpToolsProtocol):
    """httptools' protocol, with the client certificate's CN in every request's scope."""

    tls_client_cn = ""

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        # For TLS connections asyncio calls this after the handshake, so the certificate is known.
        self.tls_client_cn = verified_cn(transport)
        super().connection_made(transport)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        if self.tls_client_cn:
            self.scope[CN_KEY] = self.tls_client_cn  # type: ignore[literal-required]


class TLSWebSocketProtocol(WebSocketsSansIOProtocol):
    """The WebSocket protocol a TLS connection upgrades to, with the same scope key."""

    tls_client_cn = ""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.tls_client_cn = verified_cn(transport)
        super().connection_made(transport)

    def handle_connect(self, event: Any) -> None:
        super().handle_connect(event)
        # The ASGI task was only scheduled, so it sees the key.
        if self.tls_client_cn and hasattr(self, "scope"):
            self.scope[CN_KEY] = self.tls_client_cn  # type: ignore[literal-required]


def uvicorn_options(tls: TLSConfig) -> dict[str, Any]:
    """Keyword arguments for ``uvicorn.Config``: plain HTTP, or TLS with optional/required client certs."""
    if not tls.enabled:
        return {"http": "httptools"}
    return {
        "http": TLSHttpToolsProtocol,
        "ws": TLSWebSocketProtocol,
        "ssl_certfile": tls.cert_file,
        "ssl_keyfile": tls.key_file,
        "ssl_ca_certs": tls.client_ca_file or None,
        # The gRPC port asks the same (runed/transport/tls.py): a presented certificate is always verified.
        "ssl_cert_reqs": shared.client_cert_mode(tls),
    }


def unloaded_context(uv: uvicorn.Config) -> ssl.SSLContext:
    """A context set up as uvicorn set up ``uv.ssl`` (``uvicorn.config.create_ssl_context``), with
    nothing loaded: what a rotation of ``server.tls``'s files is loaded into (runed/transport/certs.py)."""
    ctx = ssl.SSLContext(uv.ssl_version)
    ctx.verify_mode = ssl.VerifyMode(uv.ssl_cert_reqs)
    if uv.ssl_ciphers:
        ctx.set_ciphers(uv.ssl_ciphers)
    alpn = getattr(uv.http_protocol_class, "alpn_protocols", None)
    if alpn:
        ctx.set_alpn_protocols(alpn)
    return ctx
