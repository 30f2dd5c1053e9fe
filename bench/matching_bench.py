"""Watchlist matching time per face against N enrolled templates (target: <= 2 ms per face at 100,000).

Templates are random unit vectors in 128-d (SFace's dimension; matching cost does not depend on the values)
grouped into subjects of ``--per-subject`` templates; queries are perturbed copies of enrolled templates so
that the decision path (threshold, margin) runs as in production. BLAS threads are pinned (default 1, the
pipeline's budget per worker) before numpy is imported. Prints a table and writes JSON.

    python bench/matching_bench.py [--sizes 1000,10000,100000] [--batches 1,3,10,16] [--threads 1] [--runs 200]

One query alone is memory-bound (it streams the whole 100,000 x 128 float32 matrix, 51 MB, once); the faces
of a frame are matched in one call, which turns it into a compute-bound matrix product.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import pathlib
import platform
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default="1000,10000,100000")
    ap.add_argument("--batches", default="1,3,10,16", help="faces matched per call (one frame's faces)")
    ap.add_argument("--per-subject", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--runs", type=int, default=200)
    ap.add_argument("--json", default=str(ROOT / "bench" / "results" / "matching.json"))
    args = ap.parse_args(argv)
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = str(args.threads)

    import numpy as np

    from pipelines.matching import MatchConfig, l2_normalise
    from pipelines.watchlist_index import Subject, WatchlistIndex

    rng = np.random.default_rng(0)
    cfg = MatchConfig()
    rows = []
    for n in (int(s) for s in args.sizes.split(",")):
        n_subjects = max(1, n // args.per_subject)
        t0 = time.perf_counter()
        templates = l2_normalise(rng.standard_normal((n_subjects * args.per_subject, 128)).astype(np.float32))
        entries = [(Subject(i.to_bytes(32, "big"), 50, False),
                    templates[i * args.per_subject:(i + 1) * args.per_subject]) for i in range(n_subjects)]
        index = WatchlistIndex.build(entries, height=1, synced_at=time.time())
        build_s = time.perf_counter() - t0
        for batch in (int(b) for b in args.batches.split(",")):
            picks = rng.integers(0, templates.shape[0], size=(args.runs, batch))
            noise = rng.standard_normal((args.runs, batch, 128)).astype(np.float32) * 0.06
            queries = l2_normalise(templates[picks] + noise)
            index.match(queries[0], cfg)  # warm-up
            times, hits = [], 0
            for r in range(args.runs):
                t = time.perf_counter()
                res = index.match(queries[r], cfg)
                times.append(time.perf_counter() - t)
                hits += sum(1 for x, p in zip(res, picks[r]) if x.matched and x.subject == p // args.per_subject)
            times.sort()
            per_face_ms = [1000 * t / batch for t in times]
            row = {"templates": int(index.templates.shape[0]), "subjects": n_subjects, "batch": batch,
                   "per_face_ms_median": round(per_face_ms[len(per_face_ms) // 2], 4),
                   "per_face_ms_p95": round(per_face_ms[int(len(per_face_ms) * 0.95)], 4),
                   "call_ms_median": round(1000 * times[len(times) // 2], 4),
                   "correct_matches": hits / (args.runs * batch), "index_build_s": round(build_s, 3),
                   "matrix_mb": round(index.templates.nbytes / 1e6, 1),
                   "meets_2ms_target": per_face_ms[int(len(per_face_ms) * 0.95)] <= 2.0}
            rows.append(row)
            print(f"{row['templates']:>7} templates  batch {batch:>2}: {row['per_face_ms_median']:.3f} ms/face "
                  f"median, {row['per_face_ms_p95']:.3f} p95, correct {row['correct_matches']:.3f}, "
                  f"build {build_s:.2f} s")
    out = {"bench": "matching", "when": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
           "machine": {"python": platform.python_version(), "cpu": platform.processor() or platform.machine(),
                       "cores": os.cpu_count(), "blas_threads": args.threads,
                       "load_average_1m": round(os.getloadavg()[0], 2)},
           "config": {"threshold": cfg.threshold, "margin": cfg.margin, "per_subject": args.per_subject,
                      "runs": args.runs},
           "results": rows}
    path = pathlib.Path(args.json)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
