"""``riskmask redact IN OUT``: offline redaction of an image, a folder of images, or a video file.

Uses the same detector, policy and masking code as the streaming pipeline. Offline there is no
recognition or ledger lookup, so every face is an unknown subject and gets the policy's strongest mask
(fail closed). A frame the detector fails on is masked whole. Video is re-encoded without its audio track.
"""

from __future__ import annotations

import argparse
import logging
import pathlib
import sys
import time
from dataclasses import dataclass, field
from typing import Iterator

import cv2
import numpy as np

from pipelines.masking import apply_mask, mask_whole_frame
from pipelines.models.detector import DETECTORS, FaceDetector, load_detector
from pipelines.models.fetch import ModelError
from pipelines.policy import MODES, Policy, PolicyError
from riskmask.errors import UserError

logger = logging.getLogger(__name__)

IMAGE_EXTS = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".ppm", ".pgm"}
VIDEO_EXTS = {".mp4", ".avi", ".mov", ".mkv", ".m4v", ".webm", ".mpg", ".mpeg", ".wmv"}
VIDEO_FOURCC = {".avi": "MJPG"}  # everything else: mp4v in the container the extension names


@dataclass
class RedactStats:
    files: int = 0
    frames: int = 0
    faces: int = 0
    degraded: int = 0
    skipped: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def summary(self) -> str:
        ms = 1000.0 * self.seconds / self.frames if self.frames else 0.0
        text = (f"redacted {self.frames} frame(s) in {self.files} file(s): {self.faces} face(s) masked, "
                f"{self.degraded} frame(s) masked whole after a detector failure, {ms:.1f} ms/frame")
        if self.skipped:
            text += f"; skipped {len(self.skipped)} unreadable file(s): {', '.join(self.skipped[:5])}"
        return text


class Redactor:
    """Detect -> decide (unknown subject: strongest) -> mask, one frame at a time, in place."""

    def __init__(self, detector: FaceDetector, policy: Policy) -> None:
        self.detector = detector
        self.policy = policy

    def redact(self, image_bgr: np.ndarray) -> tuple[int, bool]:
        """Mask every face in place; returns (faces masked, degraded)."""
        try:
            dets = self.detector.detect(image_bgr)
        except Exception:  # fail closed: a frame we could not inspect is masked whole
            logger.warning("detector failed on a frame; masking the whole frame", exc_info=True)
            mask_whole_frame(image_bgr)
            return 0, True
        for d in dets:
            apply_mask(image_bgr, d.box, self.policy.decide(d.w, d.h, None, None))
        return len(dets), False


def _kind(path: pathlib.Path) -> str:
    if path.is_dir():
        return "dir"
    ext = path.suffix.lower()
    if ext in IMAGE_EXTS:
        return "image"
    if ext in VIDEO_EXTS:
        return "video"
    return "unknown"


def _read_image(path: pathlib.Path) -> np.ndarray | None:
    data = np.fromfile(str(path), dtype=np.uint8)
    img = cv2.imdecode(data, cv2.IMREAD_COLOR) if data.size else None
    return img if img is not None and img.size else None


def _write_image(path: pathlib.Path, image: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    ok, buf = cv2.imencode(path.suffix or ".png", image)
    if not ok:
        raise UserError(f"cannot encode {path.name}: unsupported output image format {path.suffix!r}")
    buf.tofile(str(path))


def _images_in(root: pathlib.Path) -> Iterator[pathlib.Path]:
    for p in sorted(root.rglob("*")):
        if p.is_file() and p.suffix.lower() in IMAGE_EXTS:
            yield p


def _progress(total: int | None, unit: str, quiet: bool):
    from tqdm import tqdm

    return tqdm(total=total, unit=unit, disable=quiet or None, file=sys.stderr, leave=False)


def redact_image_file(red: Redactor, src: pathlib.Path, dst: pathlib.Path, stats: RedactStats) -> bool:
    img = _read_image(src)
    if img is None:
        stats.skipped.append(src.name)
        return False
    faces, degraded = red.redact(img)
    _write_image(dst, img)
    stats.files += 1
    stats.frames += 1
    stats.faces += faces
    stats.degraded += int(degraded)
    return True


def redact_video(red: Redactor, src: pathlib.Path, dst: pathlib.Path, stats: RedactStats, quiet: bool) -> None:
    cap = cv2.VideoCapture(str(src))
    if not cap.isOpened():
        raise UserError(f"cannot open video {src}: not a readable video file")
    writer = None
    try:
        fps = cap.get(cv2.CAP_PROP_FPS) or 25.0
        if not np.isfinite(fps) or fps <= 0 or fps > 240:
            fps = 25.0
        total = int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) or None
        ok, frame = cap.read()
        if not ok or frame is None:
            raise UserError(f"cannot read any frame from {src}: empty or corrupt video")
        h, w = frame.shape[:2]
        dst.parent.mkdir(parents=True, exist_ok=True)
        fourcc = cv2.VideoWriter_fourcc(*VIDEO_FOURCC.get(dst.suffix.lower(), "mp4v"))
        writer = cv2.VideoWriter(str(dst), fourcc, float(fps), (w, h))
        if not writer.isOpened():
            raise UserError(f"cannot write video {dst}: use a .mp4 or .avi output path")
        with _progress(total, "frame", quiet) as bar:
            while ok and frame is not None:
                if frame.shape[:2] != (h, w):  # a stream changing size mid-way: keep the writer's size
                    frame = cv2.resize(frame, (w, h))
                faces, degraded = red.redact(frame)
                writer.write(frame)
                stats.frames += 1
                stats.faces += faces
                stats.degraded += int(degraded)
                bar.update(1)
                ok, frame = cap.read()
        stats.files += 1
    finally:
        cap.release()
        if writer is not None:
            writer.release()


