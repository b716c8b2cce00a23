"""Helpers for logs/exec tests (with an API role alone, no controller): instance records and shim-format log files."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from runed.store.base import iter_all
from runed.store.sqlite import open_store
from tests.support import LogWriter


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
