"""Is an int8 YuNet cheaper? Static quantisation with onnxruntime's tools, timed against the float model.

Quantises face_detection_yunet_2023mar.onnx (QDQ and QOperator formats, per-tensor, calibrated on 16 frames of
the CCTV clip) and times one 640x640 inference on one thread, rounds alternating. Needs the ``onnx`` package
(``pip install onnx``), which the product does not. Writes bench/results/yunet_int8_bench.json.
Usage: ``python bench/yunet_int8_bench.py [--runs 15]``
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from results_io import host_info, now_utc, write_result  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "yunet_int8_bench.json"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=15)
    args = ap.parse_args(argv)
    try:
        import onnx  # noqa: F401
        from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
        from onnxruntime.quantization.shape_inference import quant_pre_process
    except ImportError:
        print("needs the onnx package: pip install onnx", file=sys.stderr)
        return 2
    import onnxruntime as ort

    from infra.cctv_scene import default_cctv_clip
    from pipelines.models.fetch import model_path

    src = str(model_path("yunet"))
    blobs = [np.ascontiguousarray(f[:640, :640].transpose(2, 0, 1)[None].astype(np.float32))
             for f in default_cctv_clip(20).frames]

    class Frames(CalibrationDataReader):
        def __init__(self) -> None:
            self._it = iter([{"input": b} for b in blobs[:16]])

        def get_next(self):  # noqa: ANN201 - onnxruntime's interface
            return next(self._it, None)

    work = Path(tempfile.mkdtemp(prefix="yunet-int8-"))
    pre = work / "pre.onnx"
    quant_pre_process(src, str(pre), skip_symbolic_shape=True)
    models = {"float32": src}
    for fmt in ("QDQ", "QOperator"):
        out = work / f"int8_{fmt}.onnx"
        quantize_static(str(pre), str(out), Frames(), quant_format=getattr(QuantFormat, fmt), per_channel=False,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
        models[f"int8_{fmt}"] = str(out)
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    sessions = {k: ort.InferenceSession(v, so, providers=["CPUExecutionProvider"]) for k, v in models.items()}
    times: dict[str, list[float]] = {k: [] for k in sessions}
    for _ in range(args.runs):
        for name, sess in sessions.items():
            start = time.perf_counter()
            sess.run(None, {"input": blobs[17]})
            times[name].append(time.perf_counter() - start)
    medians = {k: round(1000 * statistics.median(v[1:]), 2) for k, v in times.items()}
    for k, v in medians.items():
        print(f"{k:16s} {v:6.2f} ms per 640x640 inference (1 thread)")
    write_result(RESULTS, {"when": now_utc(), "host": host_info(), "median_ms": medians, "runs": args.runs})
    return 0


if __name__ == "__main__":
    sys.exit(main())
