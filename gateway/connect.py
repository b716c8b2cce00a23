"""The Connect protocol (connectrpc.com/docs/protocol) on the RPC routes ``/rune.api.<Service>/<Method>``.

- Unary: ``POST`` with ``application/json`` or ``application/proto`` (``application/x-protobuf`` and
  ``application/octet-stream`` are read as proto too), or ``GET`` for side-effect-free methods
  (:func:`side_effect_free`) with ``?connect=v1&encoding=json|proto&message=...[&base64=1][&compression=gzip]``.
  Errors: the Connect JSON error with the Connect protocol's HTTP status table.
- Streams: server-streaming methods with ``application/connect+json`` or ``application/connect+proto``.
  Every message travels in an envelope (flags byte, 4-byte big-endian length, payload); the response
  is always HTTP 200 and ends with an end-stream envelope (flag 0x02) holding ``{"error": ...,
  "metadata": ...}``. Bidirectional methods (StreamLogs, StreamExec) are served half-duplex, as
  HTTP/1.1 allows: the request envelopes are read to the end, then the responses stream.
- ``Connect-Protocol-Version`` must be ``1`` when sent (``connect=v1`` for GET).
- Compression: ``gzip`` and ``identity``, both directions. Requests name theirs in
  ``Content-Encoding`` (unary), ``Connect-Content-Encoding`` (streams) or ``compression=`` (GET);
  responses use the first supported entry of ``Accept-Encoding`` / ``Connect-Accept-Encoding``
  (else the request's own), for bodies of at least :data:`COMPRESS_MIN_BYTES`.
- A Content-Type (or GET ``encoding``) that does not fit the method is 415.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import struct
import time
import urllib.parse
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from typing import Any

import orjson
from google.protobuf import descriptor_pb2
from google.protobuf.message import DecodeError, Message
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from rune.gateway import codec
from rune.gateway.backend import Backend
from rune.gateway.http import (
    PayloadTooLarge,
    UnsupportedMediaType,
    call_context,
    close_stream,
    connect_error_dict,
    connect_error_response,
    request_id_of,
    shutdown_event,
)
from runed.core import errors
from runed.pipeline.methods import Method
from runed.transport import metrics

PROTOCOL_VERSION = "1"
GET_VERSION = "v1"
# Unary content types -> codec. The last two are older spellings some clients send for proto.
UNARY_TYPES = {
    "application/json": "json",
    "application/proto": "proto",
    "application/x-protobuf": "proto",
    "application/octet-stream": "proto",
}
STREAM_TYPES = {"application/connect+json": "json", "application/connect+proto": "proto"}
GET_ENCODINGS = ("json", "proto")
IDENTITY = "identity"
GZIP = "gzip"
COMPRESSIONS = (GZIP, IDENTITY)
ACCEPTED = ", ".join(COMPRESSIONS)
# Smaller bodies go out as they are: gzip's header and trailer alone are 18 bytes.
COMPRESS_MIN_BYTES = 256
FLAG_COMPRESSED = 0x01
FLAG_END_STREAM = 0x02
_PREFIX = struct.Struct(">BI")
ALL_TYPES = ", ".join([*UNARY_TYPES, *STREAM_TYPES])

# Unary methods without side effects, so also served as GET (cacheable, a link a browser can open).
# A method whose proto says `option idempotency_level = NO_SIDE_EFFECTS` joins them by itself; rune.api
# keeps upstream's protos as they are, so the reads are named here. GetSecret is left out on purpose:
# a secret's values do not belong in a response a cache may keep for a URL.
SIDE_EFFECT_FREE: frozenset[str] = frozenset(
    f"/rune.api.{name}"
    for name in (
        "AdminService/PolicyGet",
        "AdminService/PolicyList",
        "AdminService/UserList",
        "AdminService/TokenList",
        "AdminService/ListRegistries",
        "AdminService/GetRegistry",
        "AdminService/RegistriesStatus",
        "AdminService/ListAuditEvents",
        "AuthService/WhoAmI",
        "ConfigmapService/GetConfigmap",
        "ConfigmapService/ListConfigmaps",
        "HealthService/GetHealth",
        "InstanceService/GetInstance",
        "InstanceService/ListInstances",
        "NamespaceService/GetNamespace",
        "NamespaceService/ListNamespaces",
        "SecretService/ListSecrets",
        "ServiceService/GetService",
        "ServiceService/ListServices",
        "ServiceService/GetDeletionStatus",
        "ServiceService/ListDeletionOperations",
        "ServiceService/ListInstances",
        "ServiceService/ListServiceRevisions",
    )
)


def side_effect_free(method: Method) -> bool:
    """Whether a unary method may be called with GET: its idempotency_level, or :data:`SIDE_EFFECT_FREE`."""
    if method.kind != "unary":
        return False
    level = method.descriptor.GetOptions().idempotency_level
    return level == descriptor_pb2.MethodOptions.NO_SIDE_EFFECTS or method.full_name in SIDE_EFFECT_FREE


def allowed_verbs(method: Method) -> list[str]:
    """The HTTP methods of a method's RPC route (for ``Allow``)."""
    return ["GET", "POST"] if side_effect_free(method) else ["POST"]


