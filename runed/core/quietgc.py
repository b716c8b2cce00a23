"""Full garbage collections at a quiet moment of an event loop, not in the middle of its work.

Why: Python starts a full collection (every object the collector tracks walked) on an allocation,
once what survived the young collections grew by a quarter since the last one. With 1,000
instances a full collection of the controller took 5-110 ms, and in half of the deletes of a
thousand one came in the middle of it, its ends waiting to be read meanwhile (bench/README.md,
"full collections at a quiet moment"). Here no allocation starts one (the oldest generation's threshold
is out of reach): the loop says when it did a piece of work (:meth:`QuietCollector.worked`), and
a full collection runs once it did none for :data:`QUIET_SECONDS`, or at the latest
:data:`MOST_SECONDS` after the last one while it never goes quiet, so cyclic garbage is still
reclaimed. Young collections stay as they are (they walk only what is new). With nothing new in the
oldest generation (no young collection since the last full one) nothing runs: an idle loop costs
nothing.

Python's ``gc`` has no "collect when idle"; its thresholds and ``gc.collect`` are what this drives.
"""

from __future__ import annotations

import asyncio
import gc
import time

# Quiet for this long after a piece of work: the full collection runs.
QUIET_SECONDS = 1.0
# A loop that never goes quiet collects at the latest this long after its last full collection.
MOST_SECONDS = 60.0
# The oldest generation's threshold while a collector is installed: never reached.
NEVER = 2**30


class QuietCollector:
    """Full collections of this process at the quiet moments of the running loop (see the module
    docstring): :meth:`install` takes them over from Python, :meth:`close` gives them back."""

    def __init__(self, quiet: float = QUIET_SECONDS, most: float = MOST_SECONDS) -> None:
        self.quiet = quiet
        self.most = most
        self.last = time.monotonic()
        # Full collections run.
        self.runs = 0
        self._timer: asyncio.TimerHandle | None = None
        self._saved: tuple[int, int, int] | None = None

    def install(self) -> None:
        if self._saved is None:
            self._saved = gc.get_threshold()
            young, middle, _ = self._saved
            gc.set_threshold(young, middle, NEVER)
        self.last = time.monotonic()

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._saved is not None:
            gc.set_threshold(*self._saved)
            self._saved = None

    def worked(self) -> None:
        """The loop did a piece of work: the collection waits until it has been quiet again."""
        if self._saved is None:
            return
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if time.monotonic() - self.last >= self.most:
            self.collect()
            return
        self._timer = asyncio.get_running_loop().call_later(self.quiet, self.collect)

    def collect(self) -> None:
        """A full collection, if a young one ran since the last (else nothing new is that old)."""
        self._timer = None
        self.last = time.monotonic()
        if gc.get_count()[2] == 0:
            return
        gc.collect()
        self.runs += 1
