"""``rune logs``: print or follow the logs of a service or instance over the StreamLogs bidi stream."""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

import click

from rune.cli.client import Session, pb2
from rune.cli.commands.common import pass_session, timestamp
from rune.cli.complete import names_of
from rune.cli.errors import EXIT_USAGE, CliError

# 256-colour-safe ANSI foregrounds cycled per instance on a terminal.
_COLOURS = (36, 33, 35, 32, 34, 91, 96, 93, 95, 92)
# Reconnect a follow stream this many times (resuming at the last cursor) before giving up.
_RECONNECTS = 5
# The stream name of lifecycle events (``--events``).
_EVENT = "event"
# Lines per message asked of the server: one message per line caps a follower at the transport's
# few thousand messages/s, far below what a chatty service writes.
_MAX_BATCH = 500


class _Requests:
    """The request side of the stream: the first request, then held open until the caller is done."""

    def __init__(self, first: Any) -> None:
        self.first = first
        self.done = threading.Event()

    def __iter__(self) -> Iterator[Any]:
        yield self.first
        # Keeping the request stream open is what "still listening" means for a bidi call.
        self.done.wait()


@click.command()
@click.argument("target", shell_complete=names_of("services", "instances"))
@click.option("-n", "--namespace")
@click.option("-f", "--follow", is_flag=True, help="Keep printing new lines.")
@click.option("--tail", "-t", type=int, default=-1, help="Only the last N lines per instance (default: all).")
@click.option("--since", help="Lines newer than a duration (5m) or RFC 3339 time.")
@click.option("--until", help="Lines older than a duration (5m) or RFC 3339 time.")
@click.option("--timestamps", is_flag=True, help="Prefix each line with its timestamp.")
@click.option("--filter", "-p", "--pattern", "pattern", help="Substring, or /regex/.")
@click.option("--stderr", "stream", flag_value="stderr", help="Only standard error.")
@click.option("--stdout", "stream", flag_value="stdout", help="Only standard output.")
@click.option("--events", is_flag=True, help="Interleave lifecycle events (started, exited, restarting, probes).")
@click.option("--prefix/--no-prefix", default=None, help="Prefix lines with the instance name (default: for services).")
@click.option("--no-color", is_flag=True, help="No colours even on a terminal.")
@click.option("-o", "--output", "fmt", type=click.Choice(["text", "json", "raw"]), default="text")
@pass_session
def logs(
    s: Session,
    target: str,
    namespace: str | None,
    follow: bool,
    tail: int,
    since: str | None,
    until: str | None,
    timestamps: bool,
    pattern: str | None,
    stream: str | None,
    events: bool,
    prefix: bool | None,
    no_color: bool,
    fmt: str,
) -> None:
    """Print the logs of TARGET: a service name, service/NAME, instance/ID or an instance name."""
    import grpc

    if tail < -1:
        raise CliError("--tail must be >= 0", EXIT_USAGE)
    lpb = pb2("logs")
    ns = s.namespace(namespace)
    is_instance = target.startswith(("instance/", "inst/"))
    show_prefix = prefix if prefix is not None else not is_instance
    colour = sys.stdout.isatty() and not no_color and fmt == "text"
    colours: dict[str, int] = {}
    base = lpb.LogRequest(
        resource_target=target,
        namespace=ns,
        follow=follow,
        tail=max(tail, 0),
        since=timestamp(since, "--since") if since else "",
        until=timestamp(until, "--until") if until else "",
        timestamps=timestamps,
        filter=pattern or "",
        stream=stream or "",
        show_events=events,
        max_batch=_MAX_BATCH,
    )
    last_cursor = ""
    attempts = 0
    out = sys.stdout
    while True:
        req = lpb.LogRequest()
        req.CopyFrom(base)
        if last_cursor:
            req.after_cursor, req.tail, req.since = last_cursor, 0, ""
        requests = _Requests(req)
        call = s.stub("LogService").StreamLogs(iter(requests), metadata=s.metadata())
        try:
            for msg in call:
                attempts = 0
                last_cursor = msg.cursor or last_cursor
                for resp in msg.lines or (msg,):
                    if stream and resp.stream not in ("", stream, _EVENT):
                        continue
                    if fmt == "json":
                        from google.protobuf import json_format

                        out.write(json_format.MessageToJson(resp, indent=None) + "\n")
                    elif fmt == "raw":
                        out.write(resp.content if resp.content.endswith("\n") else resp.content + "\n")
                    else:
                        line = resp.content.rstrip("\n")
                        if resp.stream == _EVENT:
                            line = f"[event] {line}"
                        if show_prefix and resp.instance_name:
                            label = f"[{resp.instance_name}]"
                            if colour:
                                c = colours.setdefault(resp.instance_name, _COLOURS[len(colours) % len(_COLOURS)])
                                label = f"\x1b[{c}m{label}\x1b[0m"
                            line = f"{label} {line}"
                        out.write(line + "\n")
                if follow:
                    out.flush()
            return
        except grpc.RpcError as e:
            # A follow stream that loses runed (restart, network) resumes at its cursor: no gaps, no repeats.
            if not (follow and e.code() == grpc.StatusCode.UNAVAILABLE and last_cursor and attempts < _RECONNECTS):
                raise
            attempts += 1
            sys.stderr.write(f"log stream interrupted ({e.details()}); reconnecting\n")
            time.sleep(min(2.0, 0.2 * 2**attempts))
        finally:
            requests.done.set()
            call.cancel()
