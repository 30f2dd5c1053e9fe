"""JPEG decode/encode at 1280x720: OpenCV (the project's codec) against libjpeg-turbo through simplejpeg.

PyTurboJPEG needs the system library libturbojpeg, which these machines do not have; simplejpeg's wheel bundles
the same libjpeg-turbo, so it stands in for "libjpeg-turbo called directly". Rounds alternate the codecs; the
result is the median per call. Usage: ``python bench/jpeg_bench.py [--calls 60] [--rounds 3]``
(``pip install simplejpeg`` first to include it). Writes bench/results/jpeg_bench.json.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Callable

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from results_io import host_info, now_utc, write_result  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "jpeg_bench.json"


def _median_ms(fn: Callable[[int], object], calls: int) -> float:
    times = []
    for i in range(calls):
        start = time.perf_counter()
        fn(i)
        times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--calls", type=int, default=60)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args(argv)
    from infra.cctv_scene import default_cctv_clip

    frames = default_cctv_clip(8).frames
    jpegs = [cv2.imencode(".jpg", f, [int(cv2.IMWRITE_JPEG_QUALITY), 90])[1].tobytes() for f in frames]
    codecs: dict[str, Callable[[int], object]] = {
        "opencv_decode": lambda i: cv2.imdecode(np.frombuffer(jpegs[i % 8], np.uint8), cv2.IMREAD_COLOR),
        "opencv_encode": lambda i: cv2.imencode(".jpg", frames[i % 8], [int(cv2.IMWRITE_JPEG_QUALITY), 90]),
    }
    try:
        import simplejpeg
    except ImportError:
        print("simplejpeg not installed: measuring OpenCV only")
    else:
        codecs.update({
            "turbo_decode": lambda i: simplejpeg.decode_jpeg(jpegs[i % 8], colorspace="BGR"),
            "turbo_decode_fastdct": lambda i: simplejpeg.decode_jpeg(jpegs[i % 8], colorspace="BGR", fastdct=True,
                                                                     fastupsample=True),
            "turbo_encode_420": lambda i: simplejpeg.encode_jpeg(frames[i % 8], quality=90, colorspace="BGR",
                                                                 colorsubsampling="420"),
        })
    rounds: dict[str, list[float]] = {name: [] for name in codecs}
    for _ in range(args.rounds):
        for name, fn in codecs.items():
            rounds[name].append(_median_ms(fn, args.calls))
    medians = {name: round(statistics.median(v), 3) for name, v in rounds.items()}
    for name, ms in medians.items():
        print(f"{name:24s} {ms:6.2f} ms")
    build = cv2.getBuildInformation().split("JPEG:")[1].split("\n")[0].strip()
    write_result(RESULTS, {"when": now_utc(), "host": host_info(), "opencv_jpeg": build, "median_ms": medians,
                           "rounds_ms": rounds, "calls": args.calls})
    return 0


if __name__ == "__main__":
    sys.exit(main())
