"""``rune get --watch``: change events printed as they come, resuming after the last revision when runed restarts."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from typing import Any

from rune.cli.client import Session, pb2
from rune.cli.commands.kinds import KINDS, with_ready
from rune.cli.commands.objects import selector_map
from rune.cli.errors import EXIT_UNIMPLEMENTED, CliError
from rune.cli.output import Column, dump, table, to_dict


def _watch_stream(s: Session, kind: str, ns: str, labels: str | None, fields: str | None, since: int) -> Iterator[Any]:
    md = s.metadata()
    if kind == "services":
        req = pb2("service").WatchServicesRequest(
            namespace=ns, label_selector_expr=labels or "", field_selector_expr=fields or "", since_revision=since
        )
        return iter(s.stub("ServiceService").WatchServices(req, metadata=md))
    if kind == "instances":
        req = pb2("instance").WatchInstancesRequest(
            namespace=ns, label_selector_expr=labels or "", field_selector_expr=fields or "", since_revision=since
        )
        return iter(s.stub("InstanceService").WatchInstances(req, metadata=md))
    if kind == "namespaces":
        req = pb2("namespace").WatchNamespacesRequest(
            label_selector=selector_map(labels, "-l"), field_selector=selector_map(fields, "--field-selector"),
            since_revision=since,
        )  # fmt: skip
        return iter(s.stub("NamespaceService").WatchNamespaces(req, metadata=md))
    if kind == "nodes":
        req = pb2("node").WatchNodesRequest(label_selector=selector_map(labels, "-l"), since_revision=since)
        # `rune get node NAME -w`: that node's changes (nodes are named by id).
        name = selector_map(fields, "--field-selector").get("name")
        events = s.stub("NodeService").WatchNodes(req, metadata=md)
        return (ev for ev in events if not name or ev.node.id == name)
    raise CliError(f"runed has no watch for {kind}", EXIT_UNIMPLEMENTED)


def _resuming(s: Session, kind: str, ns: str, labels: str | None, fields: str | None, since: int) -> Iterator[Any]:
    """Watch events; when runed goes away the watch resumes after the last revision seen (no gaps, no repeats)."""
    import time

    import grpc

    attempts = 0
    while True:
        try:
            for ev in _watch_stream(s, kind, ns, labels, fields, since):
                attempts = 0
                since = getattr(ev, "revision", 0) or since
                yield ev
            return
        except grpc.RpcError as e:
            if e.code() != grpc.StatusCode.UNAVAILABLE or not since or attempts >= 30:
                raise
            attempts += 1
            sys.stderr.write(f"watch interrupted ({e.code().name}); resuming after revision {since}\n")
            time.sleep(min(2.0, 0.1 * 2**attempts))


def print_changes(
    s: Session, kind_name: str, ns: str, labels: str | None, fields: str | None, since: int, fmt: str
) -> None:
    """Print every change to ``kind_name`` after revision ``since`` until interrupted."""
    from rune.cli.output import enum_name

    kind = KINDS[kind_name]
    etype = pb2("common").EventType
    cols: list[Column] = list(kind.columns) + (list(kind.wide) if fmt == "wide" else [])
    attr = kind_name[:-1]
    for ev in _resuming(s, kind_name, ns, labels, fields, since):
        obj = getattr(ev, attr)
        event = enum_name(etype, ev.event_type, "EVENT_TYPE_")
        if fmt in ("json", "yaml"):
            dump({"type": event, "object": to_dict(obj)}, "json" if fmt == "json" else "yaml")
            if fmt == "yaml":
                sys.stdout.write("---\n")
        else:
            # Readiness as of this event (an instance's readiness change is an event of its own).
            row_cols = with_ready(s, kind_name, getattr(obj, "namespace", "") or ns, cols, [obj])
            table([[event] + [fn(obj) for _, fn in row_cols]], None)
        sys.stdout.flush()
