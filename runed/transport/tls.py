"""TLS shared by both ports, and the gRPC port's TLS front for optional client certificates.

grpcio's Python API knows two client-certificate modes: ``ssl_server_credentials(require_client_auth=True)``
(C-core's REQUEST_AND_REQUIRE_CLIENT_CERTIFICATE_AND_VERIFY) and ``False``, which is
DONT_REQUEST_CLIENT_CERTIFICATE: the server never asks, so a client's certificate is never sent,
never verified and never seen (``auth_context()`` has no x509 fields; a certificate from any CA
"passes" because it is never looked at). C-core's REQUEST_CLIENT_CERTIFICATE_AND_VERIFY, which is
what ``require_client_cert: false`` means, is not exposed to Python (grpc/grpc#16547, closed stale),
and verifying the certificate later, in the pipeline, is impossible for the same reason: it never
arrives. Sniffing the certificate out of grpc's handshake is not possible from Python either.

So for that one configuration the gRPC role terminates TLS itself, with the very settings of the
REST port (:func:`server_context`: the client CA, CERT_OPTIONAL: a certificate that does not verify
fails the handshake, no certificate is fine), and relays the decrypted HTTP/2 bytes to the gRPC
server on a loopback port. Each relay's upstream connection has its own local port, which the gRPC
server reports as the peer's port: the adapter looks it up (:meth:`TLSFront.lookup`) to learn the
client's real address and its verified CN. The price, in this mode only, is one more pass of every
byte through Python; with required or without client certificates grpcio keeps doing TLS itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import ipaddress
import logging
import socket
import ssl
from dataclasses import dataclass
from typing import Any

from runed.core.config import TLSConfig, parse_address
from runed.core.errors import BindError
from runed.transport.certs import CertError, CertFiles

log = logging.getLogger("runed.grpc")

HANDSHAKE_TIMEOUT_SECONDS = 10.0
CHUNK = 64 * 1024
LOOPBACK = "127.0.0.1"


def verified_cn(sslobj: ssl.SSLObject | ssl.SSLSocket | None) -> str:
    """The subject CN of the peer's certificate, or "" unless the handshake verified it.

    ``getpeercert()`` returns a non-empty dict only for a certificate that was validated against
    the configured CA (with CERT_NONE it is always empty), so nothing unverified gets through.
    """
    if sslobj is None:
        return ""
    cert = sslobj.getpeercert()
    if not cert:
        return ""
    for rdn in cert.get("subject", ()):
        for attr in rdn:
            if attr[0] == "commonName":
                return str(attr[1])
    return ""


def client_cert_mode(tls: TLSConfig) -> ssl.VerifyMode:
    """What both ports ask of clients: required, optional (verified when presented) or nothing."""
    if not tls.client_ca_file:
        return ssl.CERT_NONE
    return ssl.CERT_REQUIRED if tls.require_client_cert else ssl.CERT_OPTIONAL


def needs_front(tls: TLSConfig) -> bool:
    """Whether the gRPC port needs the TLS front: optional client certificates, which grpcio cannot do."""
    return tls.enabled and client_cert_mode(tls) == ssl.CERT_OPTIONAL


def unloaded_context(tls: TLSConfig) -> ssl.SSLContext:
    """The server-side SSL context of ``server.tls`` for HTTP/2 (the gRPC front; REST lets uvicorn
    build the same), nothing loaded yet."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.verify_mode = client_cert_mode(tls)
    # gRPC clients insist on h2 being negotiated.
    ctx.set_alpn_protocols(["h2"])
    return ctx


def server_context(tls: TLSConfig, certs: CertFiles) -> ssl.SSLContext:
    """:func:`unloaded_context`, its files loaded from ``certs``."""
    ctx = unloaded_context(tls)
    try:
        certs.load(ctx)
    except (CertError, OSError, ssl.SSLError) as e:
        raise BindError(f"server.tls: cannot load the certificate, key or client CA: {e}") from None
    return ctx


def _client_host(peername: Any) -> str:
    """The client's address as the gRPC adapter reports peers (an IPv4-mapped IPv6 address as IPv4)."""
    if not isinstance(peername, tuple) or not peername:
        return ""
    host = str(peername[0])
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return host
    mapped = getattr(ip, "ipv4_mapped", None)
    return str(mapped) if mapped is not None else str(ip)


