"""Failed authentications in the audit log: who or what was presented, never a secret, and never a flood.

Each API process writes at most :data:`RECORDS_PER_WINDOW` failure records per
:data:`WINDOW_SECONDS`; further failures in the window are only counted, and one summary record
(how many, from which peers) is written when the window ends. A flood of bad credentials thus adds
at most ``RECORDS_PER_WINDOW + 1`` rows a minute per API role, whatever its rate or variety.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections import Counter
from collections.abc import Callable, Mapping

from runed.core import errors
from runed.pipeline.context import CallContext
from runed.store.base import AuditEntry

log = logging.getLogger("runed.audit")

WINDOW_SECONDS = 60.0
RECORDS_PER_WINDOW = 10
# The summary names the busiest peers only: its detail is bounded like every audit detail.
SUMMARY_PEERS = 5
MAX_DETAIL = 300
SUMMARY_METHOD = "authentication"


def fingerprint(secret: str) -> str:
    """A short SHA-256 prefix: enough to match a credential one holds, useless to use or to recover it."""
    return "sha256:" + hashlib.sha256(secret.encode()).hexdigest()[:12]


def presented(metadata: Mapping[str, str], tls_client_cn: str) -> str:
    """What the caller presented, safe to store: the kind of credential and a hash prefix, never its value."""
    out: list[str] = []
    raw = metadata.get("authorization", "").strip()
    if raw:
        scheme, _, value = raw.partition(" ")
        value = value.strip()
        if scheme.lower() == "bearer" and value:
            kind = "rune token" if value.startswith("rune_") else "JWT" if value.count(".") == 2 else "bearer token"
            out.append(f"{kind} {fingerprint(value)}")
        elif value and scheme.isalpha() and len(scheme) <= 16:
            out.append(f"authorization scheme {scheme} ({fingerprint(value)})")
        else:
            # No recognisable scheme: the whole header may be a bare token.
            out.append(f"malformed authorization header ({fingerprint(raw)})")
    if tls_client_cn:
        out.append(f"client certificate CN={tls_client_cn[:64]!r}")
    return ", ".join(out) or "no credentials"


class AuthFailureLog:
    """Writes audit records of failed authentications, at most ``per_window`` per window, then a summary."""

    def __init__(
        self,
        write: Callable[[AuditEntry], None],
        *,
        window_seconds: float = WINDOW_SECONDS,
        per_window: int = RECORDS_PER_WINDOW,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._write = write
        self.window_seconds = window_seconds
        self.per_window = per_window
        self._clock = clock
        self._window_end = 0.0
        self._written = 0
        self._suppressed: Counter[str] = Counter()
        self._timer: asyncio.TimerHandle | None = None

    def record(self, ctx: CallContext, err: errors.RuneError) -> None:
        """Record one failed authentication (or count it, past the window's budget). Never raises."""
        try:
            now = self._clock()
            if now >= self._window_end:
                self.flush()
                self._window_end = now + self.window_seconds
                self._written = 0
            if self._written < self.per_window:
                self._written += 1
                self._write(self._entry(ctx, err))
                return
            self._suppressed[ctx.peer or "unknown"] += 1
            self._flush_at_window_end()
        except Exception:
            log.exception("cannot write the audit record of a failed authentication (request %s)", ctx.request_id)

    def flush(self) -> None:
        """Write the summary of the failures counted but not recorded one by one, if any."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if not self._suppressed:
            return
        counts, self._suppressed = self._suppressed, Counter()
        total = sum(counts.values())
        busiest = ", ".join(f"{peer} x{n}" for peer, n in counts.most_common(SUMMARY_PEERS))
        others = len(counts) - SUMMARY_PEERS
        detail = (
            f"{total} more failed authentications within {self.window_seconds:g}s not recorded one by one"
            f" (at most {self.per_window} are); by peer: {busiest}"
            + (f" and {others} more peers" if others > 0 else "")
        )
        self._write(
            AuditEntry(
                subject="anonymous",
                method=SUMMARY_METHOD,
                resource="auth",
                verb="authenticate",
                namespace="",
                name="",
                outcome="failure",
                code="UNAUTHENTICATED",
                request_id="",
                peer=next(iter(counts)) if len(counts) == 1 else "",
                detail=detail[:MAX_DETAIL],
            )
        )

    def _flush_at_window_end(self) -> None:
        if self._timer is not None:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return  # no loop (tests of this class): the next failure after the window flushes
        self._timer = loop.call_later(max(0.0, self._window_end - self._clock()), self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        try:
            self.flush()
        except Exception:
            log.exception("cannot write the summary of failed authentications")

    @staticmethod
    def _entry(ctx: CallContext, err: errors.RuneError) -> AuditEntry:
        reason = str(getattr(err, "cause", "") or err.message)
        subject = str(getattr(err, "subject", "") or "anonymous")
        detail = f"authentication failed over {ctx.transport}: {reason}; presented: "
        detail += presented(ctx.metadata, ctx.tls_client_cn)
        return AuditEntry(
            subject=subject,
            method=ctx.method.full_name,
            resource="auth",
            verb="authenticate",
            namespace="",
            name="",
            outcome="failure",
            code=err.code.name,
            request_id=ctx.request_id,
            peer=ctx.peer,
            detail=detail[:MAX_DETAIL],
        )
