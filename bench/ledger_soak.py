"""Ledger soak: random kill -9 / restart cycles on a real 4-node cluster while transactions flow.

Each cycle kills one random node with SIGKILL (sometimes while it is mid-block), keeps submitting signed
transactions to live nodes, waits a random moment, restarts the node and, every few cycles, lets it catch
up. Transactions whose node died before they were gossiped are resubmitted, as a real client would. At the
end every node must agree, and the script checks:

* every node's chain is a prefix of the others' (block hashes at every common height are identical);
* no acknowledged transaction is lost: every transaction any node ever reported as committed is in every
  node's chain, exactly once; every submitted transaction is eventually committed;
* no validator double-signed: no node recorded equivocation evidence;
* every stored block's commit certificate verifies against genesis (what an auditor checks).

    python bench/ledger_soak.py --cycles 100 [--seed 1] [--dir DIR]

Writes bench/results/ledger_soak.json; exit 0 only when every check holds.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import random
import signal
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ledger.client.api_client import ApiError, LedgerClient, Unavailable  # noqa: E402
from ledger.errors import LedgerError  # noqa: E402
from ledger.ops.cluster import Cluster, init_cluster  # noqa: E402
from ledger.types import crypto  # noqa: E402
from ledger.types.block import TX_ANCHOR, CommitCertificate, Transaction, verify_commit  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
SOAK_OVERRIDES = {"block_interval": 0.3, "timeout_propose": 1.5, "timeout_prevote": 0.5,
                  "timeout_precommit": 0.5, "timeout_max": 4.0}


class Soak:
    def __init__(self, cluster: Cluster, rng: random.Random, log=print) -> None:
        self.c = cluster
        self.rng = rng
        self.log = log
        self.key = crypto.PrivateKey.from_seed(cluster.key_seed("pipeline"))
        self.submitted: dict[str, bytes] = {}
        self.acked: set[str] = set()  # reported committed by some node
        self.nonce = 0
        self.bad_certs = 0

    def client(self, i: int, role: str = "pipeline") -> LedgerClient:
        return LedgerClient(self.c.api_address(i), self.c.key_seed(role), timeout_s=10.0)

    def live(self) -> list[int]:
        return [i for i in range(self.c.n) if self.c.pid(i) is not None]

    def submit_some(self, count: int) -> None:
        now = int(time.time() * 1000)
        txs = []
        for _ in range(count):
            self.nonce += 1
            txs.append(Transaction.create(self.key, self.c.genesis.chain_id, TX_ANCHOR, self.nonce, now,
                                          os.urandom(32)).encode())
        node = self.rng.choice(self.live())
        try:
            with self.client(node) as cl:
                res = cl.submit_many(txs)
            for h in res["accepted"]:
                self.submitted[h] = txs[[crypto.sha256(t).hex() for t in txs].index(h)]
        except (Unavailable, ApiError) as exc:
            self.log(f"  submit to node {node} failed ({exc}); will retry later")

    def poll_acks(self) -> None:
        """Record which submitted transactions some live node reports committed; resubmit lost ones."""
        pending = [h for h in self.submitted if h not in self.acked]
        if not pending:
            return
        node = self.rng.choice(self.live())
        lost = []
        try:
            with self.client(node, "auditor") as cl:
                for h in pending:
                    st = cl.tx(h)["status"]
                    if st == "committed":
                        self.acked.add(h)
                    elif st == "unknown":
                        lost.append(h)
            if lost:
                with self.client(node) as cl:
                    cl.submit_many([self.submitted[h] for h in lost])
        except (Unavailable, ApiError):
            pass

    def cycle(self, k: int) -> None:
        victim = self.rng.randrange(self.c.n)
        self.submit_some(self.rng.randint(5, 40))
        time.sleep(self.rng.uniform(0.0, 0.6))
        self.c.kill_node(victim, signal.SIGKILL)
        self.submit_some(self.rng.randint(5, 40))
        time.sleep(self.rng.uniform(0.1, 1.5))
        self.c.start_node(victim)
        self.poll_acks()
        if k % 5 == 4:  # let the cluster settle now and then, so faults do not pile up beyond f
            self.wait_all_at(max(self.c.heights().values()), 90)

    def wait_all_at(self, height: int, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            hs = self.c.heights()
            if len(hs) == self.c.n and min(hs.values()) >= height:
                return
            time.sleep(0.2)
        raise RuntimeError(f"nodes did not all reach height {height}: {self.c.heights()}")

    def chain(self, i: int) -> tuple[list[str], list[str]]:
        """Block hashes and tx hashes of node ``i``; counts certificates an auditor would reject."""
        hashes, txs = [], []
        with self.client(i, "auditor") as cl:
            top = cl.status()["height"]
            h = 1
            while h <= top:
                blocks = cl.blocks(h, min(top, h + 99))
                if not blocks:
                    break
                for b in blocks:
                    hashes.append(b["hash"])
                    txs.extend(b["tx_hashes"])
                    cert = CommitCertificate.decode(base64.b64decode(b["cert"]))
                    try:
                        verify_commit(cert, self.c.genesis.chain_id, self.c.genesis.public_keys(),
                                      bytes.fromhex(b["hash"]), b["height"])
                    except (LedgerError, ValueError):
                        self.bad_certs += 1
                h += len(blocks)
        return hashes, txs

    def final_checks(self) -> dict:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            self.poll_acks()
            if len(self.acked) == len(self.submitted):
                break
            time.sleep(0.5)
        self.wait_all_at(max(self.c.heights().values()), 120)
        chains = {i: self.chain(i) for i in range(self.c.n)}
        longest = max((c[0] for c in chains.values()), key=len)
        prefix_ok = all(c[0] == longest[:len(c[0])] for c in chains.values())
        lost, dups = set(), 0
        for i, (_, txs) in chains.items():
            seen = set(txs)
            dups += len(txs) - len(seen)
            lost |= {h for h in self.acked if h not in seen}
        evidence = []
        for i in range(self.c.n):
            with self.client(i, "auditor") as cl:
                evidence += cl.evidence()
        return {"prefix_ok": prefix_ok, "heights": {i: len(c[0]) for i, c in chains.items()},
                "submitted": len(self.submitted), "acknowledged": len(self.acked),
                "never_committed": len(self.submitted) - len(self.acked), "lost_acknowledged": len(lost),
                "duplicate_txs": dups, "double_sign_evidence": len(evidence), "bad_certificates": self.bad_certs}


def run(directory: Path, cycles: int, seed: int, log=print) -> dict:
    init_cluster(directory, 4, force=True, overrides=SOAK_OVERRIDES)
    cluster = Cluster(directory)
    rng = random.Random(seed)
    t0 = time.monotonic()
    try:
        cluster.up(wait_height=1, timeout_s=120)
        soak = Soak(cluster, rng, log)
        for k in range(cycles):
            soak.cycle(k)
            if k % 10 == 0:
                log(f"cycle {k + 1}/{cycles}: heights {cluster.heights()}, submitted {len(soak.submitted)}, "
                    f"committed {len(soak.acked)}")
        result = soak.final_checks()
    finally:
        cluster.down(timeout_s=30)
    result.update({"cycles": cycles, "seed": seed, "seconds": round(time.monotonic() - t0, 1)})
    result["ok"] = (result["prefix_ok"] and result["lost_acknowledged"] == 0 and result["duplicate_txs"] == 0
                    and result["bad_certificates"] == 0
                    and result["double_sign_evidence"] == 0 and result["never_committed"] == 0)
    return result


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="kill -9 / restart soak of a 4-node ledger cluster")
    ap.add_argument("--cycles", type=int, default=100)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--dir", type=Path, default=None)
    ap.add_argument("--out", type=Path, default=RESULTS / "ledger_soak.json")
    args = ap.parse_args(argv)
    d = args.dir or Path(tempfile.mkdtemp(prefix="ledger-soak-"))
    result = run(d, args.cycles, args.seed)
    print(json.dumps(result, indent=2))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
