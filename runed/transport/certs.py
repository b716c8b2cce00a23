"""``server.tls``'s certificate and key, taken up again when their files change: a rotated certificate
(cert-manager, certbot and the like replace the files) is served to new connections without a restart.

The gRPC port's own TLS asks on each handshake (grpcio's dynamic credentials call :meth:`CertFiles.fetch`:
a look at the files' inode, size and modification time, 7 µs for the three files of a client CA
setup, against a TLS handshake's milliseconds). The ports whose TLS is Python's ``ssl`` (the
REST port, and the gRPC front for optional client certificates) look every :data:`LOOK_SECONDS`
(:meth:`CertFiles.keep`) and load the new files into a fresh context, to which their listening
context hands each new connection over.

A pair is taken only once the key matches the certificate: a rotation that has written one file and
not yet the other keeps the pair in use (no handshake fails meanwhile), and it is taken once both are
written. What is loaded into an ``ssl`` context goes through memory files (``memfd``), never a copy
of the key on disk. The client CA file is taken as it now is on every port: a CA it no longer holds
is no longer trusted (Python's ``ssl`` cannot drop a CA from a context, hence the fresh one).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import ssl
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import grpc

from runed.core import pem
from runed.core.config import TLSConfig

log = logging.getLogger("runed.tls")

LOOK_SECONDS = 1.0

Stamp = tuple[tuple[int, int, int] | None, ...]


@dataclass(frozen=True)
class Pair:
    """A certificate chain and its key as read (PEM), with the client CA if one is configured."""

    key: bytes
    cert: bytes
    ca: bytes | None


class CertError(Exception):
    """The files cannot be read, or the key does not belong to the certificate."""


class CertFiles:
    """The files of one ``server.tls`` (or the node channel's certificate and key, ``label``
    ``node.tls``), and the stamp (inode, size, mtime) of the pair last taken."""

    def __init__(self, tls: TLSConfig, label: str = "server.tls") -> None:
        self.tls = tls
        self.label = label
        self._paths = [tls.cert_file, tls.key_file, *([tls.client_ca_file] if tls.client_ca_file else [])]
        self._taken: Stamp = ()
        # The stamp of files found unusable: looked at again once they change again (not on every
        # handshake, each with a warning, while a renewal is left half done).
        self._refused: Stamp = ()

    def _stamp(self) -> Stamp:
        out: list[tuple[int, int, int] | None] = []
        for p in self._paths:
            try:
                st = os.stat(p)
            except OSError:
                out.append(None)
            else:
                out.append((st.st_ino, st.st_size, st.st_mtime_ns))
        return tuple(out)

    def read(self) -> Pair:
        """The files' contents, checked to belong together (:class:`CertError` if they do not)."""
        try:
            with open(self.tls.key_file, "rb") as f:
                key = f.read()
            with open(self.tls.cert_file, "rb") as f:
                cert = f.read()
            ca = None
            if self.tls.client_ca_file:
                with open(self.tls.client_ca_file, "rb") as f:
                    ca = f.read()
        except OSError as e:
            raise CertError(f"cannot read {e.filename}: {e.strerror}") from None
        try:
            leaf = pem.certificate(cert)
        except ValueError:
            raise CertError(f"{self.tls.cert_file} is not a PEM certificate") from None
        try:
            private = pem.private_key(key)
        except ValueError:
            raise CertError(f"{self.tls.key_file} is not an unencrypted PEM private key") from None
        if not pem.belongs(private, leaf):
            raise CertError(f"{self.tls.key_file} is not the key of {self.tls.cert_file}")
        return Pair(key, cert, ca)

    def take(self) -> Pair | None:
        """The pair, if the files changed since the last one taken and belong together; else None
        (a pair half written is looked at again once the files change again)."""
        stamp = self._stamp()
        if stamp in (self._taken, self._refused):
            return None
        try:
            pair = self.read()
        except CertError as e:
            self._refused = stamp
            log.warning("%s: keeping the certificate in use: %s", self.label, e)
            return None
        # The stamp from before the read: a change during it is taken next time.
        self._taken = stamp
        return pair

    # -- grpcio's TLS ------------------------------------------------------------------------------
    def _first(self) -> Pair:
        """The pair served from the start (:class:`CertError` if the files are unusable now)."""
        self._taken = self._stamp()
        return self.read()

    def _took(self) -> None:
        log.info("%s: serving the certificate in %s again (it changed)", self.label, self.tls.cert_file)

    def grpc_credentials(self, require_client_auth: bool) -> grpc.ServerCredentials:
        """Credentials that take up a rotated pair on the next handshake (:class:`CertError` if the
        files are unusable now)."""
        return grpc.dynamic_ssl_server_credentials(
            _grpc_config(self._first()), self.fetch, require_client_authentication=require_client_auth
        )

    def fetch(self) -> grpc.ServerCertificateConfiguration | None:
        """grpcio's fetcher, called on each handshake: the new configuration, or None (no change)."""
        pair = self.take()
        if pair is None:
            return None
        self._took()
        return _grpc_config(pair)

    # -- Python's ssl ------------------------------------------------------------------------------
    def load(self, ctx: ssl.SSLContext) -> None:
        """Load the files into ``ctx`` now (:class:`CertError` if they are unusable)."""
        _load(ctx, self._first())

    async def keep(self, ctx: ssl.SSLContext, fresh: Callable[[], ssl.SSLContext]) -> None:
        """Serve the files as they are to new connections of ``ctx`` (the listening context) once
        they change, until cancelled. Each change is loaded into ``fresh()`` (a context set up as
        ``ctx`` is, nothing loaded), and ``ctx`` hands each new connection over to the latest one
        as its ClientHello comes (its ``sni_callback``, called with or without a server name)."""
        if not self._taken:
            self._taken = self._stamp()
        serving = ctx

        def hand_over(conn: ssl.SSLObject, _name: str | None, _ctx: ssl.SSLContext) -> None:
            if serving is not ctx:
                conn.context = serving

        ctx.sni_callback = hand_over
        while True:
            await asyncio.sleep(LOOK_SECONDS)
            pair = self.take()
            if pair is None:
                continue
            try:
                new = fresh()
                _load(new, pair)
            except (OSError, ssl.SSLError) as e:
                log.warning("%s: keeping the certificate in use: %s", self.label, e)
            else:
                serving = new
                self._took()


def _grpc_config(pair: Pair) -> grpc.ServerCertificateConfiguration:
    return grpc.ssl_server_certificate_configuration([(pair.key, pair.cert)], root_certificates=pair.ca)


def _load(ctx: ssl.SSLContext, pair: Pair) -> None:
    with _in_memory(pair.cert) as cert, _in_memory(pair.key) as key:
        ctx.load_cert_chain(cert, key)
    if pair.ca is not None:
        ctx.load_verify_locations(cadata=pair.ca.decode("ascii", "replace"))


@contextlib.contextmanager
def _in_memory(data: bytes) -> Iterator[str]:
    """A path that reads ``data`` from memory (``ssl`` loads chains and keys from paths only)."""
    fd = os.memfd_create("runed-tls", os.MFD_CLOEXEC)
    try:
        os.write(fd, data)
        yield f"/proc/self/fd/{fd}"
    finally:
        os.close(fd)
