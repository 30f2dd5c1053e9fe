"""End-to-end pipeline benchmark: 1280x720 real-face frames, Kafka -> `riskmask run` -> Kafka.

Measures, in one run on the same frames:

1. ``bare``: an in-process loop with no Kafka and no Beam: JPEG decode, YuNet detect (1 thread), mask every
   face with the default policy's strongest mask, JPEG encode. The ceiling for one worker.
2. ``saturated``: a round of frames written to the raw topic at once while `riskmask run` (FnApiRunner,
   1 detector thread) is running and warmed up; frames/s = frames / (last output - first input).
   Bare and saturated rounds alternate (``--rounds``) and medians are compared, since the machine is shared.
3. ``paced``: frames written at a fixed rate below the bare loop's (a live camera), capture-to-output
   latency p50/p99 measured by a consumer (output arrival time - the frame's capture_ts_us).

Two scenes (``--scene``): ``astronaut``, a clip composed from the astronaut photo (NASA, public domain) on a
real background, 4 faces per frame, widths 20-300 px, moving smoothly; and ``cctv`` (the default), a CCTV-like
clip from every licensed real face the project fetches (infra.cctv_scene): a still background, people entering,
walking, standing still and leaving, faces 14-72 px, with ground-truth boxes per frame. On ``cctv`` the paced
round streams ``--cameras`` cameras at once (each at ``--paced-fps``), and every ground-truth face of every
output frame is checked: a face counts as masked when its pixels in the output differ from the input by more
than JPEG noise (mean absolute difference > 6 grey levels). With
``--deface`` (a deface==1.5.0 CLI in its own virtual environment) the deface tool runs on the same frames as
JPEG files after each pipeline round, for comparison.

    python bench/pipeline_bench.py [--scene cctv|astronaut] [--frames 20] [--rounds 3]
        [--paced-fps 0 (= 40% of bare)] [--cameras 2] [--bootstrap-servers host:port] [-- RUN ARGS...]

Arguments after ``--`` go to ``riskmask run`` (e.g. ``-- --no-change-gate`` for the before column).
Prints a summary and writes bench/results/pipeline_bench[_SCENE].json (and a bar chart beside it).
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Optional

import cv2
import numpy as np
from chart import bar_chart
from results_io import host_info, now_utc, write_result

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results" / "pipeline_bench.json"
SIZE = (1280, 720)
logger = logging.getLogger("bench.pipeline")


WARM_FRAMES = 5  # per camera, left out of the paced latency percentiles (listed on their own)
SCENES = {
    "astronaut": {"size": list(SIZE), "jpeg_quality": 90, "faces_per_frame": 4, "face_widths_px": [20, 300],
                  "motion": "smooth tracks (infra.scenes.random_tracks)",
                  "source": "skimage astronaut (public domain) on skimage coffee, composed by infra.scenes"},
    "cctv": {"size": list(SIZE), "jpeg_quality": 90, "face_widths_px": [14, 72],
             "motion": "people enter, walk, stand still and leave (infra.cctv_scene), sensor noise, brightness drift",
             "source": "every licensed real face of infra.sample_data on skimage coffee"},
}


def make_scene(scene: str, n_frames: int) -> tuple[list[np.ndarray], Optional[list[list[tuple]]]]:
    """(frames, ground-truth boxes per frame or None) of the named scene."""
    if scene == "astronaut":
        return make_frames(n_frames), None
    from infra.cctv_scene import default_cctv_clip

    clip = default_cctv_clip(n_frames)
    return clip.frames, clip.boxes


def unmasked_faces(raw: list[bytes], outputs: dict[int, bytes], boxes: list[list[tuple]]) -> dict:
    """Ground-truth faces whose output pixels equal the input's up to JPEG noise (mean |diff| <= 6 levels)."""
    total, bare, worst = 0, 0, []
    for seq, out in outputs.items():
        a = cv2.imdecode(np.frombuffer(raw[seq % len(raw)], np.uint8), cv2.IMREAD_COLOR).astype(np.int16)
        b = cv2.imdecode(np.frombuffer(out, np.uint8), cv2.IMREAD_COLOR).astype(np.int16)
        for x, y, w, h in boxes[seq % len(boxes)]:
            total += 1
            diff = float(np.abs(a[y:y + h, x:x + w] - b[y:y + h, x:x + w]).mean())
            if diff <= 6.0:
                bare += 1
                worst.append({"seq": seq, "box": [x, y, w, h], "mean_abs_diff": round(diff, 2)})
    return {"faces_checked": total, "unmasked": bare, "examples": worst[:10]}


