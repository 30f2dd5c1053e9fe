"""A Beam coder for :class:`~pipelines.frame.FrameContext` whose size estimate does not encode the frame.

Beam samples the byte size of elements passed between fused stages; for a type it has no coder for, the
estimate pickles the whole element, a 2.7 MB image included (about 3 % of a short pipeline run). This coder
encodes with pickle protocol 5 (the image's buffer travels without an extra copy) when elements really cross a
process boundary, and answers the size estimate from the image's byte count. Stages declare
``with_output_types(FrameContext)`` so Beam picks it.
"""

from __future__ import annotations

import pickle
from typing import Any

from apache_beam import coders

from pipelines.frame import FrameContext

# Bytes a frame carries besides its pixels: identifiers, hashes and one small record per face.
_FIXED_BYTES = 256
_PER_FACE_BYTES = 96


class FrameContextCoder(coders.Coder):
    """Pickles a FrameContext; estimates its size as pixels + a fixed overhead, without encoding it."""

    def encode(self, value: FrameContext) -> bytes:
        return pickle.dumps(value, protocol=5)

    def decode(self, encoded: bytes) -> FrameContext:
        return pickle.loads(encoded)

    def is_deterministic(self) -> bool:
        return False

    def estimate_size(self, value: Any) -> int:
        if not isinstance(value, FrameContext):
            return len(self.encode(value))
        faces = len(value.detections) + len(value.tracked or ()) + len(value.faces)
        return int(value.image.nbytes) + _FIXED_BYTES + _PER_FACE_BYTES * faces

    def to_type_hint(self) -> type:
        return FrameContext


def register() -> None:
    """Tell Beam's coder registry to use :class:`FrameContextCoder` for FrameContext (idempotent)."""
    coders.registry.register_coder(FrameContext, FrameContextCoder)


register()
