"""MaskFaces stage: apply the policy's mask to every face and record a FaceDecision per face.

The subject's risk and suspect flag drive the mask only for a face that recognition *matched* on a detected
box (``identity == "matched"``, ``source == "detected"``, a risk set by EnrichRisk). Everything else (a bare
detection when recognition does not run, an unknown, ambiguous or stale identity, a gap-filled track) is an
unknown person and gets the policy's strongest mask: the fail-closed rule. A degraded frame (detection
failed) and any masking failure mask the whole frame and set ``degraded``. The input image is never
modified: the stage masks a copy.

Per-camera rules (pipelines.config.config_file, ``[[camera]]`` in the config file): the first rule whose glob matches
the camera id may replace the policy, and carries privacy zones: a ``mask`` zone is always masked (strongest,
whatever was detected), an ``ignore`` zone is never searched (faces centred in it are left as they are).
"""

from __future__ import annotations

import logging
import time
from typing import Any, Iterator, Optional, Sequence, Union

import apache_beam as beam
import cv2
import numpy as np
from apache_beam.metrics import Metrics

from pipelines.config.config_file import rule_for
from pipelines.frame import FrameContext
from pipelines.masking.filters import WHOLE_FRAME_BLOCKS, apply_mask, mask_whole_frame
from pipelines.masking.policy import MaskDecision, Policy
from pipelines.models.detection import Detection
from pipelines.recognition.matching import MATCHED, UNKNOWN
from pipelines.tracking.tracks import DETECTED, TrackedFace
from schemas.messages import FaceDecision

logger = logging.getLogger(__name__)

STAGE = "mask_faces"


def _whole_frame_decision(frame: FrameContext) -> FaceDecision:
    return FaceDecision(x=0, y=0, w=frame.width, h=frame.height, score=0.0, risk_group=1, mode="pixelate",
                        strength=float(WHOLE_FRAME_BLOCKS), source="whole_frame",
                        identity="unknown")


Face = Union[Detection, TrackedFace]


def decide_face(policy: Policy, face: Face) -> MaskDecision:
    """The mask for one face, the one masking decision of the pipeline: the subject's risk drives
    ``policy.decide`` only for a face recognition matched on a detected box; everything else (a bare detection,
    an unknown, ambiguous or stale identity, a gap-filled track) gets the policy's strongest mask."""
    if (not isinstance(face, TrackedFace) or face.identity != MATCHED or face.source != DETECTED
            or face.risk is None):
        return policy.strongest(face.w, face.h)
    return policy.decide(face.w, face.h, int(face.risk), bool(face.suspect))


def face_decision(face: Face, decision: MaskDecision) -> FaceDecision:
    """The audit record of what was done to one face (no template; a subject reference only if disclosed)."""
    tracked = face if isinstance(face, TrackedFace) else None
    return FaceDecision(
        x=int(round(face.x)), y=int(round(face.y)), w=int(round(face.w)), h=int(round(face.h)),
        score=float(face.score), track_id=int(tracked.track_id) if tracked is not None else None,
        source=tracked.source if tracked is not None else DETECTED,
        identity=tracked.identity if tracked is not None else UNKNOWN,
        risk_group=int(decision.risk_group), suspect=bool(tracked is not None and tracked.suspect),
        mode=str(decision.mode), shape=str(decision.shape), strength=float(decision.strength),
        mask_scale=float(decision.mask_scale),
        subject_ref=tracked.subject_ref if tracked is not None and decision.disclosed else None)


def mask_frame(policy: Any, frame: FrameContext) -> FrameContext:
    """The frame with every face masked (strongest mask for unknown faces) and its FaceDecision records."""
    image = frame.image.copy()
    faces: list[FaceDecision] = []
    degraded, reason = frame.degraded, frame.degraded_reason
    if not degraded:
        try:
            for face in (frame.tracked if frame.tracked is not None else frame.detections):
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


def without_ignored(frame: FrameContext, zones: Sequence[Any]) -> FrameContext:
    """The frame without the faces (detections and tracked faces) centred in an ``ignore`` zone (never
    searched)."""
    ignore = [z for z in zones if z.action == "ignore"]
    if not ignore or frame.degraded:
        return frame

    def kept(faces: Sequence[Face]) -> tuple[Face, ...]:
        return tuple(d for d in faces if not any(z.contains(d.x + d.w / 2, d.y + d.h / 2, frame.width, frame.height)
                                                 for z in ignore))

    return frame.replace(detections=kept(frame.detections),
                         tracked=kept(frame.tracked) if frame.tracked is not None else None)


def mask_zones(image, zones: Sequence[Any]) -> None:
    """Mask every ``mask`` zone of ``image`` in place at the whole-frame strength."""
    h, w = image.shape[:2]
    for zone in zones:
        if zone.action != "mask":
            continue
        pts = np.asarray(zone.points(w, h), np.int32)
        x0, y0 = max(0, int(pts[:, 0].min())), max(0, int(pts[:, 1].min()))
        x1, y1 = min(w, int(pts[:, 0].max()) + 1), min(h, int(pts[:, 1].max()) + 1)
        if x1 <= x0 or y1 <= y0:
            continue
        roi = image[y0:y1, x0:x1]
        masked = roi.copy()
        mask_whole_frame(masked)
        inside = np.zeros(roi.shape[:2], np.uint8)
        cv2.fillPoly(inside, [pts - np.array([x0, y0], np.int32)], 255)
        roi[inside > 0] = masked[inside > 0]


class _MaskFn(beam.DoFn):
    def __init__(self, policy: str, camera_rules: Sequence[Any] = ()) -> None:
        self._policy_name = policy
        self._policy: Any = None
        self._rules = tuple(camera_rules)
        self._policies: dict[str, Any] = {}
        self._latency = Metrics.distribution(STAGE, "frame_us")

    def setup(self) -> None:
        self._policy = Policy.load(self._policy_name)
        self._policies = {r.policy: Policy.load(r.policy) for r in self._rules if r.policy}

    def _rule(self, camera_id: str) -> Optional[Any]:
        return rule_for(self._rules, camera_id) if self._rules else None

    def process(self, frame: FrameContext) -> Iterator[FrameContext]:
        start = time.perf_counter()
        rule = self._rule(frame.camera_id)
        if rule is None:
            out = mask_frame(self._policy, frame)
        else:
            policy = self._policies.get(rule.policy, self._policy) if rule.policy else self._policy
            out = mask_frame(policy, without_ignored(frame, rule.zones))
            if not out.degraded:
                mask_zones(out.image, rule.zones)
        self._latency.update(int((time.perf_counter() - start) * 1e6))
        yield out


class MaskFaces(beam.PTransform):
    """FrameContext (with detections) -> FrameContext with a masked image, ``faces`` and ``policy_id``."""

    def __init__(self, policy: str = "default", camera_rules: Sequence[Any] = ()) -> None:
        """``camera_rules``: :class:`pipelines.config.config_file.CameraRule` (per-camera policy and privacy zones)."""
        super().__init__()
        self._fn = _MaskFn(policy, camera_rules)

    def expand(self, pcoll: beam.PCollection) -> beam.PCollection:
        return pcoll | "Mask" >> beam.ParDo(self._fn)
