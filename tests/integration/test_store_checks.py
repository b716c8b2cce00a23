"""``runed validate`` checks the store too: reachable, at a schema version this runed can start on, same keys."""

from __future__ import annotations

from pathlib import Path

import psycopg

from runed.auth import keycheck
from runed.auth.identity import load_server_key
from runed.core.config import load
from runed.secrets.crypto import SecretCrypto
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


def _host_keys(data_dir: Path) -> keycheck.HostKeys:
    """Create a host's keys in ``data_dir`` (as a first start does) and describe them."""
    cfg = load({"data_dir": str(data_dir)}, env={})
    crypto = SecretCrypto(cfg)
    kid = crypto.load()
    return keycheck.HostKeys(load_server_key(cfg.data_path), kid, cfg.data_path, str(crypto.path))


def test_validate_compares_this_hosts_keys_with_the_store(tmp_path: Path, pg_url: str) -> None:  # noqa: F811
    first = _host_keys(tmp_path / "first")
    store = open_url(pg_url)
    try:
        keycheck.verify(store, first)  # what the first host's start records
    finally:
        store.close()

    def validate(data_dir: Path) -> tuple[int, str]:
        f = tmp_path / f"{data_dir.name}.yaml"
        f.write_text(f"data_dir: {data_dir}\n")
        r = run_cli(["validate", "--config", str(f), "--store-url", pg_url])
        return r.returncode, r.stdout + r.stderr

    code, out = validate(tmp_path / "first")
    assert code == 0, out
    _host_keys(tmp_path / "other")
    code, out = validate(tmp_path / "other")
    assert code == 1, out
    assert "keys do not match the store's" in out and "token HMAC key" in out and "secrets KEK" in out, out
    code, out = validate(tmp_path / "new")
    assert code == 1, out
    assert f"{tmp_path / 'new' / 'auth.key'}" in out and "missing" in out, out
    assert not (tmp_path / "new" / "auth.key").exists()  # validate created nothing
