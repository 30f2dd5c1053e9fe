"""One small HTTP server per long-running process: ``/metrics`` (Prometheus text), ``/healthz`` and ``/readyz``.

``/healthz`` answers 200 while the process can serve at all (liveness: restart it when this fails);
``/readyz`` answers 200 only when the process does its job now (readiness: its dependencies answer), else 503
with a one-line reason. Both bodies are plain text; nothing identifying is ever in them.

Used by ``riskmask run`` (pipelines.metrics), ``riskmask ledger node`` and ``riskmask ledger export``
(ledger.node.metrics). The server runs on daemon threads and never blocks the process it reports on.
"""

from __future__ import annotations

import logging
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Callable, Optional

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from riskmask.errors import UserError

logger = logging.getLogger(__name__)

Check = Callable[[], tuple[bool, str]]


def _always_ok() -> tuple[bool, str]:
    return True, "ok"


class HealthServer:
    """Serve ``registry`` on ``/metrics`` and the two checks on ``/healthz`` and ``/readyz``."""

    def __init__(self, registry: CollectorRegistry, ready: Check, live: Optional[Check] = None,
                 host: str = "0.0.0.0", port: int = 0) -> None:
        self.registry, self.ready, self.live = registry, ready, live or _always_ok
        self.host, self.port = host, port
        self._server: Optional[ThreadingHTTPServer] = None
        self._thread: Optional[threading.Thread] = None

    def start(self) -> int:
        """Bind and serve in the background; returns the bound port. A busy port is a UserError."""
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (http.server's name)
                path = self.path.split("?", 1)[0]
                if path == "/metrics":
                    self._send(200, generate_latest(owner.registry), CONTENT_TYPE_LATEST)
                elif path in ("/healthz", "/readyz"):
                    check = owner.live if path == "/healthz" else owner.ready
                    try:
                        ok, reason = check()
                    except Exception as exc:  # a failing check means "not ready", never a crash
                        ok, reason = False, f"check failed: {type(exc).__name__}"
                    self._send(200 if ok else 503, (reason + "\n").encode(), "text/plain; charset=utf-8")
                else:
                    self._send(404, b"not found: /metrics, /healthz, /readyz\n", "text/plain; charset=utf-8")

            def _send(self, code: int, body: bytes, ctype: str) -> None:
                self.send_response(code)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, fmt: str, *args: object) -> None:
                logger.debug("health %s", fmt % args)

        try:
            self._server = ThreadingHTTPServer((self.host, self.port), Handler)
        except OSError as exc:
            raise UserError(f"cannot serve metrics on {self.host}:{self.port}: {exc.strerror or exc}") from None
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, name="health-http", daemon=True)
        self._thread.start()
        logger.info("metrics and health on http://%s:%d/metrics, /healthz, /readyz", self.host, self.port)
        return self.port

    # Same shape as ledger/ops/exporter.py:Exporter.close: each releases its own resource; base imports no ledger.
    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None


def add_metrics_options(parser: "object", default_port: Optional[int] = None, what: str = "this process") -> None:
    """``--metrics-port`` and ``--metrics-host`` on an argparse parser."""
    parser.add_argument("--metrics-port", type=int, default=default_port, metavar="PORT",  # type: ignore[attr-defined]
                        help=f"serve /metrics, /healthz and /readyz of {what} on this port "
                             f"(default: {'off' if default_port is None else default_port}; 0: any free port)")
    parser.add_argument("--metrics-host", default="0.0.0.0", metavar="ADDR",  # type: ignore[attr-defined]
                        help="address the metrics server binds (default: %(default)s)")


__all__ = ["Check", "HealthServer", "add_metrics_options"]
