"""Verify the dashboard's vendored browser code against the packages published on registry.npmjs.org.

``gateway/dashboard/vendor/manifest.json`` names, for each vendored npm package, its version, the
tarball's URL and its npm ``integrity`` (SRI sha512, as the registry publishes it), and for each
vendored file the path inside the tarball it was copied from and its sha256.

- ``--offline``: every vendored file matches its manifest sha256, and nothing under ``vendor/``
  is missing from the manifest (no network; the test suite runs this).
- default (``make vendor-check``): also download each tarball, check it against the manifest's
  ``integrity`` and the registry's own metadata for that version, and compare every vendored file
  byte for byte with the file in the tarball.

Exit status 0 when everything matches; otherwise 1, with one line per problem.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import io
import json
import sys
import tarfile
import urllib.request
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
VENDOR = ROOT / "gateway" / "dashboard" / "vendor"
MANIFEST = VENDOR / "manifest.json"
REGISTRY = "https://registry.npmjs.org"


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sri_sha512(data: bytes) -> str:
    return "sha512-" + base64.b64encode(hashlib.sha512(data).digest()).decode()


def offline_problems(manifest: dict[str, Any], vendor: Path = VENDOR) -> list[str]:
    """Vendored files against the manifest's sha256; files the manifest does not list."""
    problems: list[str] = []
    listed = {"manifest.json"}
    for pkg in manifest["packages"]:
        for f in pkg["files"]:
            listed.add(f["path"])
            path = vendor / f["path"]
            if not path.is_file():
                problems.append(f"{pkg['name']}@{pkg['version']}: {f['path']} is missing")
            elif sha256(path.read_bytes()) != f["sha256"]:
                problems.append(f"{pkg['name']}@{pkg['version']}: {f['path']} differs from the manifest's sha256")
    for path in sorted(vendor.rglob("*")):
        rel = path.relative_to(vendor).as_posix()
        if path.is_file() and rel not in listed:
            problems.append(f"{rel} is not in the manifest")
    return problems


def _get(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=60) as resp:
        return bytes(resp.read())


def online_problems(manifest: dict[str, Any], vendor: Path = VENDOR) -> list[str]:
    """Each tarball against its integrity (manifest and registry), each vendored file against the tarball."""
    problems: list[str] = []
    for pkg in manifest["packages"]:
        label = f"{pkg['name']}@{pkg['version']}"
        meta = json.loads(_get(f"{REGISTRY}/{pkg['name']}/{pkg['version']}"))
        if meta["dist"]["integrity"] != pkg["integrity"]:
            problems.append(f"{label}: the registry publishes integrity {meta['dist']['integrity']}")
        if meta["dist"]["tarball"] != pkg["tarball"]:
            problems.append(f"{label}: the registry's tarball is {meta['dist']['tarball']}")
        raw = _get(pkg["tarball"])
        if sri_sha512(raw) != pkg["integrity"]:
            problems.append(f"{label}: the downloaded tarball does not match its integrity")
            continue
        with tarfile.open(fileobj=io.BytesIO(raw), mode="r:gz") as tar:
            for f in pkg["files"]:
                member = tar.extractfile(f["from"])
                published = member.read() if member is not None else None
                local = vendor / f["path"]
                if published is None:
                    problems.append(f"{label}: {f['from']} is not in the tarball")
                elif not local.is_file() or local.read_bytes() != published:
                    problems.append(f"{label}: {f['path']} differs from {f['from']} in the published package")
                elif sha256(published) != f["sha256"]:
                    problems.append(f"{label}: the manifest's sha256 of {f['path']} is wrong")
    return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--offline", action="store_true", help="check against the manifest only (no network)")
    args = parser.parse_args(argv)
    manifest = json.loads(MANIFEST.read_text())
    problems = offline_problems(manifest)
    if not args.offline:
        problems += online_problems(manifest)
    for p in problems:
        print(p, file=sys.stderr)
    if not problems:
        names = ", ".join(f"{p['name']}@{p['version']}" for p in manifest["packages"])
        print(f"vendored files match {'the manifest' if args.offline else 'the published packages'}: {names}")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
