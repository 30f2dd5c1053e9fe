"""Cost of a certified, digest-confirmed watchlist sync against a real local 4-node cluster.

Each sync verifies f+1 nodes' tips (header + commit certificate, Ed25519), reads the changes since its height
from a node serving that height, and applies them only when f+1 nodes report the registry state digest of the
result (the serving node in its page, the others through ``GET /v1/registry/digest``). Compared with the bare
watchlist page request (what a sync cost before freshness came from the chain), on the same cluster and the
same moments. Also counts syncs that found a node behind the certified tip, a disputed node, or raised
``WatchlistStale`` (on an honest cluster: expected 0). With ``--digest-subjects N`` it also times the digest
work alone on N subjects: a node recording the digest of a block that changes one subject (real SQLite), and
the pipeline computing the digest of a synced state.

    python bench/watchlist_sync_bench.py --syncs 40 --subjects 20 --digest-subjects 10000
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
    ap.add_argument("--digest-subjects", type=int, default=0, help="also time the digest work on N subjects")
    args = ap.parse_args(argv)
    if args.digest_subjects:
        digest_cost(args.digest_subjects)

    from ledger.client import keys as keyring, privacy
    from ledger.client.api_client import LedgerClient
    from ledger.client.watchlist import Watchlist, WatchlistStale, WatchlistSync
    from ledger.ops.manager_cli import RegistryClient
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
              f"{len(sync.stale_nodes)}, disputed {len(sync.disputed_nodes)}, WatchlistStale {stale} of {args.syncs}")
    finally:
        cluster.down()
    return 0


def digest_cost(n: int, repeat: int = 20) -> None:
    """Time a node recording the state digest of a one-subject block over ``n`` subjects (real SQLite, records of
    a real size), and the pipeline's digest of a synced state of ``n`` subjects."""
    import base64
    import os

    from ledger.client.watchlist import Watchlist
    from ledger.registry.state import RegistryIndex

    tmp = Path(tempfile.mkdtemp(prefix="wl-digest-bench-"))
    idx = RegistryIndex(tmp / "registry.db")
    row = "INSERT OR REPLACE INTO subjects VALUES (?, ?, 'live', NULL, ?, ?, NULL, NULL, ?, ?)"
    subjects = [os.urandom(32) for _ in range(n)]
    ct = os.urandom(560)  # about one sealed 128-d template record
    idx.execute_block(1, [(row, (p, 1, os.urandom(12), ct, 1, os.urandom(32))) for p in subjects], changed=subjects)
    node_ms = []
    for h in range(2, 2 + repeat):
        p = subjects[h % n]
        t = time.perf_counter()
        idx.execute_block(h, [(row, (p, h, os.urandom(12), ct, h, os.urandom(32)))], changed=[p])
        node_ms.append((time.perf_counter() - t) * 1000)
    bare_ms = []
    for h in range(2 + repeat, 2 + 2 * repeat):
        p = subjects[h % n]
        t = time.perf_counter()
        idx.execute_block(h, [(row, (p, h, os.urandom(12), ct, h, os.urandom(32)))])
        bare_ms.append((time.perf_counter() - t) * 1000)
    idx.close()
    records = [{"pseudonym": p.hex(), "version": 1, "status": "live", "height": 1, "tx_hash": os.urandom(32).hex(),
                "nonce": base64.b64encode(os.urandom(12)).decode(), "ciphertext": base64.b64encode(ct).decode()}
               for p in subjects]
    wl = Watchlist({}, "bench")
    t = time.perf_counter()
    state = wl.state_after(records)
    Watchlist.digest_of(state)
    full_ms = (time.perf_counter() - t) * 1000
    wl.commit(state, [], 1)  # a confirmed state of n subjects; then one changed record, as an incremental sync
    t = time.perf_counter()
    Watchlist.digest_of(wl.state_after(records[:1]))
    incr_ms = (time.perf_counter() - t) * 1000
    print(f"{n} subjects: node block changing one subject {statistics.median(node_ms):.1f} ms median "
          f"(the same block without a digest {statistics.median(bare_ms):.1f} ms); pipeline digest of a full "
          f"sync {full_ms:.0f} ms, of an incremental sync {incr_ms:.1f} ms")


if __name__ == "__main__":
    sys.exit(main())
