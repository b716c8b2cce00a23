"""Each built-in policy against every RPC of the contract, over real gRPC against a real runed."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import grpc
import pytest

from rune.api import auth_pb2, auth_pb2_grpc
from runed.auth import rbac
from runed.pipeline.methods import Method, all_methods
from tests.harness import Runed
from tests.support import Metadata

DENIED = {grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.UNAUTHENTICATED}
# Streams that were admitted may legitimately keep running: the short deadline ends them.
STREAM_TIMEOUT = 0.4
READS = ("get", "list", "watch")


def expected_allowed(policy: str, access: rbac.Access) -> bool:
    """The issue's definition of the built-ins, stated independently of their stored rules."""
    if access is rbac.PUBLIC or access is rbac.AUTHENTICATED:
        return True
    if policy in ("root", "admin"):
        return True
    if policy == "readwrite":
        return access.resource != "admin"
    if policy == "readonly":
        return access.resource != "admin" and access.verb in READS
    return False


def call(channel: grpc.Channel, m: Method, metadata: list[tuple[str, str]]) -> tuple[grpc.StatusCode, str]:
    """Call a method with an empty request; return its status (OK when it answered)."""
    ser = m.request_cls.SerializeToString
    de = m.response_cls.FromString
    req = m.request_cls()
    try:
        if not m.client_streaming and not m.server_streaming:
            channel.unary_unary(m.full_name, request_serializer=ser, response_deserializer=de)(
                req, metadata=metadata, timeout=5
            )
        elif not m.client_streaming:
            for _ in channel.unary_stream(m.full_name, request_serializer=ser, response_deserializer=de)(
                req, metadata=metadata, timeout=STREAM_TIMEOUT
            ):
                break
        else:
            done = threading.Event()

            def requests() -> Iterator[object]:
                yield req
                done.wait(STREAM_TIMEOUT)

            try:
                for _ in channel.stream_stream(m.full_name, request_serializer=ser, response_deserializer=de)(
                    requests(), metadata=metadata, timeout=STREAM_TIMEOUT
                ):
                    break
            finally:
                done.set()
    except grpc.RpcError as e:
        return e.code(), e.details() or ""
    return grpc.StatusCode.OK, ""


def token_for(runed: Runed, auth: list[tuple[str, str]], policy: str) -> list[tuple[str, str]]:
    stub = auth_pb2_grpc.AuthServiceStub(runed.channel())
    resp = stub.CreateToken(
        auth_pb2.CreateTokenRequest(name=f"{policy}-token", subject_name=f"{policy}-user", policies=[policy]),
        metadata=auth,
    )
    return [("authorization", f"Bearer {resp.secret}")]


@pytest.mark.parametrize("policy", ["root", "admin", "readwrite", "readonly"])
def test_builtin_policy_against_every_rpc(module_runed: tuple[Runed, Metadata], policy: str) -> None:
    runed, auth = module_runed
    metadata = token_for(runed, auth, policy)
    channel = runed.channel()
    wrong: list[str] = []
    for m in all_methods():
        access = rbac.TABLE[m.full_name]
        code, details = call(channel, m, metadata)
        if expected_allowed(policy, access):
            if code in DENIED:
                wrong.append(f"{m.full_name}: expected allowed, got {code.name} {details!r}")
        else:
            if code != grpc.StatusCode.PERMISSION_DENIED:
                wrong.append(f"{m.full_name}: expected PERMISSION_DENIED, got {code.name} {details!r}")
            elif f"{access.resource}:{access.verb}@" not in details:
                wrong.append(f"{m.full_name}: denial does not name {access.resource}:{access.verb}: {details!r}")
    assert not wrong, "\n".join(wrong)


def test_no_credentials_is_unauthenticated_everywhere_but_bootstrap(
    module_runed: tuple[Runed, Metadata],
) -> None:
    runed, _ = module_runed
    channel = runed.channel()
    wrong = []
    for m in all_methods():
        if rbac.TABLE[m.full_name] is rbac.PUBLIC:
            continue
        code, _ = call(channel, m, [])
        if code != grpc.StatusCode.UNAUTHENTICATED:
            wrong.append(f"{m.full_name}: {code.name}")
    assert not wrong, "\n".join(wrong)
