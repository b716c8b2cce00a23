"""Dashboard in headless chromium: 1,000 services listed vs a static 1,000-row page; logs followed at 1,000 lines/s.

1. **Service list.** 1,000 services (scale 0) are cast over REST. The time from the start of the
   navigation to the dashboard (signed in: the token is in the tab's session storage) until its
   table first shows a page of the 1,000 (a ``performance.mark`` the page sets) is compared with
   the same measure for a bare static page holding a 1,000-row table (served by Python's
   http.server from a temp dir), median of several runs each. Both read the browser's own clock.
2. **Log follow.** A process service writes 1,000 numbered lines/s. The log view reads its whole log
   (tail 0) and follows it for ``BENCH_SECONDS`` (default 10): lines received by the page vs lines
   written up to the newest one on screen (1.000 = none lost, none twice), how far the newest line
   on screen trails the writer, and the gaps between ticks of a 100 ms timer in the page (a frozen
   page shows as long gaps).
"""

from __future__ import annotations

import contextlib
import functools
import http.server
import json
import shutil
import statistics
import sys
import tempfile
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

from bench.common import running_runed, setting
from tests.browser.page import Browser, chromium_driver
from tests.support import eventually

SERVICES = setting("BENCH_DASHBOARD_SERVICES", 1000)
REPEAT = 5
SECONDS = setting("BENCH_SECONDS", 10.0)
RATE = 1000
CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")

WRITER = textwrap.dedent(
    f"""
    import sys, time
    i, t0 = 0, time.monotonic()
    while True:
        due = int((time.monotonic() - t0) * {RATE})
        while i < due:
            sys.stdout.write(f"line {{i}}\\n")
            i += 1
        sys.stdout.flush()
        time.sleep(0.01)
    """
)


def _baseline_page(directory: Path, n: int) -> None:
    rows = "\n".join(
        f"<tr><th>svc-{i:04d}</th><td>Pending</td><td>0/0</td><td>process</td><td>1</td><td>1m</td></tr>"
        for i in range(n)
    )
    (directory / "rows.html").write_text(
        "<!doctype html><html><head><meta charset='utf-8'><title>rows</title></head><body>"
        f"<table id='rows'><tbody>{rows}</tbody></table>"
        "<script>performance.mark('rows-listed')</script></body></html>"
    )


@contextlib.contextmanager
def _static_server(directory: Path) -> Iterator[str]:
    handler = functools.partial(_QuietHandler, directory=str(directory))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass


def _timed_navigation(browser: Browser, url: str, rendered: Callable[[], bool], mark: str) -> float:
    """Seconds from the navigation's start to the page's ``mark`` (the browser's own clock, not the driver's)."""
    browser.driver.get(url)
    eventually(rendered, 60, what=f"{url} rendered")
    ms = browser.js("return performance.getEntriesByName(arguments[0])[0].startTime", mark)
    return float(ms) / 1000


def _cast(client: httpx.Client, body: dict[str, object]) -> None:
    resp = client.post("/v1/namespaces/default/services", json=body)
    assert resp.status_code == 200, resp.text


def _service_list(browser: Browser, client: httpx.Client, static: str) -> None:
    bodies = [
        {"name": f"svc-{i:04d}", "runtime": "process", "scale": 0, "process": {"command": "true"}}
        for i in range(SERVICES)
    ]
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda b: _cast(client, b), bodies))
    ui = f"{browser.base}/ui/#/ns/default/services"
    total = str(SERVICES)

    def dashboard_ready() -> bool:
        shown = browser.js("const s = document.getElementById('svc-summary'); return s ? s.dataset.total : ''")
        return bool(shown == total)

    def rows_ready() -> bool:
        return bool(browser.js("return document.querySelectorAll('#rows tr').length") == SERVICES)

    base_times, ui_times = [], []
    for _ in range(REPEAT):
        base_times.append(_timed_navigation(browser, f"{static}/rows.html", rows_ready, "rows-listed"))
        browser.driver.get("about:blank")
        ui_times.append(_timed_navigation(browser, ui, dashboard_ready, "rune:services-listed"))
        browser.driver.get("about:blank")
    base, dash = statistics.median(base_times), statistics.median(ui_times)
    print(f"   static page, {SERVICES} rows (baseline)   {base * 1000:8.1f} ms  (median of {REPEAT})")
    print(f"   dashboard, {SERVICES} services listed     {dash * 1000:8.1f} ms  ({dash / base:.1f}x baseline)")


