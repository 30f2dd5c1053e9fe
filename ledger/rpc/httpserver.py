"""A small, strict asyncio HTTP/1.1 server for the ledger API (no third-party web framework).

It does just what the API needs: request line + headers (bounded sizes), ``Content-Length`` bodies (bounded,
413 when too large, chunked uploads refused with 411), keep-alive, a routing table with typed path
parameters, and JSON responses. Every failure a client can cause is answered 4xx with ``{"error": reason}``;
an unexpected handler exception is logged and answered 500 without internals.

Hardening against unauthenticated clients:

* connection caps: at most ``max_conns`` connections in all and ``max_conns_per_addr`` from one address; at
  the global cap the oldest idle connection that never authenticated is closed to make room, so a flood
  of idle sockets cannot lock signed clients out;
* a connection that has not yet completed an authenticated request gets ``UNAUTH_IDLE_S`` to send each
  request head (the whole head, so byte-by-byte senders gain nothing); authenticated keep-alive
  connections idle up to ``IDLE_TIMEOUT_S``;
* headers are checked by ``pre_body`` (key known, timestamp fresh, nonce unused, right node) before a body
  is read, bodies being read or handled share a budget of ``BODY_BUDGET_FACTOR`` maximum bodies (429
  beyond), and the connection is closed after every 401 and 403;
* numbers (``Content-Length``, path integers, :func:`ascii_uint`) are ASCII digits only; query strings and
  paths must decode to ASCII; JSON bodies nest at most ``MAX_JSON_DEPTH`` levels;
* optional TLS (an :class:`ssl.SSLContext` given to :meth:`HttpServer.start`).
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import ssl
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable, Optional
from urllib.parse import parse_qsl, unquote, urlsplit

logger = logging.getLogger(__name__)

MAX_HEADER_BYTES = 16 * 1024
MAX_HEADERS = 64
UNAUTH_IDLE_S = 5.0  # per request head, until the connection has authenticated once
BODY_TIMEOUT_S = 30.0
IDLE_TIMEOUT_S = 60.0  # authenticated keep-alive connections
TLS_HANDSHAKE_TIMEOUT_S = 5.0
MAX_CONNS = 512
MAX_CONNS_PER_ADDR = 64
MAX_JSON_DEPTH = 64
BODY_BUDGET_FACTOR = 16  # request bytes buffered at once, all connections together: this many max bodies
CLOSE_AFTER = frozenset({401, 403})

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
        self.unread = 0  # body bytes still to drain after answering


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
            obj = json.loads(self.body)
        except RecursionError:
            raise HttpError(400, f"request body nests deeper than {MAX_JSON_DEPTH} levels") from None
        except (ValueError, UnicodeDecodeError) as exc:
            raise HttpError(400, f"request body is not valid JSON: {exc}") from None
        # Only a body with many brackets can nest deeply; most bodies skip the walk.
        if self.body.count(b"[") + self.body.count(b"{") > MAX_JSON_DEPTH and json_depth(obj) > MAX_JSON_DEPTH:
            raise HttpError(400, f"request body nests deeper than {MAX_JSON_DEPTH} levels")
        return obj


@dataclass
class Response:
    status: int = 200
    body: bytes = b""
    content_type: str = "application/json"
    headers: dict[str, str] = field(default_factory=dict)

    @classmethod
    def json(cls, obj: Any, status: int = 200) -> "Response":
        return cls(status, json.dumps(obj, separators=(",", ":")).encode("utf-8"))


def ascii_uint(text: str, max_digits: int = 18) -> Optional[int]:
    """``text`` as a non-negative integer when it is 1..max_digits ASCII digits, else None.

    ``str.isdigit()`` and ``int()`` also accept Arabic-Indic, fullwidth and other Unicode digits (and
    ``isdigit`` even superscripts, which ``int`` then refuses): never use them on client input.
    """
    if not 1 <= len(text) <= max_digits or not text.isascii() or not text.isdigit():
        return None
    return int(text)


def json_depth(obj: Any) -> int:
    """Nesting depth of a decoded JSON value (iterative, so any depth is safe to measure)."""
    depth, stack = 0, [(obj, 1)]
    while stack:
        v, d = stack.pop()
        if isinstance(v, (list, dict)):
            depth = max(depth, d)
            stack.extend((x, d + 1) for x in (v.values() if isinstance(v, dict) else v))
    return depth


Handler = Callable[[Request], Awaitable[Response]]
Middleware = Callable[[Request, "Route"], Awaitable[None]]
PreBody = Callable[[str, str, dict[str, str]], None]  # (method, path, headers); raises HttpError

_PARAM = re.compile(r"\{([a-z_][a-z0-9_]*)(?::(int|hex|str))?\}")
_CONVERT = {
    "int": (r"([0-9]{1,18})", int),
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
    node_bound: bool = True  # False: the signature may name no node (identity discovery only)
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
            name: str = "", max_body: Optional[int] = None, node_bound: bool = True) -> Route:
        route = Route(method.upper(), template, handler, frozenset(roles), name or template, max_body,
                      node_bound)
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


@dataclass(eq=False)
class _Conn:
    """One client connection, as the caps and timeouts see it."""

    addr: str
    writer: asyncio.StreamWriter
    opened: float
    authenticated: bool = False  # completed at least one authenticated request
    busy: bool = False  # a request is being read or handled
    reserved: int = 0  # body bytes of the current request counted against the server's budget
    task: Optional[asyncio.Task] = None


class HttpServer:
    """Serve a :class:`Router` on a TCP address. ``before`` runs for every routed request (authentication);
    ``pre_body`` checks the headers of a request that has a body before the body is read."""

    def __init__(self, router: Router, max_body: int, before: Optional[Middleware] = None,
                 pre_body: Optional[PreBody] = None, max_conns: int = MAX_CONNS,
                 max_conns_per_addr: int = MAX_CONNS_PER_ADDR) -> None:
        self.router = router
        self.max_body = max_body
        self.before = before
        self.pre_body = pre_body
        self.max_conns = max_conns
        self.max_conns_per_addr = max_conns_per_addr
        self._server: Optional[asyncio.base_events.Server] = None
        self._conns: dict[int, _Conn] = {}
        self._per_addr: Counter[str] = Counter()
        self.refused = 0  # connections refused or evicted by the caps
        self.body_budget = BODY_BUDGET_FACTOR * max_body
        self._inflight = 0  # body bytes reserved by requests being read or handled
        self.tls = False

    @property
    def connections(self) -> int:
        return len(self._conns)

    async def start(self, host: str, port: int, ssl_context: Optional[ssl.SSLContext] = None) -> int:
        kw: dict[str, Any] = {}
        if ssl_context is not None:
            kw = {"ssl": ssl_context, "ssl_handshake_timeout": TLS_HANDSHAKE_TIMEOUT_S}
        self._server = await asyncio.start_server(self._serve, host, port, limit=MAX_HEADER_BYTES + 1024,
                                                  reuse_address=True, backlog=1024, **kw)
        self.tls = ssl_context is not None
        return self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            for c in list(self._conns.values()):
                if c.task is not None:
                    c.task.cancel()
            try:
                await asyncio.wait_for(self._server.wait_closed(), 2.0)
            except (asyncio.TimeoutError, Exception):
                pass
            self._server = None

    # -- connection admission --------------------------------------------------------------------------------
    def _admit(self, conn: _Conn) -> Optional[str]:
        """Register a new connection; returns why it is refused, or None."""
        if self._per_addr[conn.addr] >= self.max_conns_per_addr:
            return f"too many connections from {conn.addr} (limit {self.max_conns_per_addr})"
        if len(self._conns) >= self.max_conns and not self._evict_one():
            return f"too many connections (limit {self.max_conns})"
        self._conns[id(conn)] = conn
        self._per_addr[conn.addr] += 1
        return None

    def _evict_one(self) -> bool:
        """Close the oldest idle connection that never authenticated; False when there is none."""
        victim = None
        for c in self._conns.values():
            if not c.authenticated and not c.busy and (victim is None or c.opened < victim.opened):
                victim = c
        if victim is None:
            return False
        self._release(victim)
        self.refused += 1
        try:
            victim.writer.transport.abort()
        except Exception:  # already closing
            pass
        if victim.task is not None:
            victim.task.cancel()
        return True

    def _release(self, conn: _Conn) -> None:
        if self._conns.pop(id(conn), None) is not None:
            self._per_addr[conn.addr] -= 1
            if self._per_addr[conn.addr] <= 0:
                del self._per_addr[conn.addr]

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = writer.get_extra_info("peername")
        addr = str(peer[0]) if isinstance(peer, tuple) and peer else "?"
        conn = _Conn(addr, writer, asyncio.get_running_loop().time(), task=asyncio.current_task())
        why = self._admit(conn)
        if why is not None:
            self.refused += 1
            logger.debug("refused connection: %s", why)
            try:
                await asyncio.wait_for(self._send(writer, Response.json({"error": why}, 429), close=True), 1.0)
            except (asyncio.TimeoutError, ConnectionError, OSError):
                pass
            writer.transport.abort()
            return
        try:
            keep = True
            while keep:
                keep = await self._one(reader, writer, conn)
        except asyncio.CancelledError:
            pass
        except (ConnectionError, asyncio.IncompleteReadError, OSError, ssl.SSLError):
            pass
        except Exception as exc:  # a server bug: one line, never the client's traceback in the log
            logger.error("API connection from %s failed: %s: %s", addr, type(exc).__name__, exc)
        finally:
            self._release(conn)
            try:
                writer.close()
            except Exception:
                pass

    async def _one(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, conn: _Conn) -> bool:
        """Handle one request; returns whether the connection stays open."""
        timeout = IDLE_TIMEOUT_S if conn.authenticated else UNAUTH_IDLE_S
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout)
        except asyncio.LimitOverrunError:
            await self._send(writer, Response.json({"error": "request headers too large"}, 431), close=True)
            return False
        except asyncio.IncompleteReadError as exc:
            if exc.partial.strip():
                await self._send(writer, Response.json({"error": "incomplete request"}, 400), close=True)
            return False
        except asyncio.TimeoutError:
            return False
        conn.busy = True
        try:
            try:
                req, close = await self._parse(head, reader, conn)
            except HttpError as exc:
                await self._send(writer, Response.json({"error": exc.reason}, exc.status), close=True)
                if exc.status == 413 or exc.unread:
                    await self._discard(reader, exc.unread or 64 * 1024 * 1024)
                return False
            except (ConnectionError, asyncio.IncompleteReadError):
                raise
            except Exception as exc:  # anything else in the client's bytes: a 400, not a crash
                logger.debug("unparsable request: %s: %s", type(exc).__name__, exc)
                await self._send(writer, Response.json({"error": "malformed request"}, 400), close=True)
                return False
            resp = await self._dispatch(req)
            if "client" in req.context:
                conn.authenticated = True
            close = close or resp.status in CLOSE_AFTER
            await self._send(writer, resp, close=close)
            return not close
        finally:
            conn.busy = False
            self._inflight -= conn.reserved
            conn.reserved = 0

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

    async def _parse(self, head: bytes, reader: asyncio.StreamReader, conn: _Conn) -> tuple[Request, bool]:
        text = head.decode("latin-1")  # decodes any byte; non-ASCII is refused field by field below
        lines = text.split("\r\n")
        parts = lines[0].split(" ")
        if len(parts) != 3:
            raise HttpError(400, "malformed request line")
        method, target, version = parts
        if version not in ("HTTP/1.1", "HTTP/1.0"):
            raise HttpError(505 if version.startswith("HTTP/") and version.isascii() else 400,
                            f"unsupported HTTP version {version[:16]!r}")
        if not method.isascii() or not method.isalpha() or not method.isupper() or len(method) > 16:
            raise HttpError(400, "malformed method")
        if len(target) > 4096:
            raise HttpError(414, "over-long request target")
        if not target.startswith("/") or not target.isascii() or not target.isprintable():
            raise HttpError(400, "malformed request target")
        headers: dict[str, str] = {}
        for line in lines[1:]:
            if not line:
                continue
            name, sep, value = line.partition(":")
            if not sep or not name or name != name.strip() or not name.isascii() or not name.isprintable():
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
        split = urlsplit(target)
        try:
            path = unquote(split.path, errors="strict")
        except UnicodeDecodeError:
            raise HttpError(400, "request path is not valid percent-encoded UTF-8") from None
        if not path.isascii() or not path.isprintable():
            raise HttpError(400, "request path must decode to printable ASCII")
        try:
            pairs = parse_qsl(split.query, keep_blank_values=True, strict_parsing=False, max_num_fields=32,
                              errors="strict")
        except (ValueError, UnicodeDecodeError) as exc:
            raise HttpError(400, f"malformed query string: {exc}") from None
        if not all(k.isascii() and v.isascii() and k.isprintable() and v.isprintable() for k, v in pairs):
            raise HttpError(400, "query parameters must decode to printable ASCII")
        query = dict(pairs)
        body = b""
        cl = headers.get("content-length")
        if cl is not None:
            n = ascii_uint(cl, 12)
            if n is None:
                raise HttpError(400, "malformed Content-Length (ASCII digits expected)")
            limit = self.max_body
            route: Optional[Route] = None
            try:
                route, _ = self.router.resolve(method, path)
                if route.max_body is not None:
                    limit = min(limit, route.max_body)
            except HttpError:
                pass
            if n > limit:
                raise HttpError(413, f"request body of {n} bytes exceeds the limit of {limit} bytes")
            if n and route is not None and self.pre_body is not None:
                try:
                    self.pre_body(method, path, headers)  # refuse strangers before buffering their body
                except HttpError as exc:
                    exc.unread = n  # answered first, then the body is read and dropped
                    raise
            if self._inflight + n > self.body_budget:
                exc = HttpError(429, "busy: too many request bodies in flight; retry")
                exc.unread = n
                raise exc
            self._inflight += n
            conn.reserved = n
            try:
                body = await asyncio.wait_for(reader.readexactly(n), BODY_TIMEOUT_S)
            except asyncio.TimeoutError:
                raise HttpError(408, "timed out reading the request body") from None
        return Request(method, target, path, query, headers, body), close

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
