"""Shell completion of object names: the real `rune` answering bash's completion protocol from a real runed."""

from __future__ import annotations

from pathlib import Path

from tests.e2e.rune import Rune


def _complete(rune: Rune, line: str) -> list[str]:
    """What ``rune`` offers for the last word of ``line`` (bash's protocol: ``type,value`` lines)."""
    words = line.split(" ")
    r = rune(
        *[],
        env={"_RUNE_COMPLETE": "bash_complete", "COMP_WORDS": line, "COMP_CWORD": str(len(words) - 1)},
        timeout=30,
    )
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stderr == ""
    return [ln.split(",", 1)[1] for ln in r.stdout.splitlines() if "," in ln]


def test_names_complete_from_runed(rune: Rune, cast_app: Path) -> None:
    assert _complete(rune, "rune scale ") == ["web", "worker"]
    assert _complete(rune, "rune restart we") == ["web"]
    # logs and exec take a service or an instance.
    assert _complete(rune, "rune logs w") == ["web", "worker", "web-0", "web-1", "worker-0"]
    assert _complete(rune, "rune exec web-") == ["web-0", "web-1"]
    # get/describe NAME: names of the TYPE before it, in the namespace the command would use.
    assert _complete(rune, "rune get secret ") == ["db-pass"]
    assert _complete(rune, "rune get cm ") == ["web-config"]
    assert "default" in _complete(rune, "rune get ns ")
    assert _complete(rune, "rune describe svc wo") == ["worker"]
    assert _complete(rune, "rune get svc -n elsewhere ") == []
    assert _complete(rune, "rune get nosuchtype ") == []
    # delete [TYPE] NAME: a bare NAME is a service, beside the list/status subcommands.
    assert _complete(rune, "rune delete we") == ["web"]
    assert {"list", "status", "web", "worker"} <= set(_complete(rune, "rune delete "))
    assert _complete(rune, "rune delete configmap ") == ["web-config"]


def test_completion_without_runed_is_empty_and_silent(offline_rune: Rune) -> None:
    assert _complete(offline_rune, "rune logs ") == []
    assert _complete(offline_rune, "rune get svc ") == []
