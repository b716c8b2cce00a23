"""The README's first `app.yaml`, cast as a new user would: it must come up ready and serve."""

from __future__ import annotations

import json
import re
import urllib.request
from pathlib import Path

from tests.e2e.rune import Rune

README = Path(__file__).resolve().parents[2] / "README.md"


def test_the_readmes_first_app_casts_ready_and_serves(rune: Rune, tmp_path: Path) -> None:
    found = re.search(r"A first `app.yaml`.*?```yaml\n(.*?)```", README.read_text(), re.S)
    assert found, "README.md has no first app.yaml"
    # Its own name here: the module's runed runs another `web`.
    f = tmp_path / "app.yaml"
    f.write_text(found.group(1).replace("name: web", "name: readme-web"))
    r = rune("cast", str(f), "--timeout", "60s", timeout=90)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "ready: readme-web" in r.stdout
    listed = json.loads(rune("get", "instances", "-o", "json").stdout)["instances"]
    port = next(i for i in listed if i["serviceName"] == "readme-web")["hostPorts"]["http"]
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=10) as page:
        assert page.status == 200
    assert rune("delete", "readme-web", "--timeout", "30").returncode == 0