def make_frames(n_frames: int, n_faces: int = 4, seed: int = 500) -> list[np.ndarray]:
    """A camera-like clip: ``n_faces`` faces (20-300 px wide) moving smoothly over a still background.

    Faces persist from frame to frame as in a real camera stream, so the pipeline's tracker keeps its tracks
    (random, unrelated scenes would turn every face into a new track plus gap fills of the old ones).
    """
    from infra import sample_data, scenes

    src = [sample_data.astronaut_source()]
    bg = sample_data.background("coffee")
    tracks = scenes.random_tracks(src, n_faces, n_frames, size=SIZE, min_width=20, max_width=300, seed=seed)
    return scenes.make_clip(src, tracks, bg, n_frames, size=SIZE, seed=seed)[0]


def jpeg(image: np.ndarray) -> bytes:
    return cv2.imencode(".jpg", image, [int(cv2.IMWRITE_JPEG_QUALITY), 90])[1].tobytes()


def bare_loop(jpegs: list[bytes], n: int) -> dict:
    from pipelines.masking.filters import apply_mask
    from pipelines.masking.policy import Policy
    from pipelines.models.detector import load_detector

    det, policy = load_detector("yunet", threads=1), Policy.load("default")
    for data in jpegs[:2]:  # warm-up
        det.detect(cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR))
    stages = {"decode": 0.0, "detect": 0.0, "mask": 0.0, "encode": 0.0}
    start = time.perf_counter()
    faces = 0
    for i in range(n):
        t0 = time.perf_counter()
        img = cv2.imdecode(np.frombuffer(jpegs[i % len(jpegs)], np.uint8), cv2.IMREAD_COLOR)
        t1 = time.perf_counter()
        found = det.detect(img)
        t2 = time.perf_counter()
        for d in found:
            apply_mask(img, (d.x, d.y, d.w, d.h), policy.decide(d.w, d.h, None, None))
        faces += len(found)
        t3 = time.perf_counter()
        jpeg(img)
        t4 = time.perf_counter()
        for k, dt in zip(stages, (t1 - t0, t2 - t1, t3 - t2, t4 - t3)):
            stages[k] += dt
    total = time.perf_counter() - start
    return {"frames": n, "seconds": round(total, 3), "fps": round(n / total, 2),
            "faces_per_frame": round(faces / n, 2),
            "ms_per_frame": {k: round(1000 * v / n, 2) for k, v in stages.items()}}


