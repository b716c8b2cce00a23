"""Exec in a container instance through the Docker Engine API (``docker exec``), best effort.

Same interface as :class:`runed.exec.session.ExecProcess`: events end with exactly one Exit. The
engine does not kill an exec'd process when its stream closes, nor deliver signals to it, so both
go to the exec's host pid (the engine is local).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import struct
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import orjson

from runed.exec.session import CHUNK, Event, ExecSpec, Exit, Output, until_exit

# Output frames of a non-TTY exec: 1 byte stream (1 stdout, 2 stderr), 3 zero bytes, 4-byte size.
_HEADER = struct.Struct(">BxxxI")


class DockerError(Exception):
    """The engine refused or could not be reached; ``status`` is its HTTP status (0: no answer)."""

    def __init__(self, message: str, status: int = 0) -> None:
        super().__init__(message)
        self.message = message
        self.status = status


@dataclass
class DockerExec:
    """One ``docker exec`` session over the engine's unix socket."""

    spec: ExecSpec
    container_id: str
    socket_path: str
    api_version: str = "1.43"
    pid: int = 0
    exit: Exit | None = None
    exec_id: str = ""
    _queue: asyncio.Queue[Event] = field(default_factory=asyncio.Queue)
    _writer: asyncio.StreamWriter | None = None
    _reader_task: asyncio.Task[None] | None = None
    _stdin_closed: bool = False

    def _client(self) -> httpx.AsyncClient:
        transport = httpx.AsyncHTTPTransport(uds=self.socket_path)
        return httpx.AsyncClient(transport=transport, base_url=f"http://docker/v{self.api_version}", timeout=10.0)

    async def _api(self, method: str, path: str, **kw: Any) -> httpx.Response:
        try:
            async with self._client() as c:
                r = await c.request(method, path, **kw)
        except httpx.HTTPError as e:
            raise DockerError(f"Docker engine at {self.socket_path} not reachable: {e}") from None
        if r.status_code >= 400:
            try:
                msg = str(r.json().get("message", r.text))
            except ValueError:
                msg = r.text
            raise DockerError(msg, r.status_code)
        return r

    async def start(self) -> None:
        """Create and start the exec; raises DockerError when the engine refuses before it runs."""
        spec = self.spec
        body: dict[str, Any] = {
            "AttachStdin": True,
            "AttachStdout": True,
            "AttachStderr": True,
            "Tty": spec.tty,
            "Cmd": spec.command,
            "Env": [f"{k}={v}" for k, v in spec.env.items()],
        }
        if spec.cwd:
            body["WorkingDir"] = spec.cwd
        if spec.tty:
            body["ConsoleSize"] = [spec.rows, spec.cols]
        r = await self._api("POST", f"/containers/{self.container_id}/exec", json=body)
        self.exec_id = str(r.json()["Id"])
        try:
            reader, writer = await asyncio.open_unix_connection(self.socket_path)
        except OSError as e:
            raise DockerError(f"Docker engine at {self.socket_path} not reachable: {e}") from None
        payload = orjson.dumps({"Detach": False, "Tty": spec.tty})
        writer.write(
            f"POST /v{self.api_version}/exec/{self.exec_id}/start HTTP/1.1\r\nHost: docker\r\n"
            f"Content-Type: application/json\r\nConnection: Upgrade\r\nUpgrade: tcp\r\n"
            f"Content-Length: {len(payload)}\r\n\r\n".encode()
            + payload
        )
        await writer.drain()
        head = await reader.readuntil(b"\r\n\r\n")
        status = int(head.split(b" ", 2)[1])
        if status not in (101, 200):
            writer.close()
            raise DockerError(f"exec start failed with HTTP {status}", status)
        self._writer = writer
        with contextlib.suppress(DockerError, KeyError, ValueError):
            self.pid = int((await self._api("GET", f"/exec/{self.exec_id}/json")).json().get("Pid") or 0)
        self._reader_task = asyncio.create_task(self._read(reader))

    async def _read(self, reader: asyncio.StreamReader) -> None:
        try:
            if self.spec.tty:
                while chunk := await reader.read(CHUNK):
                    await self._queue.put(Output("stdout", chunk))
            else:
                while True:
                    try:
                        kind, size = _HEADER.unpack(await reader.readexactly(_HEADER.size))
                        data = await reader.readexactly(size)
                    except asyncio.IncompleteReadError:
                        break
                    await self._queue.put(Output("stderr" if kind == 2 else "stdout", data))
        except OSError:
            pass
        finally:
            if self._writer is not None:
                self._writer.close()
            self.exit = await self._exit_status()
            await self._queue.put(self.exit)

    async def _exit_status(self) -> Exit:
        for _ in range(50):
            try:
                info = (await self._api("GET", f"/exec/{self.exec_id}/json")).json()
            except DockerError:
                return Exit(1)
            if not info.get("Running"):
                code = int(info.get("ExitCode") or 0)
                return Exit(code, code - 128) if code > 128 and code - 128 in signal.valid_signals() else Exit(code)
            await asyncio.sleep(0.05)
        return Exit(1)

    def events(self) -> AsyncIterator[Event]:
        return until_exit(self._queue)

    async def write(self, data: bytes) -> None:
        if self._writer is None or self._stdin_closed:
            return
        with contextlib.suppress(OSError):
            self._writer.write(data)
            await self._writer.drain()

    async def close_stdin(self) -> None:
        if self._writer is None or self._stdin_closed:
            return
        if self.spec.tty:
            await self.write(b"\x04")
            return
        self._stdin_closed = True
        with contextlib.suppress(OSError):
            if self._writer.can_write_eof():
                self._writer.write_eof()

    def resize(self, rows: int, cols: int) -> None:
        if self.exec_id and self.spec.tty:
            task = asyncio.ensure_future(
                self._api("POST", f"/exec/{self.exec_id}/resize", params={"h": rows, "w": cols})
            )
            task.add_done_callback(lambda t: t.cancelled() or t.exception())

    def send_signal(self, sig: int) -> None:
        if self.pid and self.exit is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(self.pid, sig)

    async def kill(self) -> None:
        self.send_signal(signal.SIGKILL)
        if self._reader_task is not None and not self._reader_task.done():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(self._reader_task), 5)
