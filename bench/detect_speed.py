"""Per-frame detection time (ms) and faces found, for each detector, thread count and frame size.

Frames: 9 copies of the astronaut photo (a real face) at widths from 5 % to 30 % of the frame width on a real
background, so the count found shows what each setting misses. Frames above the detector's max side
(1920 px by default) run as tiles plus a downscaled pass.

    python bench/detect_speed.py [--runs 15] [--detectors yunet:0,yunet,centerface] [--threads 1,2]

A detector is ``NAME`` (its default: YuNet with the 2x tiny-face pass, CenterFace alone) or ``NAME:FACTOR``
(tiny-face pass factor; 0 = the model alone).
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import pathlib
import platform
import statistics
import sys
import time

import cv2
import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pipelines.models.detector import load_detector  # noqa: E402

SIZES = {"360p": (640, 360), "720p": (1280, 720), "1080p": (1920, 1080), "4k": (3840, 2160)}


def scene(width: int, height: int) -> np.ndarray:
    """Nine astronaut copies at several sizes on the skimage 'coffee' photo (no faces)."""
    from skimage import data

    frame = cv2.resize(np.ascontiguousarray(data.coffee()[:, :, ::-1]), (width, height))
    face = np.ascontiguousarray(data.astronaut()[:, :, ::-1])
    # the astronaut's face is ~90/512 of the photo's width
    fracs = [0.05, 0.06, 0.08, 0.1, 0.12, 0.15, 0.2, 0.25, 0.3]
    cols = 3
    for i, f in enumerate(fracs):
        side = max(8, int(width * f * 512 / 90 / 3))
        cx, cy = (i % cols) * width // cols, (i // cols) * height // 3
        side = min(side, width // cols, height // 3)
        frame[cy:cy + side, cx:cx + side] = cv2.resize(face, (side, side), interpolation=cv2.INTER_AREA)
    return frame


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=15)
    ap.add_argument("--detectors", default="yunet:0,yunet,centerface")
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--sizes", default="360p,720p,1080p,4k")
    ap.add_argument("--json", default=str(ROOT / "bench" / "results" / "detect_speed.json"))
    args = ap.parse_args(argv)
    results = []
    for spec in args.detectors.split(","):
        name, _, factor = spec.partition(":")
        for threads in (int(t) for t in args.threads.split(",")):
            det = load_detector(name, threads=threads, tiny_factor=float(factor) if factor else None)
            for size in args.sizes.split(","):
                if name == "centerface" and size == "4k":
                    continue  # seconds per frame on this box: not a setting anyone should run
                w, h = SIZES[size]
                frame = scene(w, h)
                det.detect(frame)  # warm-up
                runs = args.runs if spec == "yunet:0" or size in ("360p", "720p") else max(3, args.runs // 5)
                times, found = [], 0
                for _ in range(runs):
                    t = time.perf_counter()
                    found = len(det.detect(frame))
                    times.append((time.perf_counter() - t) * 1000)
                row = {"detector": det.model_id, "threads": threads, "size": size, "width": w, "height": h,
                       "threshold": det.score_threshold, "median_ms": round(statistics.median(times), 2),
                       "min_ms": round(min(times), 2), "runs": runs, "faces_found": found, "faces_present": 9}
                results.append(row)
                print(f"{row['detector']:22s} thr={threads} {size:6s} median {row['median_ms']:8.1f} ms  "
                      f"min {row['min_ms']:8.1f} ms  found {found}/9", flush=True)
    out = {"generated": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
           "machine": platform.platform(), "cpus": __import__("os").cpu_count(), "results": results}
    pathlib.Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    pathlib.Path(args.json).write_text(json.dumps(out, indent=1), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
