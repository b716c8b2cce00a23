"""``rune events``: the lifecycle events of services and instances (started, exited, restarting, probes).

They are the ``event`` lines of the log stream (``show_events``): one StreamLogs per service (every service of the
namespace unless a target, ``--service`` or ``--instance`` narrows it), only the events kept, oldest first; ``-f``
keeps printing new ones until each followed service is deleted or the command is interrupted.
"""

from __future__ import annotations

import queue
import sys
import threading
from collections.abc import Callable, Iterator
from typing import Any

import click

from rune.cli.client import Session, pb2
from rune.cli.commands.common import pass_session, timestamp
from rune.cli.errors import EXIT_USAGE, CliError

_EVENT = "event"
_DONE = object()


class _Held:
    """The request side of one stream: the first request, then held open until the command ends."""

    def __init__(self, first: Any, done: threading.Event) -> None:
        self.first, self.done = first, done

    def __iter__(self) -> Iterator[Any]:
        yield self.first
        self.done.wait()


def _targets(
    s: Session, ns: str, target: str | None, services: tuple[str, ...], instances: tuple[str, ...]
) -> list[str]:
    if target:
        return [target]
    if services:
        return [f"service/{x}" for x in services]
    if instances:
        return [f"instance/{x}" for x in instances]
    from rune.cli.commands.objects import list_objects

    return [f"service/{x.name}" for x in list_objects(s, "services", ns, None, None, 0)[0]]


def _events_of(
    s: Session, req: Any, requests: Callable[[], Iterator[Any]], timeout: float | None = None
) -> Iterator[Any]:
    """The event lines of ``StreamLogs(req)`` (``requests`` makes its request side). Only the events
    are asked for (``stream: event``), so a chatty service's output is neither read nor sent; a
    runed from before that refuses it (INVALID_ARGUMENT naming ``stream``) and is asked again for
    everything, the events picked out here."""
    import grpc

    req.stream = _EVENT
    while True:
        call = s.stub("LogService").StreamLogs(requests(), metadata=s.metadata(), timeout=timeout)
        try:
            for resp in call:
                if resp.stream == _EVENT:
                    yield resp
            return
        except grpc.RpcError as e:
            if not (req.stream and e.code() == grpc.StatusCode.INVALID_ARGUMENT and "stream" in (e.details() or "")):
                raise
            req.stream = ""
        finally:
            call.cancel()


def _pump(s: Session, req: Any, out: queue.Queue[Any], done: threading.Event) -> None:
    try:
        for resp in _events_of(s, req, lambda: iter(_Held(req, done))):
            out.put(resp)
    except Exception as e:  # grpc.RpcError: the main thread reports it
        if not done.is_set():
            out.put(e)
    finally:
        out.put(_DONE)


def recent_events(s: Session, ns: str, target: str, count: int) -> list[Any]:
    """The last ``count`` lifecycle events of ``target`` (service/NAME or instance/ID), oldest first."""
    req = pb2("logs").LogRequest(resource_target=target, namespace=ns, show_events=True, tail=count)
    got = sorted(_events_of(s, req, lambda: iter([req]), s.timeout), key=lambda r: r.timestamp)
    return got[-count:]


def _line(resp: Any, fmt: str) -> str:
    if fmt == "json":
        from google.protobuf import json_format

        return json_format.MessageToJson(resp, indent=None)
    who = resp.instance_name or resp.service_name or "-"
    return f"{resp.timestamp or '-'}  {who}  {resp.content.rstrip()}"


@click.command()
@click.argument("target", required=False)
@click.option("-n", "--namespace", help="Namespace (default: the context's, else default).")
@click.option("--service", "services", multiple=True, help="Only this service's events (repeatable).")
@click.option("--instance", "instances", multiple=True, help="Only this instance's events, by name or id (repeatable).")
@click.option("-f", "--follow", is_flag=True, help="Keep printing new events.")
@click.option("--since", help="Events newer than a duration (5m) or RFC 3339 time.")
@click.option("--tail", type=int, default=-1, help="Without -f: only the last N events.")
@click.option("-o", "--output", "fmt", type=click.Choice(["text", "json"]), default="text", show_default=True)
@pass_session
def events(
    s: Session,
    target: str | None,
    namespace: str | None,
    services: tuple[str, ...],
    instances: tuple[str, ...],
    follow: bool,
    since: str | None,
    tail: int,
    fmt: str,
) -> None:
    """Lifecycle events of TARGET (a service, service/NAME, instance/NAME), else of every service in the namespace."""
    if tail < -1:
        raise CliError("--tail must be >= 0", EXIT_USAGE)
    lpb = pb2("logs")
    ns = s.namespace(namespace)
    targets = _targets(s, ns, target, services, instances)
    if not targets:
        sys.stderr.write(f'No services in namespace "{ns}".\n')
        return
    wanted = set(instances) if instances and (target or services) else set()
    out: queue.Queue[Any] = queue.Queue()
    done = threading.Event()
    since_at = timestamp(since, "--since") if since else ""
    for t in targets:
        req = lpb.LogRequest(resource_target=t, namespace=ns, follow=follow, since=since_at, show_events=True)
        threading.Thread(target=_pump, args=(s, req, out, done), daemon=True).start()
    got: list[Any] = []
    running = len(targets)
    try:
        while running:
            item = out.get()
            if item is _DONE:
                running -= 1
                continue
            if isinstance(item, Exception):
                raise item
            if wanted and not {item.instance_name, item.instance_id} & wanted:
                continue
            if follow:
                sys.stdout.write(_line(item, fmt) + "\n")
                sys.stdout.flush()
            else:
                got.append(item)
    finally:
        done.set()
    got.sort(key=lambda r: r.timestamp)
    if tail >= 0:
        got = got[len(got) - tail :] if tail else []
    for r in got:
        sys.stdout.write(_line(r, fmt) + "\n")
