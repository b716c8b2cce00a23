"""ExecService: StreamExec runs a command in an instance's context (env, working dir, user).

Protocol after the ``init`` message: ``stdin`` bytes go to the command; an **empty** ``stdin``
message closes its input (EOF; on a TTY it sends VEOF, ^D), and so does the client half-closing
the stream; ``resize`` sets the terminal size (TIOCSWINSZ); ``signal`` (``TERM``, ``SIGINT``,
``9`` ...) goes to the command's process group. The server sends a ``status`` (connected), then
``stdout``/``stderr`` chunks (one ``stdout`` stream under a TTY), and always ends with ``exit``:
the exit code, or ``signaled`` with the signal name and code 128+n. A client that disconnects
kills the command's process group. A session past ``exec.timeout_seconds`` is killed and ends
with its ``exit`` followed by RESOURCE_EXHAUSTED; so does a session beyond
``exec.max_sessions_per_instance``, before it starts. A session whose instance is deleted or
stopped (learned from the store's change log) has its process group killed, and ends with a
``status`` saying why (code ABORTED) and the ``exit`` (SIGKILL, 137).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shlex
import signal
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from google.rpc import code_pb2

from rune.api import common_pb2, exec_pb2
from runed.api import forward, lifetime
from runed.core import errors, validation
from runed.core.errors import FieldViolation
from runed.exec.docker import DockerError, DockerExec
from runed.exec.session import ExecProcess, ExecSpec, Exit, Output, SessionSlots, parse_signal
from runed.pipeline.context import CallContext
from runed.store.base import AuditEntry, Record, iter_all

INSTANCE_KIND = "instance"
SERVICE_KIND = "service"
RUNNING = "RUNNING"


def _validate(req: exec_pb2.ExecRequest) -> list[FieldViolation]:
    if req.WhichOneof("request") != "init":
        return [FieldViolation("init", "the first message must be init (target and command)")]
    init = req.init
    out: list[FieldViolation] = []
    which = init.WhichOneof("target")
    if which is None or not getattr(init, which).strip():
        out.append(FieldViolation("init.target", "exactly one of service_name or instance_id is required"))
    elif which == "service_name":
        out += validation.dns1123_label(init.service_name, "init.service_name")
    else:
        out += validation.reference(init.instance_id, "init.instance_id")
    if not init.command or not init.command[0]:
        out.append(FieldViolation("init.command", "required: the program and its arguments"))
    for k, value in init.env.items():
        if not k or "=" in k or "\x00" in k:
            out.append(FieldViolation(f"init.env[{k}]", "invalid variable name"))
        out += validation.exec_string(value, f"init.env[{k}]")
    # Caught here, or the spawn fails inside the session with a bare ValueError.
    out += validation.exec_strings(init.command, "init.command")
    out += validation.exec_string(init.working_dir, "init.working_dir", limit=validation.EXEC_PATH_MAX)
    if init.namespace:
        out += validation.dns1123_label(init.namespace, "init.namespace")
    return out


VALIDATORS: dict[str, Any] = {"StreamExec": _validate}


def _state(rec: Record) -> str:
    return str(rec.data.get("state") or "")


def pick_instance(ctx: CallContext, ns: str, init: exec_pb2.ExecInitRequest) -> Record:
    """The instance to run in: the given one (must be running), or a running one of the service."""
    store = ctx.deps.store
    if init.WhichOneof("target") == "instance_id":
        rec = store.get(INSTANCE_KIND, ns, init.instance_id)
        if rec is None:
            raise errors.not_found("instance", init.instance_id, ns)
        if _state(rec) != RUNNING:
            raise errors.FailedPrecondition(
                f"instance is not running, status: {_state(rec) or 'unknown'}", reason="INSTANCE_NOT_RUNNING"
            )
        return rec
    running = [
        r
        for r in iter_all(store, INSTANCE_KIND, ns)
        if r.data.get("service") == init.service_name and _state(r) == RUNNING
    ]
    if not running:
        if store.get(SERVICE_KIND, ns, init.service_name) is None:
            # The same answer as logs of a target that does not exist.
            raise errors.not_found("service", init.service_name, ns)
        raise errors.no_running_instance(init.service_name, ns)
    return min(running, key=lambda r: (int(r.data.get("index") or 0), r.name))


def _resolved_env(ctx: CallContext, ns: str, rec: Record) -> dict[str, str]:
    """The instance's stored env with secret/configmap references resolved, in memory only."""
    stored = {str(k): str(v) for k, v in (rec.data.get("env") or {}).items()}
    try:
        from runed.secrets.envresolve import TEMPLATE, ResolveError, Sources
    except ImportError:  # pragma: no cover - the process runner's env module ships with runed
        return stored
    src = Sources(ctx.deps.store, ctx.deps.crypto, ns, True)
    try:
        return {k: TEMPLATE.sub(lambda m: src.lookup(m.group(1), m.group(2)), v) for k, v in stored.items()}
    except ResolveError as e:
        raise errors.FailedPrecondition(
            f"cannot resolve the instance environment: {e}", reason="ENVIRONMENT_UNRESOLVED"
        ) from None