def listen(address: str, *, dual_stack: bool = True) -> socket.socket:
    """Listen on ``address`` (port 0 = any free port); failure is one clear BindError line.

    An empty host is every interface: IPv6 and IPv4 as the gRPC server binds it (``dual_stack``), or
    IPv4 only (``0.0.0.0``).
    """
    host, port = parse_address(address)
    family = socket.AF_INET6 if ":" in host or (dual_stack and not host) else socket.AF_INET
    try:
        sock = socket.socket(family, socket.SOCK_STREAM)
    except OSError:
        if family != socket.AF_INET6:
            raise
        if host:
            raise BindError(f"cannot listen on {address}: IPv6 is not available") from None
        family, sock = socket.AF_INET, socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if family == socket.AF_INET6 and not host:
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    try:
        sock.bind((host or ("::" if family == socket.AF_INET6 else "0.0.0.0"), port))
        sock.listen(2048)
    except OSError as e:
        sock.close()
        why = "address already in use" if e.errno == errno.EADDRINUSE else (e.strerror or str(e))
        raise BindError(f"cannot listen on {address}: {why}") from None
    sock.setblocking(False)
    return sock


@dataclass(frozen=True)
class Downstream:
    """The client behind one relayed connection: its address and its verified certificate's CN ("" if none)."""

    peer: str
    cn: str


class TLSFront:
    """Terminates TLS for the gRPC port and relays each connection to the gRPC server on loopback."""

    def __init__(self, tls: TLSConfig) -> None:
        self._tls = tls
        self._certs = CertFiles(tls)
        self._ssl = server_context(tls, self._certs)
        self._keeping: asyncio.Task[None] | None = None
        self.upstream_port = 0  # the gRPC server's loopback port, set once it is bound
        self._by_port: dict[int, Downstream] = {}
        self._server: asyncio.Server | None = None
        self._relays: set[asyncio.Task[Any]] = set()

    def lookup(self, grpc_peer: str) -> Downstream | None:
        """The client behind a gRPC peer (``ipv4:127.0.0.1:<relay port>``); None for anything else.

        A call that reached the loopback port without the front has no entry: it is served as a
        local client without a certificate (it gains nothing it could not get from the TLS port).
        """
        kind, _, rest = grpc_peer.partition(":")
        host, _, port = rest.rpartition(":")
        if kind != "ipv4" or host != LOOPBACK or not port.isdigit():
            return None
        return self._by_port.get(int(port))

    async def start(self, address: str) -> int:
        """Listen on ``address`` (the configured gRPC address); the bound port."""
        sock = listen(address)
        self._server = await asyncio.start_server(
            self._serve, sock=sock, ssl=self._ssl, ssl_handshake_timeout=HANDSHAKE_TIMEOUT_SECONDS, limit=CHUNK
        )
        self._keeping = asyncio.create_task(self._certs.keep(self._ssl, lambda: unloaded_context(self._tls)))
        return int(sock.getsockname()[1])

    def close(self) -> None:
        """Stop accepting connections (relays carry on, so the gRPC server can drain its calls)."""
        if self._server is not None:
            self._server.close()
        if self._keeping is not None:
            self._keeping.cancel()

    async def aclose(self) -> None:
        """End every relay (after the gRPC server stopped)."""
        self.close()
        for task in list(self._relays):
            task.cancel()
        await asyncio.gather(*self._relays, return_exceptions=True)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        # Called after the handshake: an unverifiable client certificate never gets here.
        who = Downstream(
            _client_host(writer.get_extra_info("peername")), verified_cn(writer.get_extra_info("ssl_object"))
        )
        task = asyncio.current_task()
        assert task is not None
        self._relays.add(task)
        port = 0
        up_writer: asyncio.StreamWriter | None = None
        try:
            up_reader, up_writer = await asyncio.open_connection(LOOPBACK, self.upstream_port, limit=CHUNK)
            port = int(up_writer.get_extra_info("sockname")[1])
            # Known before the first byte is relayed, so before the gRPC server can start a call.
            self._by_port[port] = who
            await _relay(reader, writer, up_reader, up_writer)
        except OSError as e:
            log.debug("grpc tls relay for %s ended: %s", who.peer, e)
        finally:
            self._by_port.pop(port, None)
            self._relays.discard(task)
            for w in (writer, up_writer):
                if w is not None:
                    with contextlib.suppress(Exception):
                        w.close()


async def _copy(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
    while data := await src.read(CHUNK):
        dst.write(data)
        await dst.drain()  # back-pressure: a slow reader slows its writer, buffers stay bounded


async def _relay(
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    up_reader: asyncio.StreamReader,
    up_writer: asyncio.StreamWriter,
) -> None:
    """Copy both ways until either side closes (or fails), then end the other direction too."""
    copies = {asyncio.ensure_future(_copy(reader, up_writer)), asyncio.ensure_future(_copy(up_reader, writer))}
    try:
        await asyncio.wait(copies, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for c in copies:
            c.cancel()
        # Collects the copies' own errors (a reset connection is how many clients leave).
        await asyncio.gather(*copies, return_exceptions=True)
