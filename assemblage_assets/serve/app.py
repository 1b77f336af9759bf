"""The ASGI app of ``assemblage serve``: the API, the browse page, thumbnails and previews.

Middleware order (outermost first): errors never leak a traceback, the per-client rate limit,
the token check, CORS only when ``SERVE_CORS_ORIGINS`` is set.
"""


import logging
import uuid
from pathlib import Path
from typing import Annotated, Any, Literal

from fastapi import FastAPI, Form, Request
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException

from assemblage_assets.serve import security
from assemblage_assets.serve.api import build_router
from assemblage_assets.serve.config import ServeConfig
from assemblage_assets.serve.media import MediaLocator, MediaUnavailable, Redirect
from assemblage_assets.serve.service import BadRequest, NotFound, SearchService

log = logging.getLogger("assemblage.serve")
PAGE_DIR = Path(__file__).parent / "page"
PUBLIC_PATHS = ("/login", "/static/", "/healthz")
LOGIN_FORM = """<!doctype html><html lang="en"><head><meta charset="utf-8"><title>Assemblage: sign in</title>
<link rel="stylesheet" href="/static/style.css"></head><body class="login"><form method="post" action="/login">
<h1>Assemblage</h1><p>This catalogue needs its access token (ASSEMBLAGE_API_TOKEN).</p>
<input type="password" name="token" autocomplete="current-password" placeholder="token" autofocus required>
<input type="hidden" name="next" value="{next}"><button type="submit">Sign in</button>{error}</form></body></html>"""


def create_app(service: SearchService, config: ServeConfig) -> FastAPI:
    app = FastAPI(title="Assemblage search", version="1", docs_url=None, redoc_url=None,
                  description="Search and browse the image catalogue: text (CLIP fused with captions and tags), "
                              "more like this, upload search, filters, details, shards and duplicates.")
    app.state.service = service
    app.state.config = config

    app.add_middleware(Guard, token=config.token, limiter=security.RateLimiter(config.rate_limit_per_minute))

    if config.cors_origins:
        app.add_middleware(CORSMiddleware, allow_origins=list(config.cors_origins), allow_methods=["GET", "POST"],
                           allow_headers=["Authorization", "Content-Type"])

    @app.exception_handler(BadRequest)
    async def bad_request(request: Request, exc: BadRequest) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, exc.status, headers=exc.headers)  # 429: Retry-After

    @app.exception_handler(NotFound)
    async def not_found(request: Request, exc: NotFound) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, 404)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        # FastAPI's own shape, minus the echoed input (it may be huge or binary)
        return JSONResponse({"detail": [{k: v for k, v in e.items() if k in ("type", "loc", "msg")}
                                        for e in exc.errors()]}, 422)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return JSONResponse({"detail": str(exc.detail)}, exc.status_code, headers=exc.headers)

    app.include_router(build_router(service, config))
    locator = MediaLocator(config)
    app.mount("/static", StaticFiles(directory=PAGE_DIR), name="static")

    @app.get("/healthz", include_in_schema=False)
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/", include_in_schema=False)
    @app.get("/shard/{key}", include_in_schema=False)
    @app.get("/image/{image_id}", include_in_schema=False)
    @app.get("/duplicates", include_in_schema=False)
    @app.get("/shards", include_in_schema=False)
    def page() -> FileResponse:
        return FileResponse(PAGE_DIR / "index.html", media_type="text/html", headers={"Cache-Control": "no-cache"})

    @app.post("/login", include_in_schema=False)
    def login(token: Annotated[str, Form(max_length=512)] = "", next: Annotated[str, Form(max_length=512)] = "/") -> Response:
        target = next if next.startswith("/") and not next.startswith("//") else "/"
        if not config.token or not security.secrets_equal(token, config.token):
            return HTMLResponse(LOGIN_FORM.format(next=_html(target), error="<p class=error>Wrong token.</p>"), 401)
        response = RedirectResponse(target, 303)
        response.set_cookie(security.SESSION_COOKIE, security.session_value(config.token), httponly=True,
                            samesite="strict", secure=False, max_age=30 * 24 * 3600)
        return response

    @app.get("/media/{image_id}/{kind}", include_in_schema=False)
    def media(image_id: str, kind: Literal["thumbnail", "preview"]) -> Response:
        try:
            image_id = str(uuid.UUID(image_id))
        except ValueError:
            return JSONResponse({"detail": "not an image id"}, 400)
        try:
            found = locator.locate(service.media(image_id), kind)
        except MediaUnavailable as exc:
            return JSONResponse({"detail": str(exc)}, 503)
        if found is None:
            return JSONResponse({"detail": f"no {kind} stored for {image_id}"}, 404)
        if isinstance(found, Redirect):
            headers = {"Cache-Control": found.cache_control} if found.cache_control else None
            return RedirectResponse(found.url, 307, headers=headers)
        return FileResponse(found.path, media_type=found.media_type, headers={"Cache-Control": found.cache_control})

    return app


class Guard:
    """Rate limit, token check and the last word on errors, as plain ASGI middleware (Starlette's
    ``BaseHTTPMiddleware`` costs a task and a stream per request)."""

    def __init__(self, app: Any, token: str, limiter: security.RateLimiter) -> None:
        self.app, self.token, self.limiter = app, token, limiter

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request = Request(scope)
        path = request.url.path
        if not path.startswith("/static/"):
            wait = self.limiter.acquire(request.client.host if request.client else "?")
            if wait:
                await JSONResponse({"detail": "rate limited"}, 429, headers={"Retry-After": str(int(wait))})(
                    scope, receive, send)
                return
        if not path.startswith(PUBLIC_PATHS) and not security.authorized(request, self.token):
            if path.startswith(("/api/", "/media/", "/openapi.json")):
                reply: Response = JSONResponse({"detail": "token required"}, 401, headers={"WWW-Authenticate": "Bearer"})
            else:
                reply = HTMLResponse(LOGIN_FORM.format(next=_html(path), error=""), 401)
            await reply(scope, receive, send)
            return
        started = False

        async def tracking_send(message: dict) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, tracking_send)
        except Exception:  # noqa: BLE001 - the client gets no traceback; the log has it
            log.exception("unhandled error on %s %s", scope.get("method"), path)
            if not started:
                await JSONResponse({"detail": "internal error (see the server log)"}, 500)(scope, receive, send)


def _html(text: str) -> str:
    return text.replace("&", "&amp;").replace('"', "&quot;").replace("<", "&lt;").replace(">", "&gt;")
