"""The API host's side of the node channel: a log or exec stream of an instance another node runs.

Authorization has run on the API host: the node is asked with a short-lived node token (see
:mod:`runed.auth.nodetoken`) for that one node, carrying the caller's name for the node's audit.
Requests and responses pass through unchanged, both ways. A node that cannot be reached (or that
refuses the cluster's token) is UNAVAILABLE naming the node (``node`` in its ErrorInfo metadata);
the node's own answers (NOT_FOUND, FAILED_PRECONDITION, RESOURCE_EXHAUSTED ...) reach the client as
the node gave them: code, message, ErrorInfo reason and metadata, field violations, retry delay.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
from google.protobuf.message import DecodeError
from google.rpc import status_pb2

from runed.core import errors
from runed.core.config.schema import NodeConfig, NodeTLSConfig
from runed.model.nodes import NODE, SCOPE, Node, local_node_id
from runed.pipeline import status
from runed.pipeline.context import CallContext
from runed.store.base import Record, Store, iter_all

# The transport name of calls that came through the node channel (the node serves its own instances).
NODE_TRANSPORT = "node"
# Instance records written before nodes existed: run by the host whose data dir holds them.
LEGACY_NODES = ("", "local")

# The trailer in which a gRPC server sends its rich status (google.rpc.Status, serialised).
STATUS_DETAILS = "grpc-status-details-bin"
# Codes a node answers with itself, also when its status has no details (an unknown method, a
# cancelled call); the others (UNAVAILABLE, DEADLINE_EXCEEDED, INTERNAL ...) without them are the transport's.
_ANSWERS = frozenset(
    (
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.PERMISSION_DENIED,
        grpc.StatusCode.NOT_FOUND,
        grpc.StatusCode.ALREADY_EXISTS,
        grpc.StatusCode.ABORTED,
        grpc.StatusCode.FAILED_PRECONDITION,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        grpc.StatusCode.UNIMPLEMENTED,
        grpc.StatusCode.CANCELLED,
    )
)
# What the call's C half raises for a write the call no longer takes (see ``_send``).
try:
    from grpc._cython.cygrpc import InternalError as _CoreRefused
except ImportError:  # pragma: no cover - another grpcio layout: _send falls back to grpc.aio's writer
    _CoreRefused = grpc.aio.AioRpcError  # type: ignore[misc,assignment]
# One channel per node and event loop (grpc.aio channels belong to the loop that made them), with
# the address, TLS and CA it was made for: a node that moves, or a CA that changes, gets a new one and
# the old one is closed.
_channels: dict[tuple[int, str], tuple[str, bool, bytes, grpc.aio.Channel]] = {}
_closing: set[asyncio.Task[None]] = set()


def here(cfg: NodeConfig) -> str | None:
    """This host's node id, or None on a control-plane host that runs no instances."""
    return local_node_id(cfg) if cfg.enabled else None


def node_of(rec: Record) -> str:
    return str((rec.data.get("instance") or {}).get("node_id") or "")


def is_local(ctx: CallContext, node: str) -> bool:
    """Whether this host runs an instance placed on ``node`` (legacy records included)."""
    return node in LEGACY_NODES or node == here(ctx.deps.config.node)


def elsewhere(ctx: CallContext, rec: Record) -> str | None:
    """The node to ask for this instance, or None when this host serves it.

    A call that came through the node channel is never passed on: a node serves only its own.
    """
    node = node_of(rec)
    if is_local(ctx, node):
        return None
    if ctx.transport == NODE_TRANSPORT:
        raise errors.on_other_node(rec.name, node)
    return node


def remote_nodes(store: Store, exclude: str | None) -> list[str]:
    """The Ready nodes other than ``exclude`` whose channel is known."""
    out = []
    for rec in iter_all(store, NODE, SCOPE):
        n = Node.from_record(rec.name, rec.data)
        if n.id != exclude and n.ready and n.channel_port:
            out.append(n.id)
    return sorted(out)


def _target(store: Store, node: str) -> tuple[str, bool]:
    """Where ``node`` serves its channel, and whether over TLS."""
    rec = store.get(NODE, SCOPE, node)
    if rec is None:
        raise errors.Unavailable(
            f"node {node} is not registered: its instances cannot be reached", metadata={"node": node}
        )
    n = Node.from_record(rec.name, rec.data)
    if not n.address or not n.channel_port:
        raise errors.Unavailable(
            f"node {node} has not published its node channel: its instances cannot be reached",
            metadata={"node": node},
        )
    host = f"[{n.address}]" if ":" in n.address else n.address
    return f"{host}:{n.channel_port}", n.channel_tls


