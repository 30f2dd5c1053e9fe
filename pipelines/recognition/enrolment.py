"""Face templates from registration photos: what ``riskmask register --photo`` stores, encrypted, on the ledger.

The ledger's registry commands cannot load face models themselves (the ledger imports nothing of the
pipeline); the command line hands them :func:`face_templates` instead (``riskmask.cli`` sets it as the
``face_templates`` default of every subcommand), and the demo and benchmarks call it directly.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from riskmask.errors import ServiceError, UserError

logger = logging.getLogger(__name__)


def face_templates(photos: Sequence[Path], model_dir: Optional[Path] = None) -> list[np.ndarray]:
    """One SFace template per photo; a photo must show exactly one face (checked before anything is sent).

    Faces are found by YuNet alone, without the pipeline's upscaled tiny-face pass: an enrolment photo shows
    its subject large, and the tiny pass would count people far in its background (a 1434 x 2333 portrait
    with two 22 px faces behind the subject) and refuse a usable photo."""
    # deferred: OpenCV and onnxruntime are loaded only when a command registers photos, not at CLI start-up
    import cv2

    # deferred with cv2 (the model wrappers import OpenCV and onnxruntime)
    from pipelines.models.detector import load_detector
    from pipelines.models.recognizer import load_recognizer  # deferred with the detector (onnxruntime)

    images = []
    for path in photos:
        img = cv2.imread(str(path), cv2.IMREAD_COLOR)
        if img is None:
            raise UserError(f"cannot read image {path}")
        images.append(img)
    try:
        det = load_detector("yunet", model_dir=model_dir, tiny_factor=0)
        rec = load_recognizer(model_dir=model_dir)
    except Exception as exc:  # ModelError: missing/unverifiable model file
        raise ServiceError(f"face models unavailable: {exc}") from None
    out = []
    for path, img in zip(photos, images):
        faces = det.detect(img)
        if not faces:
            raise UserError(f"no face found in {path}")
        if len(faces) > 1:
            raise UserError(f"{len(faces)} faces found in {path}; use a photo showing only the subject")
        out.append(np.asarray(rec.embed(img, faces)[0], np.float32))
    logger.debug("%d face template(s) from %d photo(s)", len(out), len(photos))
    return out
