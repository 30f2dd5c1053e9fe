"""Measure how well each masking level defeats a machine recogniser (SFace), at several face sizes.

For every real face (skimage astronaut + the face_recognition 1.3.0 test photos when they can be fetched),
the photo is rescaled so the face is W pixels wide (W in --sizes), masked as a policy decides for each risk
group / suspect combination, and the SFace embedding of the masked face is compared with the clean face's
(both aligned with the clean face's landmarks: the attacker knows exactly where the face is). Cosine below
0.363 (SFace's match threshold) = not re-identified.

Also sweeps the level parameters (sigma as a fraction of face width, pixel blocks across the face) that the
default policy is calibrated from.

    python bench/calibrate_masking.py            # writes bench/results/masking_calibration.json
                                                 # and docs/masking-calibration.md
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import logging
import pathlib
import platform
import sys
import time
from dataclasses import dataclass

import cv2
import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pipelines.masking.filters import apply_mask  # noqa: E402
from pipelines.masking.policy import (MaskDecision, Policy, calibration_violations, gaussian_kernel_for,  # noqa: E402
                                      spec_digest)
from pipelines.models.detection import Detection  # noqa: E402
from pipelines.models.detector import load_detector  # noqa: E402
from pipelines.models.recognizer import MATCH_THRESHOLD, load_recognizer  # noqa: E402

logger = logging.getLogger("calibrate_masking")

COMBOS = [("unknown", None, None), ("g1_suspect", 30, True), ("g1_non_suspect", 30, False),
          ("g2_suspect", 60, True), ("g2_non_suspect", 60, False), ("g3_suspect", 80, True),
          ("g3_non_suspect", 80, False), ("g4_suspect", 95, True), ("g4_non_suspect", 95, False)]
SWEEP_SIGMA = (0.02, 0.03, 0.04, 0.06, 0.08, 0.1, 0.15, 0.2, 0.3)
SWEEP_BLOCKS = (3, 4, 6, 8, 11, 16, 24)
SWEEP_SCALE = 1.6


@dataclass
class Face:
    name: str
    image: np.ndarray
    det: Detection


def load_faces(detector) -> list[Face]:
    """Real faces, each with the detector's box and landmarks on the clean photo (largest face)."""
    sources: list[tuple[str, np.ndarray]] = []
    from skimage import data

    sources.append(("astronaut", np.ascontiguousarray(data.astronaut()[:, :, ::-1])))
    try:
        from infra import sample_data

        for photo in sample_data.sample_photos():
            if photo.partial or photo.duplicate_of:
                continue
            img = cv2.imread(str(photo.path), cv2.IMREAD_COLOR)
            if img is not None:
                sources.append((photo.name.rsplit(".", 1)[0], img))
    except Exception as exc:  # the astronaut alone still gives a table; say why the rest is missing
        logger.warning("face_recognition test photos unavailable (%s): astronaut only", exc)
    faces = []
    for name, img in sources:
        dets = detector.detect(img)
        if not dets:
            logger.warning("no face found in %s; skipped", name)
            continue
        faces.append(Face(name, img, max(dets, key=lambda d: d.w * d.h)))
    return faces


def at_width(face: Face, width: int) -> tuple[np.ndarray, Detection]:
    """A crop around the face rescaled so the face box is ``width`` pixels wide, with the moved detection."""
    d = face.det
    h_img, w_img = face.image.shape[:2]
    margin = 0.8
    x0 = int(max(0, d.x - margin * d.w)); y0 = int(max(0, d.y - margin * d.h))
    x1 = int(min(w_img, d.x + (1 + margin) * d.w)); y1 = int(min(h_img, d.y + (1 + margin) * d.h))
    crop = face.image[y0:y1, x0:x1]
    f = width / d.w
    interp = cv2.INTER_AREA if f < 1 else cv2.INTER_CUBIC
    out = cv2.resize(crop, (max(1, round(crop.shape[1] * f)), max(1, round(crop.shape[0] * f))),
                     interpolation=interp)
    return np.ascontiguousarray(out), d.shifted(-x0, -y0).shifted(0, 0, f)


