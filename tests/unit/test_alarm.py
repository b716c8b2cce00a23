"""How often the safety net's full pass runs (:func:`runed.controller.alarm.resync_interval`), and when
a change of it is worth a log line (:func:`runed.controller.alarm.worth_telling`)."""

from __future__ import annotations

import pytest

from runed.controller.alarm import RESYNC_MOST_SECONDS, RESYNC_SHARE, resync_interval, worth_telling


@pytest.mark.parametrize(
    ("configured", "cost", "every"),
    [
        (5.0, 0.004, 5.0),  # within its share: as configured
        (5.0, 5.0 * RESYNC_SHARE, 5.0),  # exactly its share
        (5.0, 0.030, 0.030 / RESYNC_SHARE),  # a costly pass: as often as the share allows
        (5.0, 10.0, RESYNC_MOST_SECONDS),  # however costly, at least this often
        (120.0, 10.0, 120.0),  # never more often than configured
        (0.01, 0.0005, 0.0005 / RESYNC_SHARE),
    ],
)
def test_a_full_pass_runs_within_its_share_of_a_core(configured: float, cost: float, every: float) -> None:
    assert resync_interval(configured, cost) == pytest.approx(every)


@pytest.mark.parametrize(
    ("told", "interval", "tell"),
    [
        (5.0, 5.0, False),  # as configured, or as last told
        (5.0, 9.9, False),  # a pass whose cost wavers logs nothing each time
        (5.0, 10.0, True),  # twice as far apart
        (60.0, 31.0, False),
        (60.0, 30.0, True),  # half as far
        (15.0, 5.0, True),  # back to the configured period
    ],
)
def test_a_change_of_the_interval_is_told_once_it_doubles_or_halves(told: float, interval: float, tell: bool) -> None:
    assert worth_telling(told, interval) is tell