def _log_follow(browser: Browser, client: httpx.Client) -> None:
    body = {
        "name": "chatty",
        "runtime": "process",
        "scale": 1,
        "process": {"command": sys.executable, "args": ["-u", "-c", WRITER]},
    }
    _cast(client, body)

    def latest() -> int:
        resp = client.get("/v1/namespaces/default/logs/chatty", params={"tail": "1"})
        contents = [json.loads(ln).get("content", "") for ln in resp.text.splitlines() if ln]
        numbers = [int(c.split()[1]) for c in contents if c.startswith("line ")]
        return numbers[-1] if numbers else -1

    eventually(lambda: latest() > RATE, 60, what="the writer running")
    browser.go("#/ns/default/logs/chatty")
    # The whole log from line 0 (tail 0), without lifecycle events: every line the writer wrote.
    tail = browser.wait_for("#log-tail")
    tail.clear()
    tail.send_keys("0")
    browser.find("#log-events").click()
    browser.find("#log-form button[type=submit]").click()
    browser.wait_text("#log-lines .line .text", "line ")
    first = 0
    browser.js(
        "window.gaps = []; let last = performance.now();"
        "window.probe = setInterval(() => { const n = performance.now(); gaps.push(n - last); last = n; }, 100);"
    )
    time.sleep(SECONDS)
    state = browser.js(
        "clearInterval(window.probe); const out = document.getElementById('log-lines');"
        "const last = out.querySelector('.window').lastElementChild.querySelector('.text').textContent;"
        "return [Number(out.dataset.received), Number(last.split(' ')[1]), gaps]"
    )
    written = latest()
    received, newest = int(state[0]), int(state[1])
    gaps = sorted(float(g) for g in state[2])
    expected = newest - first + 1
    print(f"   writer: {RATE} lines/s; the page read its log from line 0, then followed it for {SECONDS:.0f} s")
    print(
        f"   lines received by the page {received:8d}   vs written up to the newest shown {expected:8d}"
        f"   ({received / expected:.3f})"
    )
    print(f"   newest line on screen trails the writer by {written - newest} lines ({(written - newest) / RATE:.2f} s)")
    p99 = gaps[min(len(gaps) - 1, int(0.99 * len(gaps)))]
    print(f"   page timer (100 ms): gaps p50 {statistics.median(gaps):.0f} ms, p99 {p99:.0f} ms, max {gaps[-1]:.0f} ms")
    client.delete("/v1/namespaces/default/services/chatty")


def run() -> None:
    if not CHROMIUM.exists() or not CHROMEDRIVER.exists():
        print(
            "   skipped: /usr/bin/chromium and /usr/bin/chromedriver are needed"
            " (apt-get install chromium chromium-driver)"
        )
        return
    with running_runed() as addrs, tempfile.TemporaryDirectory() as tmp:
        base = f"http://{addrs['rest']}"
        token = str(httpx.post(f"{base}/v1/admin:bootstrap", json={}, timeout=10).json()["tokenSecret"])
        static = Path(tmp) / "static"
        static.mkdir()
        _baseline_page(static, SERVICES)
        driver = chromium_driver(CHROMIUM, CHROMEDRIVER, Path(tmp) / "profile")
        try:
            browser = Browser(driver, base, Path(tmp))
            browser.sign_in(token)
            with (
                httpx.Client(base_url=base, headers={"authorization": f"Bearer {token}"}, timeout=30) as client,
                _static_server(static) as static_url,
            ):
                _service_list(browser, client, static_url)
                browser.open("/ns/default/services")
                _log_follow(browser, client)
        finally:
            driver.quit()
            shutil.rmtree(Path(tmp) / "profile", ignore_errors=True)
