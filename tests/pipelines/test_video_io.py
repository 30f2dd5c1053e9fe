"""pipelines.video_io: H.264 out, audio passed through (or re-encoded to AAC), metadata kept or stripped."""

from __future__ import annotations

import pathlib

import numpy as np
import pytest

from infra.sample_data import astronaut
from pipelines import video_io
from tests.media_util import TONE_HZ, audio_samples, decode_frames, dominant_hz, make_clip


def _frames(n: int = 12, size: tuple[int, int] = (320, 240)) -> list[np.ndarray]:
    import cv2

    base = cv2.resize(astronaut(), size)
    return [np.roll(base, 3 * i, axis=1) for i in range(n)]


def test_transcode_h264_keeps_audio_and_metadata(tmp_path: pathlib.Path) -> None:
    src = make_clip(tmp_path / "in.mp4", _frames(), metadata={"title": "lobby cam", "comment": "site 7"})
    seen: list[int] = []

    def invert(img: np.ndarray, i: int) -> int:
        img[...] = 255 - img
        seen.append(i)
        return i

    res = video_io.transcode(src, tmp_path / "out.mp4", invert)
    assert res.frames == 12 and seen == list(range(12)) and res.per_frame == seen
    assert res.audio_mode == "passthrough" and res.metadata_kept
    info = video_io.probe(tmp_path / "out.mp4")
    assert info["video"][0]["codec"] == "h264" and info["video"][0]["pix_fmt"] == "yuv420p"
    assert info["frames"] == 12 and info["duration_s"] > 1.0
    assert info["audio"][0]["codec"] == "aac" and info["audio"][0]["sample_rate"] == 44100
    assert info["metadata"]["title"] == "lobby cam" and info["metadata"]["comment"] == "site 7"
    # the callback's changes are what was encoded
    got, orig = decode_frames(tmp_path / "out.mp4"), _frames()
    assert float(np.abs(got[5].astype(float) - (255 - orig[5]).astype(float)).mean()) < 4.0
    # the audio is the input's tone, bit for bit the same packets
    assert abs(dominant_hz(audio_samples(tmp_path / "out.mp4"), 44100) - TONE_HZ) < 5
    assert np.array_equal(audio_samples(tmp_path / "out.mp4"), audio_samples(src))


def test_no_audio_and_strip_metadata(tmp_path: pathlib.Path) -> None:
    src = make_clip(tmp_path / "in.mp4", _frames(6), metadata={"title": "secret site"})
    res = video_io.transcode(src, tmp_path / "out.mp4", lambda img, i: None, keep_audio=False, keep_metadata=False)
    assert res.audio_mode == "dropped" and not res.metadata_kept
    info = video_io.probe(tmp_path / "out.mp4")
    assert info["audio"] == [] and "title" not in info["metadata"] and info["frames"] == 6


def test_pcm_audio_in_mkv_is_reencoded_to_aac_and_odd_size_padded(tmp_path: pathlib.Path) -> None:
    src = make_clip(tmp_path / "in.mkv", _frames(10, (321, 241)), audio="pcm_s16le", sample_rate=16000,
                    video_codec="mjpeg")
    res = video_io.transcode(src, tmp_path / "out.mp4", lambda img, i: None)
    assert res.audio_mode == "aac" and (res.width, res.height) == (321, 241)
    info = video_io.probe(tmp_path / "out.mp4")
    assert info["audio"][0]["codec"] == "aac" and info["video"][0]["width"] == 322
    assert abs(dominant_hz(audio_samples(tmp_path / "out.mp4"), 16000) - TONE_HZ) < 5


def test_write_frames_and_bad_input(tmp_path: pathlib.Path) -> None:
    n = video_io.write_frames(iter(_frames(7)), tmp_path / "sbs.mp4", 10.0)
    info = video_io.probe(tmp_path / "sbs.mp4")
    assert n == 7 and info["frames"] == 7 and info["video"][0]["codec"] == "h264"
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(b"\x00not a video at all")
    with pytest.raises(video_io.VideoError, match="cannot open video bad.mp4"):
        video_io.transcode(bad, tmp_path / "o.mp4", lambda img, i: None)
    with pytest.raises(video_io.VideoError, match="use one of"):
        video_io.container_for(tmp_path / "o.webm")
