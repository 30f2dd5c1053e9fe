"""MaskFaces stage: apply the policy's mask to every detected face and record a FaceDecision per face.

Until recognition and the risk lookup run before this stage, every face is an unknown person, and an unknown
person gets the policy's strongest mask (``Policy.decide(risk=None)`` == ``Policy.strongest``): the fail-closed
rule. A degraded frame (detection failed) and any masking failure mask the whole frame and set ``degraded``.
The input image is never modified: the stage masks a copy.
"""

from __future__ import annotations

import logging
from typing import Any, Iterator

import apache_beam as beam

from pipelines.frame import FrameContext
from schemas.messages import FaceDecision

logger = logging.getLogger(__name__)


def _whole_frame_decision(frame: FrameContext) -> FaceDecision:
    from pipelines import masking

    return FaceDecision(x=0, y=0, w=frame.width, h=frame.height, score=0.0, risk_group=1, mode="pixelate",
                        strength=float(getattr(masking, "WHOLE_FRAME_BLOCKS", 0.0)), source="whole_frame",
                        identity="unknown")


def mask_frame(policy: Any, frame: FrameContext) -> FrameContext:
    """The frame with every face masked (strongest mask for unknown faces) and its FaceDecision records."""
    from pipelines.masking import apply_mask, mask_whole_frame

    image = frame.image.copy()
    faces: list[FaceDecision] = []
    degraded, reason = frame.degraded, frame.degraded_reason
    if not degraded:
        try:
            for det in frame.detections:
                decision = policy.decide(det.w, det.h, None, None)  # unknown subject -> strongest (fail closed)
                apply_mask(image, (det.x, det.y, det.w, det.h), decision)
                faces.append(FaceDecision(
                    x=int(round(det.x)), y=int(round(det.y)), w=int(round(det.w)), h=int(round(det.h)),
                    score=float(det.score), risk_group=int(decision.risk_group), mode=str(decision.mode),
                    strength=float(decision.strength), source="detected", identity="unknown", suspect=False,
                    shape=str(decision.shape), mask_scale=float(decision.mask_scale)))
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

    def setup(self) -> None:
        from pipelines.policy import Policy

        self._policy = Policy.load(self._policy_name)

    def process(self, frame: FrameContext) -> Iterator[FrameContext]:
        yield mask_frame(self._policy, frame)


class MaskFaces(beam.PTransform):
    """FrameContext (with detections) -> FrameContext with a masked image, ``faces`` and ``policy_id``."""

    def __init__(self, policy: str = "default") -> None:
        super().__init__()
        self._fn = _MaskFn(policy)

    def expand(self, pcoll: beam.PCollection) -> beam.PCollection:
        return pcoll | "Mask" >> beam.ParDo(self._fn)
