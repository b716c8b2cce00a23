"""`rune lint`'s upstream flags: --context/--expand-context, --exit-on-fail, --fix, --format json; exit codes."""

from __future__ import annotations

import json
from pathlib import Path

from tests.e2e.rune import Rune

BAD = "services:\n  - name: a\n    image: x\n    replicas: 3\n    scale: 1\n  - name: b\n    image: x\n"


def test_lint_shows_the_lines_around_each_error(offline_rune: Rune, tmp_path: Path) -> None:
    f = tmp_path / "bad.yaml"
    f.write_text(BAD)
    r = offline_rune("lint", str(f))
    assert r.returncode == 8
    # One line either side by default, the problem's line marked.
    assert f"error: {f}:4: unknown field 'replicas' in service" in r.stderr
    assert "    3 |     image: x\n  > 4 |     replicas: 3\n    5 |     scale: 1\n" in r.stderr, r.stderr
    none = offline_rune("lint", "--context", "0", str(f))
    assert "| " not in none.stderr
    # The whole enclosing block: the list item the field belongs to, not its neighbour.
    block = offline_rune("lint", "--expand-context", str(f))
    assert "    2 |   - name: a\n" in block.stderr and "  > 4 |     replicas: 3\n" in block.stderr
    assert "    5 |     scale: 1\n" in block.stderr and "name: b" not in block.stderr, block.stderr
    doc = json.loads(offline_rune("lint", "--format", "json", "--context", "1", str(f)).stdout)
    assert doc["ok"] is False
    assert doc["problems"][0] | {"context": None} == {
        "file": str(f),
        "line": 4,
        "message": "unknown field 'replicas' in service",
        "context": None,
    }
    assert len(doc["problems"][0]["context"]) == 3


def test_lint_exit_on_fail_stops_at_the_first_bad_path(offline_rune: Rune, tmp_path: Path) -> None:
    first, second = tmp_path / "1.yaml", tmp_path / "2.yaml"
    first.write_text(BAD)
    second.write_text("service: {name: B_ad, image: x}\n")
    both = offline_rune("lint", "--context", "0", str(first), str(second))
    assert both.returncode == 8 and str(second) in both.stderr
    r = offline_rune("lint", "--exit-on-fail", "--context", "0", str(first), str(second))
    assert r.returncode == 8
    assert str(first) in r.stderr and str(second) not in r.stderr.replace("1 path(s) not checked", "")
    assert "1 path(s) not checked" in r.stderr
    doc = json.loads(offline_rune("lint", "--exit-on-fail", "--format", "json", str(first), str(second)).stdout)
    assert doc["skipped_paths"] == 1


def test_lint_fix_repairs_what_keeps_the_meaning(offline_rune: Rune, tmp_path: Path) -> None:
    tabs = tmp_path / "tabs.yaml"
    tabs.write_bytes(b"service:\r\n\tname: web   \r\n\timage: nginx\r\n\tscale: 2")
    before = offline_rune("lint", str(tabs))
    assert before.returncode == 8  # a tab in YAML indentation does not parse
    r = offline_rune("lint", "--fix", str(tabs))
    assert r.returncode == 0, r.stdout + r.stderr
    assert f"fixed: {tabs}: CRLF line ends, tabs in indentation, trailing blanks, final newline" in r.stdout
    assert tabs.read_bytes() == b"service:\n  name: web\n  image: nginx\n  scale: 2\n"
    # A block scalar's trailing blanks are its content: the file is left as it is.
    literal = tmp_path / "literal.yaml"
    text = "service:\n  name: web\n  image: nginx\n  env:\n    MOTD: |\n      hello   \n"
    literal.write_text(text)
    assert offline_rune("lint", "--fix", str(literal)).returncode == 0
    assert literal.read_text() == text
