"""Log output formats of the ``riskmask`` command: ``text`` (default) or ``json`` (one event per line).

A JSON event carries only the time (UTC, ISO 8601 with milliseconds), level, logger name, process id and the
formatted message; an exception adds its type and message, never a traceback with local values. Messages are
the same as in text mode, and the project logs no identities (no pseudonym, template, subject reference or
image), so neither format contains any.
"""

from __future__ import annotations

import json
import logging
import os
import time

LOG_FORMATS = ("text", "json")
ENV_LOG_FORMAT = "RISKMASK_LOG_FORMAT"
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class JsonFormatter(logging.Formatter):
    """One JSON object per record, on one line."""

    def format(self, record: logging.LogRecord) -> str:
        ts = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z"
        event = {"ts": ts, "level": record.levelname.lower(), "logger": record.name, "pid": record.process,
                 "msg": record.getMessage()}
        if record.exc_info and record.exc_info[1] is not None:
            exc = record.exc_info[1]
            event["error"] = f"{type(exc).__name__}: {exc}"
        return json.dumps(event, ensure_ascii=False, separators=(",", ":"))


def configure(level: int, fmt: str | None = None) -> None:
    """Configure the root logger once for ``fmt`` (default: ``$RISKMASK_LOG_FORMAT`` or text)."""
    fmt = (fmt or os.environ.get(ENV_LOG_FORMAT) or "text").lower()
    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter() if fmt == "json" else logging.Formatter(TEXT_FORMAT))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    if fmt == "json":
        os.environ[ENV_LOG_FORMAT] = "json"  # child processes we start (ledger nodes, broker) follow


__all__ = ["ENV_LOG_FORMAT", "JsonFormatter", "LOG_FORMATS", "configure"]
