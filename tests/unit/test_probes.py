"""Probe thresholds and the three probe kinds against real local listeners and processes."""

from __future__ import annotations

import asyncio
import socket
import sys
from pathlib import Path

from rune.api import common_pb2, service_pb2
from runed.controller import probes


def _spec(kind: str, **kw: object) -> probes.ProbeSpec:
    base: dict[str, object] = {
        "kind": kind,
        "path": "/",
        "port": 0,
        "command": (),
        "initial_delay": 0,
        "period": 1,
        "timeout": 1,
        "success_threshold": 2,
        "failure_threshold": 3,
    }
    base.update(kw)
    return probes.ProbeSpec(**base)  # type: ignore[arg-type]


def test_thresholds_flip_the_verdict_only_after_consecutive_results() -> None:
    st = probes.ProbeState(_spec("tcp"), verdict=False)
    assert not st.record(True, "ok")
    assert not st.record(False, "no")  # a failure resets the success streak
    assert not st.record(True, "ok")
    assert st.record(True, "ok") and st.verdict
    assert not st.record(False, "no") and not st.record(False, "no")
    assert st.record(False, "no") and not st.verdict and st.failures == 3


def test_probe_port_maps_declared_port_to_host_port() -> None:
    svc = service_pb2.Service(ports=[common_pb2.ServicePort(name="http", port=80, target_port=8080)])
    p = common_pb2.Probe(type=common_pb2.PROBE_TYPE_HTTP, port=8080, path="/h")
    spec = probes.probe_spec(p, svc, {"http": 41000})
    assert spec is not None and spec.port == 41000 and spec.path == "/h"
    assert spec.period == probes.DEFAULT_PERIOD and spec.failure_threshold == probes.DEFAULT_FAILURE
    assert probes.probe_spec(common_pb2.Probe(), svc, {}) is None


def test_a_process_probe_names_where_its_instance_listens_when_that_is_not_the_declared_port() -> None:
    ports = [common_pb2.ServicePort(name="http", port=8080), common_pb2.ServicePort(name="admin-api", port=9090)]
    svc = service_pb2.Service(runtime="process", ports=ports)
    host = {"http": 41000, "admin-api": 41001}

    def hint(port: int, s: service_pb2.Service = svc, h: dict[str, int] = host) -> str:
        spec = probes.probe_spec(common_pb2.Probe(type=common_pb2.PROBE_TYPE_TCP, port=port), s, h)
        assert spec is not None
        return spec.hint

    assert hint(8080) == (
        "a process instance listens for port http on its host port 41000, "
        "given in $PORT and $RUNE_PORT_HTTP (args may say $(PORT)), not on 8080"
    )
    # Only the first port is $PORT.
    assert hint(9090).endswith(
        "on its host port 41001, given in $RUNE_PORT_ADMIN_API (args may say $(RUNE_PORT_ADMIN_API)), not on 9090"
    )
    # A container is reached through its published port; a host port equal to the declared one is no news.
    assert hint(8080, service_pb2.Service(runtime="container", ports=ports)) == ""
    assert hint(8080, h={"http": 8080}) == ""
    assert hint(7777) == ""


def test_tcp_http_and_exec_checks(tmp_path: Path) -> None:
    async def main() -> None:
        async def handle(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
            await r.readuntil(b"\r\n\r\n")
            w.write(b"HTTP/1.1 204 No Content\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
            await w.drain()
            w.close()

        server = await asyncio.start_server(handle, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        async with server:
            assert (await probes.check(_spec("tcp", port=port), {}, None))[0]
            ok, msg = await probes.check(_spec("http", port=port, path="/x"), {}, None)
            assert ok and "204" in msg
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            closed = s.getsockname()[1]
        refused = await probes.check(_spec("tcp", port=closed, hint="listen elsewhere"), {}, None)
        assert refused == (False, f"tcp 127.0.0.1:{closed}: connection refused (listen elsewhere)")
        ok, msg = await probes.check(_spec("http", port=closed), {}, None)
        assert (ok, msg) == (False, f"GET http://127.0.0.1:{closed}/: connection refused")
        (tmp_path / "flag").write_text("1")
        code = "import os, sys; sys.exit(0 if os.environ['K'] == 'v' and os.path.exists('flag') else 1)"
        exe = _spec("exec", command=(sys.executable, "-c", code))
        assert (await probes.check(exe, {"K": "v"}, str(tmp_path)))[0]
        assert not (await probes.check(exe, {"K": "other"}, str(tmp_path)))[0]
        slow = _spec("exec", command=(sys.executable, "-c", "import time; time.sleep(5)"), timeout=0.3)
        ok, msg = await probes.check(slow, {}, None)
        assert not ok and "timed out" in msg

    asyncio.run(main())