def masked_cosine(rec, img: np.ndarray, det: Detection, clean: np.ndarray, decision: MaskDecision) -> float:
    work = img.copy()
    apply_mask(work, det.box, decision)
    emb = rec.embed(work, [det])[0]
    return float(np.dot(clean, emb))


def run(sizes: list[int], threads: int) -> dict:
    detector = load_detector("yunet", threads=threads)
    rec = load_recognizer(threads=threads)
    faces = load_faces(detector)
    policies = _policies()
    rows: list[dict] = []
    sweep: list[dict] = []
    controls: list[dict] = []
    t0 = time.perf_counter()
    for face in faces:
        for width in sizes:
            img, det = at_width(face, width)
            clean = rec.embed(img, [det])[0]
            for cname, value in (("blank_black", 0), ("blank_grey", 128)):
                blank = rec.embed_aligned([np.full((112, 112, 3), value, np.uint8)])[0]
                controls.append({"face": face.name, "width": width, "control": cname,
                                 "cosine": round(float(np.dot(clean, blank)), 4)})
            others = [f for f in faces if f.name != face.name and not _same_person(f.name, face.name)]
            for other in others:
                oimg, odet = at_width(other, width)
                controls.append({"face": face.name, "width": width, "control": "other_person",
                                 "cosine": round(float(np.dot(clean, rec.embed(oimg, [odet])[0])), 4)})
            for pname, pol in policies.items():
                for combo, risk, suspect in COMBOS:
                    dec = pol.decide(det.w, det.h, risk, suspect)
                    cos = 1.0 if dec.disclosed else masked_cosine(rec, img, det, clean, dec)
                    rows.append({"policy": pol.label, "face": face.name, "width": width, "combo": combo,
                                 "mode": dec.mode, "level": dec.level, "strength": round(dec.strength, 3),
                                 "kernel": dec.kernel, "mask_scale": dec.mask_scale, "cosine": round(cos, 4)})
            for frac in SWEEP_SIGMA:
                sigma = max(0.8, frac * det.w)
                dec = MaskDecision(1, "gaussian", "box", sigma, gaussian_kernel_for(sigma), SWEEP_SCALE, False)
                sweep.append({"face": face.name, "width": width, "mode": "gaussian", "param": frac,
                              "cosine": round(masked_cosine(rec, img, det, clean, dec), 4)})
            for blocks in SWEEP_BLOCKS:
                dec = MaskDecision(1, "pixelate", "box", float(blocks), 0, SWEEP_SCALE, False)
                sweep.append({"face": face.name, "width": width, "mode": "pixelate", "param": blocks,
                              "cosine": round(masked_cosine(rec, img, det, clean, dec), 4)})
            logger.info("%s at %d px done (%.0f s)", face.name, width, time.perf_counter() - t0)
    return {"generated": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "machine": platform.platform(), "recogniser": rec.model_id, "detector": detector.model_id,
            "match_threshold": MATCH_THRESHOLD, "sizes": sizes, "faces": [f.name for f in faces],
            "policy_digests": {pol.label: spec_digest(pol) for pol in policies.values()},
            "seconds": round(time.perf_counter() - t0, 1), "rows": rows, "sweep": sweep,
            "controls": controls}


def _policies() -> dict[str, Policy]:
    """The policies measured: the paper's, the default in its own mode and with each other mode."""
    policies = {name: Policy.load(name) for name in ("paper", "default")}
    policies["default+pixelate"] = Policy.load("default", mode="pixelate")
    policies["default+solid"] = Policy.load("default", mode="solid")
    return {p.label: p for p in policies.values()}


def _same_person(a: str, b: str) -> bool:
    """The face_recognition photos named obama* show one person."""
    return a.rstrip("0123456789") == b.rstrip("0123456789")


def _cell(values: list[float], threshold: float) -> str:
    """"highest / lowest" cosine over the faces; MATCH when the highest reaches the match threshold."""
    if not values:
        return "n/a"
    hi, lo = max(values), min(values)
    if lo >= 0.9999:
        return "1.000 (unmasked)"
    mark = " **MATCH**" if hi >= threshold else ""
    return f"{hi:.3f} / {lo:.3f}{mark}"


