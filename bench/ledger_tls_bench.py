"""Ledger throughput and finality latency with the API over HTTPS (``ledger init --api-tls``) beside plain HTTP.

Runs :func:`ledger_bench.run` (same pre-signed anchor transactions, same open-loop senders, same follower) on
two fresh 4-node clusters, one after the other on this machine: first plain HTTP, then HTTPS with the cluster
CA (``$RISKMASK_LEDGER_CA``), and writes both results to bench/results/ledger_tls_bench.json.

    python bench/ledger_tls_bench.py [--txs 6000] [--rate 2000] [--batch 50] [--senders 4]

Each sender keeps one keep-alive connection per node, so a TLS handshake happens once per connection; what
HTTPS adds per request is record encryption of the batch bodies and answers.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import ledger_bench  # noqa: E402

from ledger.client.api_client import CA_ENV  # noqa: E402
from ledger.ops.cluster import Cluster, init_cluster  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"


def _one(tls: bool, args: argparse.Namespace) -> dict:
    d = Path(tempfile.mkdtemp(prefix=f"ledger-{'tls' if tls else 'plain'}-bench-"))
    init_cluster(d, args.nodes, force=True, overrides={"block_interval": 1.0}, api_tls=tls)
    cluster = Cluster(d)
    saved = os.environ.pop(CA_ENV, None)
    if tls:
        os.environ[CA_ENV] = str(cluster.ca_file)
    out = d / "result.json"
    run_args = argparse.Namespace(txs=args.txs, rate=args.rate, batch=args.batch, senders=args.senders, out=out)
    try:
        cluster.up(wait_height=1, timeout_s=120)
        assert all(v.api_tls == tls for v in cluster.genesis.validators)
        code = ledger_bench.run(cluster, run_args, None)
        result = json.loads(out.read_text())
        result["api"] = "https" if tls else "http"
        result["all_finalized"] = code == 0
        return result
    finally:
        cluster.down(timeout_s=30)
        os.environ.pop(CA_ENV, None)
        if saved is not None:
            os.environ[CA_ENV] = saved


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--txs", type=int, default=6000)
    ap.add_argument("--rate", type=float, default=2000.0, help="offered load, tx/s")
    ap.add_argument("--batch", type=int, default=50)
    ap.add_argument("--nodes", type=int, default=4)
    ap.add_argument("--senders", type=int, default=4)
    ap.add_argument("--out", type=Path, default=RESULTS / "ledger_tls_bench.json")
    args = ap.parse_args(argv)
    results = [_one(False, args), _one(True, args)]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    for r in results:
        print(f"{r['api']:5s} finalized {r['finalized']}/{r['txs']} at {r['sustained_finalized_tps']} tx/s, "
              f"p50 {r['latency_p50_ms']} ms, p99 {r['latency_p99_ms']} ms, errors {r['errors']}, "
              f"load {r['load_avg'][0]:.1f}")
    return 0 if all(r["all_finalized"] for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
