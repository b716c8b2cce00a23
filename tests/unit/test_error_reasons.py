"""Every FAILED_PRECONDITION runed raises names its cause: a reason of its own (clients branch on reasons,
README "Error model"), never the code's default, and the README's table lists each one."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _precondition_calls() -> list[tuple[str, ast.Call]]:
    out = []
    for path in sorted((ROOT / "runed").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Call):
                f = node.func
                name = f.attr if isinstance(f, ast.Attribute) else f.id if isinstance(f, ast.Name) else ""
                if name == "FailedPrecondition":
                    out.append((f"{path.relative_to(ROOT)}:{node.lineno}", node))
    return out


def _reason(call: ast.Call) -> str | None:
    for kw in call.keywords:
        if kw.arg == "reason" and isinstance(kw.value, ast.Constant) and isinstance(kw.value.value, str):
            return kw.value.value
    return None


def test_every_failed_precondition_names_its_reason_and_the_readme_lists_it() -> None:
    calls = _precondition_calls()
    assert len(calls) >= 15, "the scan finds runed's refusals"
    unnamed = [where for where, call in calls if _reason(call) is None]
    assert not unnamed, f"FAILED_PRECONDITION without a reason of its own at {unnamed}"
    readme = (ROOT / "README.md").read_text()
    table = readme[readme.index("### Error model") :]
    missing = sorted({r for _, call in calls if (r := _reason(call)) and f"`{r}`" not in table})
    assert not missing, f"reasons missing from README's error table: {missing}"
