"""A small, strict asyncio HTTP/1.1 server for the ledger API (no third-party web framework).

It does just what the API needs: request line + headers (bounded sizes), ``Content-Length`` bodies (bounded,
413 when too large, chunked uploads refused with 411), keep-alive, a routing table with typed path
parameters, and JSON responses. Every failure a client can cause is answered 4xx with ``{"error": reason}``;
an unexpected handler exception is logged and answered 500 without internals.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable, Optional
from urllib.parse import parse_qsl, unquote, urlsplit

logger = logging.getLogger(__name__)

MAX_HEADER_BYTES = 16 * 1024
MAX_HEADERS = 64
HEADER_TIMEOUT_S = 15.0
BODY_TIMEOUT_S = 30.0
IDLE_TIMEOUT_S = 120.0

REASONS = {200: "OK", 202: "Accepted", 400: "Bad Request", 401: "Unauthorized", 403: "Forbidden",
           404: "Not Found", 405: "Method Not Allowed", 408: "Request Timeout", 409: "Conflict",
           411: "Length Required", 413: "Payload Too Large", 414: "URI Too Long",
           415: "Unsupported Media Type", 429: "Too Many Requests", 431: "Request Header Fields Too Large",
           500: "Internal Server Error", 501: "Not Implemented", 503: "Service Unavailable",
           505: "HTTP Version Not Supported"}


class HttpError(Exception):
    """Raised by handlers (or the server) to answer ``status`` with ``{"error": reason}``."""

    def __init__(self, status: int, reason: str, close: bool = False) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason
        self.close = close


@dataclass
class Request:
    """One parsed request. ``target`` is the raw request target (path + query) exactly as sent."""

    method: str
    target: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]  # lower-case names
    body: bytes
    params: dict[str, Any] = field(default_factory=dict)
    context: dict[str, Any] = field(default_factory=dict)  # e.g. the authenticated client

    def json(self) -> Any:
        """The body parsed as JSON (400 when it is not)."""
        if not self.body:
            raise HttpError(400, "request body must be a JSON document")
        try:
            return json.loads(self.body)
        except (ValueError, UnicodeDecodeError) as exc:
            raise HttpError(400, f"request body is not valid JSON: {exc}") from None


@dataclass
class Response:
    status: int = 200
    body: bytes = b""
    content_type: str = "application/json"
    headers: dict[str, str] = field(default_factory=dict)

    @classmethod
    def json(cls, obj: Any, status: int = 200) -> "Response":
        return cls(status, json.dumps(obj, separators=(",", ":")).encode("utf-8"))


Handler = Callable[[Request], Awaitable[Response]]
Middleware = Callable[[Request, "Route"], Awaitable[None]]

_PARAM = re.compile(r"\{([a-z_][a-z0-9_]*)(?::(int|hex|str))?\}")
_CONVERT = {
    "int": (r"(\d{1,18})", int),
    "hex": (r"([0-9a-fA-F]{1,128})", str.lower),
    "str": (r"([^/]{1,256})", str),
}


@dataclass
class Route:
    """One endpoint: method + path template (``/v1/blocks/{height:int}``) -> handler, with the roles allowed."""

    method: str
    template: str
    handler: Handler
    roles: frozenset[str]
    name: str = ""
    max_body: Optional[int] = None
    regex: re.Pattern = field(init=False)
    converters: list[tuple[str, Callable[[str], Any]]] = field(init=False)

    def __post_init__(self) -> None:
        self.converters = []
        pattern, pos = "^", 0
        for m in _PARAM.finditer(self.template):
            pattern += re.escape(self.template[pos:m.start()])
            kind = m.group(2) or "str"
            rx, conv = _CONVERT[kind]
            pattern += rx
            self.converters.append((m.group(1), conv))
            pos = m.end()
        pattern += re.escape(self.template[pos:]) + "$"
        self.regex = re.compile(pattern)

    def match(self, path: str) -> Optional[dict[str, Any]]:
        m = self.regex.match(path)
        if not m:
            return None
        return {name: conv(unquote(v)) for (name, conv), v in zip(self.converters, m.groups())}


class Router:
    """The endpoint table. Other modules add endpoints with :meth:`add`."""

    def __init__(self) -> None:
        self.routes: list[Route] = []

    def add(self, method: str, template: str, handler: Handler, roles: frozenset[str] | set[str] | tuple,
            name: str = "", max_body: Optional[int] = None) -> Route:
        route = Route(method.upper(), template, handler, frozenset(roles), name or template, max_body)
        for r in self.routes:
            if r.method == route.method and r.template == route.template:
                raise ValueError(f"route {route.method} {route.template} is already registered")
        self.routes.append(route)
        return route

    def resolve(self, method: str, path: str) -> tuple[Route, dict[str, Any]]:
        allowed = []
        for r in self.routes:
            params = r.match(path)
            if params is None:
                continue
            if r.method == method:
                return r, params
            allowed.append(r.method)
        if allowed:
            raise HttpError(405, f"method {method} not allowed on {path} (allowed: {', '.join(sorted(allowed))})")
        raise HttpError(404, f"no such endpoint: {path}")


class HttpServer:
    """Serve a :class:`Router` on a TCP address. ``before`` runs for every routed request (authentication)."""

    def __init__(self, router: Router, max_body: int, before: Optional[Middleware] = None) -> None:
        self.router = router
        self.max_body = max_body
        self.before = before
        self._server: Optional[asyncio.base_events.Server] = None
        self._conns: set[asyncio.Task] = set()

    async def start(self, host: str, port: int) -> int:
        self._server = await asyncio.start_server(self._serve, host, port, limit=MAX_HEADER_BYTES + 1024,
                                                  reuse_address=True, backlog=512)
        return self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            for t in list(self._conns):
                t.cancel()
            try:
                await asyncio.wait_for(self._server.wait_closed(), 2.0)
            except (asyncio.TimeoutError, Exception):
                pass
            self._server = None

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._conns.add(task)
        try:
            keep = True
            first = True
            while keep:
                try:
                    keep = await self._one(reader, writer, first)
                except (ConnectionError, asyncio.IncompleteReadError):
                    break
                first = False
        except asyncio.CancelledError:
            pass
        finally:
            if task is not None:
                self._conns.discard(task)
            try:
                writer.close()
            except Exception:
                pass

    async def _one(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, first: bool) -> bool:
        """Handle one request; returns whether the connection stays open."""
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"),
                                          HEADER_TIMEOUT_S if first else IDLE_TIMEOUT_S)
        except asyncio.LimitOverrunError:
            await self._send(writer, Response.json({"error": "request headers too large"}, 431), close=True)
            return False
        except asyncio.IncompleteReadError as exc:
            if exc.partial.strip():
                await self._send(writer, Response.json({"error": "incomplete request"}, 400), close=True)
            return False
        except asyncio.TimeoutError:
            return False
        try:
            req, close = await self._parse(head, reader)
        except HttpError as exc:
            await self._send(writer, Response.json({"error": exc.reason}, exc.status), close=True)
            if exc.status == 413:
                await self._discard(reader)
            return False
        resp = await self._dispatch(req)
        await self._send(writer, resp, close=close)
        return not close

    @staticmethod
    async def _discard(reader: asyncio.StreamReader, limit: int = 64 * 1024 * 1024) -> None:
        """Swallow an unread body briefly so the client sees our answer instead of a reset."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 5.0
        seen = 0
        try:
            while seen < limit and loop.time() < deadline:
                chunk = await asyncio.wait_for(reader.read(65536), max(0.05, deadline - loop.time()))
                if not chunk:
                    break
                seen += len(chunk)
        except (asyncio.TimeoutError, ConnectionError):
            pass

    async def _parse(self, head: bytes, reader: asyncio.StreamReader) -> tuple[Request, bool]:
        try:
            text = head.decode("latin-1")
        except UnicodeDecodeError:  # pragma: no cover - latin-1 decodes anything
            raise HttpError(400, "undecodable request head") from None
        lines = text.split("\r\n")
        parts = lines[0].split(" ")
        if len(parts) != 3:
            raise HttpError(400, "malformed request line")
        method, target, version = parts
        if version not in ("HTTP/1.1", "HTTP/1.0"):
            raise HttpError(505, f"unsupported HTTP version {version[:16]!r}")
        if not method.isalpha() or not method.isupper() or len(method) > 16:
            raise HttpError(400, "malformed method")
        if not target.startswith("/") or len(target) > 4096:
            raise HttpError(414 if len(target) > 4096 else 400, "malformed or over-long request target")
        headers: dict[str, str] = {}
        for line in lines[1:]:
            if not line:
                continue
            name, sep, value = line.partition(":")
            if not sep or not name or name != name.strip() or not name.isascii():
                raise HttpError(400, "malformed header line")
            lname = name.lower()
            if lname in headers and lname in ("content-length", "transfer-encoding", "host"):
                raise HttpError(400, f"duplicate {lname} header")
            headers[lname] = value.strip()
            if len(headers) > MAX_HEADERS:
                raise HttpError(431, "too many headers")
        close = headers.get("connection", "").lower() == "close" or (
            version == "HTTP/1.0" and headers.get("connection", "").lower() != "keep-alive")
        if "transfer-encoding" in headers:
            raise HttpError(411, "chunked or encoded bodies are not supported; send Content-Length")
        body = b""
        cl = headers.get("content-length")
        if cl is not None:
            if not cl.isdigit() or len(cl) > 12:
                raise HttpError(400, "malformed Content-Length")
            n = int(cl)
            split = urlsplit(target)
            limit = self.max_body
            try:
                route, _ = self.router.resolve(method, split.path)
                if route.max_body is not None:
                    limit = min(limit, route.max_body)
            except HttpError:
                pass
            if n > limit:
                raise HttpError(413, f"request body of {n} bytes exceeds the limit of {limit} bytes")
            try:
                body = await asyncio.wait_for(reader.readexactly(n), BODY_TIMEOUT_S)
            except asyncio.TimeoutError:
                raise HttpError(408, "timed out reading the request body") from None
        split = urlsplit(target)
        try:
            query = dict(parse_qsl(split.query, keep_blank_values=True, strict_parsing=False,
                                   max_num_fields=32))
        except ValueError as exc:
            raise HttpError(400, f"malformed query string: {exc}") from None
        return Request(method, target, unquote(split.path), query, headers, body), close

    async def _dispatch(self, req: Request) -> Response:
        try:
            route, params = self.router.resolve(req.method, req.path)
            req.params = params
            if self.before is not None:
                await self.before(req, route)
            return await route.handler(req)
        except HttpError as exc:
            return Response.json({"error": exc.reason}, exc.status)
        except asyncio.CancelledError:
            raise
        except Exception:
            logger.exception("API handler failed for %s %s", req.method, req.path)
            return Response.json({"error": "internal error"}, 500)

    async def _send(self, writer: asyncio.StreamWriter, resp: Response, close: bool) -> None:
        reason = REASONS.get(resp.status, "Status")
        head = [f"HTTP/1.1 {resp.status} {reason}", f"Content-Type: {resp.content_type}",
                f"Content-Length: {len(resp.body)}", "Cache-Control: no-store",
                f"Connection: {'close' if close else 'keep-alive'}"]
        head += [f"{k}: {v}" for k, v in resp.headers.items()]
        writer.write(("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + resp.body)
        try:
            await writer.drain()
        except ConnectionError:
            pass
