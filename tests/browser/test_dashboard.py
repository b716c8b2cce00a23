"""The web dashboard in real headless chromium against a real runed: sign in, cast, watch, logs, exec, actions, RBAC.

The tests share one runed and one browser and run in file order (delete last); each one that needs
the ``web`` service asks for the ``web`` fixture, which casts it over REST when it is missing.
"""

from __future__ import annotations

import json
import re
import sys
from typing import Any

import httpx
import pytest
from selenium.webdriver.common.keys import Keys

from runed.auth.identity import BUILTIN_POLICIES
from tests.browser.page import WAIT, Browser
from tests.harness import Runed
from tests.support import bearer, eventually, make_token

pytestmark = pytest.mark.slow

# A process that writes a numbered line every 0.3 s (stdout) and one to stderr at start.
PROGRAM = (
    "import itertools, sys, time\n"
    "print('starting', file=sys.stderr, flush=True)\n"
    "for i in itertools.count():\n"
    "    print(f'tick {i}', flush=True)\n"
    "    time.sleep(0.3)\n"
)


def web_yaml(mode: str = "one") -> str:
    """A cast file for ``web`` (what a person pastes); ``mode`` is an env value, to make revisions."""
    return (
        "service:\n"
        "  name: web\n"
        "  runtime: process\n"
        "  process:\n"
        f"    command: {json.dumps(sys.executable)}\n"
        f"    args: [-u, -c, {json.dumps(PROGRAM)}]\n"
        "  env:\n"
        f"    MODE: {mode}\n"
    )


def web_body(mode: str = "one") -> dict[str, Any]:
    """The CreateService body (the Service) the dashboard sends for :func:`web_yaml`."""
    return {
        "name": "web",
        "namespace": "default",
        "runtime": "process",
        "scale": 1,
        "process": {"command": sys.executable, "args": ["-u", "-c", PROGRAM]},
        "env": {"MODE": mode},
    }


def api(r: Runed, token: str) -> httpx.Client:
    return httpx.Client(base_url=r.http_base, headers={"authorization": f"Bearer {token}"}, timeout=10)


@pytest.fixture(scope="module")
def web(ui_runed: tuple[Runed, str]) -> str:
    """The ``web`` service exists (cast over REST unless the cast test made it); its name."""
    r, token = ui_runed
    with api(r, token) as c:
        if c.get("/v1/namespaces/default/services/web").status_code == 404:
            assert c.post("/v1/namespaces/default/services", json=web_body()).status_code == 200
    return "web"


def signed_in(browser: Browser, ui_runed: tuple[Runed, str]) -> Browser:
    if not browser.text("#whoami").startswith("root"):
        browser.sign_in(ui_runed[1])
    return browser


def test_served_under_ui_with_a_strict_csp(ui_runed: tuple[Runed, str]) -> None:
    r, token = ui_runed
    with httpx.Client(base_url=r.http_base, timeout=10) as c:
        index = c.get("/ui/")
        assert index.status_code == 200 and "text/html" in index.headers["content-type"]
        csp = index.headers["content-security-policy"]
        assert "script-src 'self'" in csp and "default-src 'none'" in csp and "unsafe-eval" not in csp
        assert index.headers["x-frame-options"] == "DENY" and index.headers["referrer-policy"] == "no-referrer"
        assert '<script type="module" src="app.js"></script>' in index.text and "<script>" not in index.text
        assert c.get("/ui/app.js").headers["content-type"].startswith(("text/javascript", "application/javascript"))
        assert c.get("/ui").status_code == 308
        # A browser pointed at the REST port itself lands on the dashboard.
        home = c.get("/")
        assert (home.status_code, home.headers["location"]) == (307, "/ui/")
        missing = c.get("/ui/nope.js")
        assert missing.status_code == 404 and missing.json()["code"] == 5
        # The API beside it is untouched.
        assert c.get("/openapi.json").status_code == 200
        assert c.get("/v1/auth/whoami", headers={"authorization": f"Bearer {token}"}).json()["subjectName"] == "root"


