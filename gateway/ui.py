"""The built-in web dashboard: static files from ``rune/gateway/dashboard`` served under ``/ui/``.

The dashboard is one more client of the public REST API (it holds no server-side state and calls
nothing but ``/v1``, the SSE streams and the exec WebSocket), so serving it is only static files
with strict headers. The Content-Security-Policy allows scripts from this origin only (no inline
script, no eval); inline *styles* are allowed because the terminal widget (xterm.js) writes its
computed cell size and colours into ``<style>`` elements at run time. ``connect-src 'self'``
covers the API calls and the same-origin WebSocket. The token never travels in a URL: the page
keeps it in ``sessionStorage`` and sends it as ``Authorization: Bearer`` (or, for the WebSocket,
as the ``bearer.<token>`` subprotocol), so no cookie and no CSRF surface exist.
"""

from __future__ import annotations

from pathlib import Path

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

PREFIX = "/ui"
DASHBOARD_DIR = Path(__file__).resolve().parent / "dashboard"
CSP = "; ".join(
    (
        "default-src 'none'",
        "script-src 'self'",
        "style-src 'self' 'unsafe-inline'",
        "img-src 'self' data:",
        "font-src 'self'",
        "connect-src 'self'",
        "base-uri 'none'",
        "form-action 'none'",
        "frame-ancestors 'none'",
    )
)
HEADERS: list[tuple[bytes, bytes]] = [
    (b"content-security-policy", CSP.encode()),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    (b"x-frame-options", b"DENY"),
    # Revalidate (ETag) on every load: an upgraded runed serves its own dashboard at once.
    (b"cache-control", b"no-cache"),
]
_HEADER_NAMES = {name for name, _ in HEADERS}


class SecureHeaders:
    """Adds the dashboard's security headers to every response of the wrapped app."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                kept = [(k, v) for k, v in message.get("headers", ()) if k.lower() not in _HEADER_NAMES]
                message = {**message, "headers": kept + HEADERS}
            await send(message)

        await self.app(scope, receive, send_with_headers)


async def _to_index(request: Request) -> Response:
    return RedirectResponse(PREFIX + "/", status_code=308)


async def _home(request: Request) -> Response:
    """The REST port's root: where a browser pointed at ``http://host:7861`` finds something (temporary:
    nothing stops ``/`` from serving more one day)."""
    return RedirectResponse(PREFIX + "/", status_code=307)


def routes(directory: Path = DASHBOARD_DIR) -> list[BaseRoute]:
    """``/`` and ``/ui`` (redirects) and ``/ui/...`` (the files, ``index.html`` for the directory itself)."""
    files = StaticFiles(directory=directory, html=True)
    return [
        Route("/", _home, methods=["GET", "HEAD"]),
        Route(PREFIX, _to_index, methods=["GET", "HEAD"]),
        Mount(PREFIX, app=SecureHeaders(files), name="dashboard"),
    ]
