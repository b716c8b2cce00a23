"""``rune exec``: run a command in a running instance over StreamExec; the exit status is the remote one."""

from __future__ import annotations

import os
import queue
import re
import signal
import sys
import threading
from collections.abc import Iterator
from typing import Any

import click

from rune.cli.client import Session, pb2
from rune.cli.commands.common import kv_pairs, pass_session, seconds
from rune.cli.complete import names_of
from rune.cli.errors import EXIT_USAGE, CliError

_END = object()
# Commands that are interactive by nature get a TTY without asking, as upstream did.
_AUTO_TTY = {"bash", "sh", "zsh", "fish", "tcsh", "dash", "vim", "vi", "nano", "top", "htop", "less", "more"}


def _terminal_size() -> tuple[int, int]:
    try:
        sz = os.get_terminal_size(sys.stdin.fileno())
        return sz.columns, sz.lines
    except OSError:
        return 80, 24


class _Outbox:
    """Request messages for the stream, fed from the main thread, a stdin reader and SIGWINCH."""

    def __init__(self) -> None:
        self.q: queue.Queue[Any] = queue.Queue()

    def put(self, msg: Any) -> None:
        self.q.put(msg)

    def close(self) -> None:
        self.q.put(_END)

    def __iter__(self) -> Iterator[Any]:
        while True:
            item = self.q.get()
            if item is _END:
                return
            yield item


def _pump_stdin(outbox: _Outbox, epb: Any) -> None:
    fd = sys.stdin.fileno()
    while True:
        try:
            chunk = os.read(fd, 4096)
        except OSError:
            chunk = b""
        if not chunk:
            # An empty stdin message is the protocol's EOF; the stream stays open for signals.
            outbox.put(epb.ExecRequest(stdin=b""))
            return
        outbox.put(epb.ExecRequest(stdin=chunk))


def _resolve_target(s: Session, init: Any, target: str) -> None:
    """The forms ``rune logs`` accepts: a service, ``service/NAME``, ``instance/ID`` or ``instance/NAME``, a name."""
    from rune.cli.commands.common import list_instances

    kind, sep, name = target.partition("/")
    if not sep:
        kind, name = "", kind
    kind = {"svc": "service", "inst": "instance"}.get(kind, kind)
    if kind not in ("", "service", "instance") or not name:
        raise CliError(f"invalid target {target!r}: a service, service/NAME, instance/ID or instance/NAME", EXIT_USAGE)
    if kind == "service":
        init.service_name = name
        return
    if kind == "instance" or re.search(r"-\d+$", name):
        # An instance by id, or by the name people see (web-0): exec into that instance when one exists.
        found = [i for i in list_instances(s, init.namespace) if name in (i.id, i.name)]
        if found:
            init.instance_id = found[0].id
            return
        if kind == "instance":
            init.instance_id = name  # runed says it is not found
            return
    init.service_name = name


class _ExecCommand(click.Command):
    """Flags may follow TARGET when ``--`` separates the remote command (``rune exec web -n prod -- ls -l``)."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        ctx.allow_interspersed_args = "--" in args
        return super().parse_args(ctx, args)


@click.command(cls=_ExecCommand, context_settings={"ignore_unknown_options": True, "allow_interspersed_args": False})
@click.argument("target", shell_complete=names_of("services", "instances"))
@click.argument("command", nargs=-1, required=True, type=click.UNPROCESSED)
@click.option("-n", "--namespace")
@click.option("-i", "--stdin", "interactive", is_flag=True, help="Pass standard input to the command.")
@click.option("-t", "--tty/--no-tty", "tty", default=None, help="Allocate a terminal (raw mode, resizes follow).")
@click.option("--env", "env", multiple=True, help="KEY=VALUE (repeatable).")
@click.option("--workdir", "-w", default="", help="Working directory of the command.")
@click.option("--timeout", default="0", help="Give up after this long (e.g. 5m; 0 = never).")
@pass_session
def exec_(
    s: Session,
    target: str,
    command: tuple[str, ...],
    namespace: str | None,
    interactive: bool,
    tty: bool | None,
    env: tuple[str, ...],
    workdir: str,
    timeout: str,
) -> None:
    """Run COMMAND in TARGET (a service, service/NAME or instance/ID): rune exec web -- ls -l."""
    epb = pb2("exec")
    if command and command[0] == "--":
        command = command[1:]
    if not command:
        raise CliError("a command is required: rune exec TARGET -- CMD [ARGS...]", EXIT_USAGE)
    if tty is None:
        tty = os.path.basename(command[0]) in _AUTO_TTY and sys.stdin.isatty()
    if tty:
        interactive = True
    init = epb.ExecInitRequest(
        namespace=s.namespace(namespace),
        command=list(command),
        env=kv_pairs(env, "--env"),
        working_dir=workdir,
        tty=tty,
    )
    _resolve_target(s, init, target)
    if tty:
        w, h = _terminal_size()
        init.terminal_size.width, init.terminal_size.height = w, h
    outbox = _Outbox()
    outbox.put(epb.ExecRequest(init=init))
    if interactive or not sys.stdin.isatty():
        # Piped or redirected input goes to the command (as upstream did); a terminal only with -i or -t.
        threading.Thread(target=_pump_stdin, args=(outbox, epb), daemon=True).start()
    else:
        # EOF on stdin, but the request stream stays open so signals and resizes can still be sent.
        outbox.put(epb.ExecRequest(stdin=b""))
    deadline = seconds(timeout, "--timeout") or None
    restore: Any = None
    if tty and sys.stdin.isatty():
        import termios
        import tty as tty_mod

        fd = sys.stdin.fileno()
        saved = termios.tcgetattr(fd)
        tty_mod.setraw(fd)

        def restore() -> None:
            termios.tcsetattr(fd, termios.TCSADRAIN, saved)

        def on_winch(_sig: int, _frame: Any) -> None:
            cw, ch = _terminal_size()
            outbox.put(epb.ExecRequest(resize=epb.TerminalSize(width=cw, height=ch)))

        signal.signal(signal.SIGWINCH, on_winch)
    else:
        interrupts = [0]

        def on_interrupt(_sig: int, _frame: Any) -> None:
            # First Ctrl-C goes to the remote command (its exit status still comes back); a second one gives up.
            interrupts[0] += 1
            if interrupts[0] > 1:
                raise KeyboardInterrupt
            outbox.put(epb.ExecRequest(signal=epb.Signal(name="SIGINT")))

        signal.signal(signal.SIGINT, on_interrupt)
    # Opened after the terminal is set up, so a resize in between is not lost.
    call = s.stub("ExecService").StreamExec(iter(outbox), metadata=s.metadata(), timeout=deadline)
    code = 0
    try:
        for resp in call:
            which = resp.WhichOneof("response")
            if which == "stdout":
                sys.stdout.buffer.write(resp.stdout)
                sys.stdout.buffer.flush()
            elif which == "stderr":
                sys.stderr.buffer.write(resp.stderr)
                sys.stderr.buffer.flush()
            elif which == "exit":
                code = resp.exit.code if not resp.exit.signaled or resp.exit.code else 128 + 9
                break
            elif which == "status" and resp.status.code != 0:
                # The server ends the session (its instance is stopping or deleted): say why; the exit follows.
                sys.stderr.write(f"rune exec: {resp.status.message or 'session ended by the server'}\n")
                sys.stderr.flush()
                code = 1
    except KeyboardInterrupt:
        outbox.put(epb.ExecRequest(signal=epb.Signal(name="SIGINT")))
        code = 130
    finally:
        if restore is not None:
            restore()
        outbox.close()
        call.cancel()
    sys.exit(code)
