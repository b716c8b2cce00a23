"""``runed validate`` checks the store too: reachable, and at a schema version this runed can start on."""

from __future__ import annotations

from pathlib import Path

import psycopg

from runed.store.open import open_url
from tests.harness import run_cli
from tests.pgsupport import free_port, pg_database, pg_url  # noqa: F401  (fixtures)


def _runefile(tmp_path: Path) -> Path:
    f = tmp_path / "runefile.yaml"
    f.write_text(f"data_dir: {tmp_path / 'data'}\n")
    return f


def test_validate_fails_naming_an_unreachable_store(tmp_path: Path) -> None:
    port = free_port()
    url = f"postgresql://runed:hunter2@127.0.0.1:{port}/runed"
    r = run_cli(["validate", "--config", str(_runefile(tmp_path)), "--store-url", url])
    assert r.returncode == 1, r.stdout + r.stderr
    assert f"store postgresql://runed@127.0.0.1:{port}/runed is not reachable" in r.stderr, r.stderr
    assert "hunter2" not in r.stdout + r.stderr
    assert "Traceback" not in r.stderr


def test_validate_reports_the_schema_version(tmp_path: Path, pg_url: str) -> None:  # noqa: F811
    runefile = str(_runefile(tmp_path))
    r = run_cli(["validate", "--config", runefile, "--store-url", pg_url])
    assert r.returncode == 0, r.stdout + r.stderr
    assert "no schema yet (created on first start)" in r.stdout, r.stdout

    open_url(pg_url).close()  # what a start does: migrate
    r = run_cli(["validate", "--config", runefile, "--store-url", pg_url])
    assert r.returncode == 0, r.stdout + r.stderr
    assert "(current)" in r.stdout, r.stdout

    # A newer runed migrated it: this one must not start on it.
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute("INSERT INTO schema_migrations (version, name, applied_at) VALUES (999, 'future', 0)")
    r = run_cli(["validate", "--config", runefile, "--store-url", pg_url])
    assert r.returncode == 1, r.stdout + r.stderr
    assert "schema version 999, newer than this runed knows" in r.stderr, r.stderr
