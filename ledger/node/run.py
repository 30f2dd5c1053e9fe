"""Running one validator node as a process: signals, optional metrics server, profiling hook, command line.

``python -m ledger.node --config node0.json`` and ``riskmask ledger node --config ...`` both end in
:func:`run_node`; the node itself is :class:`ledger.node.node.LedgerNode`.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
from pathlib import Path
from typing import Optional

from ledger.config import ConfigError, NodeConfig
from ledger.node.node import LedgerNode
from ledger.node.store import StoreError

logger = logging.getLogger(__name__)

ENV_PROFILE = "RISKMASK_LEDGER_PROFILE"


async def _serve(cfg: NodeConfig, metrics_port: Optional[int] = None, metrics_host: str = "0.0.0.0") -> int:
    os.umask(0o077)  # data directories 0700, databases and everything else the node writes 0600
    # Same shape as tests/ledger/byzantine_node.py:_serve: the product must not import the test's node class.
    node = LedgerNode(cfg)
    stop = asyncio.Event()
    node.stop_event = stop
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await node.start()
    except OSError as exc:
        await node.stop()
        raise ConfigError(f"node {cfg.index} cannot listen: {exc.strerror or exc}") from None
    metrics = None
    if metrics_port is not None:  # /metrics, /healthz, /readyz (ledger.node.metrics)
        from ledger.node.metrics import start_node_metrics  # deferred: prometheus-client loads only with --metrics-port

        try:
            metrics = start_node_metrics(node, metrics_host, metrics_port)
        except Exception as exc:
            await node.stop()
            raise ConfigError(f"node {cfg.index}: {exc}") from None
    await stop.wait()
    logger.info("node %d stopping", cfg.index)
    if metrics is not None:
        metrics.stop()
    await node.stop()
    return 1 if node.fatal else 0


def run_node(config: Path, metrics_port: Optional[int] = None, metrics_host: str = "0.0.0.0") -> int:
    """Run one node until SIGTERM/SIGINT; returns the process exit code. ``metrics_port``: serve /metrics,
    /healthz and /readyz there (ledger.node.metrics)."""
    try:
        cfg = NodeConfig.load(config)
    except ConfigError as exc:
        print(f"ledger node: error: {exc}", file=sys.stderr)
        return 2
    logging.basicConfig(level=getattr(logging, cfg.log_level),
                        format=f"%(asctime)s node{cfg.index} %(levelname)s %(name)s: %(message)s")
    prof_out = os.environ.get(ENV_PROFILE)
    try:
        if prof_out:  # bench hook: profile this node, stats written on a clean stop
            import cProfile

            prof = cProfile.Profile()
            try:
                return prof.runcall(asyncio.run, _serve(cfg, metrics_port, metrics_host))
            finally:
                prof.dump_stats(prof_out)
        return asyncio.run(_serve(cfg, metrics_port, metrics_host))
    except ConfigError as exc:
        logger.error("%s", exc)
        return 2
    except StoreError as exc:
        logger.error("storage failure, stopping: %s", exc)
        return 1


def main(argv: Optional[list[str]] = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m ledger.node", description="Run one ledger validator node.")
    ap.add_argument("--config", type=Path, required=True, help="node config file (nodeN.json)")
    ap.add_argument("--metrics-port", type=int, default=None, metavar="PORT",
                    help="serve /metrics, /healthz and /readyz of this node on this port (default: off)")
    ap.add_argument("--metrics-host", default="0.0.0.0", metavar="ADDR",
                    help="address the metrics server binds (default: %(default)s)")
    args = ap.parse_args(argv)
    if args.metrics_port is not None and not 0 <= args.metrics_port <= 65535:
        ap.error("--metrics-port must be 0..65535")
    return run_node(args.config, metrics_port=args.metrics_port, metrics_host=args.metrics_host)