def test_sign_in_shows_whoami_and_keeps_the_token_out_of_urls(browser: Browser, ui_runed: tuple[Runed, str]) -> None:
    browser.open()
    browser.js("sessionStorage.clear()")
    browser.driver.refresh()
    browser.wait_for("#token").send_keys("rune_not-a-token")
    browser.find("#signin button[type=submit]").click()
    browser.wait_text("#signin-error", "not accepted")
    browser.screenshot("sign-in")
    # By keyboard only: the refused token is selected in the focused field, typing replaces it, Enter submits.
    field = browser.find("#token")
    assert browser.driver.switch_to.active_element == field
    browser.driver.switch_to.active_element.send_keys(ui_runed[1] + Keys.ENTER)
    eventually(lambda: browser.text("#whoami"), WAIT, what="signed in")
    assert browser.text("#whoami").startswith("root")
    # The navigation is made of links a keyboard reaches (Tab) and follows (Enter).
    browser.find("#nav a[data-view=namespaces]").send_keys(Keys.ENTER)
    browser.wait_for("#namespaces")
    assert ui_runed[1] not in browser.driver.current_url
    # The audit log is an admin's: enabled for root.
    assert browser.find("#nav a[data-view=audit]").get_attribute("aria-disabled") is None
    assert not browser.console_errors()


def test_cast_shows_the_dry_run_diff_then_the_service_becomes_running_live(
    browser: Browser, ui_runed: tuple[Runed, str]
) -> None:
    signed_in(browser, ui_runed)
    browser.js("window.sameDocument = true")
    browser.go("#/ns/default/cast")
    browser.js(
        "const t = document.getElementById('cast-yaml'); t.value = arguments[0];t.dispatchEvent(new Event('input'))",
        web_yaml(),
    )
    browser.find("#cast-dry-run").click()
    browser.wait_text("#cast-result .verdict", "would be created")
    assert "+ " in browser.text("#cast-result .diff pre") and "MODE" in browser.text("#cast-result .diff pre")
    browser.screenshot("cast-dry-run")
    with api(*ui_runed) as c:
        assert c.get("/v1/namespaces/default/services/web").status_code == 404, "a dry run writes nothing"
    eventually(lambda: browser.find("#cast-apply").is_enabled(), WAIT, what="apply enabled after the dry run")
    browser.find("#cast-apply").click()
    browser.wait_text("#svc-facts [data-fact=status]", "Running")
    browser.wait_for("#instance-rows tr[data-state=running]")
    browser.find("a[href='#/ns/default/services']").click()
    browser.wait_text("#services tr[data-name=web] .ready", "1/1")
    assert "Running" in browser.text("#services tr[data-name=web] .status")
    browser.screenshot("services")
    assert browser.js("return window.sameDocument") is True, "the page was reloaded"


def test_logs_follow_a_service(browser: Browser, ui_runed: tuple[Runed, str], web: str) -> None:
    signed_in(browser, ui_runed)
    browser.go(f"#/ns/default/logs/{web}")

    def newest() -> int:
        ticks = [int(w) for w in re.findall(r"tick (\d+)", browser.text("#log-lines"))]
        return max(ticks, default=-1)

    browser.wait_text("#log-lines", "tick ")
    seen = newest()
    eventually(lambda: newest() > seen + 2, WAIT, what="new lines while following")
    assert "web-0" in browser.text("#log-lines .line .who")
    browser.screenshot("logs")
    # stderr only: the start-up line, no ticks.
    browser.find("#log-stream").send_keys("stderr")
    browser.find("#log-tail").clear()
    browser.find("#log-tail").send_keys("0")
    browser.find("#log-form button[type=submit]").click()
    browser.wait_text("#log-lines", "starting")
    assert "tick" not in browser.text("#log-lines")


