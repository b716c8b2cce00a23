"""StreamExec over a WebSocket: ``/v1/namespaces/{ns}/exec/{target}/ws``, the interactive form.

Credentials come in the ``Authorization`` header, or for browsers (which cannot set headers on a
WebSocket) as the subprotocols ``rune.exec.v1`` and ``bearer.<token>``. The first text message is
the ExecInitRequest JSON; then text messages are ExecRequest JSON and binary messages raw stdin (an
empty one closes input); the server sends every ExecResponse as a JSON text message. Closing the
socket ends the call, and with it the command.
"""

from __future__ import annotations

import asyncio
import contextlib

import orjson
from starlette.routing import BaseRoute, WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect

from rune.api import exec_pb2
from rune.gateway import codec
from rune.gateway.bidi import Feed, context
from rune.gateway.exec_http import EXEC_METHOD, as_body_paths, init_from, input_from
from rune.gateway.http import no_query, status_dict
from runed.core import errors
from runed.pipeline.stages import Pipeline

WS_SUBPROTOCOL = "rune.exec.v1"
WS_BEARER_PREFIX = "bearer."


class ExecSocket:
    """The WebSocket endpoint, calling StreamExec through ``pipeline`` for as long as the socket is open."""

    def __init__(self, pipeline: Pipeline) -> None:
        self.pipeline = pipeline

    async def serve(self, ws: WebSocket) -> None:
        ctx = context(ws, EXEC_METHOD)
        offered = [p.strip() for p in ws.headers.get("sec-websocket-protocol", "").split(",") if p.strip()]
        # Browsers cannot set headers on a WebSocket: they may pass the token as a subprotocol instead.
        bearer = next((p[len(WS_BEARER_PREFIX) :] for p in offered if p.startswith(WS_BEARER_PREFIX)), "")
        if bearer and "authorization" not in ctx.metadata:
            ctx.metadata["authorization"] = f"Bearer {bearer}"
        await ws.accept(subprotocol=WS_SUBPROTOCOL if WS_SUBPROTOCOL in offered else None)
        try:
            no_query(ws)
            init = init_from((await ws.receive_text()).encode(), ws.path_params["target"], ws.path_params["ns"])
        except errors.RuneError as err:
            await ws.send_text(orjson.dumps({"error": status_dict(err, ctx.request_id)}).decode())
            await ws.close(1008)
            return
        except WebSocketDisconnect:
            return
        feed = Feed(exec_pb2.ExecRequest(init=init))

        async def read_input() -> None:
            with contextlib.suppress(WebSocketDisconnect):
                while True:
                    m = await ws.receive()
                    if m["type"] == "websocket.disconnect":
                        raise WebSocketDisconnect(int(m.get("code") or 1000))
                    if m.get("bytes") is not None:
                        feed.put(exec_pb2.ExecRequest(stdin=m["bytes"]))
                    elif m.get("text") is not None:
                        try:
                            feed.put(input_from(m["text"].encode()))
                        except errors.RuneError as err:
                            await ws.send_text(orjson.dumps({"error": status_dict(err, ctx.request_id)}).decode())
            # The client is gone: stop the call (and with it the command).
            output.cancel()

        async def write_output() -> None:
            try:
                async for msg in self.pipeline.bidi(ctx, feed):
                    await ws.send_text(codec.dumps(msg).decode())
            except errors.RuneError as err:
                await ws.send_text(orjson.dumps({"error": status_dict(as_body_paths(err), ctx.request_id)}).decode())
            with contextlib.suppress(Exception):
                await ws.close(1000)

        output = asyncio.ensure_future(write_output())
        reader = asyncio.ensure_future(read_input())
        try:
            with contextlib.suppress(asyncio.CancelledError):
                await output
        finally:
            reader.cancel()
            output.cancel()
            for t in (reader, output):
                with contextlib.suppress(BaseException):
                    await t


def routes(pipeline: Pipeline) -> list[BaseRoute]:
    """Mounted by the gateway app ahead of its generated ``/v1`` routes."""
    return [WebSocketRoute("/v1/namespaces/{ns}/exec/{target:path}/ws", ExecSocket(pipeline).serve)]
