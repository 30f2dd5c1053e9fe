"""Watchlist matching time per face against N enrolled templates (target: <= 2 ms per face at 100,000).

Templates are random unit vectors in 128-d (SFace's dimension; matching cost does not depend on the values)
grouped into subjects of ``--per-subject`` templates; queries are perturbed copies of enrolled templates so
that the decision path (threshold, margin) runs as in production. BLAS threads are pinned (default 1, the
pipeline's budget per worker) before numpy is imported. Prints a table and writes JSON.

    python bench/matching_bench.py [--sizes 1000,10000,100000] [--batches 1,3,10,16] [--threads 1] [--runs 200]
                                   [--evict-mb 0]

Two paths run side by side on the same queries, alternating in chunks of 10 calls so that load from other
processes hits both alike: the float32 reference (:func:`pipelines.recognition.matching.match`; one query streams the whole
100,000 x 128 float32 matrix, 51 MB) and the int8 scan with float32 rescoring
(:class:`pipelines.recognition.matching_int8.Int8Scan`, 12.8 MB per query), built at every size so the cut-over
(``FAST_SCAN_MIN_TEMPLATES``) can be read off the table. ``index_path`` says which one
``WatchlistIndex.match`` uses at that size; ``int8_build_s`` is the extra cost of a watchlist sync. Every
call's decisions (identity and subject) are compared between the two paths. ``--evict-mb 64`` writes a
64 MB buffer before every timed call, so that each call starts with the cache holding other work's data.
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
CHUNK = 10
sys.path.insert(0, str(ROOT))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default="1000,10000,100000")
    ap.add_argument("--batches", default="1,3,10,16", help="faces matched per call (one frame's faces)")
    ap.add_argument("--per-subject", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1, help="BLAS threads of the float32 path")
    ap.add_argument("--scan-threads", type=int, default=None,
                    help="onnxruntime threads of the int8 scan (default: the index's, DEFAULT_SCAN_THREADS)")
    ap.add_argument("--runs", type=int, default=200)
    ap.add_argument("--evict-mb", type=int, default=0,
                    help="before every timed call, write a buffer of this size (e.g. 64: more than the L3 cache)")
    ap.add_argument("--json", default=str(ROOT / "bench" / "results" / "matching.json"))
    args = ap.parse_args(argv)
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = str(args.threads)

    import numpy as np

    from pipelines.recognition.matching import MatchConfig, l2_normalise, match
    from pipelines.recognition.matching_int8 import DEFAULT_SCAN_THREADS, Int8Scan
    from pipelines.recognition.watchlist_index import FAST_SCAN_MIN_TEMPLATES, Subject, WatchlistIndex

    def pct(ms: list[float], p: float) -> float:
        return round(sorted(ms)[min(len(ms) - 1, int(len(ms) * p))], 4)

    if args.scan_threads is None:
        args.scan_threads = DEFAULT_SCAN_THREADS
    rng = np.random.default_rng(0)
    cfg = MatchConfig()
    evict = np.zeros(args.evict_mb << 17, np.float64) if args.evict_mb > 0 else None
    rows = []
    print(f"{'templates':>9} {'batch':>5} | {'float32 ms/face':>16} | {'int8 ms/face':>16} | index   | "
          f"{'same':>4} {'correct':>7} | build s (int8)")
    print(f"{'':>9} {'':>5} | {'median':>7} {'p95':>8} | {'median':>7} {'p95':>8} |")
    for n in (int(s) for s in args.sizes.split(",")):
        n_subjects = max(1, n // args.per_subject)
        templates = l2_normalise(rng.standard_normal((n_subjects * args.per_subject, 128)).astype(np.float32))
        entries = [(Subject(i.to_bytes(32, "big"), 50, False),
                    templates[i * args.per_subject:(i + 1) * args.per_subject]) for i in range(n_subjects)]
        t0 = time.perf_counter()
        index = WatchlistIndex.build(entries, height=1, synced_at=time.time())
        build_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        scan = Int8Scan(index.templates, index.offsets, index._owners, threads=args.scan_threads)
        int8_build_s = time.perf_counter() - t0
        index_path = "int8" if index.scan is not None else "float32"

        def float32_path(q: np.ndarray) -> list:
            return match(q, index.templates, index.offsets, cfg, index._owners)

        for batch in (int(b) for b in args.batches.split(",")):
            picks = rng.integers(0, templates.shape[0], size=(args.runs, batch))
            noise = rng.standard_normal((args.runs, batch, 128)).astype(np.float32) * 0.06
            queries = l2_normalise(templates[picks] + noise)
            paths = {"float32": float32_path, "int8": lambda q: scan.match(q, cfg)}
            ms: dict[str, list[float]] = {"float32": [], "int8": []}
            got: dict[str, list] = {"float32": [None] * args.runs, "int8": [None] * args.runs}
            # Chunks of CHUNK calls per path, alternating: each path runs as it would alone (its own data in
            # cache) while slow spells of a shared machine fall on both alike.
            for c0 in range(0, args.runs, CHUNK):
                names = ("float32", "int8") if (c0 // CHUNK) % 2 == 0 else ("int8", "float32")
                for name in names:
                    paths[name](queries[c0])  # warm-up
                    for r in range(c0, min(c0 + CHUNK, args.runs)):
                        if evict is not None:
                            evict += 1  # stream a buffer larger than L3: the call starts from DRAM
                        t = time.perf_counter()
                        got[name][r] = paths[name](queries[r])
                        ms[name].append(1000 * (time.perf_counter() - t) / batch)
            same = sum((a.identity, a.subject) == (b.identity, b.subject)
                       for r in range(args.runs) for a, b in zip(got["float32"][r], got["int8"][r]))
            hits = sum(1 for r in range(args.runs) for x, p in zip(got["int8"][r], picks[r])
                       if x.matched and x.subject == p // args.per_subject)
            row = {"templates": int(index.templates.shape[0]), "subjects": n_subjects, "batch": batch,
                   "float32_per_face_ms_median": pct(ms["float32"], 0.5),
                   "float32_per_face_ms_p95": pct(ms["float32"], 0.95),
                   "int8_per_face_ms_median": pct(ms["int8"], 0.5),
                   "int8_per_face_ms_p95": pct(ms["int8"], 0.95),
                   "index_path": index_path,
                   "decisions_identical": same == args.runs * batch,
                   "correct_matches": hits / (args.runs * batch),
                   "index_build_s": round(build_s, 3), "int8_build_s": round(int8_build_s, 3),
                   "matrix_mb": round(index.templates.nbytes / 1e6, 1),
                   "int8_mb": round(scan.code_bytes / 1e6, 1)}
            path_p95 = row[f"{index_path}_per_face_ms_p95"]
            row["meets_2ms_target"] = path_p95 <= 2.0
            rows.append(row)
            print(f"{row['templates']:>9} {batch:>5} | {row['float32_per_face_ms_median']:>7.3f} "
                  f"{row['float32_per_face_ms_p95']:>8.3f} | {row['int8_per_face_ms_median']:>7.3f} "
                  f"{row['int8_per_face_ms_p95']:>8.3f} | {index_path:<7} | {str(row['decisions_identical']):>4} "
                  f"{row['correct_matches']:>7.3f} | {build_s:.3f} ({int8_build_s:.3f})")
    out = {"bench": "matching", "when": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
           "machine": {"python": platform.python_version(), "cpu": platform.processor() or platform.machine(),
                       "cores": os.cpu_count(), "blas_threads": args.threads, "scan_threads": args.scan_threads,
                       "load_average_1m": round(os.getloadavg()[0], 2)},
           "config": {"threshold": cfg.threshold, "margin": cfg.margin, "per_subject": args.per_subject,
                      "runs": args.runs, "evict_mb": args.evict_mb, "fast_scan_min_templates": FAST_SCAN_MIN_TEMPLATES},
           "results": rows}
    path = pathlib.Path(args.json)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
