"""What an API host writes to a node (runed.api.forward._send), against a real gRPC server that refuses at once.

grpc.aio's own writer replaces the server's status with INTERNAL "Internal error from Core" when a
write crosses the server's end of the call (grpc/grpc#36066): on this machine about two refusals
in three. A node that refuses an exec session while the client's stdin is on its way must reach
the client as the node's refusal.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import grpc

from rune.api import exec_pb2
from runed.api import forward

METHOD = "/rune.api.ExecService/StreamExec"
TRIES = 100


async def _refuse(requests: AsyncIterator[exec_pb2.ExecRequest], ctx: grpc.aio.ServicerContext) -> AsyncIterator:  # type: ignore[type-arg]
    async for _ in requests:
        await ctx.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, "too many exec sessions")
    yield exec_pb2.ExecResponse()


async def _stdin() -> AsyncIterator[exec_pb2.ExecRequest]:
    for data in (b"x", b"y", b""):
        await asyncio.sleep(0)
        yield exec_pb2.ExecRequest(stdin=data)


async def _codes() -> list[grpc.StatusCode]:
    handler = grpc.method_handlers_generic_handler(
        "rune.api.ExecService",
        {
            "StreamExec": grpc.stream_stream_rpc_method_handler(
                _refuse,
                request_deserializer=exec_pb2.ExecRequest.FromString,
                response_serializer=exec_pb2.ExecResponse.SerializeToString,
            )
        },
    )
    server = grpc.aio.server()
    server.add_generic_rpc_handlers((handler,))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    codes: list[grpc.StatusCode] = []
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as ch:
            method = ch.stream_stream(
                METHOD,
                request_serializer=exec_pb2.ExecRequest.SerializeToString,
                response_deserializer=exec_pb2.ExecResponse.FromString,
            )
            first = exec_pb2.ExecRequest(init=exec_pb2.ExecInitRequest(instance_id="web-0", command=["sh"]))
            for _ in range(TRIES):
                call = method()
                sender = asyncio.ensure_future(forward._send(call, first, _stdin()))
                try:
                    async for _ in call:
                        pass
                except grpc.aio.AioRpcError as e:
                    codes.append(e.code())
                await sender
    finally:
        await server.stop(None)
    return codes


def test_a_refusal_crossing_the_clients_stdin_stays_the_refusal() -> None:
    codes = asyncio.run(_codes())
    assert codes == [grpc.StatusCode.RESOURCE_EXHAUSTED] * TRIES
