"""Process helpers shared by the commands that start and stop local services (broker, ledger nodes, stack)."""

from __future__ import annotations

import ctypes
import os
import signal
import sys
from pathlib import Path
from typing import Callable

_PR_SET_PDEATHSIG = 1


def pid_alive(pid: int) -> bool:
    """True while ``pid`` runs; an exited child not yet reaped (a zombie) does not count."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0] != "Z"
    except (OSError, IndexError):
        return True  # no /proc (not Linux): the signal check above is all there is


def cmdline(pid: int) -> list[bytes] | None:
    """The command line of ``pid`` as its argv bytes, or None where /proc cannot tell (not Linux, gone)."""
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return None


def die_with_parent(sig: int = signal.SIGTERM) -> Callable[[], None]:
    """A ``preexec_fn`` that makes the child receive ``sig`` when its parent dies (Linux PR_SET_PDEATHSIG),
    so that services started by a test, a demo or a benchmark never outlive it."""

    def _preexec() -> None:  # runs in the child between fork and exec
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, int(sig))

    return _preexec


def python_module(module: str, *args: str) -> list[str]:
    """Command line running ``python -m module args`` with this interpreter, safely: on Python 3.11+ ``-P``
    keeps the working directory off ``sys.path``, so a folder there named like one of our packages (a ledger
    or keys directory in a state folder) cannot shadow the installed code."""
    safe = ["-P"] if sys.version_info >= (3, 11) else []
    return [sys.executable, *safe, "-m", module, *args]