def _channel(node: str, target: str, node_tls: bool, tls: NodeTLSConfig) -> grpc.aio.Channel:
    """The channel to a node's ``target``: over TLS, its certificate checked against ``tls.ca_file``,
    when the node serves TLS. A host with node.tls on never talks to a node in plaintext (its
    token and the exec bytes would cross the network in the clear), nor one without to a TLS node."""
    if node_tls != tls.enabled:
        why = (
            "serves its channel over TLS: set node.tls (enabled, ca_file) on this host to reach it"
            if node_tls
            else "serves its channel without TLS, and node.tls is enabled here"
        )
        raise errors.Unavailable(f"node {node} ({target}) {why}", metadata={"node": node})
    ca = b""
    if node_tls:
        # Read for every call (a few hundred bytes; forwarded calls are streams of logs and exec):
        # a CA file replaced by its new bundle is trusted from the next call on, without a restart.
        try:
            ca = Path(tls.ca_file).read_bytes()
        except OSError as e:
            raise errors.Unavailable(
                f"node {node} ({target}): cannot read node.tls.ca_file: {e.strerror}", metadata={"node": node}
            ) from None
    loop = asyncio.get_running_loop()
    key = (id(loop), node)
    held = _channels.get(key)
    if held is not None and held[:3] == (target, node_tls, ca):
        return held[3]
    if held is not None:
        # The node registered again elsewhere (another port, say), or the CA changed: calls still on
        # the old channel end with it.
        del _channels[key]
        task = loop.create_task(held[3].close())
        _closing.add(task)
        task.add_done_callback(_closing.discard)
    options = [("grpc.max_receive_message_length", 16 * 1024 * 1024)]
    if node_tls:
        ch = grpc.aio.secure_channel(target, grpc.ssl_channel_credentials(root_certificates=ca), options=options)
    else:
        ch = grpc.aio.insecure_channel(target, options=options)
    _channels[key] = (target, node_tls, ca, ch)
    return ch


def _node_status(e: grpc.aio.AioRpcError) -> status_pb2.Status | None:
    for key, value in e.trailing_metadata() or ():
        if key == STATUS_DETAILS and isinstance(value, bytes):
            try:
                return status_pb2.Status.FromString(value)
            except DecodeError:
                return None
    return None


def _error(node: str, target: str, e: grpc.aio.AioRpcError) -> errors.RuneError:
    """A node's error for the client: its own answer as it gave it, else UNAVAILABLE naming the node."""
    code = e.code()
    details = e.details() or str(code.name)
    st = _node_status(e)
    own = status.error_of_status(st) if st is not None and st.code == code.value[0] else None
    if own is not None and code != grpc.StatusCode.UNAUTHENTICATED:
        return own
    about = {"node": node}
    if code == grpc.StatusCode.UNAUTHENTICATED:
        return errors.Unavailable(f"node {node} ({target}) refused the control plane: {details}", metadata=about)
    if code in _ANSWERS:
        return errors.received(code, details)
    return errors.Unavailable(f"node {node} ({target}) is unreachable: {details}", metadata=about)


async def stream(
    ctx: CallContext, node: str, first: Any, requests: AsyncIterator[Any], response_cls: Any
) -> AsyncIterator[Any]:
    """The node's answer to ``first`` and then ``requests``, streamed both ways."""
    from runed.auth import nodetoken

    store = ctx.deps.store
    target, node_tls = await store.run(_target, store, node)
    channel = _channel(node, target, node_tls, ctx.deps.config.node.tls)
    token = nodetoken.mint(ctx.deps.identity.key, node, ctx.principal.subject)
    metadata = (("authorization", f"Bearer {token}"), ("x-request-id", ctx.request_id))

    method = channel.stream_stream(
        ctx.method.full_name,
        request_serializer=type(first).SerializeToString,
        response_deserializer=response_cls.FromString,
    )
    call = method(metadata=metadata, timeout=ctx.time_remaining())
    sender = asyncio.ensure_future(_send(call, first, requests))
    try:
        async for resp in call:
            yield resp
    except grpc.aio.AioRpcError as e:
        raise _error(node, target, e) from None
    finally:
        sender.cancel()
        call.cancel()


async def _send(call: Any, first: Any, requests: AsyncIterator[Any]) -> None:
    """Write ``first`` and then ``requests`` to the node, then half-close; stop once the call is over.

    Not with grpc.aio's own writer (``call.write``, or a request iterator): a write that crosses the
    node's end of the call fails, and it then replaces the node's status with INTERNAL "Internal
    error from Core" (grpc/grpc#36066). A client's stdin EOF sent as the node refused the session
    turned the refusal into "node unreachable" in about two calls of three. The call's C half
    refuses such a write and leaves the status alone; grpc.aio's writer is the fallback where that
    half is not found.
    """
    raw = getattr(call, "_cython_call", None)
    sent = getattr(call, "_metadata_sent", None)
    refused = (grpc.aio.AioRpcError, asyncio.InvalidStateError, _CoreRefused)
    serialize = type(first).SerializeToString

    async def write(req: Any) -> None:
        if raw is None or sent is None:
            await call.write(req)
            return
        await sent.wait()
        if not call.done():
            await raw.send_serialized_message(serialize(req))

    try:
        await write(first)
        async for req in requests:
            if call.done():
                return
            await write(req)
        if raw is None:
            await call.done_writing()
        elif not call.done():
            await raw.send_receive_close()
    except refused:
        return  # the call is over: its status says how
    except Exception:
        call.cancel()  # the client's side failed: so does the node's (as grpc.aio does for its iterators)
