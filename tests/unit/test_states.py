"""The instance state table: every state is reachable, every transition has a reason, others raise."""

from __future__ import annotations

import pytest

from runed.controller import states


def test_every_state_is_reachable_from_new() -> None:
    seen = {""}
    frontier = [""]
    while frontier:
        cur = frontier.pop()
        for frm, to in states.TRANSITIONS:
            if frm == cur and to not in seen:
                seen.add(to)
                frontier.append(to)
    assert seen - {""} == set(states.STATES)


def test_every_transition_says_why() -> None:
    assert all(why.strip() for why in states.TRANSITIONS.values())


@pytest.mark.parametrize(
    ("frm", "to"),
    [
        ("", states.RUNNING),
        (states.STOPPED, states.RUNNING),
        (states.EXITED, states.RUNNING),
        (states.STOPPING, states.STARTING),
    ],
)
def test_disallowed_transitions_raise(frm: str, to: str) -> None:
    with pytest.raises(states.InvalidTransition):
        states.check(frm, to)


def test_crash_and_stop_paths() -> None:
    for frm, to in [
        ("", states.STARTING),
        (states.STARTING, states.RUNNING),
        (states.RUNNING, states.BACKOFF),
        (states.BACKOFF, states.STARTING),
        (states.RUNNING, states.STOPPING),
        (states.STOPPING, states.STOPPED),
        (states.STOPPED, states.STARTING),
        (states.RUNNING, states.EXITED),
        ("", states.FATAL),
    ]:
        assert states.check(frm, to)
