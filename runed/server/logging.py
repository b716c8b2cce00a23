"""Logging set-up: human text by default, JSON lines with --log-format json."""

from __future__ import annotations

import logging
import sys
import time

import orjson

from runed.pipeline.context import current_call


class JSONFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, object] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        role = getattr(record, "role", None)
        if role:
            out["role"] = role
        call = current_call.get()
        if call is not None and call.request_id:
            out["request_id"] = call.request_id
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return orjson.dumps(out).decode()


class TextFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)-5s %(name)s: %(message)s", "%Y-%m-%dT%H:%M:%S")

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        call = current_call.get()
        if call is not None and call.request_id and "request_id=" not in text:
            text += f" request_id={call.request_id}"
        return text


def setup(level: str, fmt: str, role: str = "") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JSONFormatter() if fmt == "json" else TextFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    lvl = {"warn": "WARNING"}.get(level.lower(), level.upper())
    root.setLevel(lvl)
    # Third-party chatter stays at warning unless we debug.
    for noisy in ("uvicorn.access", "asyncio", "grpc"):
        logging.getLogger(noisy).setLevel(logging.WARNING if lvl != "DEBUG" else logging.DEBUG)
    if role:
        old_factory = logging.getLogRecordFactory()

        def factory(*args: object, **kwargs: object) -> logging.LogRecord:
            rec = old_factory(*args, **kwargs)  # type: ignore[arg-type]
            rec.role = role
            return rec

        logging.setLogRecordFactory(factory)
