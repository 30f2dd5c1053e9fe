"""Test media made with PyAV: a short H.264 clip of real pixels with a sine-tone AAC track and container tags."""

from __future__ import annotations

import pathlib
from fractions import Fraction
from typing import Optional, Sequence

import av
import numpy as np

TONE_HZ = 440.0


def make_clip(path: pathlib.Path, frames: Sequence[np.ndarray], fps: int = 10, audio: Optional[str] = "aac",
              sample_rate: int = 44100, metadata: Optional[dict[str, str]] = None, video_codec: str = "libx264"
              ) -> pathlib.Path:
    """Write BGR ``frames`` at ``fps`` and, unless ``audio`` is None, a sine tone as long as the video in the
    given codec (``aac`` or ``pcm_s16le``)."""
    out = av.open(str(path), "w", options={"movflags": "use_metadata_tags"} if path.suffix == ".mp4" else {})
    try:
        for k, v in (metadata or {}).items():
            out.metadata[k] = v
        h, w = frames[0].shape[:2]
        vs = out.add_stream(video_codec, rate=fps)
        vs.width, vs.height = w, h
        vs.pix_fmt = "yuvj420p" if video_codec == "mjpeg" else "yuv420p"
        aus = None
        if audio is not None:
            aus = out.add_stream(audio, rate=sample_rate)
            aus.layout = "mono"
        for i, img in enumerate(frames):
            f = av.VideoFrame.from_ndarray(np.ascontiguousarray(img), format="bgr24")
            f.pts, f.time_base = i, Fraction(1, fps)
            for p in vs.encode(f):
                out.mux(p)
        for p in vs.encode(None):
            out.mux(p)
        if aus is not None:
            n = int(sample_rate * len(frames) / fps)
            t = np.arange(n) / sample_rate
            tone = 0.3 * np.sin(2 * np.pi * TONE_HZ * t)
            fmt = "fltp" if audio == "aac" else "s16"
            data = tone.astype(np.float32) if fmt == "fltp" else (tone * 32767).astype(np.int16)
            step = 1024
            for s in range(0, n, step):
                af = av.AudioFrame.from_ndarray(data[None, s:s + step].copy(), format=fmt, layout="mono")
                af.sample_rate, af.pts = sample_rate, s
                for p in aus.encode(af):
                    out.mux(p)
            for p in aus.encode(None):
                out.mux(p)
    finally:
        out.close()
    return path


def decode_frames(path: pathlib.Path) -> list[np.ndarray]:
    with av.open(str(path)) as c:
        return [f.to_ndarray(format="bgr24") for f in c.decode(video=0)]


def audio_samples(path: pathlib.Path) -> np.ndarray:
    """All samples of the first audio stream, first channel, as float."""
    with av.open(str(path)) as c:
        chunks = [f.to_ndarray().astype(np.float64).reshape(f.to_ndarray().shape[0], -1)[0]
                  for f in c.decode(audio=0)]
    return np.concatenate(chunks) if chunks else np.zeros(0)


def dominant_hz(samples: np.ndarray, sample_rate: int) -> float:
    spec = np.abs(np.fft.rfft(samples * np.hanning(len(samples))))
    return float(np.fft.rfftfreq(len(samples), 1.0 / sample_rate)[int(np.argmax(spec[1:])) + 1])
