"""TestRegistry's reach: one request to a registry's /v2/ API (or an image manifest) with its credentials.

Token-service registries (Docker Hub, GHCR) answer 401 with a Bearer challenge: the basic
credentials are traded for a token once, as docker does.
"""

from __future__ import annotations

import base64
import re
from collections.abc import Mapping

import httpx

TEST_TIMEOUT_SECONDS = 5.0
_LOOPBACK = ("localhost", "127.0.0.1", "[::1]")


async def reach(host: str, image_ref: str, creds: Mapping[str, str]) -> tuple[bool, str]:
    """(ok, message) of one probe of ``host``; the message names the host, never a credential."""
    path = "/v2/"
    if image_ref:
        repo, tag = image_ref, "latest"
        if "@" in repo:
            repo, tag = repo.split("@", 1)
        elif ":" in repo.rsplit("/", 1)[-1]:
            repo, tag = repo.rsplit(":", 1)
        path = f"/v2/{repo}/manifests/{tag}"
    try:
        ok, message = await _probe(_base_url(host), path, creds)
    except (httpx.HTTPError, httpx.InvalidURL) as e:
        # httpx messages name the URL (which never carries credentials) and the failure.
        return False, f"{host}: {type(e).__name__}: {e}"
    return ok, f"{host}: {message}"


def _base_url(host: str) -> str:
    """Loopback registries speak plain HTTP (the docker 'insecure registry' convention)."""
    bare = host.rsplit(":", 1)[0] if not host.endswith("]") else host
    return f"{'http' if bare in _LOOPBACK else 'https'}://{host}"


def _auth_header(creds: Mapping[str, str]) -> dict[str, str]:
    if creds.get("token"):
        return {"Authorization": f"Bearer {creds['token']}"}
    if creds.get("username") and creds.get("password"):
        raw = f"{creds['username']}:{creds['password']}".encode()
        return {"Authorization": f"Basic {base64.b64encode(raw).decode()}"}
    return {}


async def _probe(base: str, path: str, creds: Mapping[str, str]) -> tuple[bool, str]:
    headers = {
        "Accept": "application/vnd.oci.image.index.v1+json, application/vnd.docker.distribution.manifest.v2+json",
        **_auth_header(creds),
    }
    async with httpx.AsyncClient(timeout=TEST_TIMEOUT_SECONDS, follow_redirects=True) as client:
        resp = await client.request("HEAD" if "/manifests/" in path else "GET", base + path, headers=headers)
        challenge = resp.headers.get("www-authenticate", "")
        if (
            resp.status_code == 401
            and challenge.lower().startswith("bearer ")
            and "Basic" in headers.get("Authorization", "Basic")
        ):
            # Token-service registries (Docker Hub, GHCR): trade the basic credentials for a token.
            params = dict(re.findall(r'(\w+)="([^"]*)"', challenge))
            realm = params.pop("realm", "")
            if realm:
                basic = {k: v for k, v in headers.items() if k == "Authorization"}
                tok = await client.get(realm, params=params, headers=basic)
                if tok.status_code == 200:
                    token = tok.json().get("token") or tok.json().get("access_token", "")
                    headers["Authorization"] = f"Bearer {token}"
                    resp = await client.request(
                        "HEAD" if "/manifests/" in path else "GET", base + path, headers=headers
                    )
    if resp.status_code == 200:
        return True, f"{path} answered 200"
    return False, f"{path} answered HTTP {resp.status_code}"
