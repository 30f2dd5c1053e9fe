"""Video files in and out through PyAV (FFmpeg): H.264 in MP4 that every browser plays, audio and metadata kept.

``transcode`` reads a video file, hands each decoded frame (BGR, in place) to a callback, and writes the result as
H.264 (yuv420p, ``+faststart`` so a browser can start playing before the end has loaded) into the container the
output extension names. Audio streams are passed through packet for packet when the output container can carry
their codec, else re-encoded to AAC; ``keep_audio=False`` drops them. Container metadata (title, comment,
creation time, custom tags) is copied unless ``keep_metadata=False``. Timestamps are the input's, so audio stays in
sync also for variable frame rate input.

``write_frames`` encodes a sequence of BGR frames at a fixed rate (the demo's side-by-side video).
"""

from __future__ import annotations

import logging
import pathlib
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any, Callable, Iterable, Optional

import numpy as np

logger = logging.getLogger(__name__)

# Output extensions -> FFmpeg muxer. All carry H.264; mp4/m4v/mov play in browsers.
CONTAINERS = {".mp4": "mp4", ".m4v": "mp4", ".mov": "mov", ".mkv": "matroska", ".avi": "avi"}
# Audio codecs each muxer takes as they are (anything else is re-encoded to AAC).
PASSTHROUGH_AUDIO = {
    "mp4": {"aac", "mp3", "alac", "ac3", "eac3", "opus", "flac"},
    "mov": {"aac", "mp3", "alac", "ac3", "eac3", "pcm_s16le", "pcm_s24le"},
    "matroska": {"aac", "mp3", "alac", "ac3", "eac3", "opus", "flac", "vorbis", "pcm_s16le", "pcm_s24le"},
    "avi": {"mp3", "ac3", "pcm_s16le", "aac"},
}
VIDEO_CODEC = "libx264"
DEFAULT_CRF = 20
DEFAULT_PRESET = "veryfast"


# Same shape as ledger/audit/manifest.py:ManifestReport, ledger/audit/decisions.py:DecisionStats,
# ledger/consensus/events.py:ConsensusParams, pipelines/redact.py:RedactStats: unrelated tallies and settings.
class VideoError(Exception):
    """A video cannot be read or written (message fit for a user)."""


@dataclass
class TranscodeResult:
    frames: int = 0
    width: int = 0
    height: int = 0
    fps: float = 0.0
    audio_streams: int = 0
    audio_mode: str = "none"  # none | passthrough | aac | dropped
    metadata_kept: bool = False
    per_frame: list[Any] = field(default_factory=list)


def container_for(path: pathlib.Path) -> str:
    fmt = CONTAINERS.get(path.suffix.lower())
    if fmt is None:
        raise VideoError(f"cannot write video {path.name}: use one of {', '.join(sorted(CONTAINERS))}")
    return fmt


def _even(image: np.ndarray) -> np.ndarray:
    """yuv420p needs even sides: pad the last row/column by edge replication when odd."""
    h, w = image.shape[:2]
    if h % 2 == 0 and w % 2 == 0:
        return image
    return np.pad(image, ((0, h % 2), (0, w % 2), (0, 0)), mode="edge")


def _open_input(src: pathlib.Path) -> Any:
    import av

    try:
        return av.open(str(src), "r")
    except (av.FFmpegError, OSError, ValueError) as exc:
        raise VideoError(f"cannot open video {src.name}: not a readable video file ({type(exc).__name__})") from None


def _video_stream(out: Any, width: int, height: int, rate: Fraction, crf: int, preset: str) -> Any:
    vs = out.add_stream(VIDEO_CODEC, rate=rate)
    vs.width, vs.height = width + width % 2, height + height % 2
    vs.pix_fmt = "yuv420p"
    vs.options = {"crf": str(crf), "preset": preset}
    return vs


def _rate(stream: Any) -> Fraction:
    for r in (stream.average_rate, stream.base_rate, stream.guessed_rate):
        if r and 0 < float(r) <= 240:
            return Fraction(r)
    return Fraction(25, 1)


