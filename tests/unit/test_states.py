"""The instance state table: every state is reachable, every transition has a reason, others raise."""

from __future__ import annotations

import pytest

from runed.controller import states
from runed.controller.states import State


def test_every_state_is_reachable_from_new() -> None:
    seen = {State.NEW}
    frontier = [State.NEW]
    while frontier:
        cur = frontier.pop()
        for frm, to in states.TRANSITIONS:
            if frm == cur and to not in seen:
                seen.add(to)
                frontier.append(to)
    assert seen - {State.NEW} == set(states.STATES)


def test_every_transition_says_why() -> None:
    assert all(why.strip() for why in states.TRANSITIONS.values())


def test_stored_strings_are_unchanged() -> None:
    # The record and the API's status mapping read these strings; renaming one breaks stored instances.
    assert [s.value for s in states.STATES] == [
        "STARTING",
        "RUNNING",
        "BACKOFF",
        "STOPPING",
        "STOPPED",
        "EXITED",
        "FATAL",
    ]
    assert State("") is State.NEW


@pytest.mark.parametrize(
    ("frm", "to"),
    [
        (State.NEW, State.RUNNING),
        (State.STOPPED, State.RUNNING),
        (State.EXITED, State.RUNNING),
        (State.STOPPING, State.STARTING),
    ],
)
def test_disallowed_transitions_raise(frm: State, to: State) -> None:
    with pytest.raises(states.InvalidTransition):
        states.check(frm, to)


def test_crash_and_stop_paths() -> None:
    for frm, to in [
        (State.NEW, State.STARTING),
        (State.STARTING, State.RUNNING),
        (State.RUNNING, State.BACKOFF),
        (State.BACKOFF, State.STARTING),
        (State.RUNNING, State.STOPPING),
        (State.STOPPING, State.STOPPED),
        (State.STOPPED, State.STARTING),
        (State.RUNNING, State.EXITED),
        (State.NEW, State.FATAL),
    ]:
        assert states.check(frm, to)
