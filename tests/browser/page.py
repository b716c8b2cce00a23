"""The dashboard as the browser tests and the benchmark see it: a chromium driver and small page helpers."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from selenium import webdriver
from selenium.common.exceptions import StaleElementReferenceException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webelement import WebElement

from tests.support import eventually

FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--no-first-run",
    "--disable-component-update",
    "--disable-sync",
    "--disable-quic",
    "--window-size=1366,900",
)
WAIT = 30.0


def chromium_driver(binary: Path, chromedriver: Path, profile: Path) -> webdriver.Chrome:
    """Headless chromium with a fresh profile; nothing fetched from the network by Selenium."""
    opts = webdriver.ChromeOptions()
    opts.binary_location = str(binary)
    for flag in FLAGS:
        opts.add_argument(flag)
    opts.add_argument(f"--user-data-dir={profile}")
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(options=opts, service=Service(str(chromedriver)))
    driver.set_page_load_timeout(WAIT)
    return driver


@dataclass
class Browser:
    driver: webdriver.Chrome
    base: str
    artifacts: Path

    def open(self, fragment: str = "") -> None:
        """Load the dashboard (a real navigation) at ``#fragment``."""
        self.driver.get(f"{self.base}/ui/{'#' + fragment if fragment else ''}")

    def go(self, fragment: str) -> None:
        """Move inside the page (the hash router; no reload)."""
        self.driver.execute_script("location.hash = arguments[0]", fragment)

    def sign_in(self, token: str) -> None:
        """Sign out of any session, then sign in with ``token`` through the form."""
        self.open()
        self.driver.execute_script("sessionStorage.clear()")
        self.driver.refresh()
        field = self.wait_for("#token")
        field.send_keys(token)
        self.find("#signin button[type=submit]").click()
        eventually(lambda: self.find("#whoami").text, WAIT, what="signed in (WhoAmI in the header)")

    def find(self, css: str) -> WebElement:
        return self.driver.find_element(By.CSS_SELECTOR, css)

    def find_all(self, css: str) -> list[WebElement]:
        return self.driver.find_elements(By.CSS_SELECTOR, css)

    def wait_for(self, css: str, timeout: float = WAIT) -> WebElement:
        def found() -> WebElement | None:
            return next(iter(self.find_all(css)), None)

        element = eventually(found, timeout, what=f"{css} on the page")
        assert element is not None
        return element

    def click(self, css: str, timeout: float = WAIT) -> None:
        """Click the element once it is there; again when a live re-render replaced it meanwhile."""

        def clicked() -> bool:
            try:
                found = self.find_all(css)
                if found:
                    found[0].click()
                return bool(found)
            except StaleElementReferenceException:
                return False

        eventually(clicked, timeout, what=f"{css} clicked")

    def cells(self, css: str) -> list[str]:
        """The texts of the ``td`` cells of the row at ``css`` ([] while it is missing or being replaced)."""
        return list(
            self.js(
                "const r = document.querySelector(arguments[0]);"
                "return r ? [...r.querySelectorAll('td')].map(td => td.innerText) : []",
                css,
            )
        )

    def text(self, css: str) -> str:
        """The element's text ("" while it is missing or being replaced)."""
        try:
            found = self.find_all(css)
            return found[0].text if found else ""
        except StaleElementReferenceException:
            return ""

    def wait_text(self, css: str, needle: str, timeout: float = WAIT) -> str:
        """The element's text once it contains ``needle``."""

        def has() -> str:
            t = self.text(css)
            return t if needle in t else ""

        return eventually(has, timeout, what=f"{needle!r} in {css}")

    def js(self, script: str, *args: Any) -> Any:
        return self.driver.execute_script(script, *args)

    def js_async(self, script: str, *args: Any) -> Any:
        """Run ``script`` with a ``done`` callback as its last argument (``arguments[arguments.length-1]``)."""
        self.driver.set_script_timeout(WAIT)
        return self.driver.execute_async_script(script, *args)

    def screenshot(self, name: str) -> Path:
        path = self.artifacts / f"{name}.png"
        self.driver.save_screenshot(str(path))
        return path

    def console_errors(self) -> list[str]:
        """Severe console entries since the last call: script errors and CSP violations (an API answer
        of 4xx, which the browser also logs, is not one)."""
        logs: list[dict[str, Any]] = self.driver.get_log("browser")
        return [e["message"] for e in logs if e.get("level") == "SEVERE" and e.get("source") != "network"]
