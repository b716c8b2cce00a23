"""The CLI without a server: help, usage errors, bad cast files, unreachable runed, fast start."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.e2e.rune import Rune

BAD_YAML = "service:\n  name: web\n  image: [unclosed\n"
UNKNOWN_KEY = "service:\n  name: web\n  image: nginx\n  replicas: 3\n"


def test_help_lists_commands_and_exit_codes(offline_rune: Rune) -> None:
    r = offline_rune("--help")
    assert r.returncode == 0
    for word in ("cast", "get", "logs", "exec", "rollback", "admin", "Exit codes", "not found"):
        assert word in r.stdout


def test_unknown_flag_is_a_usage_error(offline_rune: Rune) -> None:
    r = offline_rune("get", "services", "--bogus")
    assert r.returncode == 2
    assert "No such option" in r.stderr and "Traceback" not in r.stderr


def test_unknown_type_is_a_usage_error(offline_rune: Rune) -> None:
    r = offline_rune("get", "gizmos")
    assert r.returncode == 2
    assert "unknown type 'gizmos'" in r.stderr


def test_unreachable_runed_says_how_to_start_it(offline_rune: Rune) -> None:
    r = offline_rune("get", "services")
    assert r.returncode == 9
    assert r.stderr.strip().startswith("error: cannot reach runed at 127.0.0.1:1")
    assert "runed" in r.stderr and "Traceback" not in r.stderr


def test_bad_yaml_names_file_and_line(offline_rune: Rune, tmp_path: Path) -> None:
    f = tmp_path / "bad.yaml"
    f.write_text(BAD_YAML)
    r = offline_rune("cast", str(f))
    assert r.returncode == 8
    assert f"{f}:4: not valid YAML" in r.stderr or f"{f}:3: not valid YAML" in r.stderr
    assert "Traceback" not in r.stderr


def test_unknown_key_rejected_with_line_before_contacting_runed(offline_rune: Rune, tmp_path: Path) -> None:
    f = tmp_path / "svc.yaml"
    f.write_text(UNKNOWN_KEY)
    r = offline_rune("cast", str(f))
    assert r.returncode == 8
    assert f"{f}:4: unknown field 'replicas' in service" in r.stderr


def test_lint_of_a_file_with_nothing_to_cast_warns_as_cast_refuses(offline_rune: Rune, tmp_path: Path) -> None:
    f = tmp_path / "empty.yaml"
    f.write_text("# only a comment\n")
    cast = offline_rune("cast", str(f))
    assert cast.returncode == 8 and "nothing to cast" in cast.stderr
    lint = offline_rune("lint", str(f))
    assert lint.returncode == 0
    assert "warning: nothing to cast: no service, secret or configmap found" in lint.stderr
    strict = offline_rune("lint", "--strict", str(f))
    assert strict.returncode == 8 and "nothing to cast" in strict.stderr


def test_lint_reports_cycles_and_json(offline_rune: Rune, tmp_path: Path) -> None:
    f = tmp_path / "cycle.yaml"
    f.write_text("services:\n  - {name: a, image: x, dependencies: [b]}\n  - {name: b, image: x, dependencies: [a]}\n")
    r = offline_rune("lint", "--format", "json", str(f))
    assert r.returncode == 8
    assert '"ok": false' in r.stdout and "dependency cycle" in r.stdout
    good = tmp_path / "good.yaml"
    good.write_text("service: {name: a, image: x}\n")
    ok = offline_rune("lint", str(good))
    assert ok.returncode == 0, ok.stderr
    assert "ok: 1 objects" in ok.stdout


def test_runeset_render_with_values_and_set(offline_rune: Rune, tmp_path: Path) -> None:
    rs = tmp_path / "shop"
    (rs / "casts").mkdir(parents=True)
    (rs / "values").mkdir()
    (rs / "runeset.yaml").write_text("name: shop\nversion: 1.0.0\nnamespace: shop\n")
    (rs / "values" / "values.yaml").write_text("web: {scale: 1, image: nginx}\n")
    (rs / "casts" / "web.yaml").write_text(
        "service:\n  name: web\n  image: {{ .Values.web.image }}\n  scale: {{ .Values.web.scale }}\n"
    )
    extra = tmp_path / "prod.yaml"
    extra.write_text("web: {scale: 4}\n")
    r = offline_rune("cast", str(rs), "--values", str(extra), "--set", "web.image=caddy", "--render")
    assert r.returncode == 0, r.stderr
    assert "image: caddy" in r.stdout and "scale: 4" in r.stdout
    missing = offline_rune("cast", str(rs), "--set", "web=null", "--render")
    assert missing.returncode == 8 and "no value for web.image" in missing.stderr
    packed = offline_rune("pack", str(rs), "--sha256")
    assert packed.returncode == 0 and "sha256" in packed.stdout
    archive = tmp_path / "shop.runeset.tgz"
    from_archive = offline_rune("cast", str(archive), "--set", "web.image=caddy", "--render")
    assert from_archive.returncode == 0 and "image: caddy" in from_archive.stdout and "scale: 1" in from_archive.stdout


def test_runeset_archive_cannot_escape(offline_rune: Rune, tmp_path: Path) -> None:
    import io
    import tarfile

    archive = tmp_path / "evil.runeset.tgz"
    with tarfile.open(archive, "w:gz") as tar:
        for name, body in (("runeset.yaml", b"name: evil\n"), ("../escaped.yaml", b"x: 1\n")):
            info = tarfile.TarInfo(name)
            info.size = len(body)
            tar.addfile(info, io.BytesIO(body))
    r = offline_rune("cast", str(archive), "--render")
    assert r.returncode == 8 and "cannot unpack runeset" in r.stderr
    assert not (tmp_path.parent / "escaped.yaml").exists()


def test_contexts_file_is_private(offline_rune: Rune) -> None:
    r = offline_rune("config", "set-context", "lab", "--server", "http://lab.example", "--token", "t0k3n")
    assert r.returncode == 0, r.stderr
    cfg = offline_rune.config_path
    assert cfg.stat().st_mode & 0o777 == 0o600
    assert cfg.parent.stat().st_mode & 0o777 == 0o700
    view = offline_rune("config", "view")
    assert "lab.example:7863" in view.stdout and "t0k3n" not in view.stdout
    offline_rune("config", "set-context", "other", "--server", "o:1")
    assert offline_rune("config", "use-context", "other").returncode == 0
    listing = offline_rune("config", "list-contexts").stdout
    assert [ln.split()[0] for ln in listing.splitlines() if " other " in ln] == ["*"]
    assert offline_rune("config", "delete-context", "lab").returncode == 0
    assert offline_rune("config", "use-context", "lab").returncode == 3


def test_help_does_not_import_grpc_or_rich() -> None:
    code = (
        "import sys\nfrom rune.cli.main import cli\n"
        + "print(sorted(m for m in ('grpc','rich','yaml') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
    from click.testing import CliRunner

    from rune.cli.main import cli

    res = CliRunner().invoke(cli, ["--help"])
    assert res.exit_code == 0


def test_shell_completion(offline_rune: Rune) -> None:
    script = offline_rune("completion", "bash")
    assert script.returncode == 0 and "_RUNE_COMPLETE" in script.stdout
    words = offline_rune("get", env={"_RUNE_COMPLETE": "bash_complete", "COMP_WORDS": "rune ro", "COMP_CWORD": "1"})
    assert "rollback" in words.stdout


def test_get_services_imports_no_display_or_json_machinery(offline_rune: Rune) -> None:
    code = (
        "import atexit, sys\n"
        "sys.argv = ['rune', 'get', 'services']\n"
        "atexit.register(lambda: print('LOADED', sorted(sys.modules), file=sys.stderr))\n"
        "from rune.cli.main import main\n"
        "main()\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=offline_rune.env(), timeout=60)
    assert r.returncode == 9  # nothing listens: the call was made, so grpc was loaded
    loaded = r.stderr.split("LOADED", 1)[1]
    assert "'grpc'" in loaded and "'rune.api.service_pb2'" in loaded
    for unwanted in ("rich", "google.protobuf.json_format", "rune.api.admin_pb2", "rune.cli.commands.cast"):
        assert f"'{unwanted}'" not in loaded, unwanted


def test_an_object_declared_twice_is_an_error_before_contacting_runed(offline_rune: Rune, tmp_path: Path) -> None:
    one, two = tmp_path / "one.yaml", tmp_path / "two.yaml"
    one.write_text("services:\n  - name: web\n    image: x\n  - name: web\n    image: y\n")
    # The same name in another namespace, or of another kind, is another object.
    two.write_text("service: {name: web, namespace: other, image: x}\nsecret: {name: web, data: {k: v}}\n")
    r = offline_rune("cast", str(one), str(two))
    assert r.returncode == 8, r.stderr
    assert f"{one}:4: service 'web' is declared again (first at {one}:2)" in r.stderr
    assert str(two) not in r.stderr
    ok = offline_rune("lint", str(two))
    assert ok.returncode == 0, ok.stderr
    # Across the files read together: the later one is named, with where the first is.
    again = tmp_path / "again.yaml"
    again.write_text("secret:\n  name: web\n  data: {k: w}\n")
    r = offline_rune("lint", "--context", "0", str(two), str(again))
    assert r.returncode == 8 and f"{again}:2: secret 'web' is declared again (first at {two}:2)" in r.stderr, r.stderr