def markdown(result: dict) -> str:
    sizes = result["sizes"]
    faces = result["faces"]
    out = ["# Masking calibration: SFace re-identification after masking", "",
           f"Generated by `python bench/calibrate_masking.py` ({result['generated']}, {result['recogniser']}, "
           f"faces: {', '.join(faces)}). Each cell is the highest / lowest cosine over the {len(faces)} real "
           f"faces between the clean face and the masked face (both aligned with the clean face's landmarks), "
           f"with the face rescaled to the column's width. SFace matches at cosine >= "
           f"{result['match_threshold']}: **MATCH** marks a cell where at least one face was re-identified. "
           "A level meant to de-identify must stay below the threshold for every face (look at the highest); "
           "a level meant to keep a suspect identifiable must stay >= 0.6 for every face (look at the "
           "lowest). Raw numbers: bench/results/masking_calibration.json.", ""]
    for pol in dict.fromkeys(r["policy"] for r in result["rows"]):
        out += [f"## Policy `{pol}`", "",
                "| group / suspect | level | " + " | ".join(f"{s} px" for s in sizes) + " |",
                "|---|---|" + "---|" * len(sizes)]
        for combo, _, _ in COMBOS:
            cells, level = [], ""
            for s in sizes:
                sel = [r for r in result["rows"] if r["policy"] == pol and r["combo"] == combo and r["width"] == s]
                level = sel[0]["level"] if sel else level
                cells.append(_cell([r["cosine"] for r in sel], result["match_threshold"]))
            out.append(f"| {combo} | {level} | " + " | ".join(cells) + " |")
        out.append("")
    out += ["## Does each policy keep its word?", "",
            "Only suspects may be identifiable: every non-suspect decision (unknown subject, each group's "
            "non-suspect) must stay below the match threshold for every face at every size, unless the policy "
            "explicitly discloses that group (`tests/pipelines/masking/test_policy_calibration.py` checks the committed JSON).", ""]
    for label, pol in _policies().items():
        bad = calibration_violations(result, pol)
        out.append(f"- `{label}`: " + ("keeps it." if not bad else f"**{len(bad)} violation(s)**, e.g. {bad[0]}"))
    out += ["", "## Controls", "",
            "What the cosine is when nothing of the face is left, and between different people: a uniform crop "
            "still scores up to the 'blank grey' value against a clean face, which is why the solid fill is "
            "black.", "",
            "| control | " + " | ".join(f"{s} px" for s in sizes) + " |", "|---|" + "---|" * len(sizes)]
    for cname in ("blank_black", "blank_grey", "other_person"):
        cells = [_cell([r["cosine"] for r in result["controls"] if r["control"] == cname and r["width"] == s],
                       result["match_threshold"]) for s in sizes]
        out.append(f"| {cname} | " + " | ".join(cells) + " |")
    out += ["", "## Parameter sweep (highest / lowest cosine over the faces)", "",
            f"Gaussian sigma as a fraction of the face width, and pixel blocks across the face width; box "
            f"mask enlarged x{SWEEP_SCALE} (the level parameters of the default policy come from here).", "",
            "| mode | parameter | " + " | ".join(f"{s} px" for s in sizes) + " |",
            "|---|---|" + "---|" * len(sizes)]
    for mode, params in (("gaussian", SWEEP_SIGMA), ("pixelate", SWEEP_BLOCKS)):
        for p in params:
            cells = []
            for s in sizes:
                cells.append(_cell([r["cosine"] for r in result["sweep"]
                                    if r["mode"] == mode and r["param"] == p and r["width"] == s],
                                   result["match_threshold"]))
            label = f"sigma {p} x width" if mode == "gaussian" else f"{p} blocks"
            out.append(f"| {mode} | {label} | " + " | ".join(cells) + " |")
    out.append("")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default="12,24,48,90,178,300", help="face widths in pixels, comma separated")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--json", default=str(ROOT / "bench" / "results" / "masking_calibration.json"))
    ap.add_argument("--markdown", default=str(ROOT / "docs" / "masking-calibration.md"))
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    sizes = [int(s) for s in args.sizes.split(",") if s.strip()]
    result = run(sizes, args.threads)
    pathlib.Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    pathlib.Path(args.json).write_text(json.dumps(result, separators=(",", ":")), encoding="utf-8")
    md = markdown(result)
    pathlib.Path(args.markdown).write_text(md, encoding="utf-8")
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