def redact_path(red: Redactor, src: pathlib.Path, dst: pathlib.Path, quiet: bool = False) -> RedactStats:
    """Redact an image, a folder of images (tree mirrored under ``dst``) or a video into ``dst``."""
    if not src.exists():
        raise UserError(f"input {src} does not exist")
    if src.resolve() == dst.resolve():
        raise UserError("output must differ from input (redaction never overwrites the original)")
    stats = RedactStats()
    start = time.perf_counter()
    kind = _kind(src)
    if kind == "dir":
        if dst.exists() and not dst.is_dir():
            raise UserError(f"input is a folder, so output {dst} must be a folder too")
        files = list(_images_in(src))
        if not files:
            raise UserError(f"no images ({', '.join(sorted(IMAGE_EXTS))}) in folder {src}")
        with _progress(len(files), "image", quiet) as bar:
            for f in files:
                redact_image_file(red, f, dst / f.relative_to(src), stats)
                bar.update(1)
    elif kind == "image":
        target = dst / src.name if dst.is_dir() else dst
        if target.suffix.lower() not in IMAGE_EXTS:
            raise UserError(f"output {dst} must be an image file ({', '.join(sorted(IMAGE_EXTS))}) or a folder")
        if not redact_image_file(red, src, target, stats):
            raise UserError(f"cannot decode image {src}")
    elif kind == "video":
        target = dst / (src.stem + ".mp4") if dst.is_dir() else dst
        if target.suffix.lower() not in VIDEO_EXTS:
            raise UserError(f"output {dst} must be a video file (.mp4, .avi) or a folder")
        redact_video(red, src, target, stats, quiet)
    else:
        raise UserError(f"input {src} is neither an image ({', '.join(sorted(IMAGE_EXTS))}), "
                        f"a video ({', '.join(sorted(VIDEO_EXTS))}) nor a folder")
    stats.seconds = time.perf_counter() - start
    return stats


def _threshold(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not 0.0 < v < 1.0:
        raise argparse.ArgumentTypeError("must be between 0 and 1 (exclusive)")
    return v


def _positive_int(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if v < 1:
        raise argparse.ArgumentTypeError("must be >= 1")
    return v


def cmd_redact(args: argparse.Namespace) -> int:
    src, dst = pathlib.Path(args.input), pathlib.Path(args.output)
    if not src.exists():
        raise UserError(f"input {src} does not exist")
    try:
        policy = Policy.load(args.policy, mode=args.mode)
        detector = load_detector(args.detector, threads=args.threads, score_threshold=args.threshold)
    except (PolicyError, ModelError) as exc:
        raise UserError(str(exc)) from exc
    if policy.mode == "pixelate":
        logger.warning("pixelate is not calibrated to defeat face recognition on every face "
                       "(docs/policy.md); the default gaussian mode is")
    stats = redact_path(Redactor(detector, policy), src, dst, quiet=getattr(args, "quiet", False))
    threshold = float(getattr(detector, "score_threshold", float("nan")))
    print(f"{stats.summary()} (detector {detector.model_id} >= {threshold:.2f}, "
          f"policy {policy.label}, every face treated as unknown -> strongest mask) -> {dst}")
    return 0


def register_redact(sub: "argparse._SubParsersAction[argparse.ArgumentParser]") -> None:
    """Add ``riskmask redact``."""
    p = sub.add_parser("redact", help="mask every face in an image, a folder of images or a video (offline)",
                       description=__doc__.split("\n\n")[1])
    p.add_argument("input", metavar="IN", help="image file, folder of images, or video file")
    p.add_argument("output", metavar="OUT", help="output image/video file, or folder")
    p.add_argument("--detector", choices=sorted(DETECTORS), default="yunet",
                   help="face detector (centerface: slower, finds tinier faces)")
    p.add_argument("--policy", default="default", help="policy name (default, paper) or a policy .json path")
    p.add_argument("--threshold", type=_threshold, default=None,
                   help="detector score threshold (lower finds more faces; default 0.6 yunet, 0.2 centerface)")
    p.add_argument("--mode", choices=[m for m in MODES if m != "none"], default=None,
                   help="override the policy's masking mode")
    p.add_argument("--threads", type=_positive_int, default=1, help="inference threads (default 1)")
    p.set_defaults(func=cmd_redact)
