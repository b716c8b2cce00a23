"""CLI contexts file and server address handling."""

from __future__ import annotations

from pathlib import Path

import pytest

from rune.cli.config import CliConfig, normalise_server
from rune.cli.errors import CliError


@pytest.mark.parametrize(
    ("raw", "want"),
    [
        ("", "localhost:7863"),
        ("example.com", "example.com:7863"),
        ("http://example.com/", "example.com:7863"),
        ("grpcs://example.com:9000", "example.com:9000"),
        (":7000", "localhost:7000"),
        ("[::1]", "[::1]:7863"),
        ("[::1]:9", "[::1]:9"),
        ("10.0.0.1:443", "10.0.0.1:443"),
        ("127.0.0.1:", "127.0.0.1:7863"),
        ("[::1]:", "[::1]:7863"),
    ],
)
def test_normalise_server(raw: str, want: str) -> None:
    assert normalise_server(raw) == want


def test_save_is_private_and_round_trips(tmp_path: Path) -> None:
    path = tmp_path / "cfg" / "config.yaml"
    cfg = CliConfig(path=path, current="lab", contexts={"lab": {"server": "lab:7863", "token": "t"}})
    cfg.save()
    assert path.stat().st_mode & 0o777 == 0o600 and path.parent.stat().st_mode & 0o777 == 0o700
    again = CliConfig.load(path)
    assert again.current == "lab" and again.context() == {"server": "lab:7863", "token": "t"}
    with pytest.raises(CliError) as e:
        again.context("missing")
    assert e.value.code == 3


def test_env_overrides_default_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RUNE_CLI_CONFIG", str(tmp_path / "x.yaml"))
    assert CliConfig.load().path == tmp_path / "x.yaml"


def test_broken_file_is_a_clear_error(tmp_path: Path) -> None:
    bad = tmp_path / "config.yaml"
    bad.write_text("contexts: [1, 2\n")
    with pytest.raises(CliError) as e:
        CliConfig.load(bad)
    assert "not valid YAML" in e.value.message and e.value.code == 8
