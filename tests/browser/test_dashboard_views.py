"""The dashboard's views in detail, in real headless chromium against a real runed.

A long list paged, instance details (ports, node, restarts, last exit), health and probe results,
the log view's filter, timestamps, events and colours, per-instance actions, nodes, a custom policy
the page cannot read, uploads, keyboard use, a laptop-sized window, and the page's own traffic
(watch streams, no polling, nothing but ``/ui/`` and ``/v1``). The runed and the browser are the
ones every browser module shares; this module's services (not ``web``) are cast over REST by a fixture.
"""

from __future__ import annotations

import re
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
from selenium.webdriver.common.keys import Keys

from tests.browser.page import WAIT, Browser
from tests.harness import Runed
from tests.support import bearer, eventually, make_token

pytestmark = pytest.mark.slow

MANY = 120  # services in the namespace "many": three pages of 50
DASH = "\N{EN DASH}"  # the page writes ranges as 1\N{EN DASH}50
SLEEPER = "import time\nprint('up', flush=True)\nwhile True:\n    time.sleep(1)\n"
CRASHER = "import sys\nprint('about to fail', flush=True)\nsys.exit(3)\n"
# 3,000 numbered stdout lines, one stderr line, then quiet: a log much longer than the view.
BURST = (
    "import sys, time\n"
    "for i in range(3000):\n"
    "    print(f'burst {i}')\n"
    "sys.stdout.flush()\n"
    "print('oops', file=sys.stderr, flush=True)\n"
    "while True:\n"
    "    time.sleep(1)\n"
)


def process(name: str, program: str, **extra: Any) -> dict[str, Any]:
    return {
        "name": name,
        "runtime": "process",
        "scale": 1,
        "process": {"command": sys.executable, "args": ["-u", "-c", program]},
        **extra,
    }


def api(r: Runed, token: str) -> httpx.Client:
    return httpx.Client(base_url=r.http_base, headers={"authorization": f"Bearer {token}"}, timeout=10)


@pytest.fixture(scope="module")
def root(ui_runed: tuple[Runed, str]) -> str:
    return ui_runed[1]


@pytest.fixture(scope="module")
def services(ui_runed: tuple[Runed, str]) -> None:
    """probed (ports, a command liveness probe), crashy (exits 3, restarted), pair (two noisy instances)
    in ``default``; ``MANY`` services of scale 0 in ``many``."""
    r, token = ui_runed
    probe = {"type": "PROBE_TYPE_COMMAND", "command": [sys.executable, "-c", "pass"], "periodSeconds": 1}
    with api(r, token) as c:
        for body in (
            process(
                "probed",
                SLEEPER,
                ports=[{"name": "http", "port": 18080, "targetPort": 8080, "protocol": "TCP"}],
                health={"liveness": probe},
            ),
            process("crashy", CRASHER, restartPolicy="RESTART_POLICY_ALWAYS"),
            process("pair", BURST, scale=2),
        ):
            resp = c.post("/v1/namespaces/default/services", json=body)
            assert resp.status_code == 200, resp.text
        assert c.post("/v1/namespaces", json={"name": "many"}).status_code == 200

        def create(i: int) -> int:
            body = process(f"svc-{i:03d}", SLEEPER, scale=0)
            return c.post("/v1/namespaces/many/services", json=body).status_code

        with ThreadPoolExecutor(4) as pool:
            assert set(pool.map(create, range(MANY))) == {200}


@pytest.fixture
def ui(browser: Browser, root: str, services: None) -> Browser:
    """The browser, signed in as root."""
    if not browser.text("#whoami").startswith("root"):
        browser.sign_in(root)
    # Keep every request in the resource timing list (250 by default), for the traffic tests.
    browser.js("performance.setResourceTimingBufferSize(100000)")
    return browser


def fetched(browser: Browser) -> list[str]:
    """The URLs the page has fetched so far (completed requests; an open stream is not one yet)."""
    return list(browser.js("return performance.getEntriesByType('resource').map(e => e.name)"))