def transcode(src: pathlib.Path, dst: pathlib.Path, on_frame: Callable[[np.ndarray, int], Any],
              keep_audio: bool = True, keep_metadata: bool = True, crf: int = DEFAULT_CRF,
              preset: str = DEFAULT_PRESET, on_progress: Optional[Callable[[int], None]] = None) -> TranscodeResult:
    """Decode ``src``, call ``on_frame(bgr, index)`` on every frame (it masks in place and returns what the
    caller wants recorded per frame), encode H.264 into ``dst`` with audio and metadata as asked."""
    import av

    fmt = container_for(dst)
    res = TranscodeResult()
    inp = _open_input(src)
    out = None
    try:
        if not inp.streams.video:
            raise VideoError(f"{src.name} has no video stream")
        ivs = inp.streams.video[0]
        ivs.thread_type = "AUTO"
        rate = _rate(ivs)
        res.fps = float(rate)
        iaudio = list(inp.streams.audio) if keep_audio else []
        if inp.streams.audio and not keep_audio:
            res.audio_mode = "dropped"
        dst.parent.mkdir(parents=True, exist_ok=True)
        options = {"movflags": "+faststart+use_metadata_tags"} if fmt in ("mp4", "mov") else {}
        out = av.open(str(dst), "w", format=fmt, options=options)
        if keep_metadata:
            for k, v in inp.metadata.items():
                if k.lower() not in ("encoder", "major_brand", "minor_version", "compatible_brands"):
                    out.metadata[k] = v
            res.metadata_kept = True
        ovs = None  # made on the first frame, when the size is known
        audio_map: dict[int, tuple[Any, Optional[Any]]] = {}  # input index -> (output stream, resampler)
        for ias in iaudio:
            if ias.codec_context.name in PASSTHROUGH_AUDIO[fmt]:
                oas = out.add_stream_from_template(ias)
                audio_map[ias.index] = (oas, None)
                res.audio_mode = "passthrough" if res.audio_mode in ("none", "passthrough") else res.audio_mode
            else:
                oas = out.add_stream("aac", rate=ias.codec_context.sample_rate or 48000)
                oas.layout = "mono" if ias.codec_context.channels == 1 else "stereo"
                audio_map[ias.index] = (oas, av.AudioResampler(format="fltp", layout=oas.layout.name,
                                                               rate=oas.rate))
                res.audio_mode = "aac"
            if keep_metadata:
                for k, v in ias.metadata.items():
                    if k.lower() not in ("handler_name", "vendor_id", "encoder"):
                        oas.metadata[k] = v
        res.audio_streams = len(audio_map)
        pending_audio: list[Any] = []  # audio packets seen before the video stream exists (header not written)
        next_pts = 0
        for packet in inp.demux([ivs, *iaudio]):
            if packet.stream.type == "video":
                for frame in packet.decode():
                    image = frame.to_ndarray(format="bgr24")
                    if ovs is None:
                        res.height, res.width = image.shape[:2]
                        ovs = _video_stream(out, res.width, res.height, rate, crf, preset)
                        ovs.codec_context.time_base = ivs.time_base if frame.pts is not None else 1 / rate
                        if keep_metadata and ivs.metadata.get("language"):
                            ovs.metadata["language"] = ivs.metadata["language"]
                        for p in pending_audio:
                            _mux_audio(out, p, audio_map)
                        pending_audio.clear()
                    elif image.shape[:2] != (res.height, res.width):  # size changed mid-stream: keep the first
                        import cv2

                        image = cv2.resize(image, (res.width, res.height))
                    res.per_frame.append(on_frame(image, res.frames))
                    oframe = av.VideoFrame.from_ndarray(_even(image), format="bgr24")
                    if frame.pts is not None:
                        oframe.pts = frame.pts
                    else:
                        oframe.pts = next_pts
                    next_pts = oframe.pts + 1
                    oframe.time_base = ovs.codec_context.time_base
                    for op in ovs.encode(oframe):
                        out.mux(op)
                    res.frames += 1
                    if on_progress is not None:
                        on_progress(res.frames)
            elif packet.dts is not None:
                if ovs is None:
                    pending_audio.append(packet)
                else:
                    _mux_audio(out, packet, audio_map)
        if ovs is None:
            raise VideoError(f"cannot read any frame from {src.name}: empty or corrupt video")
        for op in ovs.encode(None):
            out.mux(op)
        for oas, resampler in audio_map.values():
            if resampler is not None:
                for op in oas.encode(None):
                    out.mux(op)
        return res
    except av.FFmpegError as exc:
        raise VideoError(f"cannot transcode {src.name}: {exc}") from None
    finally:
        if out is not None:
            try:
                out.close()
            except Exception:  # noqa: BLE001 - the first error is the one to report
                logger.debug("closing %s failed", dst, exc_info=True)
        inp.close()


def _mux_audio(out: Any, packet: Any, audio_map: dict[int, tuple[Any, Optional[Any]]]) -> None:
    oas, resampler = audio_map[packet.stream.index]
    if resampler is None:
        packet.stream = oas
        out.mux(packet)
        return
    for frame in packet.decode():
        for rf in resampler.resample(frame):
            for op in oas.encode(rf):
                out.mux(op)


def write_frames(frames: Iterable[np.ndarray], dst: pathlib.Path, fps: float, crf: int = 23,
                 preset: str = DEFAULT_PRESET) -> int:
    """Encode BGR frames (all the size of the first) as H.264 at ``fps`` into ``dst``; returns the count."""
    import av

    fmt = container_for(dst)
    rate = Fraction(max(1.0, float(fps))).limit_denominator(1001)
    dst.parent.mkdir(parents=True, exist_ok=True)
    n = 0
    out = av.open(str(dst), "w", format=fmt, options={"movflags": "+faststart"} if fmt in ("mp4", "mov") else {})
    try:
        vs = None
        for image in frames:
            if vs is None:
                vs = _video_stream(out, image.shape[1], image.shape[0], rate, crf, preset)
            frame = av.VideoFrame.from_ndarray(_even(np.ascontiguousarray(image)), format="bgr24")
            frame.pts = n
            frame.time_base = 1 / rate
            for p in vs.encode(frame):
                out.mux(p)
            n += 1
        if vs is not None:
            for p in vs.encode(None):
                out.mux(p)
    finally:
        out.close()
    return n


def probe(path: pathlib.Path) -> dict[str, Any]:
    """Streams, codecs, duration, frame count and metadata of a media file (what ffprobe would show)."""
    inp = _open_input(path)
    try:
        frames = 0
        if inp.streams.video:
            for _ in inp.decode(video=0):
                frames += 1
        return {
            "format": inp.format.name, "duration_s": (inp.duration or 0) / 1e6, "metadata": dict(inp.metadata),
            "video": [{"codec": s.codec_context.name, "width": s.codec_context.width,
                       "height": s.codec_context.height, "pix_fmt": s.codec_context.pix_fmt}
                      for s in inp.streams.video],
            "audio": [{"codec": s.codec_context.name, "sample_rate": s.codec_context.sample_rate,
                       "channels": s.codec_context.channels, "metadata": dict(s.metadata)}
                      for s in inp.streams.audio],
            "frames": frames,
        }
    finally:
        inp.close()
