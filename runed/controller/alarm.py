"""When the controller's loop runs its next pass (at once, at a due time, at the resync) and over which services."""

from __future__ import annotations

import asyncio

from runed.controller.instance import Key

# The safety net's share of a core, at most: a full pass that costs more than this share of
# ``controller.resync_seconds`` runs that much less often. A pass over 1,000 instances took about
# 4 ms of CPU on a quiet machine and 19-32 ms on a slow one, where that was 0.4-0.6 % of a core
# every 5 s, most of what the idle controller spent (bench/README.md, "the safety net's share").
RESYNC_SHARE = 0.002
# ... but at least this often, whatever a pass costs.
RESYNC_MOST_SECONDS = 60.0


def resync_interval(configured: float, cost: float) -> float:
    """Seconds between the safety net's full passes, one having cost ``cost`` seconds of CPU: every
    ``configured`` seconds (``controller.resync_seconds``) while that is within
    :data:`RESYNC_SHARE` of a core, else as often as the share allows, never less often than every
    :data:`RESYNC_MOST_SECONDS` (or ``configured``, if longer)."""
    return max(configured, min(cost / RESYNC_SHARE, RESYNC_MOST_SECONDS))


def worth_telling(told: float, interval: float) -> bool:
    """Whether the safety net's interval moved far enough from the one last logged (``told``) to be
    logged again: by half or double, so a pass whose cost wavers does not log every time."""
    return interval >= 2 * told or interval <= told / 2


class Alarm:
    """Shared by the controller's collaborators to ask the loop for another reconcile pass."""

    def __init__(self) -> None:
        self.event = asyncio.Event()
        # The earliest time a pass is due (0: none scheduled), e.g. the end of a back-off.
        self.next_due = 0.0
        # A secret or configmap changed: instances waiting on a missing reference retry at once.
        self.refs_changed = False
        # Services (namespace, name) whose stored inputs changed since the last pass, and whether
        # something changed that may concern any service (then the next pass looks at all of them).
        self.services: set[Key] = set()
        self.everything = False
        # Set by :meth:`rush`: the next pass need not wait out the pause after a costly one.
        self.rushed = asyncio.Event()

    def wake(self) -> None:
        """Run a pass as soon as the loop is free."""
        self.event.set()

    def rush(self) -> None:
        """Run a pass as soon as the loop is free, without the pause after a costly pass: what it
        pauses to gather (the ends of a deletion's instances, say) is all in."""
        self.rushed.set()
        self.event.set()

    def touch(self, service: Key | None) -> None:
        """Run a pass soon over ``service`` (None: over every service)."""
        if service is None:
            self.everything = True
        else:
            self.services.add(service)
        self.event.set()

    def due(self, at: float) -> None:
        """Run a pass no later than ``at`` (epoch seconds)."""
        if self.next_due == 0.0 or at < self.next_due:
            self.next_due = at