class Stream:
    """Producer of CameraFrame records and consumer of RedactedFrame records for one benchmark run."""

    def __init__(self, bootstrap: str, raw: str, redacted: str) -> None:
        from kafka import KafkaConsumer, KafkaProducer

        self.raw = raw
        self.producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=1,
                                      max_request_size=16 * 1024 * 1024)
        self.consumer = KafkaConsumer(redacted, bootstrap_servers=bootstrap, auto_offset_reset="earliest",
                                      fetch_max_wait_ms=20, fetch_max_bytes=64 * 1024 * 1024)
        self.arrivals: dict[tuple[int, int], tuple[float, int]] = {}  # (epoch, seq) -> (arrival s, capture us)
        self.images: dict[tuple[int, int], bytes] = {}  # output JPEGs of the epochs in keep_epochs
        self.keep_epochs: set[int] = set()

    def send(self, data: bytes, epoch: int, seq: int) -> None:
        from schemas.messages import CameraFrame

        # One camera per round: each round replays the clip from its start, a fresh scene for the tracker.
        cf = CameraFrame(camera_id=f"bench-cam-{epoch}", epoch=epoch, seq=seq, capture_ts_us=time.time_ns() // 1000,
                         width=SIZE[0], height=SIZE[1], image=data)
        self.producer.send(self.raw, key=cf.camera_id.encode(), value=cf.to_bytes())

    def poll_once(self, timeout_ms: int = 50) -> None:
        from schemas.messages import RedactedFrame

        for msgs in self.consumer.poll(timeout_ms=timeout_ms).values():
            now = time.time()
            for m in msgs:
                rf = RedactedFrame.from_bytes(m.value)
                self.arrivals.setdefault((rf.epoch, rf.seq), (now, rf.capture_ts_us))
                if rf.epoch in self.keep_epochs:
                    self.images.setdefault((rf.epoch, rf.seq), rf.image)

    def drain(self, until: int, epoch: int, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and sum(1 for k in self.arrivals if k[0] == epoch) < until:
            self.poll_once()


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def scrape_stage_share(port: int) -> dict[str, float]:
    """Share of the pipeline's per-stage seconds (riskmask_stage_seconds_sum on /metrics) by stage."""
    import re
    import urllib.request

    try:
        text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    except OSError as exc:
        logger.warning("no /metrics from the pipeline: %s", exc)
        return {}
    sums = {m.group(1): float(m.group(2)) for m in
            re.finditer(r'^riskmask_stage_seconds_sum\{stage="([^"]+)"\} ([0-9.eE+-]+)$', text, re.M)}
    total = sum(sums.values()) or 1.0
    return {k: round(v / total, 3) for k, v in sorted(sums.items(), key=lambda kv: -kv[1])}


def pipeline_runs(bootstrap: str, jpegs: list[bytes], n: int, rounds: int, paced_fps: float,
                  log: Path, deface: Optional[Path] = None, cameras: int = 1, run_args: tuple[str, ...] = (),
                  truth: Optional[list[list[tuple]]] = None) -> dict:
    """Start `riskmask run`, then alternate bare-loop, saturated-pipeline and (when installed) deface rounds
    (the machine is shared, so all see the same load), then one paced round for latency."""
    from infra import broker as embedded

    tag = uuid.uuid4().hex[:8]
    raw, redacted, dlq = f"bench-raw-{tag}", f"bench-red-{tag}", f"bench-dlq-{tag}"
    embedded.create_topics(bootstrap, [raw, redacted, dlq])
    exe = Path(sys.executable).with_name("riskmask")
    metrics_port = free_port()
    cmd = [str(exe), "run", "--bootstrap-servers", bootstrap, "--raw-topic", raw, "--redacted-topic", redacted,
           "--dlq-topic", dlq, "--group-id", f"bench-{tag}", "--threads", "1", "--metrics-host", "127.0.0.1",
           "--metrics-port", str(metrics_port), *run_args]
    t_launch = time.monotonic()
    with open(log, "ab") as fh:
        proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, start_new_session=True)
    stream = Stream(bootstrap, raw, redacted)
    try:
        stream.send(jpegs[0], epoch=0, seq=0)  # warm-up: start-up and model load excluded from the numbers
        stream.producer.flush()
        stream.drain(1, 0, 180)
        if (0, 0) not in stream.arrivals:
            raise RuntimeError(f"pipeline produced nothing; see {log}")
        startup_s = time.monotonic() - t_launch

        bare_rounds, pipe_rounds, deface_rounds = [], [], []
        for r in range(rounds):
            bare_rounds.append(bare_loop(jpegs, n))
            # The n frames of a round come from `cameras` cameras at once (each replays the clip from its start,
            # interleaved as two live cameras would arrive): the box's throughput for the site it is sized for.
            sat_epochs = [10 + 8 * r + c for c in range(cameras)]
            per_camera = n // cameras
            t0 = time.time()
            for i in range(per_camera):
                for epoch in sat_epochs:
                    stream.send(jpegs[i % len(jpegs)], epoch=epoch, seq=i)
            stream.producer.flush()
            for epoch in sat_epochs:
                stream.drain(per_camera, epoch, 600)
            sat = [v for k, v in stream.arrivals.items() if k[0] in sat_epochs]
            seconds = max(a for a, _ in sat) - t0
            pipe_rounds.append({"frames": len(sat), "seconds": round(seconds, 3), "fps": round(len(sat) / seconds, 2)})
            line = f"round {r + 1}: bare {bare_rounds[-1]['fps']} frames/s, pipeline {pipe_rounds[-1]['fps']} frames/s"
            if deface is not None:
                deface_rounds.append(deface_run(deface, jpegs, n))
                line += f", deface {deface_rounds[-1]['fps']} frames/s"
            print(line)

        stage_share = scrape_stage_share(metrics_port)  # after the saturated rounds, before the paced one
        paced_fps = paced_fps or round(0.4 * float(np.median([b["fps"] for b in bare_rounds])) / cameras, 2)
        period = 1.0 / paced_fps
        epochs = [2 + c for c in range(cameras)]  # one camera id per epoch: bench-cam-2, bench-cam-3, ...
        stream.keep_epochs = set(epochs) if truth is not None else set()
        start = time.time()
        for i in range(n):
            target = start + i * period
            while time.time() < target:  # keep consuming while pacing
                stream.poll_once(timeout_ms=max(1, min(20, int((target - time.time()) * 1000))))
            for epoch in epochs:
                stream.send(jpegs[i % len(jpegs)], epoch=epoch, seq=i)
            stream.producer.flush()
        for epoch in epochs:
            stream.drain(n, epoch, 300)
        # A camera's first frames are detected in full (nothing to compare with yet): a one-off cost at
        # start-up, reported apart from the steady state a live stream sees.
        all_lat = {(e, q): a * 1000 - c / 1000 for (e, q), (a, c) in stream.arrivals.items() if e in epochs}
        lat = np.array([v for (e, q), v in all_lat.items() if q >= WARM_FRAMES])
        start_lat = [round(v, 1) for (e, q), v in sorted(all_lat.items()) if q < WARM_FRAMES]
        paced = {"frames": len(all_lat), "sent": n * cameras, "dropped": n * cameras - len(all_lat),
                 "latency_excludes_first_frames": WARM_FRAMES, "first_frames_latency_ms": start_lat,
                 "cameras": cameras, "input_fps_per_camera": round(paced_fps, 2),
                 "latency_ms": {"p50": round(float(np.percentile(lat, 50)), 1),
                                "p99": round(float(np.percentile(lat, 99)), 1),
                                "max": round(float(lat.max()), 1)}}
        if truth is not None:
            paced["ground_truth"] = {f"bench-cam-{e}": unmasked_faces(
                jpegs, {seq: img for (ep, seq), img in stream.images.items() if ep == e}, truth) for e in epochs}
        return {"startup_s": round(startup_s, 1), "bare_rounds": bare_rounds, "saturated_rounds": pipe_rounds,
                "stage_share": stage_share,
                "deface_rounds": deface_rounds,
                "paced": paced, "runner": "FnApiRunner", "command": " ".join(cmd[1:])}
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)


