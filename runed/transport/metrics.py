"""Prometheus metrics shared by every role process (multiprocess files under <data_dir>/run/metrics).

Each role process records calls through the pipeline's ``on_call_finished`` hook (from :func:`install`) into
prometheus-client's multiprocess files; the REST role's ``/metrics`` aggregates all of them, so
gRPC and REST counts appear in one scrape. The directory is per supervisor run (its pid), and
directories of runs whose supervisor is gone are removed at start-up so old counts never leak in.

A full data disk. prometheus-client keeps each value in a memory-mapped file that it creates and
grows with ``truncate`` (a sparse file) and then writes through the mapping; storing to a page of a
hole when the filesystem has no block left for it raises SIGBUS, which kills the process. That, not
SQLite, is what took the REST and gRPC roles down with a full data dir: every call records a
metric, and a call with a new method or status code adds a key to a new page. So this module adds
a key (creates a labelled child, which may create or grow a file) only while the filesystem has
:data:`MIN_FREE_BYTES` free, and then allocates the files' blocks for real (``posix_fallocate``),
so later stores to keys that exist never need a new block. Counts that cannot be stored yet wait
in memory and are written when space returns.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import logging
import os
import shutil
from pathlib import Path
from typing import Any

from runed.pipeline.context import CallContext

log = logging.getLogger("runed.metrics")

ENV = "PROMETHEUS_MULTIPROC_DIR"
# New keys are added only with this much free space on the metrics filesystem: a file grows by
# doubling, and the files stay far below this size.
MIN_FREE_BYTES = 2 * 1024 * 1024
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

_metrics: dict[str, Any] = {}


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def metrics_dir(data_path: Path) -> Path:
    run = os.environ.get("RUNED_SUPERVISOR_PID") or str(os.getpid())
    return data_path / "run" / "metrics" / run


def _prepare(data_path: Path) -> Path:
    d = metrics_dir(data_path)
    parent = d.parent
    if parent.exists():
        for old in parent.iterdir():
            if old != d and old.name.isdigit() and not _alive(int(old.name)):
                shutil.rmtree(old, ignore_errors=True)
    d.mkdir(parents=True, exist_ok=True)
    return d


def install(data_path: Path, role: str) -> None:
    """Point prometheus-client at the shared directory under ``data_path`` and create the metrics.

    Must run before anything imports ``prometheus_client`` in this process (the value backend
    is chosen at import time). Calls are then counted by handing :func:`on_call_finished` to the
    pipeline.
    """
    if _metrics:
        return
    if ENV not in os.environ:
        try:
            os.environ[ENV] = str(_prepare(data_path))
        except OSError as e:
            # No directory (a full disk can refuse one): this process serves without metrics.
            log.warning("metrics disabled in this process: cannot prepare %s: %s", metrics_dir(data_path), e)
            return
    from prometheus_client import Counter, Gauge, Histogram

    _metrics["requests"] = Counter(
        "rune_requests_total", "API calls by transport, method and status code.", ["transport", "method", "code"]
    )
    _metrics["latency"] = Histogram(
        "rune_request_duration_seconds",
        "API call latency by transport and method.",
        ["transport", "method"],
        buckets=LATENCY_BUCKETS,
    )
    _metrics["streams"] = Gauge(
        "rune_open_streams", "Streams open right now, by transport.", ["transport"], multiprocess_mode="livesum"
    )
    if role in ("rest", "grpc"):
        # Present (at 0) from the start, so dashboards see the series before the first stream.
        # Each API adapter counts its own open streams (SSE and WebSocket; gRPC server and bidi streams).
        stream_opened(role, 0)


def on_call_finished(ctx: CallContext, code: str, elapsed_ms: float) -> None:
    """The pipeline's hook: one finished call (a no-op until :func:`install` ran)."""
    record(ctx.transport, ctx.method.full_name, code, elapsed_ms / 1000)


_children: dict[tuple[str, ...], Any] = {}


def _room() -> bool:
    """Whether a key may be added: the metrics filesystem has room for a file to be created or to grow."""
    try:
        st = os.statvfs(os.environ[ENV])
    except (KeyError, OSError):
        return False
    return st.f_bavail * st.f_frsize >= MIN_FREE_BYTES


