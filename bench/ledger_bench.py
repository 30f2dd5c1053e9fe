"""Ledger throughput and finality latency: 4 real nodes on this machine, N signed transactions.

Transactions (anchor kind, 48-byte payloads, signed by the pipeline key) are pre-signed, then submitted in
batches over HTTP, open loop at ``--rate`` tx/s (0 = as fast as the nodes accept), spread round-robin over
all nodes. A follower polls node 0 for new blocks; a transaction's finality latency is the time from the
start of its submission request to the moment its block is seen finalized. Reports sustained finalized tx/s
(transactions / (last commit - first submit)), latency p50/p99, and writes bench/results/ledger_bench.json.

    python bench/ledger_bench.py [--txs 10000] [--rate 1200] [--batch 50] [--profile]

``--profile`` runs node 0 under cProfile and prints where its time goes.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ledger.client.api_client import LedgerClient  # noqa: E402
from ledger.ops.cluster import Cluster, init_cluster  # noqa: E402
from ledger.types import crypto  # noqa: E402
from ledger.types.block import TX_ANCHOR, Transaction  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"


def percentile(xs: list[float], p: float) -> float:
    xs = sorted(xs)
    if not xs:
        return float("nan")
    k = min(len(xs) - 1, max(0, int(round(p / 100 * (len(xs) - 1)))))
    return xs[k]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--txs", type=int, default=10_000)
    ap.add_argument("--rate", type=float, default=1200.0, help="offered load, tx/s (0 = unthrottled)")
    ap.add_argument("--batch", type=int, default=50, help="transactions per HTTP request")
    ap.add_argument("--nodes", type=int, default=4)
    ap.add_argument("--senders", type=int, default=4, help="submitting threads")
    ap.add_argument("--profile", action="store_true", help="profile node 0 with cProfile")
    ap.add_argument("--dir", type=Path, default=None)
    ap.add_argument("--out", type=Path, default=RESULTS / "ledger_bench.json")
    args = ap.parse_args(argv)

    d = args.dir or Path(tempfile.mkdtemp(prefix="ledger-bench-"))
    init_cluster(d, args.nodes, force=True, overrides={"block_interval": 1.0})
    cluster = Cluster(d)
    prof_path = d / "node0.prof"
    try:
        if args.profile:  # only node 0 runs under the profiler
            os.environ["RISKMASK_LEDGER_PROFILE"] = str(prof_path)
            cluster.start_node(0)
            os.environ.pop("RISKMASK_LEDGER_PROFILE", None)
        cluster.up(wait_height=1, timeout_s=120)
        return run(cluster, args, prof_path if args.profile else None)
    finally:
        cluster.down(timeout_s=30)


def run(cluster: Cluster, args: argparse.Namespace, prof_path: Path | None) -> int:
    key = crypto.PrivateKey.from_seed(cluster.key_seed("pipeline"))
    chain_id = cluster.genesis.chain_id
    t0 = time.perf_counter()
    now = int(time.time() * 1000)
    txs = [Transaction.create(key, chain_id, TX_ANCHOR, i, now, os.urandom(48)).encode() for i in range(args.txs)]
    sign_s = time.perf_counter() - t0
    hashes = [crypto.sha256(t).hex() for t in txs]
    batches = [list(range(i, min(i + args.batch, len(txs)))) for i in range(0, len(txs), args.batch)]
    submit_at: dict[str, float] = {}
    seen_at: dict[str, float] = {}
    errors: list[str] = []
    lock = threading.Lock()
    stop = threading.Event()
    start_height = cluster.heights([0])[0]

    def follower() -> None:
        c = LedgerClient(cluster.api_address(0), cluster.key_seed("auditor"), timeout_s=30)
        h = start_height
        while not stop.is_set():
            top = c.status()["height"]
            while h < top:
                blocks = c.blocks(h + 1, min(top, h + 100))
                t = time.perf_counter()
                for b in blocks:
                    for x in b["tx_hashes"]:
                        seen_at.setdefault(x, t)
                h += len(blocks)
            if len(seen_at) >= len(txs):
                return
            time.sleep(0.01)

    def sender(k: int) -> None:
        clients = [LedgerClient(cluster.api_address(i), key.seed(), timeout_s=60) for i in range(cluster.n)]
        mine = batches[k::args.senders]
        per_batch = (args.batch * args.senders / args.rate) if args.rate > 0 else 0.0
        t_start = time.perf_counter()
        for j, b in enumerate(mine):
            if per_batch:
                wait = t_start + j * per_batch - time.perf_counter()
                if wait > 0:
                    time.sleep(wait)
            t = time.perf_counter()
            for i in b:
                submit_at[hashes[i]] = t
            c = clients[(k + j) % len(clients)]
            try:
                res = c.submit_many([txs[i] for i in b])
                if res["rejected"]:
                    with lock:
                        errors.extend(r["error"] for r in res["rejected"])
            except Exception as exc:  # keep going; reported below
                with lock:
                    errors.append(str(exc))

    fthread = threading.Thread(target=follower, daemon=True)
    fthread.start()
    t_submit = time.perf_counter()
    threads = [threading.Thread(target=sender, args=(k,)) for k in range(args.senders)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    submit_s = time.perf_counter() - t_submit
    fthread.join(timeout=max(60.0, args.txs / 200))
    stop.set()
    done = [h for h in hashes if h in seen_at]
    lat = [seen_at[h] - submit_at[h] for h in done]
    first = min(submit_at.values())
    last = max(seen_at[h] for h in done) if done else float("nan")
    tps = len(done) / (last - first) if done else 0.0
    end_height = cluster.heights([0])[0]
    result = {
        "nodes": cluster.n, "txs": len(txs), "finalized": len(done), "offered_rate": args.rate,
        "batch": args.batch, "senders": args.senders, "submit_seconds": round(submit_s, 3),
        "sustained_finalized_tps": round(tps, 1),
        "latency_p50_ms": round(percentile(lat, 50) * 1000, 1), "latency_p99_ms": round(percentile(lat, 99) * 1000, 1),
        "latency_max_ms": round(max(lat) * 1000, 1) if lat else None,
        "blocks": end_height - start_height, "errors": len(errors), "first_errors": errors[:3],
        "targets": {"tps": 1000, "p50_ms": 300, "p99_ms": 1000},
        "presign_seconds": round(sign_s, 2), "cpus": os.cpu_count(),
        "load_avg": os.getloadavg(),
    }
    print(json.dumps(result, indent=2))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    if prof_path is not None:
        cluster.kill_node(0, 15, 30)
        if prof_path.exists():
            import pstats

            pstats.Stats(str(prof_path)).sort_stats("cumulative").print_stats(30)
            pstats.Stats(str(prof_path)).sort_stats("tottime").print_stats(25)
    return 0 if len(done) == len(txs) else 1


if __name__ == "__main__":
    sys.exit(main())