def _spec(ctx: CallContext, ns: str, rec: Record, init: exec_pb2.ExecInitRequest) -> ExecSpec:
    data = rec.data
    default_dir = ctx.deps.config.data_path / "instances" / rec.name / "work"
    base = Path(str(data.get("workdir") or default_dir))
    if not data.get("workdir"):
        base.mkdir(parents=True, exist_ok=True)
    cwd = base / init.working_dir if init.working_dir else base
    env = _resolved_env(ctx, ns, rec)
    env.update(init.env)
    size = init.terminal_size
    uid = data.get("uid")
    gid = data.get("gid")
    return ExecSpec(
        command=list(init.command),
        env=env,
        cwd=str(cwd),
        tty=init.tty,
        rows=size.height or 24,
        cols=size.width or 80,
        # Only root can switch users; otherwise the command runs as runed does, like the instance.
        uid=int(uid) if uid is not None and os.geteuid() == 0 else None,
        gid=int(gid) if gid is not None and os.geteuid() == 0 else None,
    )


def _audit(ctx: CallContext, ns: str, rec: Record, init: exec_pb2.ExecInitRequest) -> None:
    # The command line, never env values (only their names).
    detail = f"command={shlex.join(init.command)} tty={init.tty}"
    if init.env:
        detail += f" env_keys={','.join(sorted(init.env))}"
    ctx.deps.store.audit(
        AuditEntry(
            subject=ctx.principal.subject,
            method=ctx.method.full_name,
            resource="exec",
            verb="exec",
            namespace=ns,
            name=rec.name,
            outcome="started",
            code="OK",
            request_id=ctx.request_id,
            peer=ctx.peer,
            detail=detail[:1000],
        )
    )


async def _pump_input(requests: AsyncIterator[exec_pb2.ExecRequest], proc: ExecProcess | DockerExec) -> None:
    async for req in requests:
        which = req.WhichOneof("request")
        if which == "stdin":
            if req.stdin:
                await proc.write(req.stdin)
            else:
                await proc.close_stdin()
        elif which == "resize":
            proc.resize(req.resize.height, req.resize.width)
        elif which == "signal":
            with contextlib.suppress(ValueError):
                proc.send_signal(parse_signal(req.signal.name))
    # The client half-closed: no more input.
    await proc.close_stdin()


def _is_container(rec: Record) -> bool:
    runner = rec.data.get("runner") or (rec.data.get("instance") or {}).get("runner") or "process"
    return str(runner) in ("container", "docker")


async def _start_container_exec(ctx: CallContext, rec: Record, init: exec_pb2.ExecInitRequest) -> DockerExec:
    """``docker exec`` in the instance's container: its own env and user, plus the request's env."""
    cid = str(rec.data.get("container_id") or (rec.data.get("instance") or {}).get("container_id") or "")
    if not cid:
        raise errors.FailedPrecondition(f"instance {rec.name} has no container yet", reason="INSTANCE_NOT_RUNNING")
    size = init.terminal_size
    spec = ExecSpec(
        command=list(init.command),
        env=dict(init.env),
        cwd=init.working_dir,
        tty=init.tty,
        rows=size.height or 24,
        cols=size.width or 80,
    )
    docker = ctx.deps.config.docker
    proc = DockerExec(spec, cid, docker.socket, docker.api_version or docker.fallback_api_version)
    await ctx.deps.store.run(_audit, ctx, rec.namespace, rec, init)
    try:
        await proc.start()
    except DockerError as e:
        if e.status == 404:
            raise errors.NotFound(f"container of instance {rec.name}: {e.message}") from None
        if e.status == 409:
            raise errors.FailedPrecondition(
                f"container of instance {rec.name} is not running: {e.message}", reason="INSTANCE_NOT_RUNNING"
            ) from None
        raise errors.Unavailable(f"docker exec: {e.message}") from None
    return proc


