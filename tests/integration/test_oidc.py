"""OIDC ID tokens as bearers: keys the test generates, a JWKS file, audience, issuer, expiry, skew."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import grpc
import jwt
import pytest
import yaml
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from rune.api import auth_pb2, auth_pb2_grpc, namespace_pb2, namespace_pb2_grpc
from runed.core import config
from tests.harness import Runed, RunedFactory

ISSUER = "https://idp.example.test"
AUDIENCE = "runed"
SKEW = 30


@pytest.fixture(scope="module")
def keys() -> dict[str, Any]:
    return {
        "rsa": rsa.generate_private_key(public_exponent=65537, key_size=2048),
        "ec": ec.generate_private_key(ec.SECP256R1()),
        "stranger": rsa.generate_private_key(public_exponent=65537, key_size=2048),
    }


def jwks_of(keys: dict[str, Any]) -> dict[str, Any]:
    rsa_jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(keys["rsa"].public_key()))
    ec_jwk = json.loads(jwt.algorithms.ECAlgorithm.to_jwk(keys["ec"].public_key()))
    return {"keys": [{**rsa_jwk, "kid": "rsa1", "use": "sig"}, {**ec_jwk, "kid": "ec1", "use": "sig"}]}


def start_oidc(runed_factory: RunedFactory, tmp_path: Path, keys_at: dict[str, str]) -> Runed:
    cfg = {
        "auth": {
            "oidc": {
                "enabled": True,
                "issuer": ISSUER,
                "audience": AUDIENCE,
                **keys_at,
                "user_claim": "preferred_username",
                "policies_claim": "groups",
                "clock_skew_seconds": SKEW,
            }
        }
    }
    (tmp_path / "runefile.yaml").write_text(yaml.safe_dump(cfg))
    return runed_factory(tmp_path / "data", args=["--config", str(tmp_path / "runefile.yaml")])


@pytest.fixture
def oidc_runed(runed_factory: RunedFactory, tmp_path: Path, keys: dict[str, Any]) -> Runed:
    (tmp_path / "jwks.json").write_text(json.dumps(jwks_of(keys)))
    return start_oidc(runed_factory, tmp_path, {"jwks_file": str(tmp_path / "jwks.json")})


@pytest.fixture
def jwks_server(keys: dict[str, Any]) -> Iterator[str]:
    """The issuer's JWKS endpoint, served over HTTP on the loopback by the test."""
    body = json.dumps(jwks_of(keys)).encode()
    hits: list[str] = []

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            hits.append(self.path)
            self.send_response(200)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/.well-known/jwks.json"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def test_keys_from_the_issuers_jwks_url(
    runed_factory: RunedFactory, tmp_path: Path, keys: dict[str, Any], jwks_server: str
) -> None:
    r = start_oidc(runed_factory, tmp_path, {"jwks_url": jwks_server})
    me = whoami(r, id_token(keys["ec"], "ec1", alg="ES256"))
    assert isinstance(me, auth_pb2.WhoAmIResponse), me
    assert me.subject_name == "alice"
    err = whoami(r, id_token(keys["stranger"], "rsa1"))
    assert isinstance(err, grpc.RpcError) and err.code() == grpc.StatusCode.UNAUTHENTICATED


@pytest.mark.parametrize(
    ("oidc", "message"),
    [
        ({"enabled": True, "jwks_file": "k.json"}, "auth.oidc.issuer"),
        ({"enabled": True, "issuer": ISSUER}, "exactly one of jwks_url and jwks_file"),
        ({"enabled": True, "issuer": ISSUER, "jwks_url": "http://idp.example.test/jwks"}, "must be https"),
        ({"enabled": True, "issuer": ISSUER, "jwks_file": "k.json", "algorithms": ["HS256"]}, "RS256 and ES256"),
    ],
)
def test_bad_oidc_config_is_refused_naming_the_key(tmp_path: Path, oidc: dict[str, Any], message: str) -> None:
    path = tmp_path / "runefile.yaml"
    path.write_text(yaml.safe_dump({"auth": {"oidc": oidc}}))
    with pytest.raises(config.ConfigError, match=message):
        config.load({"data_dir": str(tmp_path)}, env={}, config_file=str(path))


