"""What one node's reconciler knows of the cluster: the placements, and the other nodes' instances.

A node runs exactly the instance slots the scheduler placed on it (``placement`` records). It also
keeps a view of the other nodes' instances (from the store's change log), so that a service's
status, and whether a dependency is ready, count every node's instances, not only its own.
"""

from __future__ import annotations

from pathlib import Path

from runed.controller.instance import Instance, Key
from runed.core.config.schema import NodeConfig
from runed.model import objects
from runed.model.nodes import PLACEMENT, Placement, local_node_id
from runed.store.base import DELETED, Change, Record, Store, iter_all

# Instance records written before nodes existed name this node id: they belong to the node whose
# data dir holds their directory.
LEGACY_NODE = "local"


def node_id(cfg: NodeConfig) -> str:
    """The configured node id, else the hostname (the rule lives with the node records)."""
    return local_node_id(cfg)


class NodeView:
    """What one node's reconciler consults: its id and address, the placements, the other nodes' instances."""

    def __init__(self, store: Store, cfg: NodeConfig, data_dir: Path, *, runs: bool = True) -> None:
        self.store = store
        self.cfg = cfg
        self.id = node_id(cfg)
        # False: a control-plane host (node.enabled false) that watches every node's instances, runs none.
        self.runs = runs
        self.address = cfg.address
        self.data_dir = data_dir
        self._placements: dict[Key, Placement] = {}
        # Instances of other nodes, by (namespace, id).
        self._remote: dict[Key, Instance] = {}
        # The store revision the view has taken in (its watch's last change), and the latest one a
        # caller waits for the view to reach (0: none).
        self.seen = 0
        self._awaited = 0

    # -- ownership ------------------------------------------------------------------------------
    def owns(self, rec: Record) -> bool:
        """Whether an instance record is this node's to run (legacy records: when its directory is here)."""
        if not self.runs:
            return False
        nid = str((rec.data.get("instance") or {}).get("node_id") or "")
        if nid in ("", LEGACY_NODE):
            return (self.data_dir / "instances" / rec.name).is_dir()
        return nid == self.id

    def load(self, revision: int) -> None:
        """Read the placements and the other nodes' instances as of ``revision`` or later (blocking: at
        start-up, and again after the watch that keeps the view missed changes). Each table is
        replaced whole, so the event loop never sees one half read."""
        placements = {(r.namespace, r.name): Placement.from_record(r.data) for r in iter_all(self.store, PLACEMENT)}
        remote: dict[Key, Instance] = {}
        for rec in iter_all(self.store, objects.INSTANCE):
            if not self.owns(rec) and (inst := _instance(rec)) is not None:
                remote[inst.key] = inst
        self._placements, self._remote = placements, remote
        self.seen = max(self.seen, revision)

    def _remember(self, namespace: str, name: str, rec: Record | None) -> Key | None:
        if rec is None:
            gone = self._remote.pop((namespace, name), None)
            return None if gone is None else (gone.namespace, gone.service)
        inst = _instance(rec)
        if inst is None:
            return None
        self._remote[inst.key] = inst
        return (inst.namespace, inst.service)

    # -- how far the view has come --------------------------------------------------------------
    def knows(self, revision: int) -> bool:
        """Whether the view has taken in every change up to ``revision``. When not, that revision is
        awaited: :meth:`taken` says when the watch reaches it."""
        if self.seen >= revision:
            return True
        self._awaited = max(self._awaited, revision)
        return False

    def taken(self, revision: int) -> bool:
        """The watch has delivered every change up to ``revision``; True when that reaches an awaited one."""
        self.seen = max(self.seen, revision)
        if self._awaited and self.seen >= self._awaited:
            self._awaited = 0
            return True
        return False

    # -- change log -----------------------------------------------------------------------------
    def on_change(self, change: Change) -> Key | None:
        """Take a placement or another node's instance change in; the service it concerns, if any."""
        key = (change.namespace, change.name)
        if change.kind == PLACEMENT:
            if change.op == DELETED or change.data is None:
                self._placements.pop(key, None)
            else:
                self._placements[key] = Placement.from_record(change.data)
            return key
        if change.op == DELETED or change.data is None:
            return self._remember(change.namespace, change.name, None)
        rec = Record(objects.INSTANCE, change.namespace, change.name, change.data, change.revision, 0)
        if self.owns(rec):
            return None
        return self._remember(change.namespace, change.name, rec)

    # -- what the reconciler asks ---------------------------------------------------------------
    def placement(self, service: Key) -> Placement | None:
        return self._placements.get(service)

    def indexes(self, service: Key, current: list[Instance]) -> set[int]:
        """The instance indexes this node runs: those placed here; with no placement yet, those it runs."""
        p = self._placements.get(service)
        if not self.runs:
            return set()
        if p is None:
            return {i.index for i in current}
        return {i for i, n in p.slots.items() if n == self.id}

    def remote_of(self, namespace: str, service: str) -> list[Instance]:
        return [i for i in self._remote.values() if i.namespace == namespace and i.service == service]

    def counted(self, service: Key, local: list[Instance]) -> list[Instance]:
        """A service's instances as its status counts them: on every node, each where it is placed."""
        remote = self.remote_of(*service)
        if not remote:
            return local
        p = self._placements.get(service)
        if p is None:
            return local + remote
        return local + [i for i in remote if p.slots.get(i.index) == i.node_id]


def _instance(rec: Record) -> Instance | None:
    try:
        return Instance.from_record(rec)
    except ValueError:
        return None