def media_type(request: Request) -> str:
    return request.headers.get("content-type", "").split(";", 1)[0].strip().lower()


def is_connect(request: Request) -> bool:
    """A Connect call, rather than the plain RPC-style JSON form: a GET, the protocol header, or a
    content type only Connect clients send here."""
    if request.method == "GET" or "connect-protocol-version" in request.headers:
        return True
    ctype = media_type(request)
    return ctype in STREAM_TYPES or (ctype in UNARY_TYPES and UNARY_TYPES[ctype] == "proto")


# -- compression ----------------------------------------------------------------------------------


def _check_compression(name: str, header: str) -> str:
    name = name.strip().lower() or IDENTITY
    if name not in COMPRESSIONS:
        raise errors.Unimplemented(f"unsupported compression {name!r} in {header}: use one of {ACCEPTED}")
    return name


def decompress(data: bytes, compression: str, limit: int) -> bytes:
    """``data`` as sent, at most ``limit`` bytes once inflated (a small gzip body can hide a huge one)."""
    if compression == IDENTITY or not data:
        return data
    inflater = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)
    try:
        out = inflater.decompress(data, limit + 1)
    except zlib.error as e:
        raise errors.InvalidArgument(f"malformed gzip data: {e}") from None
    if len(out) > limit:
        raise PayloadTooLarge(f"request message is over the limit of {limit} bytes once decompressed")
    if not inflater.eof:
        raise errors.InvalidArgument("malformed gzip data: truncated")
    return out


def negotiate(accept: str | None, fallback: str) -> str:
    """The response compression: the client's first supported choice (``;q=0`` refuses one), else its own."""
    if accept is None:
        return fallback
    for item in accept.split(","):
        name, _, params = item.partition(";")
        name = name.strip().lower()
        if params.replace(" ", "").lower() in ("q=0", "q=0.0", "q=0.00", "q=0.000"):
            continue
        if name in COMPRESSIONS:
            return name
    return IDENTITY


def _compress(data: bytes, compression: str) -> tuple[bytes, bool]:
    if compression != GZIP or len(data) < COMPRESS_MIN_BYTES:
        return data, False
    packer = zlib.compressobj(wbits=16 + zlib.MAX_WBITS)
    return packer.compress(data) + packer.flush(), True


# -- messages -------------------------------------------------------------------------------------


def decode(method: Method, codec_name: str, data: bytes) -> Message:
    """One request message in the call's codec; a bad one is INVALID_ARGUMENT naming what is wrong."""
    if codec_name == "proto":
        try:
            return method.request_cls.FromString(data)
        except DecodeError:
            raise codec.BadRequest(
                f"malformed protobuf: not a valid {method.request_cls.DESCRIPTOR.full_name}"
            ) from None
    return codec.build_request(method.request_cls, body=codec.parse_body(data), body_field="*")


def encode(msg: Message, codec_name: str) -> bytes:
    return msg.SerializeToString() if codec_name == "proto" else codec.dumps(msg)


def envelope(payload: bytes, flags: int = 0) -> bytes:
    """One enveloped message: flags, big-endian length, payload."""
    return _PREFIX.pack(flags, len(payload)) + payload


def envelopes(data: bytes, compression: str, limit: int) -> Iterable[bytes]:
    """The payloads of a request stream's envelopes, inflated where flagged."""
    pos = 0
    while pos < len(data):
        if len(data) - pos < _PREFIX.size:
            raise errors.InvalidArgument("malformed envelope: truncated prefix")
        flags, size = _PREFIX.unpack_from(data, pos)
        pos += _PREFIX.size
        if len(data) - pos < size:
            raise errors.InvalidArgument(f"malformed envelope: {size} bytes announced, {len(data) - pos} sent")
        payload = data[pos : pos + size]
        pos += size
        if flags & FLAG_END_STREAM:
            raise errors.InvalidArgument("a request stream may not carry an end-stream envelope")
        if flags & FLAG_COMPRESSED:
            if compression == IDENTITY:
                raise errors.InvalidArgument("compressed envelope without Connect-Content-Encoding")
            payload = decompress(payload, compression, limit)
        yield payload


