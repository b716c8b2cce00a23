"""The REST gateway's JSON-ready log lines (runed.api.logs_wire.JsonBatch) say exactly what the
LogResponse of the same line says in protojson, and come in the same batches."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import pytest

from rune.api import logs_pb2
from rune.gateway import codec, logs_http
from runed.api import logs_wire
from runed.logs.files import GAP_STREAM, LogLine
from runed.logs.stream import Emitted, Source

SRC = Source("0f" * 18, "web-0", "web", Path("/nonexistent"))
TS = "2026-12-01T00:00:00.123456789Z"


def _lines() -> list[Emitted]:
    return [
        Emitted(SRC, LogLine(7, TS, "stdout", "GET / 200"), "v1;a=7"),
        Emitted(SRC, LogLine(8, TS, "stderr", 'WARN disk ünïcode "quoted" \\ \t'), "v1;a=8"),
        Emitted(SRC, LogLine(9, TS, "stderr", "Traceback: exception"), "v1;a=9"),
        Emitted(SRC, LogLine(20, TS, GAP_STREAM, "", 10), "v1;a=20"),
        Emitted(SRC, LogLine(21, TS, "stdout", ""), "v1;a=21"),
    ]


def _proto_json(msg: logs_pb2.LogResponse) -> dict[str, Any]:
    out = codec.to_dict(msg)
    out.pop("lines")
    return out


@pytest.mark.parametrize("timestamps", [False, True])
def test_each_line_is_the_protojson_of_its_response(timestamps: bool) -> None:
    for e in _lines():
        assert logs_wire.json_line(e, timestamps) == _proto_json(logs_wire.response(e, timestamps))


@pytest.mark.parametrize("max_batch", [0, 1, 2, 500])
def test_json_batches_are_the_proto_batches(max_batch: int) -> None:
    protos = list(logs_wire.pack(_lines(), False, max_batch))
    jsons = list(logs_wire.pack_json(_lines(), False, max_batch))
    assert len(jsons) == len(protos)
    for p, j in zip(protos, jsons, strict=True):
        lines = p.lines or [p]
        assert j.lines == [_proto_json(ln) for ln in lines]
        assert j.cursor == p.cursor


@pytest.mark.parametrize("sse", [False, True])
@pytest.mark.parametrize("batches", [False, True])
def test_the_gateway_writes_the_same_bytes_from_either_form(sse: bool, batches: bool) -> None:
    """What a REST client receives does not depend on which form the handler sent."""
    encode = logs_http._encoder(sse, batches)
    for p, j in zip(logs_wire.pack(_lines(), True, 2), logs_wire.pack_json(_lines(), True, 2), strict=True):
        assert encode(j) == encode(p)
    if batches:
        (data,) = [ln for ln in encode(j).split(b"\n") if ln.startswith(b"data: ") or not sse][:1]
        assert orjson.loads(data.removeprefix(b"data: "))["cursor"] == j.cursor
