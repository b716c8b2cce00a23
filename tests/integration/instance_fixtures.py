"""Helpers for logs/exec tests (with an API role alone, no controller): instance records and shim-format log files."""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from runed.logs.files import LOG_NAME
from runed.logs.timeparse import format_ns
from runed.store.base import iter_all
from runed.store.sqlite import open_store


class LogWriter:
    """Appends lines the way the per-instance shim does, with size-style rotation on demand."""

    def __init__(self, log_dir: Path, backups: int = 3) -> None:
        self.dir = log_dir
        self.dir.mkdir(parents=True, exist_ok=True)
        self.backups = backups
        self.seq = 0

    def write(self, line: str, stream: str = "stdout", ns: int | None = None) -> None:
        import time

        self.seq += 1
        rec = {
            "seq": self.seq,
            "ts": format_ns(ns if ns is not None else time.time_ns()),
            "stream": stream,
            "line": line,
        }
        with open(self.dir / LOG_NAME, "a") as f:
            f.write(json.dumps(rec) + "\n")

    def rotate(self) -> None:
        for i in range(self.backups - 1, 0, -1):
            src = self.dir / f"{LOG_NAME}.{i}"
            if src.exists():
                src.rename(self.dir / f"{LOG_NAME}.{i + 1}")
        live = self.dir / LOG_NAME
        if live.exists():
            live.rename(self.dir / f"{LOG_NAME}.1")


@dataclass
class Instances:
    """Instance records written straight into the store, as the controller would."""

    data_dir: Path
    writers: dict[str, LogWriter] = field(default_factory=dict)

    def reset(self) -> Instances:
        """Remove every instance record, so one API process can serve several tests."""
        store = open_store(self.data_dir)
        try:
            for rec in list(iter_all(store, "instance")):
                store.delete("instance", rec.namespace, rec.name)
        finally:
            store.close()
        return self

    def add(self, service: str, index: int, namespace: str = "default", state: str = "RUNNING", **extra: Any) -> str:
        iid = str(uuid.uuid4())
        d = self.data_dir / "instances" / iid
        (d / "work").mkdir(parents=True, exist_ok=True)
        name = f"{service}-{index}"
        data: dict[str, Any] = {
            "instance": {"id": iid, "name": name, "namespace": namespace, "service_name": service, "runner": "process"},
            "service": service,
            "index": index,
            "state": state,
            "log_dir": str(d),
            "workdir": str(d / "work"),
            "env": {},
        }
        data.update(extra)
        store = open_store(self.data_dir)
        try:
            store.put("instance", namespace, iid, data)
        finally:
            store.close()
        self.writers[iid] = LogWriter(d)
        return iid