def _exit_response(ex: Exit) -> exec_pb2.ExecResponse:
    return exec_pb2.ExecResponse(
        exit=exec_pb2.ExitInfo(code=ex.code, signaled=ex.signal is not None, signal=ex.signal_name)
    )


def _ended_response(reason: str) -> exec_pb2.ExecResponse:
    return exec_pb2.ExecResponse(
        status=common_pb2.Status(code=code_pb2.ABORTED, message=f"{reason}: the exec session ends")
    )


async def StreamExec(requests: AsyncIterator[exec_pb2.ExecRequest], ctx: CallContext) -> AsyncIterator[Any]:
    first = await anext(requests)
    init = first.init
    ns = init.namespace
    # Taken before the instance is picked: a stop or deletion from then on reaches the watch below.
    store = ctx.deps.store
    since = await store.run(store.current_revision)
    rec = await store.run(pick_instance, ctx, ns, init)
    node = forward.elsewhere(ctx, rec)
    if node is not None:
        # Another node runs it: that node runs the session (and audits it), pinned to this instance.
        pinned = exec_pb2.ExecRequest()
        pinned.CopyFrom(first)
        pinned.init.instance_id = rec.name
        async for resp in forward.stream(ctx, node, pinned, requests, exec_pb2.ExecResponse):
            yield resp
        return
    cfg = ctx.deps.config.exec
    slots = SessionSlots(ctx.deps.config.data_path / "instances", cfg.max_sessions_per_instance)
    slot = slots.acquire(rec.name)
    if slot is None:
        raise errors.exec_session_limit(rec.name, ns, cfg.max_sessions_per_instance)
    proc: ExecProcess | DockerExec | None = None
    pump: asyncio.Task[None] | None = None
    ender: asyncio.Task[str] | None = None
    timer: asyncio.TimerHandle | None = None
    timed_out = False
    ended = ""
    try:
        if _is_container(rec):
            proc = await _start_container_exec(ctx, rec, init)
        else:
            spec = await store.run(_spec, ctx, ns, rec, init)
            await store.run(_audit, ctx, ns, rec, init)
            proc = ExecProcess(spec)
            await proc.start()
        yield exec_pb2.ExecResponse(status=common_pb2.Status(code=0, message=f"Connected to instance {rec.name}"))

        def on_timeout() -> None:
            nonlocal timed_out
            timed_out = True
            assert proc is not None
            proc.send_signal(signal.SIGKILL)

        def on_end(task: asyncio.Task[str]) -> None:
            # The instance is going away: so does the command, and the session ends with its exit.
            nonlocal ended
            if task.cancelled() or task.exception() is not None:
                return
            ended = task.result()
            assert proc is not None
            proc.send_signal(signal.SIGKILL)

        timer = asyncio.get_running_loop().call_later(cfg.timeout_seconds, on_timeout)
        pump = asyncio.create_task(_pump_input(requests, proc))
        followed = lifetime.Followed.instance(rec, until_stopping=True)
        ender = asyncio.create_task(lifetime.wait_end(ctx.deps.store, followed, since))
        ender.add_done_callback(on_end)
        async for ev in proc.events():
            if isinstance(ev, Output):
                if ev.stream == "stdout":
                    yield exec_pb2.ExecResponse(stdout=ev.data)
                else:
                    yield exec_pb2.ExecResponse(stderr=ev.data)
            else:
                if ended:
                    yield _ended_response(ended)
                yield _exit_response(ev)
        if timed_out:
            raise errors.ResourceExhausted(f"exec session exceeded its time limit of {cfg.timeout_seconds:g}s")
    finally:
        if timer is not None:
            timer.cancel()
        if ender is not None:
            ender.cancel()
            with contextlib.suppress(BaseException):
                await ender
        if pump is not None:
            pump.cancel()
            with contextlib.suppress(BaseException):
                await pump
        if proc is not None and proc.exit is None:
            # The client went away (or the server is stopping): the command must not outlive it.
            await proc.kill()
        os.close(slot)
