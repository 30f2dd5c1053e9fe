"""CPU cost of the pure ledger core: encoding, Merkle roots, signatures and consensus per finalized tx.

Runs 4 consensus state machines in one process over an in-memory network (no sockets, no disk), each with
its own signature verifier, blocks of --block-txs signed transactions, and reports the CPU seconds the
whole 4-validator cluster spends per finalized block and transaction. On one machine hosting all 4 nodes
that bounds the reachable throughput: 1 / (cpu per tx) * cores.

    python bench/ledger_core_bench.py   # writes bench/results/ledger_core.json
"""

from __future__ import annotations

import argparse
import json
import pathlib
import platform
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from ledger.consensus import BlockContent  # noqa: E402
from ledger.types import crypto, merkle  # noqa: E402
from ledger.types.block import Block, Transaction  # noqa: E402
from tests.ledger_sim import Network, client_txs  # noqa: E402


def timed(fn, repeat: int) -> float:
    t = time.perf_counter()
    for _ in range(repeat):
        fn()
    return (time.perf_counter() - t) / repeat


def micro(block_txs: int) -> dict:
    txs = client_txs(block_txs)
    tx_bytes = [t.encode() for t in txs]
    block = Block.build("bench", 1, 0, 0, b"\0" * 32, 1, b"\0" * 32, txs)
    data = block.encode()
    key = crypto.PrivateKey.generate()
    signed = crypto.signing_bytes(crypto.DOMAIN_PREVOTE, b"x" * 100, "bench")
    sig = key.sign_signed(signed)
    pk = key.public_key()
    return {
        "tx_encode_us": timed(lambda: txs[0].encode(), 2000) * 1e6,
        "tx_decode_us": timed(lambda: Transaction.decode(tx_bytes[0]), 2000) * 1e6,
        "block_bytes": len(data),
        "block_encode_ms": timed(block.encode, 20) * 1e3,
        "block_decode_ms": timed(lambda: Block.decode(data), 20) * 1e3,
        "block_validate_basic_ms": timed(block.validate_basic, 20) * 1e3,
        "merkle_root_ms": timed(lambda: merkle.merkle_root(tx_bytes), 20) * 1e3,
        "ed25519_sign_us": timed(lambda: key.sign_signed(signed), 500) * 1e6,
        "ed25519_verify_us": timed(lambda: pk.verify_signed(signed, sig), 500) * 1e6,
    }


def cluster(block_txs: int, heights: int) -> dict:
    txs = block_txs * heights
    net = Network(4, seed=1, txs=0)
    pending = client_txs(txs)
    # Each node verifies tx signatures itself (no shared cache), as separate processes would.
    for node in net.nodes:
        node.sm.verifier = crypto.CachingVerifier()
        verifier = node.sm.verifier
        node.sm.validate_block = lambda b, v=verifier: all(t.verify_signature("sim-chain", v) for t in b.txs)
        for tx in pending:
            node.mempool[tx.hash()] = tx
    for node in net.nodes:
        node.sm.build_block = (lambda h, r, node=node:
                               BlockContent(1_700_000_000_000, list(node.mempool.values())[:block_txs]))
    net._push(0.0, 1, ("txs",))
    t_cpu, t_wall = time.process_time(), time.perf_counter()
    net.run(until=10_000, stop_height=heights)
    cpu, wall = time.process_time() - t_cpu, time.perf_counter() - t_wall
    done = sum(len(b.txs) for b, _ in net.nodes[0].chain)
    return {"heights": min(net.heights()), "txs_finalized": done, "cpu_s": round(cpu, 3),
            "cpu_per_block_ms": round(cpu / max(1, min(net.heights())) * 1e3, 2),
            "cpu_per_tx_us_all_4_nodes": round(cpu / max(1, done) * 1e6, 1),
            "tx_per_cpu_second_all_4_nodes": round(done / cpu, 1), "wall_s": round(wall, 3)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--block-txs", type=int, default=1000)
    ap.add_argument("--heights", type=int, default=5)
    ap.add_argument("--out", type=pathlib.Path, default=ROOT / "bench" / "results" / "ledger_core.json")
    args = ap.parse_args()
    result = {"micro": {k: round(v, 2) for k, v in micro(args.block_txs).items()},
              "cluster": cluster(args.block_txs, args.heights), "block_txs": args.block_txs,
              "python": platform.python_version(), "machine": platform.machine()}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
