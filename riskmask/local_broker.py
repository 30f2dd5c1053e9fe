"""Where Kafka clients connect by default: the flag, ``$RISKMASK_BOOTSTRAP``, else the local embedded broker.

``riskmask broker start`` (:mod:`infra.broker`) records the broker it starts as ``broker.pid`` and
``broker.json`` under the state directory (``$RISKMASK_HOME`` or ``./.riskmask``). This module only *reads*
that record, so that every command (the producer, the ledger exporter and auditor, the pipeline) finds the
local broker without importing the local stack: the record's format is written once, here, and
:mod:`infra.broker` writes it with these names.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Optional

from riskmask import procs

logger = logging.getLogger(__name__)

STATE_ENV = "RISKMASK_HOME"
BOOTSTRAP_ENV = "RISKMASK_BOOTSTRAP"
PID_FILE = "broker.pid"
INFO_FILE = "broker.json"


def default_state_dir() -> Path:
    """``$RISKMASK_HOME`` if set, else ``.riskmask/`` in the current directory."""
    return Path(os.environ.get(STATE_ENV) or ".riskmask")


def is_tansu(pid: int) -> bool:
    """Guard against pid reuse: only a process whose command line is a tansu broker counts."""
    cmd = procs.cmdline(pid)
    if cmd is None:
        return procs.pid_alive(pid)  # no /proc (not Linux): trust the pid file
    return bool(cmd) and cmd[0].endswith(b"tansu") and b"broker" in cmd


def recorded_bootstrap(state_dir: Optional[Path] = None) -> Optional[str]:
    """``host:port`` of the embedded broker recorded in ``state_dir`` while its process runs, else None."""
    d = Path(state_dir) if state_dir is not None else default_state_dir()
    try:
        data = json.loads((d / INFO_FILE).read_text(encoding="utf-8"))
        pid = int((d / PID_FILE).read_text(encoding="utf-8").strip())
        host, port = str(data["host"]), int(data["port"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if not (procs.pid_alive(pid) and is_tansu(pid)):
        logger.debug("the broker recorded in %s (pid %s) is not running", d, pid)
        return None
    return f"{host}:{port}"


def resolve_bootstrap(explicit: Optional[str] = None, fallback: Optional[str] = "127.0.0.1:9092") -> Optional[str]:
    """Where clients should connect: ``explicit``, else ``$RISKMASK_BOOTSTRAP``, else the embedded broker
    recorded in the default state directory (``riskmask broker start``), else ``fallback``."""
    if explicit:
        return explicit
    env = os.environ.get(BOOTSTRAP_ENV)
    if env:
        return env
    return recorded_bootstrap() or fallback
