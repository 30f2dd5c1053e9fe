"""Long decoder fuzz run: random and mutated byte strings into every ledger decoder.

Every input must either raise DecodeError or decode to an object whose encoding is byte-identical to the
input (no crash, no non-canonical accept). The unit test runs 100,000 inputs; this runs as many as asked.

    python bench/fuzz_decoders.py --inputs 1000000 --seed 1   # writes bench/results/fuzz_decoders.json
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

from tests.ledger.types.test_block import run_fuzz  # noqa: E402  (shares the mutation engine with the unit test)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--inputs", type=int, default=1_000_000)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--chunk", type=int, default=50_000)
    ap.add_argument("--out", type=pathlib.Path, default=ROOT / "bench" / "results" / "fuzz_decoders.json")
    args = ap.parse_args()
    t0 = time.monotonic()
    done = accepted = 0
    chunk_seed = args.seed
    while done < args.inputs:
        n = min(args.chunk, args.inputs - done)
        stats = run_fuzz(seed=chunk_seed, count=n)  # raises AssertionError on any violation
        done += n
        accepted += stats["accepted"]
        chunk_seed += 1
        print(f"{done} inputs, {accepted} canonical accepts, {time.monotonic() - t0:.1f} s", flush=True)
    result = {"inputs": done, "canonical_accepts": accepted, "crashes": 0, "non_canonical_accepts": 0,
              "seconds": round(time.monotonic() - t0, 1), "seed": args.seed, "python": platform.python_version()}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
