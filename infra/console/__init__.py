"""``riskmask console``: the operator and auditor console in the browser.

A small Starlette app on uvicorn, bound to 127.0.0.1 by default, behind a login token generated at start. It reads
the output topics (frames.redacted, audit.blocks, frames.dlq; never frames.raw) and the ledger nodes' status, and
runs the offline auditor on demand. See docs/console.md.
"""

from __future__ import annotations

import logging
import secrets
import socket
import threading
import time
from pathlib import Path
from typing import Any, Optional

from infra.console.audit_job import AuditJob
from infra.console.feed import ConsoleState, LedgerPoller, LedgerSource, TopicFeed, TopicNames

logger = logging.getLogger(__name__)

LOOPBACK = {"127.0.0.1", "localhost", "::1"}
DEFAULT_PORT = 8765


class ConsoleError(Exception):
    """The console cannot start (port taken, bad ledger folder)."""


class Console:
    """Feed threads + the web server, started and stopped together."""

    def __init__(self, bootstrap: str, topics: Optional[TopicNames] = None, ledger_dir: Optional[Path] = None,
                 host: str = "127.0.0.1", port: int = DEFAULT_PORT, from_beginning: bool = False,
                 export: bool = True, allow_hosts: tuple[str, ...] = (), token: Optional[str] = None) -> None:
        self.bootstrap, self.topics = bootstrap, topics or TopicNames()
        self.host, self.port = host, port
        self.token = token or secrets.token_urlsafe(32)
        self.state = ConsoleState()
        self.source: Optional[LedgerSource] = None
        if ledger_dir is not None:
            try:
                self.source = LedgerSource.from_dir(Path(ledger_dir))
            except Exception as exc:  # noqa: BLE001 - one readable line for the CLI
                raise ConsoleError(f"cannot read the ledger in {ledger_dir}: {exc}") from None
        self.feed = TopicFeed(self.state, bootstrap, self.topics, from_beginning)
        self.poller = LedgerPoller(self.state, self.source) if self.source is not None else None
        self.audit = AuditJob(self.state, bootstrap, self.topics, self.source, export=export)
        self.allow_hosts = allow_hosts
        self._server: Any = None
        self._thread: Optional[threading.Thread] = None

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/"

    @property
    def login_url(self) -> str:
        return f"{self.url}?token={self.token}"

    def _hosts(self) -> list[str]:
        names = {self.host} | (LOOPBACK if self.host in LOOPBACK else set()) | set(self.allow_hosts)
        return [f"[{n}]:{self.port}" if ":" in n else f"{n}:{self.port}" for n in names]

    def start(self, timeout_s: float = 15.0) -> "Console":
        import uvicorn  # deferred: loads uvicorn, which only this path needs

        from infra.console.app import build_app  # deferred with uvicorn: the web app loads Starlette

        try:  # bind first so a taken port is one clear error, and port 0 gets a real number
            sock = socket.socket(socket.AF_INET6 if ":" in self.host else socket.AF_INET, socket.SOCK_STREAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((self.host, self.port))
        except OSError as exc:
            raise ConsoleError(f"cannot listen on {self.host}:{self.port}: {exc.strerror or exc}") from None
        self.port = sock.getsockname()[1]
        if self.host not in LOOPBACK:
            logger.warning("console listens on %s, not only on loopback: anyone who can reach it sees the login page",
                           self.host)
        info = {"bootstrap": self.bootstrap, "topics": vars(self.topics),
                "ledger_dir": None if self.source is None else str(self.source.ledger_dir)}
        app = build_app(self.state, self.token, self.audit, self._hosts(), info)
        config = uvicorn.Config(app, log_level="warning", access_log=False, timeout_graceful_shutdown=2,
                                lifespan="off")
        self._server = uvicorn.Server(config)
        self.feed.start()
        if self.poller is not None:
            self.poller.start()
        self._thread = threading.Thread(target=self._server.run, kwargs={"sockets": [sock]}, name="console-http",
                                        daemon=True)
        self._thread.start()
        deadline = time.monotonic() + timeout_s
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise ConsoleError("the console's web server did not start")
            time.sleep(0.05)
        logger.info("console listening on %s", self.url)
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.should_exit = True
        self.feed.stop()
        if self.poller is not None:
            self.poller.stop()
        if self._thread is not None:
            self._thread.join(10)
        self.feed.join(5)
        if self.poller is not None:
            self.poller.join(5)

    def __enter__(self) -> "Console":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()
