"""Change-gated detection settings on the CCTV clip: detection ms per 720p frame and ground-truth coverage.

Runs the default detector (YuNet + tiny-face pass, one thread) through :mod:`pipelines.tracking.change_gate` with several
settings, and once on every full frame, over the same frames of ``infra.cctv_scene.default_cctv_clip``. A
ground-truth face counts as covered when a box covers at least half of it. Writes
bench/results/change_gate_bench.json. Usage: ``python bench/change_gate_bench.py [--frames 100]``
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from results_io import host_info, now_utc, write_result  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "change_gate_bench.json"


def covered(gt: tuple[int, int, int, int], dets: list) -> bool:
    x, y, w, h = gt
    return any(max(0.0, min(x + w, d.x + d.w) - max(x, d.x)) * max(0.0, min(y + h, d.y + d.h) - max(y, d.y))
               >= 0.5 * w * h for d in dets)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--frames", type=int, default=100)
    args = ap.parse_args(argv)
    from infra.cctv_scene import default_cctv_clip
    from pipelines.models.detector import load_detector
    from pipelines.tracking.change_gate import ChangeGate, GateConfig, gated_detect

    clip = default_cctv_clip(args.frames)
    det = load_detector("yunet", threads=1)
    det.detect(clip.frames[0])  # warm-up
    settings = {
        "every frame in full": None,
        "refresh 25, 5 bands": GateConfig(refresh_every=25, slices=5),
        "refresh 50, 5 bands": GateConfig(refresh_every=50, slices=5),
        "refresh 50, 10 bands (default)": GateConfig(),
        "refresh 50, 10 bands, threshold 12": GateConfig(threshold=12.0),
    }
    total = sum(len(b) for b in clip.boxes)
    rows = {}
    for name, cfg in settings.items():
        gate = ChangeGate(cfg) if cfg is not None else None
        times, hits = [], 0
        for i, (frame, truth) in enumerate(zip(clip.frames, clip.boxes)):
            start = time.perf_counter()
            if gate is None:
                dets = det.detect(frame)
            else:
                dets, _ = gated_detect(gate, det.detect, frame, i, base_detect=det.base.detect)
            times.append(time.perf_counter() - start)
            hits += sum(covered(g, dets) for g in truth)
        steady = times[1:]  # the first frame is a full detection for every setting
        rows[name] = {"mean_ms": round(1000 * statistics.mean(steady), 1),
                      "p90_ms": round(1000 * sorted(steady)[int(0.9 * len(steady))], 1),
                      "max_ms": round(1000 * max(steady), 1), "covered": hits, "faces": total}
        r = rows[name]
        print(f"{name:36s} mean {r['mean_ms']:6.1f} ms  p90 {r['p90_ms']:6.1f}  max {r['max_ms']:6.1f}  "
              f"covered {hits}/{total}")
    write_result(RESULTS, {"when": now_utc(), "host": host_info(), "frames": args.frames, "rows": rows})
    return 0


if __name__ == "__main__":
    sys.exit(main())
