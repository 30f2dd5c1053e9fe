"""``riskmask demo --console``: the console opened on the demo's stack while the demo runs, and kept open after
its last step for a while (or until Ctrl-C) so the results can be looked at before the stack stops."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any, Callable, Optional

from infra.console import Console, ConsoleError
from infra.console.feed import TopicNames

logger = logging.getLogger(__name__)


def open_for_demo(info: Any, port: int, progress: Callable[[str], None]) -> tuple[Console, str]:
    """Start the console on the stack ``info`` (bootstrap, ledger folder); print the login URL once through
    ``progress``; return the console and a step detail without the token (it goes into summary.json)."""
    try:
        console = Console(info.bootstrap, TopicNames(), Path(info.ledger_dir), port=port,
                          from_beginning=True).start()
    except ConsoleError as exc:
        raise RuntimeError(str(exc)) from None
    progress(f"      console: {console.login_url}")
    return console, f"console at {console.url} (login URL printed above, once)"


def linger(console: Optional[Console], seconds: Optional[float], progress: Callable[[str], None]) -> None:
    """Keep the console open ``seconds`` (None: until Ctrl-C) after the demo's steps."""
    if console is None or (seconds is not None and seconds <= 0):
        return
    how = "until Ctrl-C" if seconds is None else f"for {seconds:.0f} s"
    progress(f"      the console stays open at {console.url} {how}; the stack stops after that")
    deadline = None if seconds is None else time.monotonic() + seconds
    try:
        while deadline is None or time.monotonic() < deadline:
            time.sleep(0.2)
    except KeyboardInterrupt:
        progress("      closing the console")
