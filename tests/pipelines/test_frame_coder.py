"""FrameContextCoder: round trip, a size estimate that does not encode the image, and Beam picking it."""

from __future__ import annotations

import apache_beam as beam
import numpy as np
from apache_beam.coders import registry

from pipelines.frame import FrameContext
from pipelines.frame_coder import FrameContextCoder


def _frame() -> FrameContext:
    img = np.random.default_rng(0).integers(0, 255, (720, 1280, 3), dtype=np.uint8)
    return FrameContext("frames.raw", 0, 7, "cam-1", 1, 42, 1_700_000_000_000_000, 1280, 720, b"\x01" * 32, img)


def test_round_trip_keeps_pixels_and_fields() -> None:
    coder = FrameContextCoder()
    frame = _frame()
    back = coder.decode(coder.encode(frame))
    assert back.dedupe_key == frame.dedupe_key and back.source_ref == frame.source_ref
    assert np.array_equal(back.image, frame.image)


def test_size_estimate_never_encodes_the_frame(monkeypatch) -> None:
    coder = FrameContextCoder()
    frame = _frame()

    def refuse(*_a, **_k):
        raise AssertionError("estimate_size pickled the frame")

    monkeypatch.setattr("pipelines.frame_coder.pickle.dumps", refuse)
    estimate = coder.estimate_size(frame)
    assert 1280 * 720 * 3 <= estimate < 1280 * 720 * 3 + 4096


def test_beam_registry_picks_the_coder_for_typed_stage_outputs() -> None:
    assert isinstance(registry.get_coder(FrameContext), FrameContextCoder)
    p = beam.Pipeline()
    pcoll = p | beam.Create([1]) | beam.Map(lambda _: _frame()).with_output_types(FrameContext)
    assert pcoll.element_type is FrameContext
    assert isinstance(registry.get_coder(pcoll.element_type), FrameContextCoder)
