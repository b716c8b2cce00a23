"""The instance state table (supervisor's model): every allowed transition, and why it happens."""

from __future__ import annotations

from enum import StrEnum


class State(StrEnum):
    """An instance's state; the value is the string stored in the record (``""`` before the first start)."""

    NEW = ""
    STARTING = "STARTING"
    RUNNING = "RUNNING"
    BACKOFF = "BACKOFF"
    STOPPING = "STOPPING"
    STOPPED = "STOPPED"
    EXITED = "EXITED"
    FATAL = "FATAL"


NEW = State.NEW
STARTING = State.STARTING
RUNNING = State.RUNNING
BACKOFF = State.BACKOFF
STOPPING = State.STOPPING
STOPPED = State.STOPPED
EXITED = State.EXITED
FATAL = State.FATAL

# Every state a stored record can be in (NEW only exists in memory, before the first transition).
STATES = (STARTING, RUNNING, BACKOFF, STOPPING, STOPPED, EXITED, FATAL)
# States in which a process may exist and must be watched.
ACTIVE = frozenset({STARTING, RUNNING, STOPPING})

# (from, to) -> why. A transition not listed here is a bug and raises.
TRANSITIONS: dict[tuple[State, State], str] = {
    # A new record, or a start after a stop/exit: the shim has been spawned, no pid seen yet.
    (NEW, STARTING): "first start of a new instance",
    (BACKOFF, STARTING): "the back-off delay elapsed: automatic restart per restart policy",
    (STOPPED, STARTING): "started on request (StartInstance/RestartInstance) or after a liveness restart",
    (EXITED, STARTING): "started on request after it had exited",
    (FATAL, STARTING): "started on request after a fatal error",
    # The shim reported the instance's pid and the process is alive.
    (STARTING, RUNNING): "the process is running",
    # Gone on its own; the restart policy decides between BACKOFF and EXITED.
    (STARTING, BACKOFF): "it could not start or died at once and the policy restarts it, after a delay",
    (RUNNING, BACKOFF): "it exited and the policy restarts it, after a delay",
    (STARTING, EXITED): "it died at once and the policy does not restart it",
    (RUNNING, EXITED): "it exited and the policy does not restart it (Never, or OnFailure after success)",
    # A start that can never succeed (runtime unavailable, unknown user): no automatic retry.
    (NEW, FATAL): "cannot be started at all",
    (BACKOFF, FATAL): "cannot be started at all",
    (STARTING, FATAL): "cannot be started at all",
    (STOPPED, FATAL): "cannot be started at all",
    (EXITED, FATAL): "cannot be started at all",
    # A start on request that failed to spawn waits to retry like any crash.
    (EXITED, BACKOFF): "a requested start failed; retrying after a delay",
    (FATAL, BACKOFF): "a requested start failed; retrying after a delay",
    # A restart after the back-off that failed to spawn again: it waits again, with a new reason.
    (BACKOFF, BACKOFF): "the restart after a back-off failed to spawn; retrying after a longer delay",
    # We stop it: SIGTERM to the group, grace period, SIGKILL.
    (STARTING, STOPPING): "stop requested (scale down, update, deletion, StopInstance, liveness failure)",
    (RUNNING, STOPPING): "stop requested (scale down, update, deletion, StopInstance, liveness failure)",
    (STOPPING, STOPPED): "the process group is gone after our stop",
    # Stopping something with no process is immediate.
    (BACKOFF, STOPPED): "stop requested while waiting to restart",
    (EXITED, STOPPED): "stop requested after it had exited",
    (FATAL, STOPPED): "stop requested after a fatal error",
    # A liveness failure stops it and then waits out the back-off before restarting.
    (STOPPED, BACKOFF): "restart after a liveness failure, after a delay",
    # Re-adoption after a runed restart: the process is still there.
    (RUNNING, RUNNING): "re-adopted after a controller restart",
    (STARTING, STARTING): "re-adopted while still starting",
    # Re-adoption of a start the record does not show (the controller was killed before saving it).
    (RUNNING, STARTING): "re-adopted after a controller restart: a later start than the record shows is under way",
}


class InvalidTransition(Exception):
    """A transition outside the table: a controller bug, never a user error."""


def check(frm: State, to: State) -> str:
    """The reason for ``frm -> to``; raises when the table does not allow it."""
    why = TRANSITIONS.get((frm, to))
    if why is None:
        raise InvalidTransition(f"instance state {frm.value or '(new)'} -> {to.value} is not allowed")
    return why