DEFACE_DEFAULT = Path.home() / ".cache" / "riskmask" / "deface-venv" / "bin" / "deface"


def deface_run(deface: Path, jpegs: list[bytes], n: int) -> dict:
    """The deface CLI (CenterFace, its defaults) on the same frames as image files, start-up subtracted."""
    work = Path(tempfile.mkdtemp(prefix="deface-bench-"))
    files = []
    for i in range(n):
        path = work / f"f{i:04d}.jpg"
        path.write_bytes(jpegs[i % len(jpegs)])
        files.append(str(path))

    def timed(paths: list[str]) -> float:
        t0 = time.perf_counter()
        subprocess.run([str(deface), *paths], check=True, capture_output=True, timeout=1800)
        return time.perf_counter() - t0

    one = timed(files[:1])
    total = timed(files)
    # deface runs CenterFace through onnxruntime when its environment has it, else through OpenCV's dnn
    backend = "onnxruntime" if any(deface.resolve().parents[1].glob("lib/python*/site-packages/onnxruntime")) \
        else "opencv"
    return {"run": True, "version": "1.5.0", "command": f"deface <{n} jpeg files> (defaults: CenterFace, "
            f"threshold 0.2, blur, {backend})", "backend": backend, "frames": n, "seconds": round(total, 3),
            "startup_s": round(one, 3), "fps": round((n - 1) / max(1e-6, total - one), 2)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scene", choices=("cctv", "astronaut"), default="cctv")
    ap.add_argument("--cameras", type=int, default=2, help="cameras streamed at once (saturated and paced rounds)")
    ap.add_argument("--frames", type=int, default=20, help="frames per round")
    ap.add_argument("--rounds", type=int, default=3, help="alternating bare/pipeline rounds")
    ap.add_argument("--out", type=Path, default=None,
                    help="result JSON (chart beside it); default bench/results/pipeline_bench[_SCENE].json")
    ap.add_argument("--paced-fps", type=float, default=0.0,
                    help="frames/s per camera in the paced round; 0 = 40%% of the median bare frames/s in all")
    ap.add_argument("--bootstrap-servers", default=None, help="use this Kafka instead of a new embedded broker")
    ap.add_argument("--deface", default=str(DEFACE_DEFAULT),
                    help="deface CLI in its own virtual environment (pip install deface==1.5.0 onnxruntime); "
                         "skipped when missing (default: %(default)s)")
    argv = list(sys.argv[1:] if argv is None else argv)
    run_args = tuple(argv[argv.index("--") + 1:]) if "--" in argv else ()
    args = ap.parse_args(argv[:argv.index("--")] if "--" in argv else argv)
    logging.basicConfig(level=logging.WARNING)
    logging.getLogger("kafka").setLevel(logging.CRITICAL)

    frames, truth = make_scene(args.scene, args.frames)
    jpegs = [jpeg(f) for f in frames]
    results_path = args.out or (RESULTS if args.scene == "astronaut"
                                else RESULTS.with_name(f"pipeline_bench_{args.scene}.json"))
    tmp = Path(tempfile.mkdtemp(prefix="pipeline-bench-"))
    brk = None
    bootstrap = args.bootstrap_servers
    if bootstrap is None:
        from infra import broker as embedded

        brk = embedded.EmbeddedBroker(state_dir=tmp)
        bootstrap = brk.start(port=0, topics=(), die_with_parent=True).bootstrap
    deface = Path(args.deface)
    try:
        pipe = pipeline_runs(bootstrap, jpegs, args.frames, args.rounds, args.paced_fps, tmp / "run.log",
                             deface if deface.is_file() else None, args.cameras, run_args, truth)
    finally:
        if brk is not None:
            brk.stop()
    if pipe["deface_rounds"]:
        deface_result = dict(pipe["deface_rounds"][0], rounds=pipe.pop("deface_rounds"))
        deface_result["fps"] = round(float(np.median([d["fps"] for d in deface_result["rounds"]])), 2)
        print(f"deface: {deface_result['fps']} frames/s (median of {len(deface_result['rounds'])} rounds)")
    else:
        pipe.pop("deface_rounds")
        deface_result = {"run": False, "note": f"{deface} not found: install deface==1.5.0 and onnxruntime in "
                         "a separate virtual environment (it pins other imageio/OpenCV versions) to compare"}
    bare_fps = float(np.median([b["fps"] for b in pipe["bare_rounds"]]))
    pipe_fps = float(np.median([p["fps"] for p in pipe["saturated_rounds"]]))
    ratio = round(pipe_fps / bare_fps, 3)
    stage_ms = {k: round(float(np.median([b["ms_per_frame"][k] for b in pipe["bare_rounds"]])), 2)
                for k in pipe["bare_rounds"][0]["ms_per_frame"]}
    print(f"bare loop {bare_fps:.2f} frames/s (median; ms/frame {stage_ms}); pipeline {pipe_fps:.2f} frames/s "
          f"= {ratio} x bare; paced {pipe['paced']['cameras']} camera(s) x {pipe['paced']['input_fps_per_camera']} "
          f"fps: latency p50 {pipe['paced']['latency_ms']['p50']} ms, p99 {pipe['paced']['latency_ms']['p99']} ms, "
          f"dropped {pipe['paced']['dropped']}; start-up {pipe['startup_s']} s")
    if pipe.get("stage_share"):
        print("pipeline time share by stage: " + ", ".join(f"{k} {100 * v:.0f}%" for k, v in pipe["stage_share"].items()))
    for cam, gt in pipe["paced"].get("ground_truth", {}).items():
        print(f"{cam}: {gt['unmasked']} unmasked of {gt['faces_checked']} ground-truth faces")
    if deface_result.get("fps"):
        print(f"pipeline / deface = {pipe_fps / deface_result['fps']:.2f}")
    result = {
        "benchmark": "pipeline_bench",
        "date": now_utc(),
        "host": host_info(note="shared machine: other processes ran concurrently; rounds alternate so that "
                               "the bare loop and the pipeline see the same load"),
        "frame": SCENES[args.scene],
        "run_args": list(run_args),
        "bare_loop_fps_median": round(bare_fps, 2),
        "bare_loop_ms_per_frame_median": stage_ms,
        "pipeline_fps_median": round(pipe_fps, 2),
        "pipeline_over_bare": ratio,
        "target_pipeline_over_bare": 1.8 if args.scene == "cctv" else 0.7,
        "pipeline_over_deface": (round(pipe_fps / deface_result["fps"], 2) if deface_result.get("fps") else None),
        "target_pipeline_over_deface": 6.0 if args.scene == "cctv" else 3.0,
        "pipeline": pipe,
        "deface": deface_result,
    }
    write_result(results_path, result)
    rows = [("bare in-process loop", bare_fps), ("riskmask pipeline (Kafka in/out)", pipe_fps)]
    marks = {f"{result['target_pipeline_over_bare']} x bare": result["target_pipeline_over_bare"] * bare_fps}
    if deface_result.get("fps"):
        rows.append(("deface 1.5.0 CLI", deface_result["fps"]))
        marks[f"{result['target_pipeline_over_deface']:g} x deface"] = \
            result["target_pipeline_over_deface"] * deface_result["fps"]
    chart = bar_chart(results_path.with_suffix(".png"), f"pipeline_bench ({args.scene}): 1280x720, medians", rows,
                      "frames/s", marks)
    print(f"chart: {chart}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