def test_a_long_list_shows_one_page_and_pages_on(ui: Browser) -> None:
    ui.go("#/ns/many/services")
    ui.wait_text("#svc-summary", f"1{DASH}50 of {MANY} services (page 1 of 3)")
    assert len(ui.find_all("#svc-rows tr[data-name]")) == 50, "one page of rows in the page"
    cells = ui.cells("#svc-rows tr[data-name=svc-000]")
    assert cells[0] and cells[1:4] == ["0/0", "process", "1"] and re.fullmatch(r"\d+[smhd]", cells[4]), cells
    ui.screenshot("services-many")
    # By keyboard: the pager's buttons take Enter.
    ui.find("#svc-next").send_keys(Keys.ENTER)
    ui.wait_text("#svc-summary", f"51{DASH}100 of {MANY}")
    assert ui.find_all("#svc-rows tr[data-name]")[0].get_attribute("data-name") == "svc-050"
    ui.find("#svc-next").click()
    ui.wait_text("#svc-summary", f"101{DASH}{MANY} of {MANY} services (page 3 of 3)")
    assert len(ui.find_all("#svc-rows tr[data-name]")) == MANY - 100
    assert not ui.find("#svc-next").is_enabled() and ui.find("#svc-prev").is_enabled()
    ui.find("#svc-filter").send_keys("svc-11")
    ui.wait_text("#svc-summary", f"1{DASH}10 of 10 services")
    ui.find("#svc-filter").clear()
    ui.find("#svc-filter").send_keys(Keys.BACKSPACE)


def test_instances_show_ports_node_restarts_last_exit_and_probe_results(
    ui: Browser, ui_runed: tuple[Runed, str]
) -> None:
    ui.go("#/ns/default/services/probed")
    ui.wait_for("#instance-rows tr[data-instance=probed-0][data-state=running]")
    cells = ui.cells("#instance-rows tr[data-instance=probed-0]")
    # The node, and where the instance is reached: its host port for the declared port "http".
    with api(*ui_runed) as c:
        listed = c.get("/v1/namespaces/default/instances").json()["instances"]
    port = next(i for i in listed if i["name"] == "probed-0")["hostPorts"]["http"]
    assert cells[2] and cells[3] == f"127.0.0.1:{port}→http", cells
    ui.wait_text("#health table", "Liveness")
    eventually(lambda: "Healthy" in ui.text("#health tbody tr"), WAIT, what="the probe's result")
    ui.screenshot("service-probes")
    ui.go("#/ns/default/services/crashy")

    def crashed() -> bool:
        cells = ui.cells("#instance-rows tr[data-instance=crashy-0]")
        return len(cells) > 4 and int(cells[1] or 0) >= 1 and "exit code 3" in cells[4]

    eventually(crashed, WAIT, what="a restart count and the last exit (exit code 3)")


# Scroll the log view and answer once the page has drawn the rows there (it draws on the next frame).
SCROLL = (
    "const [top, done] = arguments; const o = document.getElementById('log-lines');"
    " o.scrollTop = top; o.dispatchEvent(new Event('scroll'));"
    " requestAnimationFrame(() => requestAnimationFrame(() => done()))"
)
# The colour class and the computed colour of each instance name among the rows in view.
COLOURS = (
    "const c = {}; for (const l of document.querySelectorAll('#log-lines .line'))"
    " c[l.querySelector('.who').textContent] = [l.className.match(/c\\d/)[0],"
    " getComputedStyle(l.querySelector('.who')).color]; return c"
)


TEXTS = "return [...document.querySelectorAll('#log-lines .line .text')].map(t => t.textContent)"


def shown(ui: Browser) -> int:
    """How many lines the log view holds (its virtual list's length)."""
    return int(ui.js("const o = document.getElementById('log-lines'); return o ? o.dataset.shown || 0 : 0"))


