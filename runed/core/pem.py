"""A PEM certificate and its private key, read one way: by the configuration's checks at start and by
the TLS ports when the files change (``runed.transport.certs``), so "the key belongs to the
certificate" is one rule."""

from __future__ import annotations

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes


def certificate(data: bytes) -> x509.Certificate:
    """The first PEM certificate in ``data`` (ValueError if there is none)."""
    return x509.load_pem_x509_certificate(data)


def private_key(data: bytes) -> PrivateKeyTypes:
    """The unencrypted PEM private key in ``data`` (ValueError if it is not one: encrypted, of an
    unsupported kind, not PEM)."""
    try:
        return serialization.load_pem_private_key(data, password=None)
    except (TypeError, UnsupportedAlgorithm) as e:
        raise ValueError(str(e)) from None


def belongs(key: PrivateKeyTypes, cert: x509.Certificate) -> bool:
    """Whether ``key`` is the private key of ``cert``'s public key."""
    spki = serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    return bool(key.public_key().public_bytes(*spki) == cert.public_key().public_bytes(*spki))
