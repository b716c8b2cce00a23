"""docker exec for container instances, against a small fake Docker Engine on a unix socket."""

from __future__ import annotations

import asyncio
import json
import struct
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from rune.api import admin_pb2, admin_pb2_grpc, exec_pb2, exec_pb2_grpc
from tests.harness import Runed, RunedFactory, run_runed
from tests.integration.instance_fixtures import Instances


class FakeEngine:
    """Just enough of the Engine API for exec; the "container" is a local shell."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.execs: dict[str, dict[str, Any]] = {}
        self.conns: set[asyncio.StreamWriter] = set()
        self.loop = asyncio.new_event_loop()
        self.started = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()
        assert self.started.wait(10)

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.server = self.loop.run_until_complete(asyncio.start_unix_server(self._conn, path=str(self.path)))
        self.started.set()
        self.loop.run_forever()

    def close(self) -> None:
        async def shutdown() -> None:
            for e in self.execs.values():
                p = e.get("proc")
                if p is not None and p.returncode is None:
                    p.kill()
                    await p.wait()
            conns = list(self.conns)
            for w in conns:
                w.close()
            # Wait for the transports to really close their sockets before the loop goes away.
            await asyncio.gather(*(w.wait_closed() for w in conns), return_exceptions=True)
            self.server.close()
            await self.server.wait_closed()
            await asyncio.sleep(0.05)

        asyncio.run_coroutine_threadsafe(shutdown(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
        self.loop.close()

    @staticmethod
    def _reply(w: asyncio.StreamWriter, status: int, body: object) -> None:
        data = json.dumps(body).encode()
        w.write(
            f"HTTP/1.1 {status} X\r\nContent-Type: application/json\r\nContent-Length: {len(data)}\r\n"
            f"Connection: close\r\n\r\n".encode()
            + data
        )

    async def _conn(self, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        self.conns.add(w)
        head = (await r.readuntil(b"\r\n\r\n")).decode()
        method, target = head.split(" ")[:2]
        length = 0
        for line in head.split("\r\n")[1:]:
            if line.lower().startswith("content-length:"):
                length = int(line.split(":")[1])
        body = json.loads(await r.readexactly(length)) if length else {}
        path = target.split("?")[0].split("/", 2)[2]  # drop /v1.xx
        parts = path.split("/")
        if method == "POST" and parts[0] == "containers" and parts[2] == "exec":
            if parts[1] != "c1":
                self._reply(w, 404, {"message": f"No such container: {parts[1]}"})
            else:
                eid = f"e{len(self.execs)}"
                self.execs[eid] = {"spec": body, "proc": None, "code": None}
                self._reply(w, 201, {"Id": eid})
        elif method == "GET" and parts[0] == "exec":
            e = self.execs[parts[1]]
            p = e["proc"]
            running = p is not None and p.returncode is None
            self._reply(w, 200, {"Running": running, "ExitCode": e["code"] or 0, "Pid": p.pid if p else 0})
        elif method == "POST" and parts[0] == "exec" and parts[2] == "resize":
            self._reply(w, 201, {})
        elif method == "POST" and parts[0] == "exec" and parts[2] == "start":
            await self._start(self.execs[parts[1]], r, w)
            return
        await w.drain()
        w.close()

    async def _start(self, e: dict[str, Any], r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        spec = e["spec"]
        w.write(b"HTTP/1.1 101 UPGRADED\r\nConnection: Upgrade\r\nUpgrade: tcp\r\n\r\n")
        env = dict(x.split("=", 1) for x in spec.get("Env", []))
        env["PATH"] = "/usr/bin:/bin"
        p = e["proc"] = await asyncio.create_subprocess_exec(
            *spec["Cmd"], stdin=-1, stdout=-1, stderr=-1, env=env, start_new_session=True
        )
        assert p.stdin is not None and p.stdout is not None and p.stderr is not None
        stdin = p.stdin

        async def feed() -> None:
            while chunk := await r.read(4096):
                stdin.write(chunk)
                await stdin.drain()
            stdin.close()

        async def out(stream: asyncio.StreamReader, kind: int) -> None:
            while chunk := await stream.read(4096):
                w.write(struct.pack(">BxxxI", kind, len(chunk)) + chunk)

        feeder = asyncio.ensure_future(feed())
        await asyncio.gather(out(p.stdout, 1), out(p.stderr, 2))
        e["code"] = await p.wait()
        feeder.cancel()
        await w.drain()
        w.close()


@pytest.fixture(scope="module")
def engine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FakeEngine]:
    e = FakeEngine(tmp_path_factory.mktemp("docker") / "docker.sock")
    yield e
    e.close()


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory, engine: FakeEngine) -> Iterator[Runed]:
    data = tmp_path_factory.mktemp("api") / "data"
    data.mkdir()
    (data / "runefile.yaml").write_text(f"docker:\n  socket: {engine.path}\n  api_version: '1.43'\n")
    with run_runed(data, role="grpc") as p:
        yield p


@pytest.fixture(scope="module")
def token(api: Runed) -> str:
    return str(
        admin_pb2_grpc.AdminServiceStub(api.channel()).AdminBootstrap(admin_pb2.AdminBootstrapRequest()).token_secret
    )


def _run(
    api: Runed, token: str, init: exec_pb2.ExecInitRequest, *more: exec_pb2.ExecRequest
) -> tuple[bytes, bytes, int]:
    stub = exec_pb2_grpc.ExecServiceStub(api.channel())
    out, err, code = b"", b"", -1
    reqs = [exec_pb2.ExecRequest(init=init), *more]
    for r in stub.StreamExec(iter(reqs), metadata=[("authorization", f"Bearer {token}")], timeout=20):
        out += r.stdout
        err += r.stderr
        if r.HasField("exit"):
            code = r.exit.code
    return out, err, code


def test_docker_exec_streams_stdin_stdout_stderr_and_exit(api: Runed, token: str, engine: FakeEngine) -> None:
    insts = Instances(api.data_dir).reset()
    insts.add("box", 0, runner="container", container_id="c1")
    init = exec_pb2.ExecInitRequest(
        service_name="box", command=["sh", "-c", 'cat; echo "$WHO" >&2; exit 3'], env={"WHO": "me"}
    )
    out, err, code = _run(api, token, init, exec_pb2.ExecRequest(stdin=b"piped\n"), exec_pb2.ExecRequest(stdin=b""))
    assert (out, err, code) == (b"piped\n", b"me\n", 3)
    assert engine.execs["e0"]["spec"]["Cmd"][0] == "sh"


def test_docker_exec_errors(api: Runed, token: str, engine: FakeEngine) -> None:
    insts = Instances(api.data_dir).reset()
    insts.add("gone", 0, runner="container", container_id="nope")
    insts.add("new", 0, runner="container")
    for service, code in (("gone", grpc.StatusCode.NOT_FOUND), ("new", grpc.StatusCode.FAILED_PRECONDITION)):
        with pytest.raises(grpc.RpcError) as e:
            _run(api, token, exec_pb2.ExecInitRequest(service_name=service, command=["true"]))
        assert e.value.code() == code, service


def test_docker_exec_without_an_engine_is_unavailable(tmp_path: Path, runed_factory: RunedFactory) -> None:
    data = tmp_path / "data"
    data.mkdir()
    (data / "runefile.yaml").write_text(f"docker:\n  socket: {tmp_path / 'missing.sock'}\n")
    p = runed_factory(data, role="grpc")
    Instances(data).add("box", 0, runner="container", container_id="c1")
    tok = admin_pb2_grpc.AdminServiceStub(p.channel()).AdminBootstrap(admin_pb2.AdminBootstrapRequest()).token_secret
    with pytest.raises(grpc.RpcError) as e:
        _run(p, tok, exec_pb2.ExecInitRequest(service_name="box", command=["true"]))
    assert e.value.code() == grpc.StatusCode.UNAVAILABLE
