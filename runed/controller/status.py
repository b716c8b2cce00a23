"""The service status the controller records: how many instances run and are ready, and in which phase."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from rune.api import service_pb2
from runed.controller.instance import Instance, Key
from runed.controller.states import BACKOFF, EXITED, FATAL, RUNNING
from runed.model import objects
from runed.store.base import Record, Store, iter_all


def phase(mine: list[Instance], scale: int, *, outdated: bool, rolling: bool, generation: int) -> str:
    """The status word of a service (Failed, Updating, Running, Pending) from its live instances."""
    ready = sum(1 for i in mine if i.state is RUNNING and i.ready)
    if any(failed(i) for i in mine):
        return "Failed"
    if outdated or rolling:
        return "Updating"
    if scale == 0 or (ready >= scale and len(mine) == scale):
        return "Running" if scale > 0 or not mine else "Updating"
    if mine:
        return "Updating" if generation > 1 else "Pending"
    return "Pending"


def failed(inst: Instance) -> bool:
    return inst.state in (BACKOFF, FATAL) or (inst.state is EXITED and bool(inst.last_exit_code))


class StatusWriter:
    """Writes ``service_status`` records; the controller is their only writer, so it compares here."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self._cache: dict[Key, dict[str, Any]] = {}

    def load(self) -> None:
        for rec in iter_all(self.store, objects.SERVICE_STATUS):
            self._cache[(rec.namespace, rec.name)] = rec.data

    def forget(self, key: Key) -> None:
        """The record was deleted with its service."""
        self._cache.pop(key, None)

    def prune(self, keep: Callable[[Key], bool]) -> None:
        """Delete the status of every service ``keep`` rejects (the service is gone)."""
        for key in [k for k in self._cache if not keep(k)]:
            self.store.delete(objects.SERVICE_STATUS, *key)
            del self._cache[key]

    def write(
        self,
        rec: Record,
        svc: service_pb2.Service,
        scale: int,
        message: str,
        mine: Iterable[Instance],
        *,
        rolling: bool,
    ) -> None:
        """Record the status of ``svc`` from its instances (retiring ones excluded)."""
        ns, name = rec.namespace, rec.name
        live = [i for i in mine if not i.retire]
        generation = int(rec.data.get("generation", 1))
        want_hash = objects.spec_hash(svc)
        outdated = any(i.spec_hash != want_hash for i in live)
        status = phase(live, scale, outdated=outdated, rolling=rolling, generation=generation)
        if status == "Failed" and not message:
            bad = next(i for i in live if i.state in (BACKOFF, FATAL, EXITED))
            message = f"{bad.name}: {bad.reason}"
        data = {
            "observed_generation": generation,
            "status": status,
            "desired": scale,
            "effective_scale": scale,
            "running": sum(1 for i in live if i.state is RUNNING),
            "ready": sum(1 for i in live if i.state is RUNNING and i.ready),
            "message": message,
        }
        if self._cache.get((ns, name)) != data:
            self.store.put(objects.SERVICE_STATUS, ns, name, data)
            self._cache[(ns, name)] = data