def end_stream(err: errors.RuneError | None, request_id: str) -> bytes:
    """The last envelope of every response stream: the error (if any) and the trailing metadata."""
    body: dict[str, Any] = {"metadata": {"x-request-id": [request_id]}}
    if err is not None:
        body["error"] = connect_error_dict(err, request_id)
    return envelope(orjson.dumps(body), FLAG_END_STREAM)


async def _requests(messages: list[Message]) -> AsyncIterator[Message]:
    for m in messages:
        yield m


# -- the handler ----------------------------------------------------------------------------------


class Connect:
    """Serves Connect calls on the RPC routes through the shared pipeline."""

    def __init__(self, backend: Backend, read_body: Callable[[Request], Awaitable[bytes]]) -> None:
        self.backend = backend
        self.pipeline = backend.pipeline
        self.read_body = read_body
        self.max_body = backend.config.server.max_body_bytes

    async def __call__(self, request: Request, method: Method) -> Response:
        """Answer one Connect request for ``method`` (GET, unary POST or a stream)."""
        started = time.monotonic()
        if request.method == "GET":
            return await self._get(request, method, started)
        ctype = media_type(request)
        if ctype in STREAM_TYPES:
            return await self._stream(request, method, STREAM_TYPES[ctype], ctype, started)
        return await self._unary_post(request, method, ctype, started)

    def _refused(self, method: Method, err: errors.RuneError, started: float, rid: str) -> Response:
        """An error found before the pipeline saw the call (so counted here)."""
        metrics.record("rest", method.full_name, err.code.name, time.monotonic() - started)
        return connect_error_response(err, rid)

    # -- unary ----------------------------------------------------------------------------------

    async def _unary_post(self, request: Request, method: Method, ctype: str, started: float) -> Response:
        rid = request_id_of(request)
        try:
            _check_version(request.headers.get("connect-protocol-version"))
            codec_name = UNARY_TYPES.get(ctype) if method.kind == "unary" else None
            if codec_name is None:
                raise _unsupported(ctype or "(none)", method)
            compression = _check_compression(request.headers.get("content-encoding", ""), "Content-Encoding")
            raw = decompress(await self.read_body(request), compression, self.max_body)
            msg = decode(method, codec_name, raw)
        except errors.RuneError as err:
            return self._refused(method, err, started, rid)
        accept = negotiate(request.headers.get("accept-encoding"), compression)
        return await self._unary(request, method, msg, codec_name, ctype, accept)

    async def _get(self, request: Request, method: Method, started: float) -> Response:
        rid = request_id_of(request)
        if not side_effect_free(method):
            err = errors.Unimplemented(
                f"GET is not allowed on {method.full_name.lstrip('/')}: it has side effects (use POST)"
            )
            metrics.record("rest", method.full_name, err.code.name, time.monotonic() - started)
            resp = Response(
                orjson.dumps(connect_error_dict(err, rid)),
                status_code=405,
                media_type="application/json",
                headers={"allow": ", ".join(allowed_verbs(method)), "x-request-id": rid},
            )
            return resp
        try:
            query = _raw_query(request.scope["query_string"])
            version = query.get("connect")
            if version is not None and version != GET_VERSION.encode():
                raise errors.invalid(("connect", f"unsupported protocol version {version.decode('latin-1')!r}: use v1"))
            encoding = query.get("encoding", b"").decode("latin-1")
            if encoding not in GET_ENCODINGS:
                raise UnsupportedMediaType(
                    f"unsupported encoding {encoding!r}: a GET names its message's codec with encoding=json or proto"
                )
            compression = _check_compression(query.get("compression", b"").decode("latin-1"), "compression")
            data = query.get("message", b"")
            if query.get("base64") == b"1":
                data = _unbase64(data)
            msg = decode(method, encoding, decompress(data, compression, self.max_body))
        except errors.RuneError as err:
            return self._refused(method, err, started, rid)
        accept = negotiate(request.headers.get("accept-encoding"), compression)
        return await self._unary(request, method, msg, encoding, f"application/{encoding}", accept)

    async def _unary(
        self, request: Request, method: Method, msg: Message, codec_name: str, ctype: str, compression: str
    ) -> Response:
        ctx = call_context(self.backend, method, request)
        try:
            resp = await self.pipeline.unary(ctx, msg)
        except errors.RuneError as err:
            return connect_error_response(err, ctx.request_id)
        body, compressed = _compress(encode(resp, codec_name), compression)
        headers = {"x-request-id": ctx.request_id, "accept-encoding": ACCEPTED}
        if compressed:
            headers["content-encoding"] = GZIP
        return Response(body, media_type=ctype, headers=headers)

    # -- streams --------------------------------------------------------------------------------

    async def _stream(self, request: Request, method: Method, codec_name: str, ctype: str, started: float) -> Response:
        rid = request_id_of(request)
        try:
            _check_version(request.headers.get("connect-protocol-version"))
            if method.kind == "unary":
                raise _unsupported(ctype, method)
        except errors.RuneError as err:
            return self._refused(method, err, started, rid)
        # From here on the answer is HTTP 200 and any error travels in the end-stream envelope.
        headers = {"x-request-id": rid, "connect-accept-encoding": ACCEPTED}
        try:
            compression = _check_compression(
                request.headers.get("connect-content-encoding", ""), "Connect-Content-Encoding"
            )
            raw = await self.read_body(request)
            messages = [decode(method, codec_name, p) for p in envelopes(raw, compression, self.max_body)]
            if method.kind == "server_stream" and len(messages) != 1:
                raise errors.InvalidArgument(
                    f"{method.name} takes exactly one request message, {len(messages)} were sent"
                )
        except errors.RuneError as err:
            metrics.record("rest", method.full_name, err.code.name, time.monotonic() - started)
            return Response(end_stream(err, rid), media_type=ctype, headers=headers)
        ctx = call_context(self.backend, method, request)
        if method.kind == "server_stream":
            source = self.pipeline.server_stream(ctx, messages[0])
        else:
            source = self.pipeline.bidi(ctx, _requests(messages))
        out = negotiate(request.headers.get("connect-accept-encoding"), compression)
        if out == GZIP:
            headers["connect-content-encoding"] = GZIP
        return StreamingResponse(_frames(source, codec_name, out, rid), media_type=ctype, headers=headers)


