"""store.url: sqlite:///path (default: the data dir's runed.db) or postgresql://…; anything else is refused by key."""

from __future__ import annotations

from pathlib import Path

import pytest

from runed.core.config import ConfigError, load


def test_default_is_the_data_dirs_sqlite_file(tmp_path: Path) -> None:
    cfg = load({"data_dir": str(tmp_path)}, env={})
    assert cfg.store.url == f"sqlite://{tmp_path.resolve() / 'runed.db'}"


def test_flag_and_env_set_it(tmp_path: Path) -> None:
    url = "postgresql://postgres@127.0.0.1:5432/runed"
    assert load({"data_dir": str(tmp_path)}, env={"RUNE_STORE_URL": url}).store.url == url
    flag = "sqlite:///elsewhere/x.db"
    assert load({"data_dir": str(tmp_path), "store.url": flag}, env={"RUNE_STORE_URL": url}).store.url == flag


@pytest.mark.parametrize("url", ["mysql://root@db/x", "sqlite://relative.db", "/var/lib/rune/runed.db"])
def test_other_urls_are_refused_naming_the_key(tmp_path: Path, url: str) -> None:
    with pytest.raises(ConfigError, match=r"store\.url: "):
        load({"data_dir": str(tmp_path), "store.url": url}, env={})