def _reserve() -> None:
    """Allocate every block of this process's metric files, so no store through their mappings faults.

    The names are prometheus-client's (``<type>_<pid>.db``); a filesystem without fallocate leaves
    the files sparse and only the free-space check guards them.
    """
    for path in Path(os.environ[ENV]).glob(f"*_{os.getpid()}.db"):
        try:
            fd = os.open(path, os.O_RDWR)
        except OSError:
            continue
        try:
            os.posix_fallocate(fd, 0, os.fstat(fd).st_size)
        except OSError:
            pass
        finally:
            os.close(fd)


def _child(metric: str, *labels: str) -> Any:
    """The cached labelled child (None while there is no room to add it: see the module docstring)."""
    # prometheus-client's .labels() takes a lock and validates on every call; cache the children.
    key = (metric, *labels)
    child = _children.get(key)
    if child is None:
        # Rare (once per label set and process), so the free space is looked at right before.
        if not _room():
            return None
        child = _children[key] = _metrics[metric].labels(*labels)
        _reserve()
    return child


# Calls are tallied in plain dicts and written to the shared files at most every FLUSH_SECONDS:
# each write to a multiprocess value takes a lock and an mmap store (≈3 µs per Histogram.observe),
# which showed on the hot path. Latencies are tallied per bucket here, so a flush writes at most one
# value per bucket and label set, however many calls it covers.
FLUSH_SECONDS = 0.25
_BOUNDS = (*LATENCY_BUCKETS, float("inf"))  # prometheus-client appends +Inf the same way
_pending_counts: dict[tuple[str, str, str], int] = {}
# (transport, method) -> [sum of seconds, count in bucket 0, count in bucket 1, ...]
_pending_latency: dict[tuple[str, str], list[float]] = {}
# Open-stream deltas by transport whose gauge could not be added yet (no room).
_pending_streams: dict[str, int] = {}
_flush_scheduled = False


def record(transport: str, method: str, code: str, seconds: float) -> None:
    global _flush_scheduled
    if not _metrics:
        return
    key = (transport, method, code)
    _pending_counts[key] = _pending_counts.get(key, 0) + 1
    tally = _pending_latency.get((transport, method))
    if tally is None:
        tally = _pending_latency[(transport, method)] = [0.0] * (len(_BOUNDS) + 1)
    tally[0] += seconds
    # Same rule as Histogram.observe: the first bucket whose upper bound is >= the value.
    tally[bisect.bisect_left(_BOUNDS, seconds) + 1] += 1
    if _flush_scheduled:
        return
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        flush()
        return
    _flush_scheduled = True
    loop.call_later(FLUSH_SECONDS, flush)


def flush() -> None:
    """Write the tallied calls to the shared metric files."""
    global _flush_scheduled
    _flush_scheduled = False
    counts = list(_pending_counts.items())
    latencies = list(_pending_latency.items())
    _pending_counts.clear()
    _pending_latency.clear()
    for labels, n in counts:
        child = _child("requests", *labels)
        if child is None:
            _pending_counts[labels] = _pending_counts.get(labels, 0) + n  # kept until there is room
            continue
        child.inc(n)
    for labels2, tally in latencies:
        hist = _child("latency", *labels2)
        if hist is None:
            _pending_latency[labels2] = tally
            continue
        # Histogram.observe, for many values at once: its sum and per-bucket values (non-cumulative
        # in prometheus-client's storage; the exposition accumulates them).
        hist._sum.inc(tally[0])
        for i, in_bucket in enumerate(tally[1:]):
            if in_bucket:
                hist._buckets[i].inc(in_bucket)
    for transport, delta in list(_pending_streams.items()):
        del _pending_streams[transport]
        stream_opened(transport, delta)


def stream_opened(transport: str, delta: int = 1) -> None:
    if not _metrics:
        return
    child = _child("streams", transport)
    if child is None:
        _pending_streams[transport] = _pending_streams.get(transport, 0) + delta
        return
    child.inc(delta)


def shutdown() -> None:
    """Drop this process's live gauges from the shared directory."""
    if not _metrics or ENV not in os.environ:
        return
    flush()
    from prometheus_client import multiprocess

    with contextlib.suppress(Exception):
        multiprocess.mark_process_dead(os.getpid())  # type: ignore[no-untyped-call]
