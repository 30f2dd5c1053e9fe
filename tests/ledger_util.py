"""Helpers for the ledger tests: a real local cluster in a temp dir, transactions, fork checks."""

from __future__ import annotations

import base64
import os
import time
from pathlib import Path
from typing import Callable, Iterable, Optional

from ledger.client.api_client import ApiError, Unavailable
from ledger.ops.cluster import Cluster, init_cluster
from ledger.types import crypto
from ledger.types.block import TX_ANCHOR, CommitCertificate, Transaction, verify_commit

# Short consensus timeouts keep the tests quick; still generous for a loaded 2-core box.
TEST_OVERRIDES = {"block_interval": 0.3, "timeout_propose": 1.5, "timeout_prevote": 0.5,
                  "timeout_precommit": 0.5, "timeout_max": 4.0}


def make_cluster(tmp: Path, n: int = 4, **overrides) -> Cluster:
    cfg = dict(TEST_OVERRIDES)
    cfg.update(overrides)
    init_cluster(tmp, n, overrides=cfg)
    return Cluster(tmp)


def wait_for(cond: Callable[[], bool], timeout_s: float, what: str, poll_s: float = 0.2) -> None:
    deadline = time.monotonic() + timeout_s
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s:.0f} s waiting for {what}")
        time.sleep(poll_s)


def anchor_txs(cluster: Cluster, count: int, role: str = "pipeline") -> list[bytes]:
    """``count`` signed anchor-kind transactions with random payloads from the ``role`` client key."""
    key = crypto.PrivateKey.from_seed(cluster.key_seed(role))
    now = int(time.time() * 1000)
    return [Transaction.create(key, cluster.genesis.chain_id, TX_ANCHOR, int.from_bytes(os.urandom(8), "big"),
                               now, os.urandom(48)).encode() for _ in range(count)]


def submit(cluster: Cluster, node: int, txs: list[bytes], role: str = "pipeline") -> list[str]:
    with cluster.client(node, role, timeout_s=20.0) as c:
        res = c.submit_many(txs)
    assert not res["rejected"], res["rejected"][:3]
    return res["accepted"]


def committed_on(cluster: Cluster, node: int, hashes: Iterable[str]) -> bool:
    try:
        with cluster.client(node, "auditor", timeout_s=10.0) as c:
            return all(c.tx(h).get("status") == "committed" for h in hashes)
    except (Unavailable, ApiError):
        return False


def chain(cluster: Cluster, node: int, upto: Optional[int] = None) -> list[str]:
    """Block hashes of ``node`` from height 1 (up to ``upto`` or its height); every certificate must verify."""
    out: list[str] = []
    with cluster.client(node, "auditor", timeout_s=20.0) as c:
        top = c.status()["height"] if upto is None else upto
        h = 1
        while h <= top:
            blocks = c.blocks(h, min(top, h + 99))
            if not blocks:
                break
            for b in blocks:
                cert = CommitCertificate.decode(base64.b64decode(b["cert"]))
                verify_commit(cert, cluster.genesis.chain_id, cluster.genesis.public_keys(),
                              bytes.fromhex(b["hash"]), b["height"])
                out.append(b["hash"])
            h += len(blocks)
    return out


def assert_no_fork(cluster: Cluster, nodes: Iterable[int]) -> dict[int, list[str]]:
    """Every node's chain is a prefix of the longest one."""
    chains = {i: chain(cluster, i) for i in nodes}
    longest = max(chains.values(), key=len)
    for i, ch in chains.items():
        assert ch == longest[:len(ch)], f"node {i} diverges from the longest chain"
    return chains


def heights(cluster: Cluster, nodes: Iterable[int]) -> dict[int, int]:
    return cluster.heights(list(nodes))


def top_height(cluster: Cluster, nodes: Iterable[int]) -> int:
    """Highest height among the reachable ``nodes`` (-1 when none answers)."""
    return max(heights(cluster, nodes).values(), default=-1)


def low_height(cluster: Cluster, nodes: Iterable[int]) -> int:
    """Lowest height among ``nodes``; -1 unless every one of them answers."""
    nodes = list(nodes)
    hs = heights(cluster, nodes)
    return min(hs.values()) if len(hs) == len(nodes) else -1
