"""What runed says at start about its environment."""

from __future__ import annotations

from pathlib import Path

from tests.harness import RunedFactory


def test_a_misspelt_setting_is_warned_of_at_start_without_its_value(
    runed_factory: RunedFactory, tmp_path: Path
) -> None:
    env = {"RUNE_CONTROLLER_SPAWN_TIMEOUT": "271828", "RUNE_AUTH_API_KEYS": "sekrit-key-3141", "RUNE_TOKEN": "tok-1618"}
    r = runed_factory(tmp_path / "data", env=env)
    out = r.output()
    assert (
        "runed: warning: RUNE_CONTROLLER_SPAWN_TIMEOUT is not a runed setting "
        '(did you mean "RUNE_CONTROLLER_SPAWN_TIMEOUT_SECONDS"?); it is ignored'
    ) in out
    assert "runed: warning: RUNE_AUTH_API_KEYS is not read" in out
    assert "RUNE_TOKEN" not in out  # the CLI's: at home here
    for value in env.values():
        assert value not in out
