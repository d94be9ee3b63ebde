"""The front page a Space shows every visitor: status, how to call the API, a streaming playground.

Plain files served by the app itself (no build step, no CDN), so the page works offline and inside
the Space's iframe. Every URL in the page is relative, because the iframe's origin is the Space's own
host and the page may be served under a path prefix.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import FileResponse, JSONResponse, Response

WEB_DIR = Path(__file__).resolve().parent
STATIC_DIR = WEB_DIR / "static"

# Explicit routes instead of a directory mount: the page is three files, and each gets a fixed
# content type that does not depend on the host's mimetypes table.
ASSETS = {
    "app.js": "text/javascript; charset=utf-8",
    "style.css": "text/css; charset=utf-8",
    "favicon.svg": "image/svg+xml",
}

# The page loads nothing from elsewhere; the policy makes the browser enforce that. No
# frame-ancestors: Hugging Face embeds the page in an iframe on its own site.
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; "
    "base-uri 'none'; form-action 'none'; object-src 'none'"
)
# Deploys change these files in place; revalidating costs one small request.
NO_CACHE = {"Cache-Control": "no-cache"}

JsonIndex = Callable[[Request], Awaitable[dict[str, Any]]]


def wants_json(request: Request) -> bool:
    accept = request.headers.get("accept", "")
    return "application/json" in accept and "text/html" not in accept


def front_page_router(json_index: JsonIndex | None = None) -> APIRouter:
    router = APIRouter(include_in_schema=False)

    @router.get("/", response_model=None)
    async def index(request: Request) -> Response:
        if json_index is not None and wants_json(request):
            return JSONResponse(await json_index(request))
        return FileResponse(
            WEB_DIR / "index.html",
            media_type="text/html; charset=utf-8",
            headers={**NO_CACHE, "Content-Security-Policy": CONTENT_SECURITY_POLICY},
        )

    def asset_route(name: str, media_type: str) -> None:
        async def asset() -> FileResponse:
            return FileResponse(STATIC_DIR / name, media_type=media_type, headers=NO_CACHE)

        router.add_api_route(f"/static/{name}", asset, methods=["GET"], name=f"static-{name}")

    for name, media_type in ASSETS.items():
        asset_route(name, media_type)
    return router


def include_front_page(app: FastAPI, json_index: JsonIndex | None = None) -> None:
    """Serve the front page at ``/`` and its assets under ``/static/``.

    ``json_index``, when given, answers clients that ask for ``application/json`` only (scripts
    that used to read the JSON index), so they keep working.
    """
    app.include_router(front_page_router(json_index))