def test_terminal_runs_a_command_and_shows_its_output_and_exit(
    browser: Browser, ui_runed: tuple[Runed, str], web: str
) -> None:
    signed_in(browser, ui_runed)
    browser.go(f"#/ns/default/services/{web}")
    browser.wait_for("#instance-rows tr[data-state=running] a[aria-label^=Terminal]").click()
    browser.wait_for("#terminal .xterm-rows")
    # A command with its own output and exit code, no TTY.
    command = browser.find("#term-command")
    command.clear()
    command.send_keys("echo dash-$((6*7)); exit 3")
    browser.find("#term-tty").click()
    browser.find("#term-connect").click()
    browser.wait_text("#terminal .xterm-rows", "dash-42")
    eventually(lambda: browser.find("#term-status").get_attribute("data-exit") == "3", WAIT, what="exit 3")
    # Keystrokes as stdin without a TTY, ended by the EOF button.
    command.clear()
    command.send_keys("wc -c | sed s/^/count-/")
    browser.find("#term-connect").click()
    browser.wait_for("#term-status[data-state=open]")
    browser.find("#terminal .xterm-helper-textarea").send_keys("abc")
    browser.find("#term-eof").click()
    browser.wait_text("#terminal .xterm-rows", "count-3")
    eventually(lambda: browser.find("#term-status").get_attribute("data-exit") == "0", WAIT, what="exit 0")
    # An interactive shell on a TTY: keystrokes in, the terminal's size (resize included) seen by the command.
    command.clear()
    command.send_keys("sh")
    browser.find("#term-tty").click()
    browser.find("#term-connect").click()
    browser.wait_for("#term-status[data-state=open]")
    before = browser.find("#terminal").get_attribute("data-size")
    browser.driver.set_window_size(1000, 700)
    eventually(lambda: browser.find("#terminal").get_attribute("data-size") != before, WAIT, what="terminal resized")
    textarea = browser.find("#terminal .xterm-helper-textarea")
    textarea.send_keys("stty size; echo sum-$((2+3))" + Keys.ENTER)
    browser.wait_text("#terminal .xterm-rows", "sum-5")
    rows_cols = browser.find("#terminal").get_attribute("data-size")
    browser.wait_text("#terminal .xterm-rows", str(rows_cols))
    browser.screenshot("terminal")
    textarea.send_keys("exit 4" + Keys.ENTER)
    eventually(lambda: browser.find("#term-status").get_attribute("data-exit") == "4", WAIT, what="exit 4")
    browser.driver.set_window_size(1366, 900)


def test_scale_up_and_down(browser: Browser, ui_runed: tuple[Runed, str], web: str) -> None:
    signed_in(browser, ui_runed)
    browser.go(f"#/ns/default/services/{web}")
    for scale in (2, 1):
        field = browser.wait_for("#scale-input")
        field.clear()
        field.send_keys(str(scale))
        browser.find("#scale-btn").click()

        def rows(n: int = scale) -> bool:
            running = browser.find_all("#instance-rows tr[data-state=running]")
            return len(browser.find_all("#instance-rows tr[data-instance]")) == n and len(running) == n

        eventually(
            rows,
            WAIT,
            what=f"{scale} running instance rows",
        )
        browser.wait_text("#svc-facts [data-fact=desired]", str(scale))
        if scale == 2:
            browser.screenshot("service")


