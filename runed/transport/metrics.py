"""Prometheus metrics shared by every role process (multiprocess files under <data_dir>/run/metrics).

Each role process records calls through the pipeline's ``on_call_finished`` hook (from :func:`install`) into
prometheus-client's multiprocess files; the REST role's ``/metrics`` aggregates all of them, so
gRPC and REST counts appear in one scrape. The directory is per supervisor run (its pid), and
directories of runs whose supervisor is gone are removed at start-up so old counts never leak in.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import os
import shutil
from pathlib import Path
from typing import Any

from runed.pipeline.context import CallContext

ENV = "PROMETHEUS_MULTIPROC_DIR"
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
    os.environ.setdefault(ENV, str(_prepare(data_path)))
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
    if role == "rest":
        # Present (at 0) from the start, so dashboards see the series before the first stream.
        # Only the REST adapter counts open streams; gRPC calls show up when they finish.
        _metrics["streams"].labels("rest").inc(0)


def on_call_finished(ctx: CallContext, code: str, elapsed_ms: float) -> None:
    """The pipeline's hook: one finished call (a no-op until :func:`install` ran)."""
    record(ctx.transport, ctx.method.full_name, code, elapsed_ms / 1000)


_children: dict[tuple[str, ...], Any] = {}


def _child(metric: str, *labels: str) -> Any:
    # prometheus-client's .labels() takes a lock and validates on every call; cache the children.
    key = (metric, *labels)
    child = _children.get(key)
    if child is None:
        child = _children[key] = _metrics[metric].labels(*labels)
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
        _child("requests", *labels).inc(n)
    for labels2, tally in latencies:
        hist = _child("latency", *labels2)
        # Histogram.observe, for many values at once: its sum and per-bucket values (non-cumulative
        # in prometheus-client's storage; the exposition accumulates them).
        hist._sum.inc(tally[0])
        for i, in_bucket in enumerate(tally[1:]):
            if in_bucket:
                hist._buckets[i].inc(in_bucket)


def stream_opened(transport: str, delta: int = 1) -> None:
    if _metrics:
        _child("streams", transport).inc(delta)


def shutdown() -> None:
    """Drop this process's live gauges from the shared directory."""
    if not _metrics or ENV not in os.environ:
        return
    flush()
    from prometheus_client import multiprocess

    with contextlib.suppress(Exception):
        multiprocess.mark_process_dead(os.getpid())  # type: ignore[no-untyped-call]
