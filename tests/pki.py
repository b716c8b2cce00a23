"""Test PKI: a CA, server and client certificates generated per test, and a TLS-configured runed."""

from __future__ import annotations

import datetime
import ipaddress
import os
import socket
import ssl
from pathlib import Path
from typing import Any

import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from tests.harness import Runed, RunedFactory


def _pem_key(key: Any) -> bytes:
    return bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )


def _cert(
    cn: str,
    key: Any,
    issuer: tuple[x509.Name, Any] | None,
    *,
    ca: bool = False,
    server: bool = False,
    ips: tuple[str, ...] = ("127.0.0.1",),
) -> x509.Certificate:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
    issuer_name, issuer_key = issuer if issuer else (name, key)
    now = datetime.datetime.now(datetime.UTC)
    b = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(issuer_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if server:
        names = [x509.IPAddress(ipaddress.ip_address(ip)) for ip in ips]
        b = b.add_extension(x509.SubjectAlternativeName(names), False)
    return b.sign(issuer_key, hashes.SHA256())


class PKI:
    """A CA, server certificates (for 127.0.0.1 unless told) and client certificates, as PEM bytes."""

    def __init__(self, name: str = "test-ca") -> None:
        self.ca_key = ec.generate_private_key(ec.SECP256R1())
        self.ca = _cert(name, self.ca_key, None, ca=True)
        self.ca_pem = self.ca.public_bytes(serialization.Encoding.PEM)

    def issue(self, cn: str, server: bool = False, ips: tuple[str, ...] = ("127.0.0.1",)) -> tuple[bytes, bytes]:
        """A key and certificate signed by this CA (a server's names the addresses ``ips``)."""
        key = ec.generate_private_key(ec.SECP256R1())
        cert = _cert(cn, key, (self.ca.subject, self.ca_key), server=server, ips=ips)
        return _pem_key(key), cert.public_bytes(serialization.Encoding.PEM)


def tls_args(tmp_path: Path, pki: PKI, *, client_ca: bool, require: bool = True) -> list[str]:
    """Write a server certificate from ``pki`` and a runefile serving TLS with it; runed's arguments.

    With ``client_ca`` the runefile names the PKI's CA for client certificates, required or (``require=False``)
    optional.
    """
    key, cert = pki.issue("runed", server=True)
    (tmp_path / "server.key").write_bytes(key)
    (tmp_path / "server.crt").write_bytes(cert)
    (tmp_path / "clients-ca.crt").write_bytes(pki.ca_pem)
    tls = {
        "enabled": True,
        "cert_file": str(tmp_path / "server.crt"),
        "key_file": str(tmp_path / "server.key"),
    }
    if client_ca:
        tls.update(client_ca_file=str(tmp_path / "clients-ca.crt"), require_client_cert=require)
    (tmp_path / "runefile.yaml").write_text(yaml.safe_dump({"server": {"tls": tls}}))
    return ["--config", str(tmp_path / "runefile.yaml")]


def start_tls(runed_factory: RunedFactory, tmp_path: Path, pki: PKI, *, client_ca: bool) -> Runed:
    """A runed serving TLS with a certificate from ``pki`` (and requiring client certificates if ``client_ca``)."""
    return runed_factory(tmp_path / "data", args=tls_args(tmp_path, pki, client_ca=client_ca))


def replace_file(path: Path, data: bytes) -> None:
    """As a rotation writes a file: in full under another name, then renamed over it."""
    tmp = path.with_name(path.name + ".new")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def served_certificate(address: str, ctx: ssl.SSLContext) -> bytes:
    """The certificate a new connection to ``address`` is given (DER); the handshake verifies it."""
    host, port = address.rsplit(":", 1)
    with (
        socket.create_connection((host, int(port)), timeout=10) as raw,
        ctx.wrap_socket(raw, server_hostname=host) as s,
    ):
        got = s.getpeercert(binary_form=True)
    assert got is not None
    return got


def der(pem: bytes) -> bytes:
    """A PEM certificate as DER (what a handshake shows)."""
    return ssl.PEM_cert_to_DER_cert(pem.decode())
