"""Controller settings are checked at start-up, naming the key at fault."""

from __future__ import annotations

import pytest

from runed.core import config


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        ({"controller.resync_seconds": 0}, "controller.resync_seconds: must be positive"),
        ({"controller.restart_backoff_initial_seconds": -1}, "controller.restart_backoff_initial_seconds"),
        ({"controller.restart_backoff_max_seconds": 0.5}, "must not be below restart_backoff_initial_seconds"),
        ({"controller.stop_grace_seconds": -1}, "must not be negative"),
    ],
)
def test_bad_controller_values_are_rejected(flags: dict[str, object], message: str) -> None:
    with pytest.raises(config.ConfigError, match=message):
        config.load(flags, env={})


def test_defaults_are_valid() -> None:
    ctl = config.load({}, env={}).controller
    assert ctl.restart_backoff_initial_seconds <= ctl.restart_backoff_max_seconds
