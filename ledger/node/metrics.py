"""Prometheus metrics and health of a ledger node (``riskmask ledger node --metrics-port``) and of the block
exporter (``riskmask ledger export --metrics-port``), served by :class:`riskmask.health.HealthServer`.

Node: a task on the node's own event loop copies its status (height, round, peers, mempool) into gauges once
a second, so the HTTP thread never touches node state; block commits are timed through the node's
``commit_observer`` hook (seconds from the proposer's block timestamp to the local commit).

* ``/healthz``: the node's event loop refreshed the gauges within the last 10 s (it is not stuck).
* ``/readyz``: healthy, not stopped on a fatal error, and connected to enough peers for a quorum
  (2f of the other n - 1 validators; with itself that is 2f + 1).
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any, Optional

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from riskmask.health import HealthServer

logger = logging.getLogger(__name__)

_COMMIT_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0)


class NodeMetrics:
    """The metrics of one ledger node process."""

    def __init__(self, registry: Optional[CollectorRegistry] = None) -> None:
        r = self.registry = registry or CollectorRegistry(auto_describe=True)
        self.height = Gauge("riskmask_ledger_height", "height of the last committed block", registry=r)
        self.round = Gauge("riskmask_ledger_round", "consensus round at the current height", registry=r)
        self.peers = Gauge("riskmask_ledger_peers", "validators connected over p2p", registry=r)
        self.mempool = Gauge("riskmask_ledger_mempool_txs", "transactions waiting in the mempool", registry=r)
        self.validators = Gauge("riskmask_ledger_validators", "validators in the genesis", registry=r)
        self.last_block_age = Gauge("riskmask_ledger_last_block_age_seconds", "seconds since the last block's "
                                    "timestamp", registry=r)
        self.commit_seconds = Histogram("riskmask_ledger_commit_seconds", "seconds from a block's proposal "
                                        "timestamp to its commit on this node", buckets=_COMMIT_BUCKETS, registry=r)
        self.commits = Counter("riskmask_ledger_commits", "blocks committed by this node", registry=r)
        self.refreshed_at = 0.0
        self.peers_now = 0
        self.n = 1
        self.fatal = False

    def observe_commit(self, height: int, block_timestamp_ms: int) -> None:
        self.commits.inc()
        if block_timestamp_ms > 0:
            self.commit_seconds.observe(max(0.0, time.time() - block_timestamp_ms / 1000.0))

    def refresh(self, node: Any) -> None:
        """Copy the node's status into the gauges (call on the node's event loop)."""
        st = node.status_json()
        self.height.set(st.get("height", 0))
        self.round.set(st.get("round", 0) or 0)
        peers = st.get("peers") or []
        self.peers_now = len(peers)
        self.peers.set(self.peers_now)
        self.mempool.set(st.get("mempool", 0))
        last = st.get("last_block_time_ms") or 0
        self.last_block_age.set((time.time() * 1000 - last) / 1000.0 if last else -1)
        self.n = len(getattr(node, "public_keys", ()) or ()) or self.n
        self.validators.set(self.n)
        self.fatal = bool(getattr(node, "fatal", False))
        self.refreshed_at = time.monotonic()

    def quorum_peers(self) -> int:
        f = (self.n - 1) // 3
        return 2 * f

    def live(self) -> tuple[bool, str]:
        age = time.monotonic() - self.refreshed_at
        if not self.refreshed_at or age > 10.0:
            return False, f"node event loop has not reported for {age:.0f} s"
        return True, "alive"

    def ready(self) -> tuple[bool, str]:
        ok, reason = self.live()
        if not ok:
            return ok, reason
        if self.fatal:
            return False, "node stopped on a fatal error"
        need = self.quorum_peers()
        if self.peers_now < need:
            return False, f"{self.peers_now} peer(s) connected, a quorum needs {need}"
        return True, "ready"


async def _refresh_loop(node: Any, metrics: NodeMetrics, interval_s: float) -> None:
    while True:
        try:
            metrics.refresh(node)
        except Exception:  # a status that cannot be read leaves the node unhealthy, never crashes it
            logger.debug("metrics refresh failed", exc_info=True)
        await asyncio.sleep(interval_s)


def start_node_metrics(node: Any, host: str, port: int, interval_s: float = 1.0) -> Any:
    """Serve a running node's metrics (call on its event loop); returns a handle with ``stop()``."""
    metrics = NodeMetrics()
    node.commit_observer = metrics.observe_commit
    metrics.refresh(node)
    task = asyncio.get_running_loop().create_task(_refresh_loop(node, metrics, interval_s))
    server = HealthServer(metrics.registry, ready=metrics.ready, live=metrics.live, host=host, port=port)
    try:
        server.start()
    except Exception:
        task.cancel()
        raise
    return _Handle(server, task)


class _Handle:
    def __init__(self, server: Any, task: Any) -> None:
        self.server, self.task = server, task

    def stop(self) -> None:
        self.task.cancel()
        self.server.stop()


class ExporterMetrics:
    """Metrics of ``riskmask ledger export``: read from the Exporter at scrape time (plain integers)."""

    def __init__(self, exporter: Any, registry: Optional[CollectorRegistry] = None) -> None:
        self.exporter = exporter
        r = self.registry = registry or CollectorRegistry(auto_describe=True)
        self.exported = Gauge("riskmask_exporter_exported_blocks", "blocks written to the topic by this process",
                              registry=r)
        self.exported.set_function(lambda: float(getattr(self.exporter, "exported", 0)))
        self.next_height = Gauge("riskmask_exporter_next_height", "next ledger height to export", registry=r)
        self.next_height.set_function(lambda: float(getattr(self.exporter, "next_height", 0)))

    def live(self) -> tuple[bool, str]:
        return True, "alive"

    def ready(self) -> tuple[bool, str]:
        if getattr(self.exporter, "_producer", None) is None:
            return False, "not connected to Kafka yet"
        return True, "ready"


def start_exporter_metrics(exporter: Any, host: str, port: int) -> Any:
    """Serve an exporter's metrics; returns the HealthServer (``stop()`` it when the export ends)."""
    metrics = ExporterMetrics(exporter)
    server = HealthServer(metrics.registry, ready=metrics.ready, live=metrics.live, host=host, port=port)
    server.start()
    return server


def metric_names() -> set[str]:
    """Every sample family name a node or the exporter exports (``_total`` for counters)."""
    names = set()

    class _Stub:
        exported = next_height = 0
        _producer = None

    for registry in (NodeMetrics().registry, ExporterMetrics(_Stub()).registry):
        for family in registry.collect():
            names.add(family.name + "_total" if family.type == "counter" else family.name)
    return names


__all__ = ["ExporterMetrics", "NodeMetrics", "metric_names", "start_exporter_metrics", "start_node_metrics"]
