"""SFace 2021dec face recogniser over onnxruntime: aligned 112x112 crops -> L2-normalised 128-d embeddings.

Two embeddings of the same person have cosine >= :data:`MATCH_THRESHOLD` (OpenCV's documented SFace cosine
threshold); masking is calibrated to push a masked face below it.
"""

from __future__ import annotations

import logging
import os
from typing import Sequence

import numpy as np

from pipelines.models.alignment import align_crop, cosine
from pipelines.models.detection import Detection
from pipelines.models.detector import make_session
from pipelines.models.fetch import model_path
from pipelines.models.onnx_shapes import set_io_dims
from pipelines.models.providers import ort_providers

logger = logging.getLogger(__name__)

MATCH_THRESHOLD = 0.363
EMBEDDING_DIM = 128

__all__ = ["FaceRecognizer", "load_recognizer", "cosine", "MATCH_THRESHOLD", "EMBEDDING_DIM"]


class FaceRecognizer:
    """Embeds faces given their detections (landmarks drive the alignment)."""

    model_id = "sface-2021dec"

    def __init__(self, path: str | os.PathLike[str], threads: int = 1, batch_size: int = 16,
                 providers: Sequence[str] | None = None) -> None:
        with open(path, "rb") as fh:
            model = fh.read()
        # The file declares batch 1; a symbolic batch dimension lets one run embed many faces.
        self._session = make_session(set_io_dims(model, {"data": ["N", 3, 112, 112]}), threads, providers)
        self._input = self._session.get_inputs()[0].name
        self._batch = max(1, int(batch_size))

    def embed_aligned(self, crops_bgr: Sequence[np.ndarray]) -> np.ndarray:
        """(N, 128) L2-normalised float32 embeddings of 112x112 aligned BGR crops."""
        if len(crops_bgr) == 0:
            return np.zeros((0, EMBEDDING_DIM), np.float32)
        # SFace input: RGB, 0..255, NCHW, no mean (as OpenCV's FaceRecognizerSF)
        blob = np.stack([np.transpose(c[:, :, ::-1], (2, 0, 1)) for c in crops_bgr]).astype(np.float32)
        outs = []
        for i in range(0, len(blob), self._batch):
            outs.append(self._session.run(None, {self._input: blob[i:i + self._batch]})[0])
        feats = np.concatenate(outs).astype(np.float32).reshape(len(blob), -1)
        norms = np.linalg.norm(feats, axis=1, keepdims=True)
        return feats / np.maximum(norms, 1e-12)

    def embed(self, image_bgr: np.ndarray, detections: Sequence[Detection]) -> np.ndarray:
        """(N, 128) embeddings, one per detection, in order."""
        crops = [align_crop(image_bgr, d.landmarks) for d in detections]
        return self.embed_aligned(crops)


def load_recognizer(threads: int = 1, model_dir: str | os.PathLike[str] | None = None,
                    model_file: str | os.PathLike[str] | None = None, provider: str = "cpu") -> FaceRecognizer:
    """Verified SFace model (fetched on first use) wrapped as a :class:`FaceRecognizer`, on the onnxruntime
    execution provider ``provider`` (cpu, cuda, tensorrt; see pipelines.models.providers)."""
    rec = FaceRecognizer(model_path("sface", cache_dir=model_dir, path=model_file), threads=threads,
                         providers=ort_providers(provider))
    logger.info("recogniser %s loaded (%d thread(s))", rec.model_id, threads)
    return rec
