"""MaskFaces stage: apply the policy's mask to every face and record a FaceDecision per face.

The subject's risk and suspect flag drive the mask only for a face that recognition *matched* on a detected
box (``identity == "matched"``, ``source == "detected"``, a risk set by EnrichRisk). Everything else (a bare
detection when recognition does not run, an unknown, ambiguous or stale identity, a gap-filled track) is an
unknown person and gets the policy's strongest mask: the fail-closed rule. A degraded frame (detection
failed) and any masking failure mask the whole frame and set ``degraded``. The input image is never
modified: the stage masks a copy.
"""

from __future__ import annotations

import logging
import time
from typing import Any, Iterator

import apache_beam as beam
from apache_beam.metrics import Metrics

from pipelines.frame import FrameContext
from schemas.messages import FaceDecision

logger = logging.getLogger(__name__)

STAGE = "mask_faces"


def _whole_frame_decision(frame: FrameContext) -> FaceDecision:
    from pipelines import masking

    return FaceDecision(x=0, y=0, w=frame.width, h=frame.height, score=0.0, risk_group=1, mode="pixelate",
                        strength=float(getattr(masking, "WHOLE_FRAME_BLOCKS", 0.0)), source="whole_frame",
                        identity="unknown")


def decide_face(policy: Any, face: Any) -> Any:
    """The MaskDecision for one face (a Detection or a tracked, risk-enriched face)."""
    risk = getattr(face, "risk", None)
    if (getattr(face, "identity", "unknown") != "matched" or getattr(face, "source", "detected") != "detected"
            or risk is None):
        return policy.decide(face.w, face.h, None, None)  # unknown subject -> strongest mask
    return policy.decide(face.w, face.h, int(risk), bool(getattr(face, "suspect", False)))


def face_decision(face: Any, decision: Any) -> FaceDecision:
    """The audit record of what was done to one face (no template; a subject reference only if disclosed)."""
    track = getattr(face, "track_id", None)
    return FaceDecision(
        x=int(round(face.x)), y=int(round(face.y)), w=int(round(face.w)), h=int(round(face.h)),
        score=float(face.score), track_id=int(track) if track is not None else None,
        source=str(getattr(face, "source", "detected")), identity=str(getattr(face, "identity", "unknown")),
        risk_group=int(decision.risk_group), suspect=bool(getattr(face, "suspect", False)),
        mode=str(decision.mode), shape=str(decision.shape), strength=float(decision.strength),
        mask_scale=float(decision.mask_scale),
        subject_ref=getattr(face, "subject_ref", None) if decision.disclosed else None)


def mask_frame(policy: Any, frame: FrameContext) -> FrameContext:
    """The frame with every face masked (strongest mask for unknown faces) and its FaceDecision records."""
    from pipelines.masking import apply_mask, mask_whole_frame

    image = frame.image.copy()
    faces: list[FaceDecision] = []
    degraded, reason = frame.degraded, frame.degraded_reason
    if not degraded:
        try:
            for face in frame.detections:
                decision = decide_face(policy, face)
                apply_mask(image, (face.x, face.y, face.w, face.h), decision)
                faces.append(face_decision(face, decision))
        except Exception as exc:  # a masking failure must not leak a face: mask everything instead
            logger.warning("masking failed on %s: %s; masking the whole frame", frame.source_ref,
                           type(exc).__name__)
            degraded, reason = True, f"mask_error:{type(exc).__name__}"
            image = frame.image.copy()
    if degraded:
        mask_whole_frame(image)
        faces.append(_whole_frame_decision(frame))
    return frame.replace(image=image, faces=tuple(faces), policy_id=str(policy.policy_id), degraded=degraded,
                         degraded_reason=reason)


class _MaskFn(beam.DoFn):
    def __init__(self, policy: str) -> None:
        self._policy_name = policy
        self._policy: Any = None
        self._latency = Metrics.distribution(STAGE, "frame_us")

    def setup(self) -> None:
        from pipelines.policy import Policy

        self._policy = Policy.load(self._policy_name)

    def process(self, frame: FrameContext) -> Iterator[FrameContext]:
        start = time.perf_counter()
        out = mask_frame(self._policy, frame)
        self._latency.update(int((time.perf_counter() - start) * 1e6))
        yield out


class MaskFaces(beam.PTransform):
    """FrameContext (with detections) -> FrameContext with a masked image, ``faces`` and ``policy_id``."""

    def __init__(self, policy: str = "default") -> None:
        super().__init__()
        self._fn = _MaskFn(policy)

    def expand(self, pcoll: beam.PCollection) -> beam.PCollection:
        return pcoll | "Mask" >> beam.ParDo(self._fn)