def test_rollback_shows_the_history_with_a_diff(browser: Browser, ui_runed: tuple[Runed, str], web: str) -> None:
    signed_in(browser, ui_runed)
    # A second revision, cast from the dashboard: the dry run is a diff against what runs.
    browser.go("#/ns/default/cast")
    browser.js(
        "const t = document.getElementById('cast-yaml'); t.value = arguments[0]; t.dispatchEvent(new Event('input'))",
        web_yaml("two"),
    )
    browser.find("#cast-dry-run").click()
    diff = browser.wait_text("#cast-result .diff pre", '"MODE": "two"')
    assert "- " in diff and '"MODE": "one"' in diff
    eventually(lambda: browser.find("#cast-apply").is_enabled(), WAIT, what="apply enabled")
    browser.find("#cast-apply").click()
    browser.wait_for("#revisions tr[data-revision]")
    eventually(lambda: len(browser.find_all("#revisions tr[data-revision]")) >= 2, WAIT, what="two revisions")
    first = browser.find_all("#revisions tr[data-revision]")[-1]
    revision = first.get_attribute("data-revision")
    first.find_element("css selector", "button[aria-label^=Diff]").click()
    diff = browser.wait_text("#revision-diff pre", '"MODE": "one"')
    assert '"MODE": "two"' in diff
    browser.screenshot("history")
    browser.click(f"#revisions button[data-rollback='{revision}']")
    browser.wait_for("dialog[open] button[type=submit]").click()
    # The server's own word on what the rollback did.
    browser.wait_text("#toast", f"Rolled back to revision {revision}")
    with api(*ui_runed) as c:
        eventually(
            lambda: c.get("/v1/namespaces/default/services/web").json()["service"]["env"] == {"MODE": "one"},
            WAIT,
            what="rolled back",
        )
    eventually(lambda: len(browser.find_all("#revisions tr[data-revision]")) >= 3, WAIT, what="the rollback listed")


def test_a_rollback_that_changes_nothing_says_so(browser: Browser, ui_runed: tuple[Runed, str]) -> None:
    """Two revisions that differ in scale alone: restoring the first keeps the scale, so nothing
    changes, and the toast says that instead of "Rolled back"."""
    signed_in(browser, ui_runed)
    body = dict(web_body(), name="scaled", scale=0)
    with api(*ui_runed) as c:
        assert c.post("/v1/namespaces/default/services", json=body).status_code == 200
        assert c.post("/v1/namespaces/default/services", json=dict(body, scale=1)).status_code == 200
    browser.go("#/ns/default/services/scaled")
    eventually(lambda: len(browser.find_all("#revisions tr[data-revision]")) == 2, WAIT, what="two revisions")
    browser.click("#revisions button[data-rollback='1']")
    browser.wait_for("dialog[open] button[type=submit]").click()
    said = browser.wait_text("#toast", "already at the spec of revision 1")
    assert "keeps the current scale 1" in said and "Rolled back" not in said
    with api(*ui_runed) as c:
        assert c.delete("/v1/namespaces/default/services/scaled").status_code == 200


@pytest.fixture(scope="module")
def config_objects(ui_runed: tuple[Runed, str]) -> None:
    """The secret ``db`` and the configmap ``app`` exist (creating an existing one updates it)."""
    with api(*ui_runed) as c:
        secret = {"name": "db", "data": {"password": "s3cr3t-v"}}
        assert c.post("/v1/namespaces/default/secrets", json=secret).is_success
        assert c.post("/v1/namespaces/default/configmaps", json={"name": "app", "data": {"mode": "fast"}}).is_success


@pytest.mark.usefixtures("config_objects")
def test_secrets_configmaps_nodes_and_audit(browser: Browser, ui_runed: tuple[Runed, str]) -> None:
    signed_in(browser, ui_runed)
    browser.go("#/ns/default/config")
    browser.wait_text("#secrets tr[data-name=db] .keys", "password")
    assert "s3cr3t-v" not in browser.driver.page_source, "values only on request"
    browser.find("#secrets tr[data-name=db] button").click()
    browser.wait_text("#secrets tr[data-name=db] dl", "s3cr3t-v")
    browser.find("#configmaps tr[data-name=app] button").click()
    browser.wait_text("#configmaps tr[data-name=app] dl", "fast")
    browser.screenshot("config")
    browser.go("#/ns/default/nodes")
    browser.wait_for("#node-rows tr[data-node]")
    browser.go("#/ns/default/audit")
    browser.wait_text("#audit-rows", "CreateSecret")
    browser.screenshot("audit")


