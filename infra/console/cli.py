"""``riskmask console``: start the console in the foreground, print its login URL once, stop on Ctrl-C."""

from __future__ import annotations

import argparse
import logging
import os
import threading
from pathlib import Path
from typing import Optional

from infra.console import Console, ConsoleError
from infra.console.feed import TopicNames
from infra.stack import Stack
from riskmask.errors import UserError

logger = logging.getLogger(__name__)


# Same shape as ledger/ops/manager_cli.py:_risk, pipelines/redact.py:_mask_scale: one argparse type per flag.
def _port(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a port number: {text!r}") from None
    if not 0 <= v <= 65535:
        raise argparse.ArgumentTypeError("must be between 0 and 65535")
    return v


def _stack_defaults() -> tuple[Optional[str], Optional[str]]:
    """Bootstrap servers and ledger folder of the local stack (``riskmask up``), when one is recorded."""
    try:
        info = Stack().info()
    except Exception:  # noqa: BLE001 - no stack is fine: flags or environment then
        return None, None
    return (info.bootstrap, info.ledger_dir) if info else (None, None)


def cmd_console(args: argparse.Namespace) -> int:
    bootstrap = args.bootstrap or os.environ.get("RISKMASK_BOOTSTRAP")
    ledger_dir = args.ledger_dir or os.environ.get("RISKMASK_LEDGER_DIR")
    if not bootstrap or (ledger_dir is None and not args.no_ledger):
        stack_bootstrap, stack_ledger = _stack_defaults()
        bootstrap = bootstrap or stack_bootstrap
        ledger_dir = ledger_dir or stack_ledger
    if not bootstrap:
        raise UserError("no broker: pass --bootstrap-servers, set RISKMASK_BOOTSTRAP or start 'riskmask up'")
    topics = TopicNames(redacted=args.redacted_topic, audit=args.audit_topic, dlq=args.dlq_topic,
                        raw=args.raw_topic, ledger=args.ledger_topic)
    try:
        console = Console(bootstrap, topics, None if args.no_ledger or not ledger_dir else Path(ledger_dir),
                          host=args.host, port=args.port, from_beginning=args.from_beginning,
                          export=not args.no_export, allow_hosts=tuple(args.allow_host)).start()
    except ConsoleError as exc:
        raise UserError(str(exc)) from None
    # The token is shown once, here, and nowhere else (not logged).
    print(f"riskmask console: {console.login_url}", flush=True)
    print("  (open that URL; the token in it is your login and is not shown again)", flush=True)
    stop = threading.Event()
    try:
        stop.wait()
    except KeyboardInterrupt:
        pass
    finally:
        console.stop()
    return 0


def register(sub: "argparse._SubParsersAction[argparse.ArgumentParser]") -> None:
    """Add ``riskmask console``."""
    p = sub.add_parser("console", help="operator/auditor console in the browser (live redacted frames, ledger, audit)",
                       description="Live redacted frames per camera, frames/s, lag, latency, degraded frames, DLQ "
                                   "count and masks by level; ledger height, nodes up, watchlist age; the offline "
                                   "auditor on demand. Listens on 127.0.0.1 by default; prints a login URL once.")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=_port, default=8765, help="port (default 8765; 0 = any free port)")
    p.add_argument("--allow-host", action="append", default=[],
                   help="extra host name the browser may use to reach the console (Host header check)")
    p.add_argument("--bootstrap-servers", "--bootstrap", dest="bootstrap", default=None,
                   help="Kafka bootstrap servers (default: $RISKMASK_BOOTSTRAP or the local stack)")
    p.add_argument("--ledger-dir", default=None,
                   help="ledger folder (genesis.json, keys/auditor.key) (default: $RISKMASK_LEDGER_DIR or the stack)")
    p.add_argument("--no-ledger", action="store_true", help="do not show or audit a ledger")
    p.add_argument("--no-export", action="store_true",
                   help="audit only the blocks already on the ledger topic (do not export new ones first)")
    p.add_argument("--from-beginning", action="store_true",
                   help="count every record on the topics, not only those arriving after the console started")
    p.add_argument("--redacted-topic", default="frames.redacted")
    p.add_argument("--audit-topic", default="audit.blocks")
    p.add_argument("--dlq-topic", default="frames.dlq")
    p.add_argument("--raw-topic", default="frames.raw", help="raw topic: only its end offsets are read, for the lag")
    p.add_argument("--ledger-topic", default="ledger.blocks")
    p.set_defaults(func=cmd_console)
