"""`rune cast` and `rune scale` waits end with the outcome: a job that completed, an instance that failed for good."""

from __future__ import annotations

from pathlib import Path

from tests.e2e.rune import Rune
from tests.e2e.shop import PY
from tests.support import eventually

# Generous: each wait must end long before it, by the outcome and not by the deadline.
WAIT = ["--timeout", "90s"]


def _job(tmp: Path, name: str, code: int, policy: str, extra: str = "") -> Path:
    f = tmp / f"{name}.yaml"
    f.write_text(
        f"service:\n  name: {name}\n  runtime: process\n  restartPolicy: {policy}\n"
        f"  process:\n    command: {PY}\n"
        f"    args: ['-c', 'import sys, time; print(\"ran\"); time.sleep(0.5); sys.exit({code})']\n" + extra
    )
    return f


def test_cast_of_a_job_that_completes_is_ready_as_completed(rune: Rune, tmp_path: Path) -> None:
    f = _job(tmp_path, "job", 0, "OnFailure")
    r = rune("cast", str(f), *WAIT, timeout=120)
    # Ready while it ran, or completed already: either way the wait ended.
    assert r.returncode == 0 and "ready: job" in r.stdout, r.stdout + r.stderr
    eventually(lambda: '"SERVICE_STATUS_COMPLETED"' in rune("get", "svc", "job", "-o", "json").stdout)
    # Cast again once it has completed (nothing runs any more): the wait ends at once all the same.
    again = rune("cast", str(f), *WAIT, timeout=120)
    assert again.returncode == 0 and "ready: job (completed)" in again.stdout, again.stdout + again.stderr


def test_cast_and_scale_fail_fast_naming_the_instance_that_failed_for_good(rune: Rune, tmp_path: Path) -> None:
    # Never ready (its readiness probe fails), so only its failure can end the wait early.
    unready = "  health:\n    readiness: {type: exec, command: 'false', periodSeconds: 1}\n"
    r = rune("cast", str(_job(tmp_path, "bad", 1, "Never", unready)), *WAIT, timeout=120)
    assert r.returncode == 7, r.stdout + r.stderr  # failed precondition, not 10 (timed out)
    assert "service bad failed: bad-0: Error: exit code 1" in r.stderr, r.stderr
    scaled = rune("scale", "bad", "2", *WAIT, timeout=120)
    assert scaled.returncode == 7, scaled.stdout + scaled.stderr
    assert "scaling bad failed" in scaled.stderr and "Error: exit code 1" in scaled.stderr, scaled.stderr


def test_scale_beyond_the_cap_is_refused_naming_it(rune: Rune, tmp_path: Path) -> None:
    # ``capped`` waits for a dependency that never gets ready: were the cap ever lost, the scale
    # below would be recorded but no instance started.
    f = tmp_path / "capped.yaml"
    f.write_text(
        f"services:\n  - name: gate\n    runtime: process\n    scale: 0\n    process: {{command: {PY}}}\n"
        f"  - name: capped\n    runtime: process\n    dependencies: [gate]\n    process: {{command: {PY}}}\n"
    )
    assert rune("cast", "--detach", str(f)).returncode == 0
    r = rune("scale", "capped", "2000000")
    assert r.returncode == 8, r.stdout + r.stderr  # invalid input
    assert "scale: must be at most 1000 (limits.max_scale), got 2000000" in r.stderr, r.stderr