@pytest.mark.usefixtures("config_objects")
def test_readonly_token_sees_actions_disabled_and_is_refused_anyway(
    browser: Browser, ui_runed: tuple[Runed, str], web: str
) -> None:
    r, root = ui_runed
    viewer = make_token(r, bearer(root), "viewer", ["readonly"])
    browser.sign_in(viewer)
    assert browser.text("#whoami").startswith("viewer")
    assert browser.find("#nav a[data-view=cast]").get_attribute("aria-disabled") == "true"
    assert browser.find("#nav a[data-view=audit]").get_attribute("aria-disabled") == "true"
    browser.go(f"#/ns/default/services/{web}")
    browser.wait_for("#instance-rows tr[data-state=running]")
    # Read in one script: the instance rows are redrawn on every watch event (a rollback replaced them).
    controls = (
        ("#scale-btn", "services:scale"),
        ("#restart-btn", "instances:update"),
        ("#stop-btn", "services:scale"),
        ("#delete-btn", "services:delete"),
        ("#revisions button[data-rollback]", "services:update"),
        ("#instance-rows button[aria-label]", "instances:update"),  # restart, stop/start of one instance
    )
    script = (
        "return arguments[0].map(([css, right]) => [css, right, [...document.querySelectorAll(css)]"
        ".map(b => [b.disabled, b.title])]).concat([['terminal', '', [...document.querySelectorAll("
        "'#instance-rows a[aria-label^=Terminal]')].map(a => [a.getAttribute('aria-disabled') === 'true', ''])]])"
    )

    def drawn() -> list[Any]:
        f: list[Any] = browser.js(script, [list(c) for c in controls])
        return f if all(states for _, _, states in f) else []

    found = eventually(drawn, WAIT, what="every control drawn (the history loads on its own)")
    for css, right, states in found:
        assert states and all(disabled and right in title for disabled, title in states), (css, right, states)
    browser.screenshot("readonly")
    browser.go("#/ns/default/nodes")
    browser.wait_for("#node-rows tr[data-node]")
    assert not any(b.is_enabled() for b in browser.find_all("#node-rows button")), "cordon, uncordon, drain"
    browser.go("#/ns/default/cast")
    browser.wait_for("#cast-apply")
    apply = browser.find("#cast-apply")
    assert not apply.is_enabled() and "services:create" in str(apply.get_attribute("title"))
    browser.go("#/ns/default/config")
    browser.wait_for("#secrets tr[data-name=db] button")
    assert not browser.find("#secrets tr[data-name=db] button").is_enabled(), "readonly may not read secret values"
    # The configmaps come in a request of their own: drawn after the secrets, or before.
    assert browser.wait_for("#configmaps tr[data-name=app] button").is_enabled()
    # The page's own token, sent anyway: the server refuses.
    for method, path, body, right in (
        ("POST", "/services/web:scale", {"scale": 5}, "services:scale"),
        ("DELETE", "/services/web", None, "services:delete"),
        ("POST", "/secrets", {"name": "x", "data": {"k": "v"}}, "secrets:create"),
    ):
        status = browser.js_async(
            "const [method, path, body, done] = arguments;"
            "fetch('/v1/namespaces/default' + path, {method,"
            " headers: {'Authorization': 'Bearer ' + sessionStorage.getItem('rune.dashboard.token'),"
            " 'Content-Type': 'application/json'}, body: body === null ? undefined : JSON.stringify(body)})"
            ".then(r => r.json().then(b => done([r.status, b.message])))",
            method,
            path,
            body,
        )
        assert status[0] == 403 and right in status[1], (method, path, status)
    # The terminal's Run button is disabled too, and the exec WebSocket is refused when opened anyway.
    browser.go(f"#/ns/default/exec/{web}")
    assert not browser.wait_for("#term-connect").is_enabled()
    refused = browser.js_async(
        "const done = arguments[arguments.length - 1];"
        "const ws = new WebSocket(`ws://${location.host}/v1/namespaces/default/exec/service/web/ws`,"
        " ['rune.exec.v1', 'bearer.' + sessionStorage.getItem('rune.dashboard.token')]);"
        "ws.onopen = () => ws.send(JSON.stringify({command: ['true']}));"
        "ws.onmessage = (e) => done(e.data); ws.onclose = (e) => done('closed ' + e.code + ' ' + e.reason)"
    )
    assert "exec:exec" in refused or "403" in refused or "ermission" in refused, refused
    with api(r, root) as c:
        assert c.get("/v1/namespaces/default/services/web").json()["service"]["scale"] == 1
    browser.sign_in(root)


