"""The camera producer: read frames from a video file, an image directory, a webcam or an RTSP/HTTP stream,
JPEG-encode them and push them to Kafka as Avro ``CameraFrame`` messages keyed by camera id.

``CameraProducer`` is the library (the demo and the benches call it in-process); ``register_produce`` adds the
thin ``riskmask produce`` command. Every frame carries ``(camera_id, epoch, seq)``: ``epoch`` is the producer's
start time in microseconds and ``seq`` counts from 0, so consumers can drop duplicates after a retry or a
restart. The Kafka producer is idempotent with ``acks=all``: a frame is either stored once or the run fails.

Raw-frame encryption (``encrypt``): the image payload is AES-256-GCM under the camera's own key (created in
the keys directory's frame key file on first use, see ``ledger.client.keys.camera_frame_key``), the key id goes into
``CameraFrame.image_key_id``, and the associated data binds every other field of the frame. frames.raw then
holds no decodable picture; the pipeline decrypts with the same key file.

Live streams (RTSP/HTTP) survive outages: when a stream stops delivering frames or cannot be opened, the source
reconnects with exponential backoff (``reconnect_initial_s`` doubling up to ``reconnect_max_s``; it gives up
after ``reconnect_give_up_s`` without a frame, never by default for a stream). The sequence numbers of the
producer keep counting across reconnects (monotonic, no reuse: the epoch stays the same), and every outage is
counted (``gaps``, ``gap_seconds``, ``reconnects``) in the run's statistics and logs.

Many cameras from one file: ``riskmask produce --cameras cameras.toml`` runs one producer per ``[[camera]]``
table (``id``, ``source`` and optionally ``fps``, ``loop``, ``max_frames``, ``resize``, ``jpeg_quality``,
``encrypt``) on one shared Kafka producer, each in its own thread.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import re
import threading
import time
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

import cv2
import numpy as np

from ledger.client.keys import KeyringError, camera_frame_key
from ledger.client.privacy import encrypt_frame, frame_aad
from riskmask.errors import ServiceError, UserError
from riskmask.local_broker import resolve_bootstrap
from schemas.messages import CameraFrame

logger = logging.getLogger(__name__)

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".ppm", ".pgm"})
DEFAULT_TOPIC = "frames.raw"
DEFAULT_BOOTSTRAP = "127.0.0.1:9092"
# A 4K JPEG is ~2 MB; leave room above Kafka's 1 MB default (the broker/topic limit must allow it too).
MAX_REQUEST_BYTES = 16 * 1024 * 1024


class ProducerError(UserError):
    """A source that cannot be read or an invalid producer setting (exit 2)."""


class BrokerUnavailable(ServiceError):
    """The Kafka cluster could not be reached or refused the frames (exit 3)."""


@dataclasses.dataclass(frozen=True)
class ProducerConfig:
    """Everything a producer run needs; validated on construction."""

    source: str
    camera_id: str = "cam-0"
    bootstrap_servers: str = DEFAULT_BOOTSTRAP
    topic: str = DEFAULT_TOPIC
    fps: float | None = None  # None: a video file's own rate, live sources unpaced; 0: as fast as possible
    loop: bool = False
    max_frames: int | None = None
    resize: tuple[int, int] | None = None
    jpeg_quality: int = 90
    connect_timeout_s: float = 10.0
    encrypt: bool = False  # AES-256-GCM of the image under the camera's key (raw-frame encryption)
    keys_dir: str | None = None  # where the frame keys are (default: $RISKMASK_KEYS_DIR or the local stack's)
    reconnect_initial_s: float = 0.5
    reconnect_max_s: float = 30.0
    reconnect_give_up_s: float | None = None  # None: a live stream is retried for ever

    def __post_init__(self) -> None:
        if not self.camera_id or len(self.camera_id) > 128 or not self.camera_id.isprintable():
            raise ProducerError("camera id must be 1-128 printable characters")
        if self.fps is not None and not (0 <= self.fps <= 1000):
            raise ProducerError(f"fps must be between 0 and 1000, got {self.fps}")
        if self.max_frames is not None and self.max_frames < 1:
            raise ProducerError(f"max frames must be >= 1, got {self.max_frames}")
        if not 1 <= self.jpeg_quality <= 100:
            raise ProducerError(f"jpeg quality must be 1..100, got {self.jpeg_quality}")
        if self.resize is not None and not (1 <= self.resize[0] <= 8192 and 1 <= self.resize[1] <= 8192):
            raise ProducerError(f"resize must be between 1x1 and 8192x8192, got {self.resize}")
        if not self.topic:
            raise ProducerError("topic must not be empty")
        if self.connect_timeout_s <= 0:
            raise ProducerError("connect timeout must be > 0")
        if not 0 < self.reconnect_initial_s <= self.reconnect_max_s:
            raise ProducerError("reconnect backoff must satisfy 0 < initial <= max")
        if self.reconnect_give_up_s is not None and self.reconnect_give_up_s < 0:
            raise ProducerError("reconnect give-up time must be >= 0")


# Same shape as pipelines/kafkaio/source.py:SourceConfig: a run's tally, not reader settings.
@dataclasses.dataclass
class ProduceStats:
    """What a run sent."""

    camera_id: str
    epoch: int
    frames: int = 0
    bytes: int = 0
    seconds: float = 0.0
    interrupted: bool = False
    reconnects: int = 0  # successful re-openings of a live stream after it dropped
    gaps: int = 0  # outages of a live stream (each one a gap in capture time, never in seq)
    gap_seconds: float = 0.0  # time spent without frames during those outages

    @property
    def fps(self) -> float:
        return self.frames / self.seconds if self.seconds > 0 else 0.0

    @property
    def megabytes(self) -> float:
        return self.bytes / 1e6

    def summary(self) -> str:
        end = " (interrupted)" if self.interrupted else ""
        gaps = (f", {self.gaps} gap(s) {self.gap_seconds:.1f} s, {self.reconnects} reconnect(s)"
                if self.gaps or self.reconnects else "")
        return (f"camera {self.camera_id} epoch {self.epoch}: {self.frames} frames, {self.megabytes:.1f} MB "
                f"in {self.seconds:.1f} s ({self.fps:.1f} fps, {self.megabytes / max(self.seconds, 1e-9):.1f} MB/s)"
                f"{gaps}{end}")


def parse_resize(text: str) -> tuple[int, int]:
    """``"1280x720"`` -> ``(1280, 720)``; ProducerError otherwise."""
    m = re.fullmatch(r"\s*(\d{1,5})\s*[xX]\s*(\d{1,5})\s*", text or "")
    if not m:
        raise ProducerError(f"resize must look like WIDTHxHEIGHT (e.g. 1280x720), got {text!r}")
    return int(m.group(1)), int(m.group(2))


@dataclasses.dataclass
class Backoff:
    """Reconnect policy of a live stream: waits double from ``initial_s`` to ``max_s``; ``give_up_s`` (None:
    never) is the longest outage tolerated."""

    initial_s: float = 0.5
    max_s: float = 30.0
    give_up_s: float | None = None
    first_open_s: float = 10.0  # a stream that never delivered a frame is a bad source after this long


class FrameSource:
    """Iterates BGR frames from one source; ``native_fps`` is a video file's own rate (or None).

    A live stream (``kind == "stream"``) reconnects with ``backoff`` when it drops; ``reconnects``, ``gaps``
    and ``gap_seconds`` count the outages. ``stop`` (an Event) ends the iteration from another thread."""

    def __init__(self, source: str, loop: bool = False, backoff: Backoff | None = None,
                 stop: threading.Event | None = None, sleep: Callable[[float], None] | None = None) -> None:
        self.source = source
        self.loop = loop
        self.backoff = backoff or Backoff()
        self.stop = stop or threading.Event()
        self._sleep = sleep or self.stop.wait
        self.reconnects = 0
        self.gaps = 0
        self.gap_seconds = 0.0
        self.native_fps: float | None = None
        self.kind, self._target = self._classify(source)
        if self.kind == "images":
            self._files = sorted(p for p in Path(self._target).iterdir()
                                 if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
            if not self._files:
                raise ProducerError(f"no image files ({', '.join(sorted(IMAGE_SUFFIXES))}) in {source}")
        elif self.kind == "image":
            self._files = [Path(self._target)]
            if cv2.imread(str(self._target), cv2.IMREAD_COLOR) is None:
                raise ProducerError(f"cannot read image {source}")
        elif self.kind != "stream":  # a live stream is opened (and re-opened) only while iterating
            cap = self._open_capture()
            fps = float(cap.get(cv2.CAP_PROP_FPS) or 0.0)
            cap.release()
            if self.kind == "video" and 0 < fps <= 1000:
                self.native_fps = fps

    @staticmethod
    def _classify(source: str) -> tuple[str, Any]:
        if re.fullmatch(r"\d{1,3}", source):
            return "webcam", int(source)
        if re.match(r"^[a-zA-Z][a-zA-Z0-9+.-]*://", source):
            return "stream", source
        path = Path(source)
        if path.is_dir():
            return "images", path
        if not path.is_file():
            raise ProducerError(f"source not found: {source} (a video file, image directory, webcam index or URL)")
        if not os.access(path, os.R_OK):
            raise ProducerError(f"source is not readable: {source}")
        if path.suffix.lower() in IMAGE_SUFFIXES:
            return "image", path
        return "video", path

    def _open_capture(self) -> cv2.VideoCapture:
        cap = cv2.VideoCapture(self._target)
        if not cap.isOpened():
            cap.release()
            raise ProducerError(f"cannot open video source {self.source}")
        return cap

    def __iter__(self) -> Iterator[np.ndarray]:
        if self.kind in ("images", "image"):
            yield from self._iter_images()
        elif self.kind == "stream":
            yield from self._iter_stream()
        else:
            yield from self._iter_capture()

    def _iter_stream(self) -> Iterator[np.ndarray]:
        """Frames of a live stream; on a drop (end of stream, read error, cannot open) it reconnects with
        exponential backoff until frames flow again or the outage exceeds ``backoff.give_up_s``."""
        delivered = False
        outage_start: float | None = None
        wait = self.backoff.initial_s
        while not self.stop.is_set():
            cap = cv2.VideoCapture(self._target)
            try:
                if cap.isOpened():
                    while not self.stop.is_set():
                        ok, frame = cap.read()
                        if not ok or frame is None:
                            break
                        if outage_start is not None:  # frames flow again after an outage
                            lost = time.monotonic() - outage_start
                            self.gap_seconds += lost
                            self.reconnects += 1
                            logger.warning("stream %s resumed after %.1f s without frames (gap %d)",
                                           redact_url(self.source), lost, self.gaps)
                            outage_start, wait = None, self.backoff.initial_s
                        delivered = True
                        yield frame
            finally:
                cap.release()
            if self.stop.is_set():
                return
            now = time.monotonic()
            if outage_start is None:
                outage_start = now
                if delivered:
                    self.gaps += 1
                    logger.warning("stream %s dropped; reconnecting (gap %d)", redact_url(self.source), self.gaps)
            give_up = self.backoff.give_up_s if delivered else self.backoff.first_open_s
            if give_up is not None and now - outage_start >= give_up:
                if not delivered:
                    raise ProducerError(f"cannot open video source {redact_url(self.source)}")
                self.gap_seconds += now - outage_start
                logger.warning("stream %s gave no frame for %.1f s; giving up", redact_url(self.source),
                               now - outage_start)
                return
            self._sleep(wait)
            wait = min(wait * 2, self.backoff.max_s)

    def _iter_images(self) -> Iterator[np.ndarray]:
        while True:
            readable = 0
            for path in self._files:
                img = cv2.imread(str(path), cv2.IMREAD_COLOR)
                if img is None:
                    logger.warning("skipping unreadable image %s", path.name)
                    continue
                readable += 1
                yield img
            if readable == 0:
                raise ProducerError(f"no readable image in {self.source}")
            if not self.loop:
                return

    def _iter_capture(self) -> Iterator[np.ndarray]:
        rewindable = self.kind == "video"
        while True:
            cap = self._open_capture()
            got = 0
            try:
                while True:
                    ok, frame = cap.read()
                    if not ok or frame is None:
                        break
                    got += 1
                    yield frame
            finally:
                cap.release()
            if got == 0:
                raise ProducerError(f"cannot read any frame from {self.source}")
            if not (self.loop and rewindable):
                if not rewindable:
                    logger.warning("stream %s ended after %d frames", self.source, got)
                return


def redact_url(url: str) -> str:
    """A stream URL without its credentials (``rtsp://user:pass@host`` -> ``rtsp://***@host``), for logs."""
    return re.sub(r"^([a-zA-Z][a-zA-Z0-9+.-]*://)[^/@]*@", r"\1***@", url)


def encode_jpeg(frame: np.ndarray, quality: int) -> bytes:
    """JPEG bytes of a BGR frame."""
    ok, buf = cv2.imencode(".jpg", frame, [int(cv2.IMWRITE_JPEG_QUALITY), int(quality)])
    if not ok:
        raise ProducerError("JPEG encoding failed")
    return buf.tobytes()


def now_us() -> int:
    return time.time_ns() // 1000


def make_kafka_producer(bootstrap_servers: str, connect_timeout_s: float = 10.0,
                        client_id: str = "riskmask-producer") -> Any:
    """An idempotent ``acks=all`` KafkaProducer sized for camera frames; BrokerUnavailable after the timeout."""
    from kafka import KafkaProducer  # deferred: loads kafka, which only this path needs
    from kafka.errors import KafkaError  # deferred: loads kafka, which only this path needs

    ms = int(connect_timeout_s * 1000)
    try:
        return KafkaProducer(bootstrap_servers=bootstrap_servers, acks="all", enable_idempotence=True,
                             client_id=client_id, bootstrap_timeout_ms=ms, max_block_ms=ms,
                             max_request_size=MAX_REQUEST_BYTES, batch_size=1024 * 1024, linger_ms=5)
    except (KafkaError, OSError, ValueError) as exc:
        raise BrokerUnavailable(f"cannot reach Kafka at {bootstrap_servers} within {connect_timeout_s:g} s "
                                f"({type(exc).__name__})") from None


class CameraProducer:
    """Sends one camera's frames to Kafka. Use as a context manager, or call ``close()``.

    ``send_frame`` takes a BGR array, ``send_encoded`` already-encoded JPEG bytes; ``run`` drives a whole
    ``FrameSource`` with pacing, limits and an optional progress bar.
    """

    def __init__(self, config: ProducerConfig, epoch: int | None = None, kafka_producer: Any = None) -> None:
        """``kafka_producer``: share one KafkaProducer between several cameras in a process (the caller
        makes it with ``make_kafka_producer`` and closes it); by default each camera has its own."""
        self.config = config
        self.epoch = now_us() if epoch is None else int(epoch)
        self._seq = 0
        self._sent_bytes = 0
        self._errors: list[BaseException] = []
        self._owns_producer = kafka_producer is None
        self._frame_key: Optional[tuple[bytes, bytes]] = None
        if config.encrypt:
            try:
                self._frame_key = camera_frame_key(config.camera_id, Path(config.keys_dir) if config.keys_dir
                                                   else None, create=True)
            except (KeyringError, OSError) as exc:
                raise ProducerError(f"cannot get the frame key of camera {config.camera_id}: {exc}") from None
        self._producer = kafka_producer if kafka_producer is not None else make_kafka_producer(
            config.bootstrap_servers, config.connect_timeout_s, client_id=f"riskmask-producer-{config.camera_id}")

    @property
    def next_seq(self) -> int:
        return self._seq

    def send_encoded(self, image: bytes, width: int, height: int, capture_ts_us: int | None = None,
                     encoding: str = "jpeg") -> CameraFrame:
        """Send one encoded image as the next frame of this camera; returns the message sent."""
        from kafka.errors import KafkaError  # deferred: loads kafka, which only this path needs

        self._raise_failed_sends()
        msg = CameraFrame(camera_id=self.config.camera_id, epoch=self.epoch, seq=self._seq,
                          capture_ts_us=now_us() if capture_ts_us is None else int(capture_ts_us),
                          width=int(width), height=int(height), image=bytes(image), encoding=encoding)
        if self._frame_key is not None:
            kid, key = self._frame_key
            aad = frame_aad(msg.camera_id, msg.epoch, msg.seq, msg.capture_ts_us, msg.width, msg.height,
                            msg.encoding)
            msg = dataclasses.replace(msg, image=encrypt_frame(key, msg.image, aad), image_key_id=kid)
        value = msg.to_bytes()
        try:
            fut = self._producer.send(self.config.topic, key=self.config.camera_id.encode("utf-8"), value=value)
        except KafkaError as exc:
            raise BrokerUnavailable(f"cannot send to {self.config.topic} at {self.config.bootstrap_servers}: "
                                    f"{type(exc).__name__}: {exc}") from None
        fut.add_errback(self._errors.append)
        self._seq += 1
        self._sent_bytes += len(value)
        return msg

    def send_frame(self, frame: np.ndarray, capture_ts_us: int | None = None) -> CameraFrame:
        """Resize (if configured), JPEG-encode and send one BGR frame."""
        ts = now_us() if capture_ts_us is None else capture_ts_us
        if self.config.resize is not None and (frame.shape[1], frame.shape[0]) != self.config.resize:
            frame = cv2.resize(frame, self.config.resize, interpolation=cv2.INTER_AREA)
        data = encode_jpeg(frame, self.config.jpeg_quality)
        return self.send_encoded(data, frame.shape[1], frame.shape[0], capture_ts_us=ts)

    def flush(self, timeout_s: float | None = None) -> None:
        """Wait until every frame sent so far is acknowledged; BrokerUnavailable if any was not."""
        from kafka.errors import KafkaError  # deferred: loads kafka, which only this path needs

        try:
            self._producer.flush(timeout=timeout_s if timeout_s is not None else max(30.0,
                                                                                     self.config.connect_timeout_s))
        except KafkaError as exc:
            raise BrokerUnavailable(f"frames not acknowledged by {self.config.bootstrap_servers}: "
                                    f"{type(exc).__name__}") from None
        self._raise_failed_sends()

    def _raise_failed_sends(self) -> None:
        if self._errors:
            exc = self._errors[0]
            raise BrokerUnavailable(f"{len(self._errors)} frame(s) not stored in {self.config.topic} at "
                                    f"{self.config.bootstrap_servers}: {type(exc).__name__}: {exc}")

    def run(self, source: FrameSource | None = None, progress: bool = False) -> ProduceStats:
        """Send frames from ``source`` (default: the configured one) until it ends or ``max_frames``."""
        src = source or source_for(self.config)
        fps = self.config.fps if self.config.fps is not None else (src.native_fps or 0.0)
        limit = self.config.max_frames
        stats = ProduceStats(camera_id=self.config.camera_id, epoch=self.epoch)
        start_seq, start_bytes = self._seq, self._sent_bytes
        bar = None
        if progress:
            from tqdm import tqdm  # deferred: loads tqdm, which only this path needs

            # disable=None: no bar when stderr is not a terminal (logs, CI)
            bar = tqdm(total=limit, unit="frame", desc=self.config.camera_id, dynamic_ncols=True, disable=None)
        t0 = time.monotonic()
        try:
            for i, frame in enumerate(src):
                if fps > 0:  # real-time pacing: frame i is due at t0 + i / fps
                    delay = t0 + i / fps - time.monotonic()
                    if delay > 0:
                        time.sleep(delay)
                self.send_frame(frame)
                if bar is not None:
                    bar.update(1)
                if limit is not None and self._seq - start_seq >= limit:
                    break
        except KeyboardInterrupt:
            stats.interrupted = True
        finally:
            if bar is not None:
                bar.close()
        self.flush()
        stats.frames = self._seq - start_seq
        stats.bytes = self._sent_bytes - start_bytes
        stats.seconds = time.monotonic() - t0
        stats.reconnects, stats.gaps, stats.gap_seconds = src.reconnects, src.gaps, src.gap_seconds
        return stats

    def close(self, timeout_s: float = 10.0) -> None:
        """Close the Kafka producer if this camera owns it (a shared one is the caller's to close)."""
        if self._owns_producer:
            self._producer.close(timeout=timeout_s)

    def __enter__(self) -> "CameraProducer":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def source_for(config: ProducerConfig, stop: threading.Event | None = None) -> FrameSource:
    """The FrameSource of a configuration, with its reconnect policy."""
    return FrameSource(config.source, loop=config.loop, stop=stop, backoff=Backoff(
        config.reconnect_initial_s, config.reconnect_max_s, config.reconnect_give_up_s,
        first_open_s=max(config.connect_timeout_s, config.reconnect_initial_s)))


def register_produce(sub: "argparse._SubParsersAction[argparse.ArgumentParser]") -> None:
    """Add ``riskmask produce``."""
    p = sub.add_parser("produce", help="push camera frames (video, images, webcam, RTSP/HTTP) to Kafka",
                       description="Read frames from SOURCE (or every camera of --cameras FILE) and send them to "
                                   "Kafka as Avro CameraFrame messages.")
    p.add_argument("source", nargs="?", default=None,
                   help="video file, directory of images, webcam index (0) or rtsp://, http:// URL")
    p.add_argument("--cameras", type=Path, default=None, metavar="FILE",
                   help="TOML file with one [[camera]] table per camera (id, source, fps, loop, max_frames, "
                        "resize, jpeg_quality, encrypt, topic); other flags give the defaults")
    p.add_argument("--camera-id", default="cam-0", help="camera id, also the Kafka key (default: %(default)s)")
    p.add_argument("--bootstrap-servers", default=None,
                   help="Kafka bootstrap servers (default: $RISKMASK_BOOTSTRAP, else the broker started by "
                        f"`riskmask broker start`, else {DEFAULT_BOOTSTRAP})")
    p.add_argument("--topic", default=DEFAULT_TOPIC, help="topic (default: %(default)s)")
    p.add_argument("--fps", type=float, default=None,
                   help="frames per second, real-time paced; 0 = as fast as possible "
                        "(default: a video file's own rate, unpaced for other sources)")
    p.add_argument("--loop", action="store_true", help="start over at the end of a file or directory")
    p.add_argument("--max-frames", type=int, default=None, help="stop after this many frames")
    p.add_argument("--resize", default=None, metavar="WxH", help="resize every frame, e.g. 1280x720")
    p.add_argument("--jpeg-quality", type=int, default=90, help="JPEG quality 1..100 (default: %(default)s)")
    p.add_argument("--timeout", type=float, default=10.0, help="seconds to wait for the broker (default 10)")
    p.add_argument("--encrypt", action="store_true",
                   help="encrypt each image (AES-256-GCM) under the camera's key from the keys directory "
                        "(created on first use); the pipeline decrypts with the same key file")
    p.add_argument("--keys-dir", default=None,
                   help="keys directory holding frame_keys.json (default: $RISKMASK_KEYS_DIR, else "
                        "./.riskmask/keys or $RISKMASK_HOME/keys)")
    p.add_argument("--reconnect-max", type=float, default=30.0,
                   help="longest wait between reconnect attempts of a live stream, seconds (default 30)")
    p.add_argument("--give-up-after", type=float, default=None,
                   help="stop a live stream after this many seconds without frames (default: never)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=_produce_main)


def _produce_main(args: argparse.Namespace) -> int:
    if not getattr(args, "debug", False):
        # kafka-python logs every connection attempt; failures reach the user as one line from this command
        logging.getLogger("kafka").setLevel(logging.CRITICAL)
        # FFmpeg prints every refused (re)connection of a live stream; outages are counted and logged here
        os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "-8")
    if (args.source is None) == (args.cameras is None):
        raise ProducerError("give either a SOURCE or --cameras FILE")
    bootstrap = resolve_bootstrap(args.bootstrap_servers, fallback=DEFAULT_BOOTSTRAP)
    config = ProducerConfig(source=args.source or "-", camera_id=args.camera_id, bootstrap_servers=bootstrap,
                            topic=args.topic, fps=args.fps, loop=args.loop, max_frames=args.max_frames,
                            resize=parse_resize(args.resize) if args.resize else None,
                            jpeg_quality=args.jpeg_quality, connect_timeout_s=args.timeout,
                            encrypt=args.encrypt, keys_dir=args.keys_dir,
                            reconnect_max_s=max(0.5, args.reconnect_max), reconnect_give_up_s=args.give_up_after)
    if args.cameras is not None:
        from pipelines.ingest.cameras import load_cameras, run_cameras  # cycle: pipelines.ingest.cameras imports this

        configs = load_cameras(args.cameras, config)
        all_stats = run_cameras(configs, progress=False)
        for stats in all_stats:
            print(f"produced to {config.topic} at {config.bootstrap_servers}: {stats.summary()}")
        return 130 if any(st.interrupted for st in all_stats) else 0
    source = source_for(config)  # a bad source fails before connecting
    with CameraProducer(config) as producer:
        stats = producer.run(source, progress=not args.no_progress)
    print(f"produced to {config.topic} at {config.bootstrap_servers}: {stats.summary()}")
    return 130 if stats.interrupted else 0
