"""The dashboard's vendored browser code matches its manifest (sha256 of the files from the npm tarballs).

``make vendor-check`` compares the files with the published packages over the network; here, offline,
the manifest check itself is exercised on the real files and on a tampered copy.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
import subprocess
import sys
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "check_vendor.py"


def _check_vendor() -> ModuleType:
    spec = importlib.util.spec_from_file_location("check_vendor", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_vendored_files_match_the_manifest() -> None:
    out = subprocess.run([sys.executable, str(SCRIPT), "--offline"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    manifest = json.loads((ROOT / "gateway/dashboard/vendor/manifest.json").read_text())
    names = {p["name"] for p in manifest["packages"]}
    assert {"@xterm/xterm", "@xterm/addon-fit"} <= names
    for pkg in manifest["packages"]:
        assert pkg["integrity"].startswith("sha512-") and pkg["tarball"].startswith("https://registry.npmjs.org/")
        assert any(f["path"].endswith("/LICENSE") for f in pkg["files"]), f"{pkg['name']} ships its license"


def test_a_changed_or_unlisted_file_is_reported(tmp_path: Path) -> None:
    check = _check_vendor()
    vendor = tmp_path / "vendor"
    shutil.copytree(check.VENDOR, vendor)
    manifest = json.loads((vendor / "manifest.json").read_text())
    assert check.offline_problems(manifest, vendor) == []
    with (vendor / "xterm" / "xterm.mjs").open("ab") as f:
        f.write(b"\n// patched\n")
    (vendor / "xterm" / "extra.js").write_text("export {};\n")
    problems = check.offline_problems(manifest, vendor)
    assert any("xterm/xterm.mjs differs" in p for p in problems), problems
    assert any("xterm/extra.js is not in the manifest" in p for p in problems), problems
