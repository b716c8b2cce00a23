"""The import contract (`make imports`) holds for the tree, and fails when a layer or cycle rule is broken.

Each failing case copies the source packages into a temporary directory laid out as they are
installed (``runed``, ``rune/gateway``, ``rune/cli``), plants one bad import there, and runs
lint-imports with the project's own configuration against that copy; the copy comes first on
``PYTHONPATH``, ahead of the editable install.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tomllib
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
# Installed name -> source folder (pyproject's [tool.setuptools.package-dir]).
PACKAGES = {"runed": "runed", "rune/gateway": "gateway", "rune/cli": "cli"}
LINT = "import sys; from importlinter.cli import lint_imports_command; sys.exit(lint_imports_command())"


def _contract_names() -> dict[str, str]:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    return {c["id"]: c["name"] for c in config["tool"]["importlinter"]["contracts"]}


def _lint(cwd: Path, pythonpath: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, COLUMNS="400")  # no wrapped lines in the report
    if pythonpath is not None:
        env["PYTHONPATH"] = str(pythonpath)
    return subprocess.run(
        [sys.executable, "-c", LINT, "--no-cache", "--no-logo"],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def _copy_sources(dest: Path) -> Path:
    for installed, source in PACKAGES.items():
        shutil.copytree(ROOT / source, dest / installed, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", dest / "pyproject.toml")
    return dest


@dataclass(frozen=True)
class Breach:
    """One planted import: where it goes, the contract it breaks, and a line the report must show."""

    name: str
    path: str  # relative to the copy, as installed
    code: str
    contract: str
    reported: str


BREACHES = [
    Breach(
        "upward import",
        "runed/core/errors.py",
        "import runed.api\n",
        "layers",
        "runed.core.errors -> runed.api",
    ),
    Breach(
        "gateway takes from the gRPC adapter",
        "rune/gateway/codec.py",
        "import runed.transport.grpc\n",
        "gateway-beside-grpc",
        "rune.gateway.codec -> runed.transport.grpc",
    ),
    Breach(
        "cli takes from runed",
        "rune/cli/__init__.py",
        "import runed.core.errors\n",
        "cli-speaks-grpc-only",
        "rune.cli -> runed.core.errors",
    ),
    Breach(
        "circle between two runed modules",
        "runed/core/_circle_a.py",
        '"""Planted."""\n\nfrom runed.core import _circle_b\n',
        "no-cycles",
        "No cycles are allowed in runed.core.",
    ),
    Breach(
        "circle between two gateway modules",
        "rune/gateway/_circle_a.py",
        '"""Planted."""\n\nfrom rune.gateway import _circle_b\n',
        "no-cycles",
        "No cycles are allowed in rune.gateway.",
    ),
]


@pytest.fixture(scope="module")
def baseline(tmp_path_factory: pytest.TempPathFactory) -> str:
    """The report on an untouched copy: what the planted imports are compared with."""
    copy = _copy_sources(tmp_path_factory.mktemp("baseline"))
    return _lint(copy, pythonpath=copy).stdout


@pytest.mark.parametrize("breach", BREACHES, ids=[b.name for b in BREACHES])
def test_a_planted_import_breaks_its_contract(tmp_path: Path, baseline: str, breach: Breach) -> None:
    copy = _copy_sources(tmp_path)
    target = copy / breach.path
    if target.name.startswith("_circle_a"):
        # The other half of the circle.
        other = target.with_name("_circle_b.py")
        other.write_text(breach.code.replace("_circle_b", "_circle_a"))
        target.write_text(breach.code)
    else:
        target.write_text(target.read_text() + breach.code)
    result = _lint(copy, pythonpath=copy)
    report = result.stdout + result.stderr
    assert result.returncode != 0, report
    assert f"{_contract_names()[breach.contract]} BROKEN" in report
    assert breach.reported in report
    assert breach.reported not in baseline  # the planted import is what the contract caught


def test_the_tree_keeps_the_contract() -> None:
    result = _lint(ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
