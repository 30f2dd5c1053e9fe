"""Safety and liveness of the pure consensus state machine over many random network schedules.

Each schedule is a 4-validator in-memory network (tests/ledger_sim.py, virtual time) with one of:
reordering/duplication, message drops, one Byzantine validator (equivocation, bad signatures, wrong-parent
and bad-root blocks), or random crash/restart of validators from their persisted signed messages. Every
decision and every signed broadcast is checked (no two blocks at one height, no honest double-sign); a
schedule passes when all honest validators reach --heights within the virtual time limit.

    python bench/consensus_schedules.py --schedules 1000   # writes bench/results/consensus_schedules.json
"""

from __future__ import annotations

import argparse
import json
import logging
import pathlib
import random
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.ledger_sim import Network  # noqa: E402

KINDS = ("reorder", "drop", "byzantine", "byzantine+drop", "crash-restart")


def run_schedule(seed: int, heights: int) -> dict:
    rng = random.Random(seed)
    kind = KINDS[seed % len(KINDS)]
    kw: dict = {}
    if kind == "reorder":
        kw = dict(max_delay=rng.choice((0.01, 0.2, 0.8)), dup=0.3)
    elif kind == "drop":
        kw = dict(drop=rng.uniform(0.05, 0.35), dup=0.1)
    elif kind == "byzantine":
        kw = dict(byzantine=frozenset({rng.randrange(4)}), dup=0.1)
    elif kind == "byzantine+drop":
        kw = dict(byzantine=frozenset({rng.randrange(4)}), drop=0.1, max_delay=0.3)
    else:
        kw = dict(drop=0.05, dup=0.1)
    net = Network(4, seed=seed, txs=20, **kw)
    if kind == "crash-restart":
        down = None
        for _ in range(20):
            net.run(until=net.now + rng.uniform(0.05, 0.6))
            if down is None and rng.random() < 0.5:
                down = rng.randrange(4)
                net.crash(down)
            elif down is not None:
                net.restart(down)
                down = None
        if down is not None:
            net.restart(down)
    start = net.now
    net.run(until=net.now + 600, stop_height=heights)  # SafetyViolation propagates
    ok = min(len(m.chain) for m in net.honest_up()) >= heights
    rounds = [b.header.round for b, _ in max(net.nodes, key=lambda m: len(m.chain)).chain]
    return {"seed": seed, "kind": kind, "live": ok, "virtual_s": round(net.now - start, 2),
            "max_round": max(rounds, default=0)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--schedules", type=int, default=1000)
    ap.add_argument("--heights", type=int, default=6)
    ap.add_argument("--first-seed", type=int, default=10_000)
    ap.add_argument("--out", type=pathlib.Path, default=ROOT / "bench" / "results" / "consensus_schedules.json")
    args = ap.parse_args()
    logging.disable(logging.WARNING)  # Byzantine runs log every equivocation
    t0 = time.monotonic()
    results = [run_schedule(s, args.heights) for s in range(args.first_seed, args.first_seed + args.schedules)]
    per_kind = {}
    for k in KINDS:
        rs = [r for r in results if r["kind"] == k]
        if rs:
            per_kind[k] = {"schedules": len(rs), "live": sum(r["live"] for r in rs),
                           "max_round": max(r["max_round"] for r in rs),
                           "max_virtual_s": max(r["virtual_s"] for r in rs)}
    summary = {"schedules": len(results), "safety_violations": 0, "double_signs": 0,
               "not_live": [r for r in results if not r["live"]], "per_kind": per_kind,
               "heights": args.heights, "wall_s": round(time.monotonic() - t0, 1)}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(summary, indent=2) + "\n")
    print(json.dumps(summary, indent=2))
    return 0 if not summary["not_live"] else 1


if __name__ == "__main__":
    sys.exit(main())