async def _frames(source: AsyncIterator[Message], codec_name: str, compression: str, rid: str) -> AsyncIterator[bytes]:
    """The response envelopes of a stream, then its end-stream envelope; ends early when the role stops."""
    metrics.stream_opened("rest")
    failure: errors.RuneError | None = None
    it = source.__aiter__()
    stopping = asyncio.ensure_future(shutdown_event().wait())
    pending: asyncio.Future[Message] | None = None
    try:
        while True:
            pending = asyncio.ensure_future(it.__anext__())
            done, _ = await asyncio.wait({pending, stopping}, return_when=asyncio.FIRST_COMPLETED)
            if pending not in done:
                failure = errors.Unavailable("the server is shutting down: call again to resume")
                break
            try:
                msg = pending.result()
            except StopAsyncIteration:
                break
            finally:
                pending = None
            payload, compressed = _compress(encode(msg, codec_name), compression)
            yield envelope(payload, FLAG_COMPRESSED if compressed else 0)
    except errors.RuneError as err:
        failure = err
    finally:
        metrics.stream_opened("rest", -1)
        stopping.cancel()
        await close_stream(it, pending)
    yield end_stream(failure, rid)


def _check_version(value: str | None) -> None:
    if value is not None and value.strip() != PROTOCOL_VERSION:
        raise errors.invalid(
            (
                "Connect-Protocol-Version",
                f"unsupported protocol version {value!r}: this server speaks {PROTOCOL_VERSION}",
            )
        )


def _unsupported(ctype: str, method: Method) -> UnsupportedMediaType:
    wanted = "application/json or application/proto" if method.kind == "unary" else ", ".join(STREAM_TYPES)
    return UnsupportedMediaType(f"unsupported content type {ctype!r} for {method.full_name.lstrip('/')}: use {wanted}")


def _raw_query(query_string: bytes) -> dict[str, bytes]:
    """Query parameters as bytes (a percent-encoded proto message need not be UTF-8); the last one wins."""
    pairs = urllib.parse.parse_qsl(query_string.decode("latin-1"), keep_blank_values=True, encoding="latin-1")
    return {k: v.encode("latin-1") for k, v in pairs}


def _unbase64(data: bytes) -> bytes:
    """URL-safe base64 with or without padding (the standard alphabet is read too)."""
    text = data.strip().rstrip(b"=")
    try:
        return base64.urlsafe_b64decode(text.replace(b"+", b"-").replace(b"/", b"_") + b"=" * (-len(text) % 4))
    except (binascii.Error, ValueError):
        raise errors.invalid(("message", "is not valid base64")) from None