def test_builtin_policy_rules_match_the_server(browser: Browser, ui_runed: tuple[Runed, str]) -> None:
    signed_in(browser, ui_runed)
    page = browser.js_async(
        "const done = arguments[arguments.length - 1]; import('/ui/perms.js').then(m => done(m.BUILTIN))"
    )
    assert page == {name: p["rules"] for name, p in BUILTIN_POLICIES.items()}


def test_restart_restarts_every_instance(browser: Browser, ui_runed: tuple[Runed, str], web: str) -> None:
    signed_in(browser, ui_runed)
    browser.go(f"#/ns/default/services/{web}")
    browser.wait_for("#instance-rows tr[data-state=running]")

    def restarts() -> int:
        cells = browser.cells("#instance-rows tr[data-instance]")
        return int(cells[1] or 0) if len(cells) > 1 else -1

    before = restarts()
    browser.click("#restart-btn")
    eventually(lambda: restarts() > before, WAIT, what="the instance restarted")
    browser.wait_for("#instance-rows tr[data-state=running]")


def test_stop_scales_to_zero_after_confirmation(browser: Browser, ui_runed: tuple[Runed, str], web: str) -> None:
    signed_in(browser, ui_runed)
    browser.go(f"#/ns/default/services/{web}")
    browser.wait_for("#instance-rows tr[data-state=running]")
    browser.click("#stop-btn")
    browser.wait_for("dialog[open] button[type=submit]").click()
    browser.wait_text("#svc-facts [data-fact=desired]", "0")
    eventually(lambda: not browser.find_all("#instance-rows tr[data-instance]"), WAIT, what="no instances left")
    with api(*ui_runed) as c:
        assert c.get("/v1/namespaces/default/services/web").json()["service"]["scale"] == 0


def test_delete_asks_for_confirmation(browser: Browser, ui_runed: tuple[Runed, str], web: str) -> None:
    signed_in(browser, ui_runed)
    browser.go(f"#/ns/default/services/{web}")
    browser.wait_for("#delete-btn").click()
    confirm = browser.wait_for("dialog[open] button[type=submit]")
    assert not confirm.is_enabled(), "confirming needs the name typed"
    browser.find("dialog[open] input").send_keys(web)
    browser.screenshot("delete-confirmation")
    confirm.click()
    browser.wait_for("#services")
    with api(*ui_runed) as c:
        eventually(lambda: c.get("/v1/namespaces/default/services/web").status_code == 404, WAIT, what="web deleted")
    eventually(lambda: not browser.find_all("#services tr[data-name=web]"), WAIT, what="the row gone without reload")
    assert not browser.console_errors()


def test_screenshots_of_the_main_views_are_written(browser: Browser) -> None:
    for view in ("sign-in", "cast-dry-run", "services", "service", "logs", "terminal", "history", "config", "audit"):
        shot = browser.artifacts / f"{view}.png"
        assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", view


def test_no_token_in_the_server_log(ui_runed: tuple[Runed, str]) -> None:
    r, root = ui_runed
    assert r.log_path is not None
    log = r.log_path.read_text(errors="replace")
    assert log, "the server wrote its log"
    assert root not in log and "rune_" not in log, "a token secret in the log"
