"""Recognition benchmark: 1, 3 and 10 faces per 1280x720 frame, Kafka -> `riskmask run` -> Kafka, on the real
local stack (embedded broker, 4 ledger node processes, keyring) with two registered subjects.

For each face count the same clip (faces of the demo cast and the astronaut photo, moving smoothly, so that
the tracker keeps its tracks as in a camera stream) is written to a fresh topic and replayed twice with
``riskmask run --bounded --metrics-out``, side by side:

- ``recognition``: with the ledger watchlist (EmbedFaces: SFace once per track, re-verified every 25 frames;
  EnrichRisk: matching against the synced watchlist; audit blocks anchored on the ledger);
- ``mask only``: no ledger, so no embedding (track, gap-fill and mask every face at the strongest level).

Measured per run: throughput (frames/s between the first and the last output record, so start-up and model
loading are excluded), embeddings per second (faces embedded / time spent in EmbedFaces), and the share of
time per stage (from every stage's ``frame_us`` distribution). SFace alone is timed in-process too.

    python bench/recognition_bench.py [--frames 60] [--faces 1,3,10]

Prints a table and writes bench/results/recognition_bench.json.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np
from chart import bar_chart
from results_io import host_info, now_utc, write_result

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))
RESULTS = ROOT / "bench" / "results" / "recognition_bench.json"
SIZE = (1280, 720)
logger = logging.getLogger("bench.recognition")


def make_clip(cast: Any, n_faces: int, n_frames: int, seed: int) -> list[bytes]:
    """JPEGs of ``n_faces`` faces (the cast's clip faces and the astronaut, cycled) moving smoothly."""
    from pipeline_bench import jpeg

    from infra import sample_data, scenes

    sources = [s.clip_source for s in cast.subjects] + [cast.bystander, sample_data.astronaut_source()]
    sources = [s for s in sources if s is not None]
    small, large = (40, 110) if n_faces > 4 else (60, 200)
    for attempt in range(30):  # a layout without room is redrawn with the next seed
        try:
            tracks = scenes.random_tracks(sources, n_faces, n_frames, SIZE, min_width=small, max_width=large,
                                          max_travel=0.15, seed=seed + attempt)
            break
        except scenes.SceneError:
            continue
    else:
        raise RuntimeError(f"no room for {n_faces} faces")
    frames = scenes.make_clip(sources, tracks, sample_data.background("coffee"), n_frames, SIZE, seed=seed)[0]
    return [jpeg(f) for f in frames]


def register(info: Any, cast: Any) -> int:
    """Register the cast's subjects (fictional roles) on the ledger; returns how many."""
    from ledger.client import privacy
    from ledger.ops import manager_cli
    from pipelines.recognition import enrolment

    client = manager_cli.RegistryClient.from_dir(Path(info.ledger_dir), "manager", keys_dir=Path(info.keys_dir))
    try:
        for subj in cast.subjects:
            templates = enrolment.face_templates(list(subj.photos))
            record = privacy.SubjectRecord.make(subj.risk, subj.suspect, templates, {"note": "benchmark"},
                                                time.time_ns() // 1000)
            client.register(privacy.Identity(*subj.identity), record)
    finally:
        client.close()
    return len(cast.subjects)


def replay(info: Any, jpegs: list[bytes], recognition: bool, work: Path) -> dict:
    """Write the clip to a fresh topic, run `riskmask run --bounded` over it, time the outputs."""
    from pipeline_bench import Stream

    from infra import broker as embedded
    from infra.demo_pipeline import pipeline_ledger_args

    tag = uuid.uuid4().hex[:8]
    raw, red, dlq, audit = (f"rb-{k}-{tag}" for k in ("raw", "red", "dlq", "audit"))
    embedded.create_topics(info.bootstrap, [raw, red, dlq, audit])
    stream = Stream(info.bootstrap, raw, red)
    for i, data in enumerate(jpegs):
        stream.send(data, epoch=1, seq=i)
    stream.producer.flush()
    metrics_path = work / f"metrics-{tag}.json"
    cmd = [str(Path(sys.executable).with_name("riskmask")), "run", "--bounded", "--bootstrap-servers",
           info.bootstrap, "--raw-topic", raw, "--redacted-topic", red, "--dlq-topic", dlq, "--audit-topic", audit,
           "--group-id", f"rb-{tag}", "--threads", "1", "--metrics-out", str(metrics_path)]
    env = dict(os.environ)
    if recognition:
        cmd += pipeline_ledger_args(info, frames=len(jpegs))[0]
        env.update(info.env())
    else:  # no ledger anywhere: the run must not pick one up from the environment either
        for var in ("RISKMASK_LEDGER_DIR", "RISKMASK_KEYS_DIR"):
            env.pop(var, None)
    t0 = time.time()
    with open(work / f"run-{tag}.log", "wb") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
        while proc.poll() is None:
            stream.poll_once(timeout_ms=50)
    stream.drain(len(jpegs), 1, 30)
    wall = time.time() - t0
    if proc.returncode != 0 or not metrics_path.is_file():
        raise RuntimeError(f"riskmask run failed (exit {proc.returncode}); see {work / f'run-{tag}.log'}")
    arrivals = sorted(a for (e, _), (a, _) in stream.arrivals.items() if e == 1)
    first_batch = sum(1 for a in arrivals if a - arrivals[0] < 0.02)  # frames delivered with the first one
    span = arrivals[-1] - arrivals[0]
    metrics = json.loads(metrics_path.read_text(encoding="utf-8"))
    dists, counters = metrics["distributions"], metrics["counters"]
    from pipelines.runner import STAGE_ORDER

    stage_s = {s: dists.get(f"{s}/frame_us", {}).get("sum", 0) / 1e6 for s in STAGE_ORDER}
    total = sum(stage_s.values())
    embedded_faces = counters.get("embed_faces/faces_embedded", 0)
    faces = sum(counters.get(f"enrich_risk/faces_{k}", 0) for k in ("matched", "ambiguous", "unknown", "stale"))
    return {
        "frames_out": len(arrivals), "run_wall_s": round(wall, 2),
        "fps": round((len(arrivals) - first_batch) / span, 2) if span > 0 else None,
        "ms_per_frame_in_stages": round(1000 * total / max(1, len(arrivals)), 1),
        "stage_share": {s: round(v / total, 3) for s, v in stage_s.items() if total > 0},
        "stage_ms_per_frame": {s: round(1000 * v / max(1, len(arrivals)), 2) for s, v in stage_s.items()},
        "faces_per_frame": round(faces / max(1, len(arrivals)), 2),
        "faces_embedded": embedded_faces,
        "embeddings_per_s_in_stage": (round(embedded_faces / stage_s["embed_faces"], 1)
                                      if embedded_faces and stage_s["embed_faces"] > 0 else None),
        "matched": counters.get("enrich_risk/faces_matched", 0),
        "gap_filled": counters.get("embed_faces/faces_gap_filled", 0),
    }


def sface_alone(batches: tuple[int, ...] = (1, 3, 10), runs: int = 5) -> dict:
    """SFace embeddings/s in-process (1 thread), aligned crops given, by batch size."""
    from pipelines.models.recognizer import load_recognizer

    rec = load_recognizer(threads=1)
    rng = np.random.default_rng(0)
    out = {}
    for b in batches:
        crops = [rng.integers(0, 255, (112, 112, 3), dtype=np.uint8) for _ in range(b)]
        rec.embed_aligned(crops)
        times = []
        for _ in range(runs):
            t = time.perf_counter()
            rec.embed_aligned(crops)
            times.append(time.perf_counter() - t)
        out[str(b)] = round(b / float(np.median(times)), 1)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--frames", type=int, default=60, help="frames per clip")
    ap.add_argument("--faces", default="1,3,10", help="faces per frame, comma-separated")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    logging.getLogger("kafka").setLevel(logging.CRITICAL)

    from infra import demo_scene
    from infra.stack import Stack

    work = Path(tempfile.mkdtemp(prefix="recognition-bench-"))
    cast = demo_scene.load_cast()
    stack = Stack(work / "stack")
    print("starting the local stack (broker, 4 ledger nodes, keys) ...")
    info = stack.up(owner=os.getpid())
    rows = []
    try:
        n_registered = register(info, cast)
        print(f"registered {n_registered} subjects; SFace alone ...")
        sface = sface_alone()
        print(f"SFace alone (1 thread): {sface} embeddings/s by batch size")
        for n_faces in (int(x) for x in args.faces.split(",")):
            jpegs = make_clip(cast, n_faces, args.frames, seed=40 + n_faces)
            rec = replay(info, jpegs, True, work)
            bare = replay(info, jpegs, False, work)
            row = {"faces": n_faces, "recognition": rec, "mask_only": bare,
                   "recognition_over_mask_only": (round(rec["fps"] / bare["fps"], 3)
                                                  if rec["fps"] and bare["fps"] else None)}
            rows.append(row)
            share = ", ".join(f"{k} {100 * v:.0f}%" for k, v in rec["stage_share"].items())
            print(f"{n_faces:>2} faces: recognition {rec['fps']} fps ({rec['faces_embedded']} embeddings, "
                  f"{rec['embeddings_per_s_in_stage']}/s in EmbedFaces, {rec['matched']} matched faces), "
                  f"mask only {bare['fps']} fps; stage share: {share}")
    finally:
        stack.down()
    result = {
        "benchmark": "recognition_bench",
        "date": now_utc(),
        "host": host_info(),
        "clip": {"size": list(SIZE), "frames": args.frames, "motion": "smooth tracks (infra.scenes)",
                 "sources": "demo cast (Subject A, Subject B, the bystander) and the astronaut photo, cycled",
                 "registered_subjects": n_registered},
        "method": "riskmask run --bounded --threads 1 --metrics-out, recognition and mask-only runs side by side "
                  "on the same topic contents; fps between the first and the last output record",
        "sface_alone_embeddings_per_s": sface,
        "rows": rows,
    }
    write_result(RESULTS, result)
    bars = [(f"{r['faces']} faces, {name}", r[key]["fps"] or 0.0) for r in rows
            for name, key in (("recognition", "recognition"), ("mask only", "mask_only"))]
    print(f"chart: {bar_chart(RESULTS.with_suffix('.png'), 'recognition_bench: 1280x720 frames/s', bars, 'frames/s')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
