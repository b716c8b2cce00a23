"""Scale: N instances of a tiny program (cast, idle CPU, memory, API p99, delete) against the same N bare processes.

For each N (100 and 1,000; ``python -m bench scale --n 100`` for one quick size), on a fresh runed:

1. ``ref``: a service of 10 instances; p99 of GetService and ListInstances (pages of 100 and of 10) with 10 running;
   then again with 2N bare ``sleep`` processes beside it (as many processes as N instances and their shims): what a
   machine that crowded does to every call's tail, runed or not.
2. bare: spawn the same N programs directly (own sessions, as runed does), then SIGTERM them and reap; then the
   same N all under one keeper (the default: a keeper per service), or each under a shim (``controller.shim: auto``),
   without runed, ended as a delete ends them (the floor that the supervision itself sets).
3. cast: CreateService of scale N until the service reports Running (every instance running).
4. idle: CPU of the controller role (and the other runed processes, and all shims) over 30 s.
5. memory: RSS/PSS of the runed processes and of the shims (/proc/<pid>/smaps_rollup), per instance.
6. API: the same calls with N running, p99 against step 1, with one caller and with four in flight. The page of 10
   holds as many instances with N running as with 10 (the page of 100 holds 10 times as many), so its ratio is
   what N alone costs. The kernel's DAMON threads (kdamond), where the machine runs them, are measured beside.
7. delete: DeleteService until the deletion completed and every instance process is gone; the machine's CPU
   meanwhile, each runed process's share of it (the keeper's among them), and this benchmark's own (its watch).
   Then :data:`DELETES` - 1 more casts and deletes, each against a bare kill measured just before it: one
   delete against one bare kill moved by up to 1x between runs (a bare kill of 1,000 took 0.06-0.12 s on the
   same machine), so the ratio reported is the median of the pairs, with their range.
8. step 1's reference again, its samples pooled with the first's: the loaded phase is compared with a
   reference taken on both sides of it, so a machine that slowed (or quietened) meanwhile moves both.

Each phase's calls run in rounds, in turn (:data:`API_ROUNDS`).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import resource
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import grpc

from bench.common import CLK_TCK, Load, bootstrap_token, cpu_ticks, drive, setting
from rune.api import common_pb2, instance_pb2, instance_pb2_grpc, service_pb2, service_pb2_grpc
from runed.core import fdwait
from runed.core.readyset import ReadySet
from runed.runner import native
from runed.runner.keeper import ALL, SIGNAL_BATCH, Keepers
from runed.runner.process import is_keeper, shim_argv
from runed.runner.shim import DISCARD_SIGNAL, proc_start_time
from tests.harness import Runed, run_runed

SIZES = (100, 1000)
# controller.shim: a keeper per service (the default; one service here, so one keeper), and a shim
# per instance; "shared" (one keeper for all) on request, the same as "service" for one service.
SHIMS = ("service", "auto")
KEEPERS = ("service", "shared")
SHIM_WORDS = {
    "service": "a keeper per service (the default): one keeper for the service's instances",
    "shared": "one keeper for all instances (controller.shim: shared)",
    "auto": "a shim per instance (controller.shim: auto)",
}
IDLE_SECONDS = setting("BENCH_SCALE_IDLE_SECONDS", 30.0)
API_SECONDS = setting("BENCH_SECONDS", 5.0)
# Each call's API_SECONDS are split into this many rounds, taken in turn with every other call's: a
# burst of noise on the machine (a few scheduler stalls decide a p99 of 4-10 ms) falls on every call
# of a phase alike, not on whichever ran meanwhile.
API_ROUNDS = 5
REF_SCALE = 10
PAGE = 100
# A page that holds as many instances with N running as the page of 100 holds with 10.
SMALL_PAGE = REF_SCALE
WAIT_SECONDS = 900.0
# How often the benchmark's watch of a thousand ends looks (see Ends).
ENDS_LOOK_SECONDS = 0.001
# Deletes measured per size, each against its own bare kill (step 7). Five, not three: the ratios
# of one session's 25 pairs spread from 1.6x to 2.7x around a median of 2.0x (bench/README.md, "the
# safety net's share; a delete bound by the machine's CPU"), and a median of three moved with them.
DELETES = setting("BENCH_SCALE_DELETES", 5)
# After a cast, before its delete: the start-up's last writes are done.
SETTLE_SECONDS = 5.0


def _program(kind: str) -> list[str]:
    if kind == "sleep":
        return [shutil.which("sleep") or "/bin/sleep", "3600"]
    # A tiny shell loop: a shell that forks a sleep now and then.
    return [shutil.which("sh") or "/bin/sh", "-c", "while :; do sleep 3600; done"]


# -- /proc ---------------------------------------------------------------------------------------
def thread_cpu(pid: int) -> float:
    """CPU seconds of ``pid``'s threads alive now, from each one's schedstat (nanoseconds: a delete's
    tens of milliseconds are below the clock tick of /proc/<pid>/stat). A thread that ended before
    the look is not counted."""
    total = 0
    with contextlib.suppress(OSError):
        for task in os.listdir(f"/proc/{pid}/task"):
            with contextlib.suppress(OSError, ValueError, IndexError):
                total += int(Path(f"/proc/{pid}/task/{task}/schedstat").read_text().split()[0])
    return total / 1e9


def mem_kb(pid: int) -> tuple[int, int]:
    """(RSS, PSS) of ``pid`` in kB from /proc/<pid>/smaps_rollup ((0, 0) when gone)."""
    rss = pss = 0
    try:
        text = Path(f"/proc/{pid}/smaps_rollup").read_text()
    except OSError:
        return 0, 0
    for line in text.splitlines():
        if line.startswith("Rss:"):
            rss = int(line.split()[1])
        elif line.startswith("Pss:"):
            pss = int(line.split()[1])
    return rss, pss


def machine_cpu() -> float:
    """Seconds of CPU the whole machine has spent (every core: user, system, interrupts), from /proc/stat."""
    fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
    # user nice system idle iowait irq softirq steal: all but idle and iowait.
    busy = sum(int(v) for i, v in enumerate(fields[:8]) if i not in (3, 4))
    return busy / CLK_TCK


def _alive(pid: int, start: int | None) -> bool:
    now = proc_start_time(pid)
    return now is not None and now == start


def runed_pids(r: Runed) -> dict[str, int]:
    assert r.proc is not None
    pids = {"supervisor": r.proc.pid}
    for marker in sorted((r.data_dir / "run").glob("*.json")):
        pids[marker.stem] = int(json.loads(marker.read_text())["pid"])
    return pids


def instance_pids(data_dir: Path) -> tuple[list[tuple[int, int | None]], list[tuple[int, int | None]]]:
    """(shims, instances) as (pid, start time) from every pid.json under the data dir; a keeper
    (the shim of each of its instances) is among the shims once."""
    shims, insts = {}, []
    for pid_file in (data_dir / "instances").glob("*/pid.json"):
        try:
            info = json.loads(pid_file.read_text())
        except (OSError, ValueError):
            continue
        shims[int(info["shim_pid"])] = info.get("shim_start")
        insts.append((int(info["pid"]), info.get("pid_start")))
    return list(shims.items()), insts


# -- bare baseline -------------------------------------------------------------------------------
def bare(argv: list[str], n: int) -> tuple[float, float, float]:
    """Seconds to spawn ``n`` programs directly (Popen returns once each exec succeeded), to end them,
    and the machine's CPU seconds while they ended."""
    t0 = time.perf_counter()
    procs = [
        subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, start_new_session=True)
        for _ in range(n)
    ]
    spawn = time.perf_counter() - t0
    cpu = machine_cpu()
    t0 = time.perf_counter()
    for p in procs:
        os.killpg(p.pid, signal.SIGTERM)
    for p in procs:
        p.wait()
    return spawn, time.perf_counter() - t0, machine_cpu() - cpu


