"""Five-landmark face alignment to the 112x112 SFace template (as OpenCV's FaceRecognizerSF.alignCrop).

A least-squares similarity transform (Umeyama) maps the detector's 5 landmarks onto the ArcFace/SFace template;
the face is warped into a 112x112 crop. Pure numpy + cv2.warpAffine.
"""

from __future__ import annotations

import cv2
import numpy as np

ALIGNED_SIZE = 112
# Template of OpenCV's face_recognize.cpp (right eye, left eye, nose, right mouth, left mouth in image order).
SFACE_TEMPLATE = np.array([[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366],
                           [41.5493, 92.3655], [70.7299, 92.2041]], np.float64)


def similarity_transform(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """2x3 similarity (rotation, uniform scale, translation) that best maps ``src`` points onto ``dst``."""
    src = np.asarray(src, np.float64).reshape(-1, 2)
    dst = np.asarray(dst, np.float64).reshape(-1, 2)
    if src.shape != dst.shape or len(src) < 2:
        raise ValueError("need matching point sets of at least 2 points")
    n = len(src)
    mu_s, mu_d = src.mean(0), dst.mean(0)
    sc, dc = src - mu_s, dst - mu_d
    var_s = (sc ** 2).sum() / n
    if var_s <= 1e-12:
        raise ValueError("degenerate landmarks (all points coincide)")
    cov = dc.T @ sc / n
    u, d, vt = np.linalg.svd(cov)
    s = np.eye(2)
    if np.linalg.det(u) * np.linalg.det(vt) < 0:
        s[1, 1] = -1
    rot = u @ s @ vt
    scale = (d * np.diag(s)).sum() / var_s
    m = np.zeros((2, 3), np.float64)
    m[:, :2] = scale * rot
    m[:, 2] = mu_d - scale * rot @ mu_s
    return m


def align_crop(image_bgr: np.ndarray, landmarks: np.ndarray, size: int = ALIGNED_SIZE) -> np.ndarray:
    """``size`` x ``size`` BGR crop with the 5 landmarks on the SFace template."""
    m = similarity_transform(landmarks, SFACE_TEMPLATE * (size / ALIGNED_SIZE))
    return cv2.warpAffine(image_bgr, m, (size, size), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT)


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    """Cosine similarity of two vectors (0.0 when either is all zeros)."""
    a = np.asarray(a, np.float64).ravel()
    b = np.asarray(b, np.float64).ravel()
    na, nb = np.linalg.norm(a), np.linalg.norm(b)
    if na == 0 or nb == 0:
        return 0.0
    return float(a @ b / (na * nb))
