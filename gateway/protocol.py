"""Bounds on a request's head (request line and headers) on the REST port: a time limit and a size limit.

httptools has no header-size limit and uvicorn starts no timer before a request's headers are in
(``timeout_keep_alive`` runs only between requests), so a client sending one header line a second
(slowloris) holds a connection for as long as it likes, and a megabyte of headers is read whole.
:class:`HeadLimits` wraps uvicorn's httptools protocol:

- ``header_timeout``: the head must be complete this long after the connection opens, or after
  the first byte that follows the previous request; otherwise 408 and the connection is closed.
- ``max_header_bytes``: the bytes received for one head; beyond them 431 and the connection is closed.

Both answers carry a ``google.rpc.Status`` JSON body like every other REST error, and ``Connection:
close``. The connection is then half-closed and drained for a moment before it is closed, so the
client reads the answer instead of a reset. The values come from ``server.header_timeout_seconds``
and ``server.max_header_bytes`` (:func:`bounded`).
"""

from __future__ import annotations

import asyncio
import http
import logging
from typing import Any, cast

import orjson
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from rune.gateway.http import status_dict
from runed.core import errors

log = logging.getLogger("runed.gateway")

# How long a refused connection is drained (its input read and dropped) before it is closed.
LINGER_SECONDS = 2.0


class HeadLimits(HttpToolsProtocol):
    """uvicorn's httptools protocol with a deadline and a size limit for each request head."""

    header_timeout: float = 10.0
    max_header_bytes: int = 64 * 1024

    _head_timer: asyncio.TimerHandle | None = None
    # True from the connection's start, and again once a request's body is complete, until the
    # next request's headers are: bytes received meanwhile belong to a request head.
    _in_head: bool = True
    _head_bytes: int = 0  # bytes received while in a head: bounds a head that never completes
    _head_size: int = 0  # the parsed head's size: bounds one that arrived whole, with its body
    _refused: bool = False

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._refused:
            return  # draining after a 408/431
        if self._in_head:
            self._head_bytes += len(data)
            if self._head_timer is None:
                self._arm()
        super().data_received(data)
        if self._in_head and self._head_bytes > self.max_header_bytes and not self._refused:
            self._refuse_size()

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._head_size = 0

    def on_url(self, url: bytes) -> None:
        self._head_size += len(url)
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._head_size += len(name) + len(value) + 4  # ": " and CRLF
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        self._in_head = False
        self._disarm()
        if self._refused:
            return
        if self._head_size > self.max_header_bytes:
            self._refuse_size()
            return
        super().on_headers_complete()

    def on_body(self, body: bytes) -> None:
        if not self._refused:
            super().on_body(body)

    def on_message_complete(self) -> None:
        if self._refused:
            return
        super().on_message_complete()
        self._in_head = True
        self._head_bytes = 0

    # -- the head deadline --------------------------------------------------------------------
    def _arm(self) -> None:
        self._head_timer = self.loop.call_later(self.header_timeout, self._head_timed_out)

    def _disarm(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_timed_out(self) -> None:
        self._head_timer = None
        if self.transport.is_closing() or not self._in_head:
            return
        if self.cycle is not None and not self.cycle.response_complete:
            # A response is still being written (the slow head is a pipelined request behind it):
            # the connection closes once that response is done.
            self.cycle.keep_alive = False
            return
        self._refuse(
            http.HTTPStatus.REQUEST_TIMEOUT,
            errors.DeadlineExceeded(f"request headers not received within {self.header_timeout:g}s"),
        )

    # -- refusing -------------------------------------------------------------------------------
    def _refuse_size(self) -> None:
        self._refuse(
            http.HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE,
            errors.ResourceExhausted(f"request headers are over the limit of {self.max_header_bytes} bytes"),
        )

    def _refuse(self, status: http.HTTPStatus, err: errors.RuneError) -> None:
        """Answer ``status`` with ``err`` as the body, then half-close and drain before closing."""
        self._refused = True
        self._disarm()
        if self.transport.is_closing():
            return
        peer = f"{self.client[0]}:{self.client[1]}" if self.client else "?"
        log.info("refused a request from %s: %d %s", peer, status.value, err.message)
        body = orjson.dumps(status_dict(err, ""))
        head = (
            f"HTTP/1.1 {status.value} {status.phrase}\r\n"
            "content-type: application/json\r\n"
            f"content-length: {len(body)}\r\n"
            "connection: close\r\n\r\n"
        )
        transport = self.transport
        if self.cycle is not None and not self.cycle.response_complete:
            transport.close()  # mid-response: another answer would corrupt it
            return
        transport.write(head.encode() + body)
        if transport.can_write_eof():
            transport.write_eof()
            self.loop.call_later(LINGER_SECONDS, transport.close)
        else:
            transport.close()


def bounded(base: Any, header_timeout: float, max_header_bytes: int) -> type[HttpToolsProtocol]:
    """uvicorn's ``http`` setting (``"httptools"`` or a subclass of its protocol) with :class:`HeadLimits`."""
    base_cls: type[HttpToolsProtocol] = HttpToolsProtocol if base == "httptools" else base
    if not issubclass(base_cls, HttpToolsProtocol):
        raise TypeError(f"request head limits need uvicorn's httptools protocol, not {base_cls!r}")
    attrs = {"header_timeout": header_timeout, "max_header_bytes": max_header_bytes}
    if base_cls is HttpToolsProtocol:
        return cast(type[HttpToolsProtocol], type("BoundedHttpToolsProtocol", (HeadLimits,), attrs))
    return cast(type[HttpToolsProtocol], type(f"Bounded{base_cls.__name__}", (HeadLimits, base_cls), attrs))