def test_logs_filter_timestamps_events_and_one_colour_per_instance(ui: Browser) -> None:
    ui.go("#/ns/default/logs/pair")
    ui.wait_for("#log-lines")
    ui.find("#log-tail").clear()
    ui.find("#log-tail").send_keys("0")
    ui.find("#log-form button[type=submit]").click()
    # The whole log of both instances (3,001 lines each and their events) is kept, not put in the page.
    eventually(lambda: shown(ui) >= 6002, WAIT, what="both instances' lines")
    assert len(ui.find_all("#log-lines .line")) < 100, "a virtual list: only the rows in view are elements"
    assert "burst 2999" in ui.text("#log-lines") or "oops" in ui.text("#log-lines"), "scrolled to the newest"
    ui.screenshot("logs-pair")
    # Events interleaved (on by default), in their own style, with one colour per instance.
    ui.js_async(SCROLL, 0)
    eventually(lambda: ui.find_all("#log-lines .line.event"), WAIT, what="lifecycle events among the lines")
    ui.find("#log-filter").send_keys("/burst 12[0-9]{2}$/")
    ui.find("#log-timestamps").click()
    ui.find("#log-events").click()
    ui.find("#log-form button[type=submit]").click()
    eventually(lambda: shown(ui) == 200, WAIT, what="the filtered lines of both instances")
    texts = eventually(lambda: ui.js(TEXTS), WAIT, what="rows drawn")
    assert all(re.fullmatch(r"\d{4}-\d\d-\d\dT\S+ burst 12\d\d", t) for t in texts), texts[:3]
    assert not ui.find_all("#log-lines .line.event")
    # Colours are given per view in the order instances first appear: collected from this one only.
    colours: dict[str, list[str]] = {}

    def both() -> bool:
        # The whole list, half a view at a time, not its two ends only: lines are in time order, and
        # one instance's 100 may all lie between the other's first and last.
        height, view = ui.js("const o = document.getElementById('log-lines'); return [o.scrollHeight, o.clientHeight]")
        for top in range(0, int(height) + int(view), max(1, int(view) // 2)):
            ui.js_async(SCROLL, top)
            colours.update(ui.js(COLOURS))
        assert {"pair-0", "pair-1"} <= set(colours), f"instances seen in the list: {colours}"
        return True

    eventually(both, WAIT, what="rows of both instances")
    assert colours["pair-0"] != colours["pair-1"], "one colour per instance"
    ui.find("#log-filter").clear()
    ui.find("#log-timestamps").click()
    ui.find("#log-events").click()


def test_logs_of_one_instance_tail_without_following(ui: Browser) -> None:
    ui.go("#/ns/default/services/pair")
    ui.click("#instance-rows a[aria-label='Logs of pair-0']")
    ui.wait_text("#log-lines", "pair-0")
    ui.find("#log-follow").click()
    ui.find("#log-events").click()
    ui.find("#log-stream").send_keys("stdout")
    ui.find("#log-tail").clear()
    ui.find("#log-tail").send_keys("5")
    ui.find("#log-form button[type=submit]").click()
    ui.wait_text("#log-state", "5 lines.")
    last = [f"burst {i}" for i in range(2995, 3000)]
    eventually(lambda: ui.js(TEXTS) == last, WAIT, what=f"{last} and nothing else")
    assert {w.text for w in ui.find_all("#log-lines .line .who")} == {"pair-0"}


def test_instance_rows_stop_start_and_restart(ui: Browser) -> None:
    ui.go("#/ns/default/services/probed")
    ui.wait_for("#instance-rows tr[data-instance=probed-0][data-state=running]")
    ui.click("#instance-rows button[aria-label='Stop probed-0']")
    ui.wait_for("#instance-rows tr[data-instance=probed-0][data-state=stopped]")
    ui.click("#instance-rows button[aria-label='Start probed-0']")
    ui.wait_for("#instance-rows tr[data-instance=probed-0][data-state=running]")

    def restarts() -> int:
        cells = ui.cells("#instance-rows tr[data-instance=probed-0]")
        return int(cells[1] or 0) if len(cells) > 1 else -1

    before = restarts()
    ui.click("#instance-rows button[aria-label='Restart probed-0']")
    eventually(lambda: restarts() > before, WAIT, what="the restart counted")
    ui.wait_for("#instance-rows tr[data-instance=probed-0][data-state=running]")


def test_nodes_cordon_and_uncordon(ui: Browser, ui_runed: tuple[Runed, str]) -> None:
    ui.go("#/ns/default/nodes")
    row = ui.wait_for("#node-rows tr[data-node]")
    node = row.get_attribute("data-node")
    assert node
    cpu, memory, count = ui.cells(f"#node-rows tr[data-node='{node}']")[2:5]
    assert re.fullmatch(r"[\d.]+/[\d.]+", cpu) and float(cpu.split("/")[1]) > 0, cpu
    assert re.fullmatch(r"\d+( MiB)?/\d+ MiB", memory) and not memory.endswith("/0 MiB"), memory
    assert int(count) >= 1, "this host runs the module's instances"
    ui.click(f"#node-rows button[aria-label='Cordon {node}']")
    ui.wait_text(f"#node-rows tr[data-node='{node}']", "cordoned")
    with api(*ui_runed) as c:
        assert c.get(f"/v1/nodes/{node}").json()["node"]["cordoned"] is True
    ui.screenshot("nodes")
    ui.click(f"#node-rows button[aria-label='Uncordon {node}']")
    eventually(lambda: "cordoned" not in ui.text(f"#node-rows tr[data-node='{node}']"), WAIT, what="uncordoned")
    ui.wait_for(f"#node-rows button[aria-label='Cordon {node}']")


def test_namespaces_lead_to_their_services(ui: Browser) -> None:
    ui.go("#/ns/default/namespaces")
    ui.wait_text("#namespaces", "many")
    assert "default" in ui.text("#namespaces")
    ui.click("#namespaces a[href='#/ns/many/services']")
    ui.wait_text("#svc-summary", f"of {MANY} services")
    assert ui.find("#ns").get_property("value") == "many", "the header's namespace follows"


def test_upload_a_cast_file_and_dry_run_it(ui: Browser, tmp_path: Path) -> None:
    cast = tmp_path / "uploaded.yaml"
    cast.write_text(
        "service:\n  name: uploaded\n  runtime: process\n  scale: 0\n"
        f"  process:\n    command: {sys.executable}\n    args: [-c, 'pass']\n"
    )
    ui.go("#/ns/default/cast")
    ui.wait_for("#cast-file").send_keys(str(cast))
    read = "return document.getElementById('cast-yaml').value"
    eventually(lambda: "name: uploaded" in str(ui.js(read)), WAIT, what="the file read into the text")
    ui.find("#cast-dry-run").click()
    ui.wait_text("#cast-result .verdict", "would be created")
    assert "uploaded" in ui.text("#cast-result .diff pre")


def test_dialogs_and_fields_work_by_keyboard(ui: Browser, ui_runed: tuple[Runed, str]) -> None:
    ui.go("#/ns/default/services/probed")
    ui.wait_for("#stop-btn").send_keys(Keys.ENTER)
    dialog = ui.wait_for("dialog[open]")
    assert ui.driver.switch_to.active_element.text == "Cancel", "the dialog takes the focus"
    ui.driver.switch_to.active_element.send_keys(Keys.ESCAPE)
    eventually(lambda: not ui.find_all("dialog[open]"), WAIT, what="Escape closes the dialog")
    del dialog
    with api(*ui_runed) as c:
        assert c.get("/v1/namespaces/default/services/probed").json()["service"]["scale"] == 1, "nothing done"
    # Every control of the main views has a label (a <label for>, or an aria-label).
    for view, ready in (
        ("services", "#svc-filter"),
        ("services/probed", "#scale-input"),
        ("logs/probed", "#log-filter"),
        ("cast", "#cast-yaml"),
        ("config", "#configmaps"),
        ("audit", "#audit-subject"),
    ):
        ui.go(f"#/ns/default/{view}")
        ui.wait_for(ready)
        unlabelled = ui.js(
            "return [...document.querySelectorAll('#main input, #main select, #main textarea')]"
            ".filter(e => !e.labels.length && !e.getAttribute('aria-label')).map(e => e.outerHTML)"
        )
        assert unlabelled == [], (view, unlabelled)


def test_readable_on_a_laptop_screen(ui: Browser) -> None:
    ui.driver.set_window_size(1280, 800)
    try:
        for view, ready in (
            ("services", "#svc-rows tr[data-name=probed]"),
            ("services/probed", "#instance-rows tr[data-instance]"),
            ("logs/probed", "#log-lines .line"),
            ("nodes", "#node-rows tr[data-node]"),
        ):
            ui.go(f"#/ns/default/{view}")
            ui.wait_for(ready)
            overflow = ui.js("return document.documentElement.scrollWidth - document.documentElement.clientWidth")
            assert overflow <= 0, f"{view} scrolls sideways by {overflow}px at 1280x800"
            size = ui.js("return parseFloat(getComputedStyle(document.body).fontSize)")
            assert size >= 13, size
    finally:
        ui.driver.set_window_size(1366, 900)


def test_lists_follow_the_watch_streams_without_polling(ui: Browser, ui_runed: tuple[Runed, str]) -> None:
    ui.go("#/ns/default/services")
    ui.wait_text("#services tr[data-name=probed] .ready", "1/1")
    lists = re.compile(r"/v1/namespaces/default/(services|instances)(\?|$)")
    before = [u for u in fetched(ui) if lists.search(urlsplit(u).path + "?")]
    assert before, "the lists were loaded once"
    with api(*ui_runed) as c:
        assert c.post("/v1/namespaces/default/services/probed:scale", json={"scale": 2}).is_success
    ui.wait_text("#services tr[data-name=probed] .ready", "2/2")
    after = [u for u in fetched(ui) if lists.search(urlsplit(u).path + "?")]
    assert after == before, "the change came over the watch streams, not a new list request"
    with api(*ui_runed) as c:
        assert c.post("/v1/namespaces/default/services/probed:scale", json={"scale": 1}).is_success
    ui.wait_text("#services tr[data-name=probed] .ready", "1/1")


def test_a_custom_policy_it_cannot_read_leaves_actions_enabled_and_the_server_decides(
    browser: Browser, ui_runed: tuple[Runed, str], root: str, services: None
) -> None:
    r, _ = ui_runed
    rules = [{"resource": r, "verbs": ["get", "list", "watch"], "namespace": "*"} for r in ("services", "instances")]
    with api(r, root) as c:
        resp = c.post("/v1/admin/policies", json={"name": "looker", "rules": rules})
        assert resp.status_code == 200, resp.text
    token = make_token(r, bearer(root), "looker", ["looker"])
    browser.sign_in(token)
    try:
        browser.go("#/ns/default/services/probed")
        browser.wait_for("#instance-rows tr[data-instance]")
        scale = browser.find("#scale-btn")
        assert scale.is_enabled(), "a policy the token cannot read does not disable anything"
        scale.click()
        browser.wait_text("#toast", "403")
        assert "services:scale" in browser.text("#toast")
        with api(r, root) as c:
            assert c.get("/v1/namespaces/default/services/probed").json()["service"]["scale"] == 1
    finally:
        browser.sign_in(root)


def test_the_page_calls_nothing_but_its_files_and_the_public_api(ui: Browser) -> None:
    paths = {urlsplit(u).path for u in fetched(ui)}
    assert paths, "the page fetched something"
    assert all(p.startswith(("/ui/", "/v1/")) for p in paths), sorted(p for p in paths if not p.startswith("/ui/"))
    assert not ui.console_errors()


def test_drain_asks_for_confirmation(ui: Browser, ui_runed: tuple[Runed, str]) -> None:
    """Last: a drained node stays cordoned until it is uncordoned."""
    ui.go("#/ns/default/nodes")
    node = ui.wait_for("#node-rows tr[data-node]").get_attribute("data-node")
    ui.click(f"#node-rows button[aria-label='Drain {node}']")
    ui.wait_text("dialog[open]", "Its instances move to other nodes.")
    ui.find("dialog[open] button[type=submit]").click()
    ui.wait_text(f"#node-rows tr[data-node='{node}']", "cordoned")
    with api(*ui_runed) as c:
        assert c.get(f"/v1/nodes/{node}").json()["node"]["cordoned"] is True
        assert c.post(f"/v1/nodes/{node}:uncordon", json={}).is_success
