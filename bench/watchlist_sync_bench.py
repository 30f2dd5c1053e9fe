"""Cost of a certified watchlist sync against a real local 4-node cluster.

Each sync verifies f+1 nodes' tips (header + commit certificate, Ed25519) and reads the changes since its
height from a node serving that height. Compared with the bare watchlist page request (what a sync cost before
freshness came from the chain), on the same cluster and the same moments. Also counts syncs that found a node
behind the certified tip or raised ``WatchlistStale`` (on an honest cluster: expected 0).

    python bench/watchlist_sync_bench.py --syncs 40 --subjects 20
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Optional

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main(argv: Optional[list[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--syncs", type=int, default=40)
    ap.add_argument("--subjects", type=int, default=20)
    args = ap.parse_args(argv)

    from ledger import keys as keyring
    from ledger import privacy
    from ledger.client import LedgerClient
    from ledger.manager_cli import RegistryClient
    from ledger.watchlist import Watchlist, WatchlistStale, WatchlistSync
    from tests.ledger_util import make_cluster

    tmp = Path(tempfile.mkdtemp(prefix="wl-sync-bench-"))
    cluster = make_cluster(tmp / "ledger")
    keyring.init_keyring(tmp / "keys")
    ring = keyring.load_keyring(tmp / "keys")
    try:
        cluster.up(wait_height=1, timeout_s=120)
        mgr = RegistryClient.from_dir(tmp / "ledger", "manager", tmp / "keys")
        rng = np.random.default_rng(1)
        for i in range(args.subjects):
            mgr.register(privacy.Identity(f"Bench Subject {i}", "1980-01-01"),
                         privacy.SubjectRecord.make(risk=30, suspect=False,
                                                    templates=[rng.standard_normal(128).astype(np.float32)]))
        mgr.close()
        clients = [LedgerClient.for_validator(v, cluster.key_seed("pipeline")) for v in cluster.genesis.validators]
        sync = WatchlistSync(clients, Watchlist(ring.keks, cluster.genesis.chain_id), cluster.genesis.public_keys())
        sync.sync()
        certified, bare, stale = [], [], 0
        for i in range(args.syncs):
            time.sleep(0.35)  # about one block later (block_interval 0.3 s in the test cluster)
            t = time.perf_counter()
            try:
                sync.sync()
            except WatchlistStale:
                stale += 1
            certified.append((time.perf_counter() - t) * 1000)
            time.sleep(0.35)
            c = clients[i % len(clients)]
            t = time.perf_counter()
            c.request("GET", "/v1/registry/watchlist", query={"since": sync.watchlist.height})
            bare.append((time.perf_counter() - t) * 1000)
        q = statistics.quantiles
        print(f"certified sync: median {statistics.median(certified):.1f} ms, p90 {q(certified, n=10)[-1]:.1f} ms")
        print(f"bare watchlist request: median {statistics.median(bare):.1f} ms, p90 {q(bare, n=10)[-1]:.1f} ms")
        print(f"height {sync.watchlist.height}, {len(sync.watchlist)} subjects, nodes flagged lagging "
              f"{len(sync.stale_nodes)}, WatchlistStale {stale} of {args.syncs}")
    finally:
        cluster.down()
    return 0


if __name__ == "__main__":
    sys.exit(main())
