"""The demo's outputs: a before/after contact sheet, a side-by-side video, the JSON summary and the table.

Before = the frame exactly as the camera producer sent it; after = the RedactedFrame the pipeline wrote, matched
by (camera_id, epoch, seq). Each face is outlined on both and labelled only by the decision in
RedactedFrame.faces (risk group, mask mode, suspect flag, recognition outcome): never by identity.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Optional, Sequence

import cv2
import numpy as np

from pipelines.video_io import write_frames
from schemas.messages import FaceDecision, RedactedFrame

logger = logging.getLogger(__name__)

PANEL = (640, 360)  # width, height of one before/after panel
MODE_COLORS = {"none": (40, 40, 230), "gaussian": (60, 200, 60), "pixelate": (0, 200, 230), "solid": (230, 120, 40)}


def decision_label(face: FaceDecision) -> str:
    """``G1 gaussian unknown`` / ``G3 none suspect matched``: the decision, never an identity."""
    parts = [f"G{face.risk_group}", face.mode]
    if face.suspect:
        parts.append("suspect")
    parts.append(face.identity)
    if face.source != "detected":
        parts.append(face.source)
    return " ".join(parts)


def decision_key(face: FaceDecision) -> str:
    """Key of the faces-per-decision table: risk group / mode / recognition outcome (/ suspect)."""
    key = f"group {face.risk_group} / {face.mode} / {face.identity}"
    return key + (" / suspect" if face.suspect else "")


def decode(jpeg: bytes) -> np.ndarray:
    img = cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR)
    if img is None:
        raise ValueError("undecodable JPEG")
    return img


def _annotate(img: np.ndarray, faces: Sequence[FaceDecision], scale: float, labels: bool) -> None:
    for f in faces:
        color = MODE_COLORS.get(f.mode, (200, 200, 200))
        x0, y0 = int(f.x * scale), int(f.y * scale)
        x1, y1 = int((f.x + f.w) * scale), int((f.y + f.h) * scale)
        cv2.rectangle(img, (x0, y0), (x1, y1), color, 2)
        if labels:
            text = decision_label(f)
            (tw, th), _ = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, 0.45, 1)
            ty = y0 - 4 if y0 - th - 6 > 24 else y1 + th + 6  # never under the caption strip
            cv2.rectangle(img, (x0, ty - th - 3), (x0 + tw + 4, ty + 3), color, -1)
            cv2.putText(img, text, (x0 + 2, ty), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (255, 255, 255), 1, cv2.LINE_AA)


def panel(jpeg: bytes, faces: Sequence[FaceDecision], caption: str, labels: bool = True) -> np.ndarray:
    """One frame scaled to PANEL with its faces outlined and labelled, and a caption strip."""
    img = decode(jpeg)
    scale = PANEL[0] / img.shape[1]
    img = cv2.resize(img, (PANEL[0], int(round(img.shape[0] * scale))), interpolation=cv2.INTER_AREA)
    img = cv2.copyMakeBorder(img, 0, max(0, PANEL[1] - img.shape[0]), 0, 0, cv2.BORDER_CONSTANT)[:PANEL[1]]
    _annotate(img, faces, scale, labels)
    cv2.rectangle(img, (0, 0), (PANEL[0], 22), (0, 0, 0), -1)
    cv2.putText(img, caption, (6, 16), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (255, 255, 255), 1, cv2.LINE_AA)
    return img


def side_by_side(before: bytes, after: RedactedFrame) -> np.ndarray:
    seq = f"seq {after.seq}"
    left = panel(before, after.faces, f"before (as produced)  {seq}")
    right = panel(after.image, after.faces, f"after (frames.redacted)  {seq}"
                  + ("  DEGRADED" if after.degraded else ""))
    return np.hstack([left, right])


def _banner(width: int, lines: Sequence[str]) -> np.ndarray:
    img = np.full((18 * len(lines) + 10, width, 3), 30, np.uint8)
    for i, line in enumerate(lines):
        cv2.putText(img, line, (8, 20 + 18 * i), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (235, 235, 235), 1, cv2.LINE_AA)
    return img


def pick_frames(redacted: Sequence[RedactedFrame], n: int = 4) -> list[RedactedFrame]:
    """``n`` frames spread evenly over the clip."""
    if len(redacted) <= n:
        return list(redacted)
    idx = np.linspace(0, len(redacted) - 1, n).round().astype(int)
    return [redacted[i] for i in idx]


def contact_sheet(pairs: Sequence[tuple[bytes, RedactedFrame]], path: Path, notes: Sequence[str]) -> Path:
    """Rows of before | after for the given frames, with a legend; written as PNG (lossless: the masks are
    shown exactly as published, with no compression blur of their own)."""
    rows = [side_by_side(b, r) for b, r in pairs]
    width = 2 * PANEL[0]
    legend = ["riskmask demo: left = frame as the camera sent it, right = frame as the pipeline published it.",
              "Labels: G<risk group> <mask mode> [suspect] <recognition: matched|unknown|ambiguous|stale>. "
              "Colours: red = disclosed (none),",
              "green = gaussian, yellow = pixelate, blue = solid. No identities are shown.", *notes]
    sheet = np.vstack([_banner(width, legend), *rows]) if rows else _banner(width, legend)
    path.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(path), sheet):
        raise OSError(f"cannot write {path}")
    return path


def video(pairs: Sequence[tuple[bytes, RedactedFrame]], path: Path, fps: float) -> Optional[Path]:
    """The whole clip, before | after per frame, as H.264 in MP4 (plays in every browser); None when empty."""
    if not pairs:
        return None

    write_frames((side_by_side(before, after) for before, after in pairs), path, max(1.0, fps))
    return path


def percentile(values: Sequence[float], q: float) -> Optional[float]:
    return float(np.percentile(np.asarray(values, dtype=np.float64), q)) if values else None


def write_json(summary: dict[str, Any], path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(summary, indent=2, sort_keys=False) + "\n", encoding="utf-8")
    tmp.replace(path)
    return path


def _fmt(v: Any, unit: str = "") -> str:
    if v is None:
        return "n/a"
    if isinstance(v, float):
        return f"{v:.1f}{unit}"
    return f"{v}{unit}"


def table(summary: dict[str, Any]) -> str:
    """The printed summary: frames, faces per decision, fps, latency, ledger height, audit verdict, steps."""
    fr, perf, led, aud = summary["frames"], summary["performance"], summary["ledger"], summary["audit"]
    rows: list[tuple[str, str]] = [
        ("frames produced / redacted / dead-lettered",
         f"{fr['produced']} / {fr['redacted']} / {fr['dead_letters']}"
         + (f"  ({fr['degraded']} masked whole)" if fr.get("degraded") else "")),
        ("faces masked or disclosed", str(summary["faces"]["total"])),
    ]
    for key, count in sorted(summary["faces"]["by_decision"].items()):
        rows.append((f"  {key}", str(count)))
    gt = summary["faces"].get("ground_truth")
    if gt:
        rows.append(("ground-truth faces covered by a decision", f"{gt['covered']} / {gt['total']}"))
    rows += [
        ("pipeline throughput (camera pace)", f"{_fmt(perf.get('fps'), ' fps')} "
         f"({_fmt(perf.get('camera_fps'), ' fps') if perf.get('camera_fps') else 'unpaced'})"),
        ("latency capture -> redacted p50 / p99",
         f"{_fmt(perf.get('latency_p50_ms'), ' ms')} / {_fmt(perf.get('latency_p99_ms'), ' ms')}"),
        ("ledger height", _fmt(led.get("height"))),
        ("audit verdict", str(aud.get("verdict"))),
        ("total time", _fmt(summary.get("seconds"), " s")),
    ]
    width = max(len(k) for k, _ in rows)
    lines = [f"{k.ljust(width)}  {v}" for k, v in rows]
    missing = [s for s in summary["steps"] if s["status"] != "ok"]
    if missing:
        lines.append("")
        lines.append("steps not available or failed:")
        lines += [f"  {s['name']}: {s['status']} - {s['detail']}" for s in missing]
    return "\n".join(lines)
