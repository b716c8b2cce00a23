"""Browser fixtures: Debian's headless chromium driven by Selenium, one runed and one browser for all.

Starting a runed and a browser costs tens of seconds on a loaded machine, so the browser modules
share them; each module names its services so that they do not meet.

Without ``/usr/bin/chromium`` the tests skip, except under ``CI=true`` where they fail (CI installs it
in ``.ci/run``). Screenshots go to ``$RUNED_TEST_ARTIFACTS/browser`` when set, else to a pytest temp dir.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.browser.page import Browser, chromium_driver
from tests.harness import Runed, run_runed
from tests.support import rest_bootstrap

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")


def _require_chromium() -> None:
    missing = [str(p) for p in (CHROMIUM, CHROMEDRIVER) if not p.exists()]
    if not missing:
        return
    msg = f"{', '.join(missing)} missing (apt-get install chromium chromium-driver)"
    if os.environ.get("CI") == "true":
        pytest.fail(msg)
    pytest.skip(msg)


@pytest.fixture(scope="session")
def artifacts(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Where the screenshots go."""
    root = os.environ.get("RUNED_TEST_ARTIFACTS")
    base = Path(root) if root else tmp_path_factory.mktemp("artifacts")
    out = base / "browser"
    out.mkdir(parents=True, exist_ok=True)
    return out


@pytest.fixture(scope="session")
def ui_runed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Runed, str]]:
    """A runed (every role) for the browser tests and its root token."""
    data = tmp_path_factory.mktemp("ui") / "data"
    with run_runed(data, timeout=90) as r:
        yield r, rest_bootstrap(r.http_base)


@pytest.fixture(scope="session")
def browser(
    ui_runed: tuple[Runed, str], artifacts: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Browser]:
    """One headless chromium for the browser tests, pointed at the runed's dashboard."""
    _require_chromium()
    profile = tmp_path_factory.mktemp("chromium-profile")
    driver = chromium_driver(CHROMIUM, CHROMEDRIVER, profile)
    try:
        yield Browser(driver, ui_runed[0].http_base, artifacts)
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)