def id_token(key: Any, kid: str, alg: str = "RS256", **overrides: Any) -> str:
    now = int(time.time())
    claims = {
        "iss": ISSUER,
        "aud": AUDIENCE,
        "sub": "user-123",
        "preferred_username": "alice",
        "groups": ["readonly"],
        "iat": now,
        "exp": now + 300,
    }
    claims.update(overrides)
    return jwt.encode({k: v for k, v in claims.items() if v is not None}, key, algorithm=alg, headers={"kid": kid})


def hs256_with_public_key(key: Any) -> str:
    """The classic algorithm-confusion forgery: HMAC keyed with the issuer's public key."""
    pem = key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)

    def b64(raw: bytes) -> bytes:
        return base64.urlsafe_b64encode(raw).rstrip(b"=")

    claims = {"iss": ISSUER, "aud": AUDIENCE, "preferred_username": "alice", "exp": int(time.time()) + 60}
    signing = (
        b64(json.dumps({"alg": "HS256", "typ": "JWT", "kid": "rsa1"}).encode())
        + b"."
        + b64(json.dumps(claims).encode())
    )
    return (signing + b"." + b64(hmac.new(pem, signing, hashlib.sha256).digest())).decode()


def whoami(r: Runed, token: str) -> auth_pb2.WhoAmIResponse | grpc.RpcError:
    try:
        return auth_pb2_grpc.AuthServiceStub(r.channel()).WhoAmI(
            auth_pb2.WhoAmIRequest(), metadata=[("authorization", f"Bearer {token}")]
        )
    except grpc.RpcError as e:
        return e


def test_valid_id_tokens_map_claims_to_user_and_policies(oidc_runed: Runed, keys: dict[str, Any]) -> None:
    for token in (id_token(keys["rsa"], "rsa1"), id_token(keys["ec"], "ec1", alg="ES256")):
        me = whoami(oidc_runed, token)
        assert isinstance(me, auth_pb2.WhoAmIResponse), me
        assert (me.subject_name, me.subject_id, list(me.policies)) == ("alice", "user-123", ["readonly"])
    md = [("authorization", f"Bearer {id_token(keys['rsa'], 'rsa1')}")]
    ns = namespace_pb2_grpc.NamespaceServiceStub(oidc_runed.channel())
    with pytest.raises(grpc.RpcError) as denied:
        ns.CreateNamespace(
            namespace_pb2.CreateNamespaceRequest(namespace=namespace_pb2.Namespace(name="x")), metadata=md
        )
    assert denied.value.code() == grpc.StatusCode.PERMISSION_DENIED


def test_expiry_is_checked_with_bounded_skew(oidc_runed: Runed, keys: dict[str, Any]) -> None:
    now = int(time.time())
    within = id_token(keys["rsa"], "rsa1", exp=now - SKEW // 3, iat=now - 600)
    assert isinstance(whoami(oidc_runed, within), auth_pb2.WhoAmIResponse)
    beyond = id_token(keys["rsa"], "rsa1", exp=now - SKEW * 3, iat=now - 600)
    err = whoami(oidc_runed, beyond)
    assert isinstance(err, grpc.RpcError) and err.code() == grpc.StatusCode.UNAUTHENTICATED


def test_bad_id_tokens_are_refused_with_the_generic_reason(oidc_runed: Runed, keys: dict[str, Any]) -> None:
    forgeries = {
        "audience": lambda: id_token(keys["rsa"], "rsa1", aud="someone-else"),
        "issuer": lambda: id_token(keys["rsa"], "rsa1", iss="https://evil.example.test"),
        "unknown-key": lambda: id_token(keys["stranger"], "nope"),
        "wrong-signer": lambda: id_token(keys["stranger"], "rsa1"),
        "no-exp": lambda: id_token(keys["rsa"], "rsa1", exp=None),
        "alg-none": lambda: jwt.encode(  # no key: the point of the forgery
            {"iss": ISSUER, "aud": AUDIENCE, "sub": "x"},
            None,  # type: ignore[arg-type]
            algorithm="none",
        ),
        "hs256-confusion": lambda: hs256_with_public_key(keys["rsa"]),
        "no-user": lambda: id_token(keys["rsa"], "rsa1", preferred_username=None),
    }
    for case, make in forgeries.items():
        err = whoami(oidc_runed, make())
        assert isinstance(err, grpc.RpcError), f"{case} accepted"
        assert err.code() == grpc.StatusCode.UNAUTHENTICATED, case
        assert err.details() == "invalid or expired credentials", case
