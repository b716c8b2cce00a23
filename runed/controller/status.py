"""The service status the controller records: how many instances run and are ready, and in which phase."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from rune.api import service_pb2
from runed.controller.instance import Instance, Key
from runed.controller.states import BACKOFF, FATAL, RUNNING
from runed.controller.writes import Writes
from runed.model import objects
from runed.store.base import Record, Store, iter_all


def phase(mine: list[Instance], scale: int, *, outdated: bool, rolling: bool, generation: int) -> str:
    """The status word of a service (Failed, Updating, Completed, Running, Pending) from its live instances."""
    ready = sum(1 for i in mine if i.state is RUNNING and i.ready)
    if any(failed(i) for i in mine):
        return "Failed"
    if outdated or rolling:
        return "Updating"
    if scale > 0 and len(mine) == scale and all(outcome(i) == "completed" for i in mine):
        # A job: every instance exited 0 and its restart policy keeps it stopped. Nothing will run.
        return "Completed"
    if scale == 0 or (ready >= scale and len(mine) == scale):
        return "Running" if scale > 0 or not mine else "Updating"
    if mine:
        return "Updating" if generation > 1 else "Pending"
    return "Pending"


def outcome(inst: Instance) -> str:
    """ "completed", "failed" (the instance will not start again by itself) or "" (see objects.instance_outcome)."""
    return objects.instance_outcome(inst.state.value, inst.last_exit_code, inst.last_signal)


def failed(inst: Instance) -> bool:
    """Crash-looping (restarted after a delay) or ended for good without success."""
    return inst.state is BACKOFF or outcome(inst) == "failed"


def verdict(live: list[Instance], status: str) -> tuple[bool, str]:
    """Whether ``status`` is final (no instance will start again by itself), and why (the status message).

    Completed is final; Failed is final once an instance failed for good (a crash loop may recover).
    """
    if status == "Completed":
        return True, f"{len(live)}/{len(live)} instances completed (exit code 0)"
    if status != "Failed":
        return False, ""
    for_good = [i for i in live if outcome(i) == "failed"]
    if for_good:
        bad = for_good[0]
        why = "it cannot be started" if bad.state is FATAL else "its restart policy does not restart it"
        return True, f"{bad.name}: {bad.reason} ({why})"
    bad = next(i for i in live if failed(i))
    return False, f"{bad.name}: {bad.reason}"


class StatusWriter:
    """Writes ``service_status`` records; the controller is their only writer, so it compares here."""

    def __init__(self, store: Store, writes: Writes) -> None:
        self.store = store
        # Queued with the pass's other writes (off the event loop).
        self.writes = writes
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
            self.writes.delete(objects.SERVICE_STATUS, *key)
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
        final, why = verdict(live, status)
        # A final verdict says why nothing will run; otherwise what the reconciler awaits comes first.
        message = why if final else (message or why)
        data = {
            "observed_generation": generation,
            "status": status,
            # Read with observed_generation and desired: final for this spec and scale only.
            "final": final,
            "desired": scale,
            "effective_scale": scale,
            "running": sum(1 for i in live if i.state is RUNNING),
            "ready": sum(1 for i in live if i.state is RUNNING and i.ready),
            "message": message,
        }
        if self._cache.get((ns, name)) != data:
            self.writes.put(objects.SERVICE_STATUS, ns, name, data)
            self._cache[(ns, name)] = data
