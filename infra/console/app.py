"""The console's web app (Starlette): the page, its live data (server-sent events), frames, audit on demand.

Security: everything except ``/health`` (and the login form) needs the login token, given once as ``?token=`` on
the page URL (exchanged for an HttpOnly, SameSite=Strict cookie and redirected away, so it does not stay in the
address bar or history), posted to ``/login``, or sent as ``Authorization: Bearer``. Requests whose Host header
is not the console's own address are refused (DNS rebinding), state-changing requests from another origin are
refused (CSRF), and responses carry a strict Content-Security-Policy. Only redacted frames are ever served.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
from pathlib import Path
from typing import Any, Awaitable, Callable, Iterable, Optional
from urllib.parse import parse_qs

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import (FileResponse, HTMLResponse, JSONResponse, PlainTextResponse, RedirectResponse,
                                 Response, StreamingResponse)
from starlette.routing import Route

from infra.console.audit_job import AuditJob
from infra.console.feed import ConsoleState

logger = logging.getLogger(__name__)

STATIC = Path(__file__).resolve().parent / "static"
COOKIE = "riskmask_console"
OPEN_PATHS = {"/health", "/login"}
SECURITY_HEADERS = [
    (b"content-security-policy", b"default-src 'self'; img-src 'self' blob:; style-src 'self'; script-src 'self'; "
                                 b"connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'"),
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"no-referrer"),
    (b"cache-control", b"no-store"),
]
LOGIN_PAGE = """<!doctype html><html><head><meta charset="utf-8"><title>riskmask console: login</title>
<link rel="stylesheet" href="/login.css"></head><body><main class="login"><h1>riskmask console</h1>
<p>{message}</p><form method="post" action="/login"><label>Login token (printed when the console started)
<input type="password" name="token" autocomplete="off" autofocus></label><button type="submit">Log in</button>
</form></main></body></html>"""

ASGIApp = Callable[[dict, Callable[[], Awaitable[dict]], Callable[[dict], Awaitable[None]]], Awaitable[None]]


class Guard:
    """ASGI middleware: Host check, token check, cross-origin POST check, security headers on every response."""

    def __init__(self, app: ASGIApp, token: str, allowed_hosts: Iterable[str]) -> None:
        self.app, self.token = app, token
        self.allowed_hosts = {h.lower() for h in allowed_hosts}

    def authorised(self, headers: dict[str, str], cookies: str) -> bool:
        auth = headers.get("authorization", "")
        if auth.lower().startswith("bearer ") and hmac.compare_digest(auth[7:].strip().encode(), self.token.encode()):
            return True
        for part in cookies.split(";"):
            name, _, value = part.strip().partition("=")
            if name == COOKIE and hmac.compare_digest(value.encode(), self.token.encode()):
                return True
        return False

    async def __call__(self, scope: dict, receive: Callable[[], Awaitable[dict]],
                       send: Callable[[dict], Awaitable[None]]) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_secure(message: dict) -> None:
            if message["type"] == "http.response.start":
                names = {k.lower() for k, _ in message.get("headers", [])}
                message = dict(message)
                message["headers"] = list(message.get("headers", [])) + [
                    (k, v) for k, v in SECURITY_HEADERS if k not in names]
            await send(message)

        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        path, method = scope.get("path", "/"), scope.get("method", "GET")
        if headers.get("host", "").lower() not in self.allowed_hosts:
            await PlainTextResponse("unknown Host header: use the console's own address", 400)(scope, receive,
                                                                                               send_secure)
            return
        if method not in ("GET", "HEAD") and "origin" in headers:
            if headers["origin"].split("://", 1)[-1].lower() not in self.allowed_hosts:
                await PlainTextResponse("cross-origin request refused", 403)(scope, receive, send_secure)
                return
        if path in OPEN_PATHS or path == "/login.css":
            await self.app(scope, receive, send_secure)
            return
        if path == "/" and method == "GET":
            query = parse_qs(scope.get("query_string", b"").decode("latin-1"))
            given = (query.get("token") or [""])[0]
            if given:
                if hmac.compare_digest(given.encode(), self.token.encode()):
                    await _login_redirect(self.token)(scope, receive, send_secure)
                else:
                    await HTMLResponse(LOGIN_PAGE.format(message="That token is not valid."), 401)(
                        scope, receive, send_secure)
                return
        if not self.authorised(headers, headers.get("cookie", "")):
            if path == "/" and method == "GET":
                resp: Response = HTMLResponse(LOGIN_PAGE.format(message="Log in with the console's token."), 401)
            else:
                resp = JSONResponse({"error": "login token required"}, 401,
                                    headers={"www-authenticate": 'Bearer realm="riskmask console"'})
            await resp(scope, receive, send_secure)
            return
        await self.app(scope, receive, send_secure)


def _login_redirect(token: str) -> Response:
    resp = RedirectResponse("/", 303)
    resp.set_cookie(COOKIE, token, httponly=True, samesite="strict", path="/")
    return resp


def build_app(state: ConsoleState, token: str, audit: Optional[AuditJob], allowed_hosts: Iterable[str],
              info: dict[str, Any], events_every_s: float = 1.0) -> ASGIApp:
    """The console app around ``state``; ``info`` describes the sources (topics, ledger folder) for the page."""

    async def health(request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def login(request: Request) -> Response:
        if request.method == "GET":
            return HTMLResponse(LOGIN_PAGE.format(message="Log in with the console's token."))
        body = (await request.body())[:4096].decode("latin-1")
        given = (parse_qs(body).get("token") or [""])[0]
        if given and hmac.compare_digest(given.encode(), token.encode()):
            return _login_redirect(token)
        return HTMLResponse(LOGIN_PAGE.format(message="That token is not valid."), 401)

    async def page(request: Request) -> Response:
        return FileResponse(STATIC / "index.html", media_type="text/html")

    async def static(request: Request) -> Response:
        name = request.path_params["name"]
        files = {"console.js": "text/javascript", "console.css": "text/css", "login.css": "text/css"}
        if name not in files:
            return PlainTextResponse("not found", 404)
        return FileResponse(STATIC / name, media_type=files[name])

    async def api_state(request: Request) -> Response:
        return JSONResponse({**state.snapshot(), "sources": info})

    async def frame(request: Request) -> Response:
        camera = request.path_params["camera"]
        if len(camera) > 200:
            return JSONResponse({"error": "camera id too long"}, 400)
        jpeg = state.jpeg(camera)
        if jpeg is None:
            return JSONResponse({"error": f"no redacted frame from camera {camera!r} yet"}, 404)
        return Response(jpeg, media_type="image/jpeg")

    async def events(request: Request) -> Response:
        async def stream():
            yield "retry: 2000\n\n"
            while True:
                payload = json.dumps({**state.snapshot(), "sources": info}, separators=(",", ":"))
                yield f"event: state\ndata: {payload}\n\n"
                for _ in range(max(1, int(events_every_s / 0.1))):
                    if await request.is_disconnected():
                        return
                    await asyncio.sleep(0.1)

        return StreamingResponse(stream(), media_type="text/event-stream",
                                 headers={"x-accel-buffering": "no"})

    async def run_audit(request: Request) -> Response:
        if audit is None or not audit.available:
            return JSONResponse({"error": "no ledger configured (--ledger-dir): audit unavailable"}, 409)
        if not audit.start():
            return JSONResponse({"error": "an audit is already running"}, 409)
        return JSONResponse({"state": "running"}, 202)

    async def audit_result(request: Request) -> Response:
        return JSONResponse(state.snapshot()["audit"])

    routes = [
        Route("/health", health, methods=["GET"]),
        Route("/login", login, methods=["GET", "POST"]),
        Route("/", page, methods=["GET"]),
        Route("/static/{name}", static, methods=["GET"]),
        Route("/login.css", lambda r: FileResponse(STATIC / "login.css", media_type="text/css"), methods=["GET"]),
        Route("/api/state", api_state, methods=["GET"]),
        Route("/api/events", events, methods=["GET"]),
        Route("/api/frame/{camera:path}", frame, methods=["GET"]),
        Route("/api/audit", run_audit, methods=["POST"]),
        Route("/api/audit", audit_result, methods=["GET"]),
    ]
    app = Starlette(routes=routes)
    return Guard(app, token, allowed_hosts)
