"""Tokens of the node channel: what an API host shows a node to read logs or run exec there.

Every host of a cluster holds the same token HMAC key (``auth.key``, checked against the store at
start). The channel signs with a key derived from it under its own label, so a node token is never
a user token's hash key and the other way round. A token is an HS256 JWT, valid for
:data:`LIFETIME` seconds, whose audience is the one node it is for and whose subject is the caller
the API host authenticated and authorized (kept for the node's audit). A node accepts nothing else:
no user tokens (they are for the API), no token of another node, none past its expiry.
"""

from __future__ import annotations

import hashlib
import hmac
import time
import uuid
from dataclasses import dataclass

import jwt

# Domain separation from the token hashes made with the same auth.key.
LABEL = b"rune node channel v1"
ISSUER = "rune-control-plane"
LIFETIME = 60.0
# Clock difference tolerated between hosts (expiry and issue time).
LEEWAY = 5.0


class TokenError(Exception):
    """Not a node token for this node (the message says why; never the token)."""


def channel_key(auth_key: bytes) -> bytes:
    return hmac.new(auth_key, LABEL, hashlib.sha256).digest()


@dataclass(frozen=True)
class Claims:
    node: str
    subject: str


def mint(auth_key: bytes, node: str, subject: str, lifetime: float = LIFETIME) -> str:
    now = time.time()
    claims = {
        "iss": ISSUER,
        "aud": node,
        "sub": subject,
        "iat": int(now),
        "exp": now + lifetime,
        "jti": uuid.uuid4().hex,
    }
    return jwt.encode(claims, channel_key(auth_key), algorithm="HS256")


def verify(auth_key: bytes, node: str, token: str) -> Claims:
    """The claims of a valid token for ``node``; TokenError otherwise."""
    try:
        claims = jwt.decode(
            token,
            channel_key(auth_key),
            algorithms=["HS256"],
            audience=node,
            issuer=ISSUER,
            leeway=LEEWAY,
            options={"require": ["exp", "aud", "sub", "iss"]},
        )
    except jwt.ExpiredSignatureError:
        raise TokenError("node token expired") from None
    except jwt.InvalidAudienceError:
        raise TokenError(f"node token is not for node {node}") from None
    except jwt.PyJWTError:
        raise TokenError("not a node token of this cluster") from None
    return Claims(node, str(claims["sub"]))