def shims_killed(argv: list[str], n: int, root: Path) -> float:
    """Seconds to end ``n`` programs each under the shim runed runs them under (no runed: the floor
    per-instance supervision sets), as a delete does: the deletion signal to the shim, SIGTERM to the
    program's group, then every shim gone."""
    program = native.shim_path()
    shims, insts = [], []
    for i in range(n):
        d = root / f"i{i}"
        d.mkdir(parents=True)
        (d / "launch.json").write_text(json.dumps({"argv": argv, "cwd": str(d), "min_free_bytes": 0}))
        shims.append(subprocess.Popen(shim_argv(d, program), stdin=subprocess.DEVNULL, cwd=d, start_new_session=True))
    for i in range(n):
        pid_file = root / f"i{i}" / "pid.json"
        _until(pid_file.exists, "a shim's instance started", 0.01)
        insts.append(int(json.loads(pid_file.read_text())["pid"]))
    t0 = time.perf_counter()
    for shim, pid in zip(shims, insts, strict=True):
        shim.send_signal(DISCARD_SIGNAL)
        os.killpg(pid, signal.SIGTERM)
    for shim in shims:
        shim.wait()
    return time.perf_counter() - t0


@contextlib.contextmanager
def _many_open_files() -> Iterator[None]:
    """This process's soft limit on open files raised to the hard one meanwhile (a descriptor per
    instance or process waited on)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


class Ends:
    """Descriptors (a pidfd: its process ended; an end pipe: its instance's record written) watched
    until each is readable, with as little CPU as the watch can take from the ends it times (it took
    12-41 ms of a delete of 1,000, both cores busy): they are registered before the timing starts,
    each reported once (``EPOLLONESHOT``: no system call per end while the ends come; closed after),
    and the watch looks at most every :data:`ENDS_LOOK_SECONDS` (the ends of a thousand processes
    woke it hundreds of times), which is as late as a time it reports can be."""

    def __init__(self, fds: list[int]) -> None:
        self.fds = fds
        self.total = self.left = len(fds)
        self.ready = ReadySet(oneshot=True)
        for fd in fds:
            self.ready.add(fd)

    def wait(self, what: str) -> None:
        """Until every one is readable; the set and the descriptors are closed after."""
        try:
            while self.left:
                if not fdwait.ready(self.ready.fileno(), WAIT_SECONDS)[0]:
                    raise RuntimeError(f"{what}: {self.left} of {self.total} not within {WAIT_SECONDS:g}s")
                self.left -= len(self.ready.take_ready())
                if self.left:
                    time.sleep(ENDS_LOOK_SECONDS)
        finally:
            self.ready.close()
            for fd in self.fds:
                os.close(fd)


def keeper_killed(argv: list[str], n: int, root: Path) -> float:
    """Seconds to end ``n`` programs under one keeper (no runed: the floor that supervision by the
    keeper sets), as a delete ends them: the keeper sent their directories in messages of 64 (SIGTERM,
    no exit records written), then every instance's end pipe at end of file."""
    program = native.shim_path()
    assert program is not None, "no native shim: no keeper"
    keepers = Keepers(program)
    with _many_open_files(), contextlib.closing(keepers):
        k = keepers.ours(root, ALL)
        dirs = []
        for i in range(n):
            d = root / f"i{i}"
            d.mkdir(parents=True)
            spec = {"attempt": "a1", "argv": argv, "cwd": str(d), "umask": 0o022, "min_free_bytes": 0}
            (d / "launch.json").write_text(json.dumps(spec))
            k.ask(str(d), {"op": "start", "dir": str(d), "attempt": "a1", "env": {"PATH": os.defpath}})
            dirs.append(str(d))
        while len(k.answers) < n:
            k.collect(block=True)
        ends = [fd for _, fd in k.answers.values() if fd is not None]
        assert len(ends) == n, f"{n - len(ends)} of {n} did not start under the keeper"
        k.answers.clear()
        watch = Ends(ends)
        t0 = time.perf_counter()
        for i in range(0, n, SIGNAL_BATCH):
            k.send({"op": "signal", "dirs": dirs[i : i + SIGNAL_BATCH], "signal": signal.SIGTERM, "discard": True})
        watch.wait("instances ended under the keeper")
        return time.perf_counter() - t0


@contextlib.contextmanager
def crowd(n: int) -> Iterator[None]:
    """``n`` bare ``sleep`` processes alive meanwhile (nothing else: they only exist)."""
    argv = _program("sleep")
    procs = [subprocess.Popen(argv, stdin=subprocess.DEVNULL, start_new_session=True) for _ in range(n)]
    try:
        time.sleep(2)
        yield
    finally:
        for p in procs:
            p.kill()
        for p in procs:
            p.wait()


# -- runed ---------------------------------------------------------------------------------------
@dataclass
class Api:
    channel: grpc.Channel
    md: list[tuple[str, str]]

    @property
    def services(self) -> service_pb2_grpc.ServiceServiceStub:
        return service_pb2_grpc.ServiceServiceStub(self.channel)

    def cast(self, name: str, argv: list[str], scale: int) -> None:
        svc = service_pb2.Service(
            name=name,
            namespace="default",
            scale=scale,
            runtime="process",
            process=common_pb2.ProcessSpec(command=argv[0], args=argv[1:]),
        )
        self.services.CreateService(service_pb2.CreateServiceRequest(service=svc), metadata=self.md)

    def status(self, name: str) -> int:
        req = service_pb2.GetServiceRequest(name=name, namespace="default")
        return int(self.services.GetService(req, metadata=self.md).service.status)

    def delete(self, name: str) -> None:
        req = service_pb2.DeleteServiceRequest(name=name, namespace="default", grace_period=5)
        self.services.DeleteService(req, metadata=self.md)

    def gone(self, name: str) -> bool:
        try:
            self.status(name)
        except grpc.RpcError as e:
            if e.code() == grpc.StatusCode.NOT_FOUND:
                return True
            raise
        return False


def _until(check: Callable[[], bool], what: str, interval: float = 0.05) -> float:
    """Seconds until ``check()`` holds (polled every ``interval``)."""
    t0 = time.perf_counter()
    while not check():
        if time.perf_counter() - t0 > WAIT_SECONDS:
            raise RuntimeError(f"{what}: not reached within {WAIT_SECONDS:g}s")
        time.sleep(interval)
    return time.perf_counter() - t0


def cast_running(api: Api, name: str, argv: list[str], scale: int) -> float:
    t0 = time.perf_counter()
    api.cast(name, argv, scale)
    _until(lambda: api.status(name) == service_pb2.SERVICE_STATUS_RUNNING, f"{name} Running")
    return time.perf_counter() - t0


@dataclass
class Gone:
    """Seconds from DeleteService until its service's deletion event, and until its last process
    ended; the machine's CPU seconds meanwhile (every core), runed's processes' share of it, and
    this benchmark's own (its watch of the processes and of the service)."""

    service: float = 0.0
    processes: float = 0.0
    cpu: float = 0.0
    by_process: dict[str, float] = field(default_factory=dict)
    observer: float = 0.0

    @property
    def all(self) -> float:
        return max(self.service, self.processes)


@_many_open_files()
def delete_gone(api: Api, name: str, data_dir: Path, runed: dict[str, int] | None = None) -> Gone:
    """DeleteService until the service is gone and no shim or instance process of the data dir runs.

    Both ends are seen as they happen, not polled: the service's DELETED event on a watch opened
    before the call, and every process's pidfd (readable once it has ended). ``runed``: the
    processes (name: pid) whose CPU meanwhile is reported one by one (a keeper among the shims is
    added to them)."""
    shims, insts = instance_pids(data_dir)
    watched = dict(runed or {})
    watched.update(("keeper", p) for p, _ in shims if is_keeper(p))
    pidfds = []
    # A keeper's end is not waited for (it leaves once runed lets go of it, a little after its last
    # instance): only shims of their own end with their instances.
    for pid, start in insts + [(p, s) for p, s in shims if not is_keeper(p)]:
        with contextlib.suppress(ProcessLookupError):
            fd = os.pidfd_open(pid)
            if _alive(pid, start):
                pidfds.append(fd)
            else:
                os.close(fd)
    watch = api.services.WatchServices(service_pb2.WatchServicesRequest(namespace="default"), metadata=api.md)
    opened, deleted = threading.Event(), threading.Event()
    gone = Gone()
    t0 = 0.0

    def follow() -> None:
        with contextlib.suppress(grpc.RpcError):
            for ev in watch:
                if ev.service.name != name:
                    continue
                if ev.event_type == common_pb2.EVENT_TYPE_DELETED:
                    gone.service = time.perf_counter() - t0
                    deleted.set()
                    return
                opened.set()

    threading.Thread(target=follow, daemon=True).start()
    # The watch starts with a snapshot of what exists: it is open once the service was in it.
    if not opened.wait(60):
        raise RuntimeError(f"{name}: the watch did not open")
    ends = Ends(pidfds)
    cpu = machine_cpu()
    before = {k: thread_cpu(p) for k, p in watched.items()}
    ours = thread_cpu(os.getpid())
    t0 = time.perf_counter()
    api.delete(name)
    ends.wait(f"{name} processes gone")
    gone.processes = time.perf_counter() - t0
    if not deleted.wait(WAIT_SECONDS):
        raise RuntimeError(f"{name} deleted: not reached within {WAIT_SECONDS:g}s")
    gone.cpu = machine_cpu() - cpu
    gone.observer = thread_cpu(os.getpid()) - ours
    gone.by_process = {k: thread_cpu(p) - before[k] for k, p in watched.items()}
    watch.cancel()
    return gone


# The calls of steps 1 and 6, in the order they run and report.
CALLS = ("GetService", "ListInstances", "ListInstances/10")
# Callers in flight: one (a call's own latency) and four (the client and runed then fill both cores,
# so the tail is mostly the run queue: whatever else wakes up on the machine lengthens it).
CONCURRENCY = (1, 4)


@dataclass
class Phase:
    """The calls' loads, keyed (call, concurrency), and what the kernel's memory monitor took meanwhile."""

    loads: dict[tuple[str, int], Load]
    kdamond: float | None

    def __add__(self, other: Phase) -> Phase:
        """Both phases' samples as one (the same calls measured at two times)."""
        loads = {k: v + other.loads[k] if k in other.loads else v for k, v in self.loads.items()}
        kd = [x for x in (self.kdamond, other.kdamond) if x is not None]
        return Phase(loads, sum(kd) / len(kd) if kd else None)


def kdamond_pids() -> list[int]:
    """The kernel's DAMON threads, if it runs any: they sample pages and walk every mapping of each
    one, so their work grows with the processes that share pages (bench/README.md "API p99")."""
    out = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            with contextlib.suppress(OSError):
                if (d / "comm").read_text().startswith("kdamond"):
                    out.append(int(d.name))
    return out


def api_latency(target: str, md: list[tuple[str, str]], name: str) -> Phase:
    """Loads of GetService(name), of ListInstances (page of 100) and of ListInstances (page of 10), one after
    the other, at each concurrency."""
    kd = kdamond_pids()
    before = sum(cpu_ticks(p) for p in kd)
    t0 = time.perf_counter()
    loads = asyncio.run(_api_latency(target, md, name))
    wall = time.perf_counter() - t0
    share = 100.0 * (sum(cpu_ticks(p) for p in kd) - before) / CLK_TCK / wall if kd else None
    return Phase(loads, share)


async def _api_latency(target: str, md: list[tuple[str, str]], name: str) -> dict[tuple[str, int], Load]:
    async with grpc.aio.insecure_channel(target) as ch:
        svc = service_pb2_grpc.ServiceServiceStub(ch)
        inst = instance_pb2_grpc.InstanceServiceStub(ch)
        get_req = service_pb2.GetServiceRequest(name=name, namespace="default")
        list_req = instance_pb2.ListInstancesRequest(namespace="default", page_size=PAGE)
        small_req = instance_pb2.ListInstancesRequest(namespace="default", page_size=SMALL_PAGE)

        async def get() -> object:
            return await svc.GetService(get_req, metadata=md)

        async def lst() -> object:
            return await inst.ListInstances(list_req, metadata=md)

        async def small() -> object:
            return await inst.ListInstances(small_req, metadata=md)

        calls = dict(zip(CALLS, (get, lst, small), strict=True))
        loads: dict[tuple[str, int], Load] = {}
        for _ in range(API_ROUNDS):
            for c in CONCURRENCY:
                for k, call in calls.items():
                    load = await drive(call, API_SECONDS / API_ROUNDS, concurrency=c)
                    loads[(k, c)] = loads[(k, c)] + load if (k, c) in loads else load
        return loads


def idle_cpu(pids: dict[str, int], shims: list[tuple[int, int | None]], seconds: float) -> dict[str, float]:
    """Percent of one core used over ``seconds`` by each runed process and by all shims together."""
    shim_pids = [p for p, _ in shims]
    before = {k: cpu_ticks(p) for k, p in pids.items()}
    shims_before = sum(cpu_ticks(p) for p in shim_pids)
    t0 = time.perf_counter()
    time.sleep(seconds)
    wall = time.perf_counter() - t0
    out = {k: 100.0 * (cpu_ticks(p) - before[k]) / CLK_TCK / wall for k, p in pids.items()}
    out["shims"] = 100.0 * (sum(cpu_ticks(p) for p in shim_pids) - shims_before) / CLK_TCK / wall
    return out


@dataclass
class Result:
    n: int
    shim: str = SHIMS[0]
    bare_spawn: float = 0.0
    bare_kill: float = 0.0
    bare_kill_cpu: float = 0.0
    shims_kill: float = 0.0
    keeper_kill: float = 0.0
    cast: float = 0.0
    # Each delete with the bare kill measured before it (seconds, the machine's CPU seconds).
    deletes: list[tuple[Gone, float, float]] = field(default_factory=list)
    cpu: dict[str, float] = field(default_factory=dict)
    runed_mem: dict[str, tuple[int, int]] = field(default_factory=dict)
    shim_rss: float = 0.0
    shim_pss: float = 0.0
    ref: Phase = field(default_factory=lambda: Phase({}, None))
    crowded: Phase = field(default_factory=lambda: Phase({}, None))
    loaded: Phase = field(default_factory=lambda: Phase({}, None))


def measure(n: int, argv: list[str], shim: str = SHIMS[0]) -> Result:
    """Every figure for ``n`` instances, on a runed of its own (``controller.shim`` = ``shim``)."""
    res = Result(n, shim)
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "data"
        env = {
            "RUNE_AUTH_RATE_LIMIT_REQUESTS_PER_SECOND": "0",
            "RUNE_LIMITS_MAX_SCALE": str(max(n, 1000)),
            "RUNE_CONTROLLER_SHIM": shim,
        }
        with run_runed(data, args=["--log-level", "warning"], env=env, timeout=60) as r:
            target = r.grpc_target
            md = [("authorization", f"Bearer {bootstrap_token(target)}")]
            api = Api(r.channel(), md)
            # 1. The reference: the same calls with 10 instances running.
            cast_running(api, "ref", argv, REF_SCALE)
            time.sleep(2)
            res.ref = api_latency(target, md, "ref")
            with crowd(2 * n):
                res.crowded = api_latency(target, md, "ref")
            delete_gone(api, "ref", data)
            # 2. Bare processes, while runed supervises nothing.
            res.bare_spawn, res.bare_kill, res.bare_kill_cpu = bare(argv, n)
            if shim not in KEEPERS:
                res.shims_kill = shims_killed(argv, n, Path(tmp) / "shims")
            else:
                res.keeper_kill = keeper_killed(argv, n, Path(tmp) / "kept")
            # 3. Cast.
            res.cast = cast_running(api, "scale", argv, n)
            # 4. Idle, once the last status writes and the start-up bursts are over.
            time.sleep(SETTLE_SECONDS)
            shims, _ = instance_pids(data)
            pids = runed_pids(r)
            res.cpu = idle_cpu(pids, shims, IDLE_SECONDS)
            # 5. Memory.
            res.runed_mem = {k: mem_kb(p) for k, p in pids.items()}
            mems = [mem_kb(p) for p, _ in shims]
            res.shim_rss = sum(m[0] for m in mems) / n
            res.shim_pss = sum(m[1] for m in mems) / n
            # 6. The API with N running.
            res.loaded = api_latency(target, md, "scale")
            # 7. Delete, against step 2's bare kill; then again, each against a bare kill just before.
            res.deletes.append((delete_gone(api, "scale", data, pids), res.bare_kill, res.bare_kill_cpu))
            for _ in range(DELETES - 1):
                cast_running(api, "scale", argv, n)
                time.sleep(SETTLE_SECONDS)
                _, kill, kill_cpu = bare(argv, n)
                res.deletes.append((delete_gone(api, "scale", data, runed_pids(r)), kill, kill_cpu))
            # 1 again: the reference spans the time of the loaded phase, not only what came before it.
            cast_running(api, "ref", argv, REF_SCALE)
            time.sleep(2)
            res.ref = res.ref + api_latency(target, md, "ref")
            delete_gone(api, "ref", data)
    return res


def _times(cpu: float, baseline: float) -> str:
    """``cpu`` as a multiple of ``baseline``, machine CPU read in clock ticks: a baseline under one
    tick (a bare kill of 100) has no ratio to give."""
    return f"{cpu / baseline:.1f}x" if baseline >= 1 / CLK_TCK else "under a clock tick: no ratio"


def report(res: Result) -> Iterator[str]:
    n = res.n
    yield f"   N = {n}, {SHIM_WORDS.get(res.shim, res.shim)}"
    yield (
        f"     cast -> all Running   {res.cast:7.2f} s   bare spawn {res.bare_spawn:6.2f} s   "
        f"ratio {res.cast / res.bare_spawn:6.1f}x"
    )
    # The median pair by its ratio (the middle one of an odd count, the lower middle of an even).
    pairs = sorted(res.deletes, key=lambda p: p[0].all / p[1])
    delete, kill, kill_cpu = pairs[(len(pairs) - 1) // 2]
    yield (
        f"     delete -> all gone    {delete.all:7.2f} s   bare kill  {kill:6.2f} s   "
        f"ratio {delete.all / kill:6.1f}x   (processes gone {delete.processes:.2f} s, "
        f"{delete.processes / kill:.1f}x; service deleted {delete.service:.2f} s)"
    )
    if len(pairs) > 1:
        each = ", ".join(f"{g.all * 1000:.0f}/{k * 1000:.0f} ms {g.all / k:.1f}x" for g, k, _ in res.deletes)
        yield f"       the median of {len(pairs)} deletes, each against a bare kill just before it: {each}"
    cores = os.cpu_count() or 1
    yield (
        f"       the machine's CPU meanwhile: delete {delete.cpu * 1000:.0f} ms, bare kill "
        f"{kill_cpu * 1000:.0f} ms ({_times(delete.cpu, kill_cpu)}); on {cores} cores "
        f"that is {delete.cpu / cores * 1000:.0f} ms of every core "
        f"({delete.cpu / cores / kill:.1f}x bare kill)"
    )
    if delete.by_process:
        ours = sum(delete.by_process.values())
        each = ", ".join(f"{k} {v * 1000:.0f}" for k, v in delete.by_process.items() if v >= 0.0005)
        rest = delete.cpu - ours - delete.observer
        yield (
            f"       of which runed's processes {ours * 1000:.0f} ms ({each} ms), this benchmark's watch "
            f"{delete.observer * 1000:.0f} ms; the rest {rest * 1000:.0f} ms "
            f"(the instances' own ends, {'their shims, ' if res.shim not in KEEPERS else ''}the kernel)"
        )
    if res.shims_kill:
        yield (
            f"       the same under shims, killed without runed {res.shims_kill:.2f} s: "
            f"{res.shims_kill / res.bare_kill:.1f}x bare kill (the floor of per-instance supervision); "
            f"delete {delete.all / res.shims_kill:.1f}x of it"
        )
    if res.keeper_kill:
        yield (
            f"       the same under one keeper, ended without runed {res.keeper_kill:.2f} s: "
            f"{res.keeper_kill / res.bare_kill:.1f}x bare kill (the floor of supervision by a keeper); "
            f"delete {delete.all / res.keeper_kill:.1f}x of it"
        )
    cpu = res.cpu
    others = ", ".join(f"{k} {v:.2f}%" for k, v in cpu.items() if k not in ("controller", "shims"))
    yield (
        f"     idle CPU ({IDLE_SECONDS:g} s)      controller {cpu.get('controller', 0):.2f}% of a core; "
        f"{'the keeper' if res.shim in KEEPERS else f'all {n} shims'} {cpu.get('shims', 0):.2f}%; {others}"
    )
    total_pss = sum(p for _, p in res.runed_mem.values())
    roles = ", ".join(f"{k} {p / 1024:.0f}" for k, (_, p) in res.runed_mem.items())
    yield f"     runed PSS              {total_pss / 1024:7.1f} MB ({roles} MB)"
    per = res.shim_pss + total_pss / n
    yield (
        f"     per instance           {'keeper' if res.shim in KEEPERS else 'shim'} PSS {res.shim_pss:.1f} kB "
        f"(RSS {res.shim_rss:.1f} kB); "
        f"with runed's share {per / 1024:.2f} MB"
    )
    # ListInstances pages of 100 (10 items with 10 running, 100 with N) and of 10 (10 items in both).
    baselines = (
        (res.ref, f"with {REF_SCALE} (before and after)"),
        (res.crowded, f"with {REF_SCALE} beside {2 * n} bare processes"),
    )
    for c in CONCURRENCY:
        yield f"     API, {c} caller{'s' if c > 1 else ''} in flight"
        for phase, label in baselines:
            for call in CALLS:
                base, loaded = phase.loads[(call, c)], res.loaded.loads[(call, c)]
                p99, p50 = (loaded.pct(99), base.pct(99)), (loaded.pct(50), base.pct(50))
                yield (
                    f"       {call:<16} p99 {p99[0]:6.2f} ms with {n} running, {p99[1]:5.2f} ms {label}"
                    f"   ratio {p99[0] / p99[1]:4.2f}x  (p50 {p50[0]:.2f} / {p50[1]:.2f} ms)"
                )
    if res.loaded.kdamond is not None:
        yield (
            f"     the kernel's kdamond meanwhile: {res.ref.kdamond or 0:.1f}% of a core with {REF_SCALE} running, "
            f"{res.crowded.kdamond or 0:.1f}% beside {2 * n} bare processes, {res.loaded.kdamond:.1f}% with {n} running"
        )


def run(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench scale")
    parser.add_argument("--n", type=int, action="append", help="instances (repeatable; default 100 and 1000)")
    parser.add_argument("--program", choices=("sleep", "sh"), default="sleep", help="the tiny program")
    parser.add_argument(
        "--shim",
        choices=(*SHIMS, "shared"),
        action="append",
        help="controller.shim (repeatable; default: service, auto)",
    )
    args = parser.parse_args(argv or [])
    program = _program(args.program)
    print(f"   program: {' '.join(program)}; idle window {IDLE_SECONDS:g} s; API load {API_SECONDS:g} s per call")
    for shim in args.shim or SHIMS:
        # The keeper at the size of the targets only, unless sizes are given.
        for n in args.n or (SIZES if shim == SHIMS[0] else SIZES[-1:]):
            for line in report(measure(n, program, shim)):
                print(line, flush=True)
