"""The paper's figure 3 (original / non-criminal / criminal on the same face), reproduced with our reading of
equation 5, with the SFace cosine of each masked face to the original printed beside it.

Rows: ``paper`` (equations 1-5, our reading of the printed equation 5: docs/policy.md) and ``default`` at the
same risk (default 30: group 1, D = 33, the only group the paper blurs visibly), and ``default`` at risk 80
(group 3, where it keeps a suspect identifiable). Non-criminal = not a suspect, criminal = suspect. The face is the public-domain astronaut (no network needed),
rescaled so its face box is ``--width`` pixels wide; the mask is placed on YuNet's box, as the pipeline does.

    python bench/paper_figure3.py            # bench/results/paper_figure3.png + .json, cosines on stdout
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Optional

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from infra.sample_data import astronaut  # noqa: E402
from pipelines.masking.filters import apply_mask  # noqa: E402
from pipelines.masking.policy import Policy  # noqa: E402
from pipelines.models.detection import Detection  # noqa: E402
from pipelines.models.detector import load_detector  # noqa: E402
from pipelines.models.recognizer import MATCH_THRESHOLD, load_recognizer  # noqa: E402

PANEL = 256
FONT = cv2.FONT_HERSHEY_SIMPLEX


def face_at_width(width: int) -> tuple[np.ndarray, Detection]:
    """The astronaut photo scaled so YuNet's face box is ``width`` px wide, and that detection."""
    det = load_detector("yunet", tiny_factor=0)
    img = astronaut()
    d = max(det.detect(img), key=lambda x: x.w * x.h)
    f = width / d.w
    scaled = cv2.resize(img, (round(img.shape[1] * f), round(img.shape[0] * f)),
                        interpolation=cv2.INTER_AREA if f < 1 else cv2.INTER_CUBIC)
    found = max(det.detect(scaled), key=lambda x: x.w * x.h)
    return scaled, found


def panels(policy: Policy, image: np.ndarray, det: Detection, risk: int, rec) -> list[dict]:
    """Original, non-criminal and criminal masks of one face, with the SFace cosine to the original."""
    clean = rec.embed(image, [det])[0]
    out = [{"label": "original", "image": image.copy(), "cosine": 1.0, "decision": None}]
    for label, suspect in (("non-criminal", False), ("criminal", True)):
        work = image.copy()
        dec = policy.decide(det.w, det.h, risk, suspect)
        apply_mask(work, det.box, dec)
        cos = float(np.dot(clean, rec.embed(work, [det])[0]))
        out.append({"label": label, "image": work, "cosine": cos,
                    "decision": {"level": dec.level, "mode": dec.mode, "sigma": round(dec.strength, 2),
                                 "kernel": dec.kernel, "mask_scale": dec.mask_scale, "disclosed": dec.disclosed}})
    return out


def crop_view(image: np.ndarray, det: Detection) -> np.ndarray:
    """A square view around the face (2.4 x its width), resized to the panel size."""
    cx, cy = det.x + det.w / 2, det.y + det.h / 2
    half = max(det.w, det.h) * 1.2
    h, w = image.shape[:2]
    x0, y0 = int(max(0, cx - half)), int(max(0, cy - half))
    x1, y1 = int(min(w, cx + half)), int(min(h, cy + half))
    return cv2.resize(image[y0:y1, x0:x1], (PANEL, PANEL), interpolation=cv2.INTER_NEAREST)


def figure(rows: list[tuple[str, list[dict]]], det: Detection) -> np.ndarray:
    header, caption = 34, 46
    canvas = np.full((len(rows) * (PANEL + header + caption), 3 * PANEL + 40, 3), 255, np.uint8)
    for r, (title, ps) in enumerate(rows):
        top = r * (PANEL + header + caption)
        cv2.putText(canvas, title, (10, top + 24), FONT, 0.6, (0, 0, 0), 1, cv2.LINE_AA)
        for c, p in enumerate(ps):
            x = 10 + c * (PANEL + 10)
            canvas[top + header:top + header + PANEL, x:x + PANEL] = crop_view(p["image"], det)
            match = "match" if p["cosine"] >= MATCH_THRESHOLD else "no match"
            cv2.putText(canvas, p["label"], (x, top + header + PANEL + 18), FONT, 0.5, (0, 0, 0), 1, cv2.LINE_AA)
            cv2.putText(canvas, f"SFace cos {p['cosine']:.3f} ({match})", (x, top + header + PANEL + 38), FONT,
                        0.45, (0, 0, 160) if match == "match" else (0, 120, 0), 1, cv2.LINE_AA)
    return canvas


def main(argv: Optional[list[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--width", type=int, default=90, help="face width in pixels (the astronaut's own is ~90)")
    ap.add_argument("--risk", type=int, default=30, help="subject risk 0..100 (30: group 1, D = 33)")
    ap.add_argument("--default-risk", type=int, default=80,
                    help="risk of the extra default-policy row (80: group 3, where the default policy keeps a "
                         "suspect identifiable and de-identifies a non-suspect)")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "paper_figure3.png")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    if not 8 <= args.width <= 1000 or not 0 <= args.risk <= 100 or not 0 <= args.default_risk <= 100:
        print("paper_figure3: --width must be 8..1000 and --risk / --default-risk 0..100", file=sys.stderr)
        return 2
    image, det = face_at_width(args.width)
    rec = load_recognizer()
    rows, record = [], {"face": "astronaut", "face_width": round(det.w, 1),
                        "match_threshold": MATCH_THRESHOLD, "rows": []}
    for name, risk in (("paper", args.risk), ("default", args.risk), ("default", args.default_risk)):
        policy = Policy.load(name)
        ps = panels(policy, image, det, risk, rec)
        title = f"{policy.label}, risk {risk} (group {policy.risk_group(risk)})"
        rows.append((title, ps))
        record["rows"].append({"policy": policy.label, "risk": risk, "panels": [
            {"label": p["label"], "cosine": round(p["cosine"], 4), "decision": p["decision"]} for p in ps]})
        print(title)
        for p in ps:
            dec = p["decision"]
            how = "" if dec is None else (f"  [{dec['level']}: sigma {dec['sigma']}, kernel {dec['kernel']}, "
                                          f"mask x{dec['mask_scale']}]")
            verdict = "match" if p["cosine"] >= MATCH_THRESHOLD else "no match"
            print(f"  {p['label']:<13} SFace cosine to original {p['cosine']:.3f} ({verdict}){how}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(args.out), figure(rows, det))
    args.out.with_suffix(".json").write_text(json.dumps(record, indent=1) + "\n", encoding="utf-8")
    print(f"wrote {args.out} and {args.out.with_suffix('.json')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
