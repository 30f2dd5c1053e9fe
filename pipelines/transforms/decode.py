"""Decode stage: Kafka record -> FrameContext (Avro CameraFrame + JPEG/PNG pixels), or a DeadLetter.

Everything that cannot be decoded safely goes to the ``dlq`` output with a machine-readable reason:
``oversized`` (record above ``max_frame_bytes``), ``not_avro``, ``foreign_schema``, ``corrupt`` (Avro),
``unknown_frame_key`` / ``undecryptable_frame`` (an encrypted image, see below, whose camera key this
pipeline lacks or that does not authenticate), ``unsupported_encoding``, ``too_many_pixels`` (declared or embedded dimensions above ``max_pixels``, checked
from the image header before any pixel is decoded), ``corrupt_image`` and ``dimension_mismatch``.
A DeadLetter never carries pixels: only the SHA-256 and size of the record.

Encrypted frames: when a CameraFrame carries ``image_key_id``, its image is AES-256-GCM under that camera's
key (``ledger.client.privacy.encrypt_frame``; the associated data binds every other field of the frame). The keys
come from the frame key file of the keys directory (``ledger.client.keys.load_frame_keys``), read again when a frame
names a key not seen yet and the file changed (a camera added while the pipeline runs).
"""

from __future__ import annotations

import hashlib
import logging
import struct
import time
from pathlib import Path
from typing import Iterator, Optional

import apache_beam as beam
import cv2
import numpy as np
from apache_beam import pvalue
from apache_beam.metrics import Metrics

from ledger.client.keys import KeyringError, frame_keys_path, load_frame_keys
from ledger.client.privacy import DecryptionError, decrypt_frame, frame_aad
from pipelines.frame import FrameContext, KafkaRecord
from pipelines.transforms.dead_letter import DLQ_TAG, dead_letter
from schemas.messages import CameraFrame
from schemas.serde import SchemaError

logger = logging.getLogger(__name__)

STAGE = "decode"
DEFAULT_MAX_PIXELS = 7680 * 4320  # 8K UHD
ENCODINGS = ("jpeg", "png")


class DecodeError(ValueError):
    """A record that is not a decodable camera frame; ``reason`` is the DLQ reason."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


def image_size(data: bytes) -> Optional[tuple[int, int]]:
    """(width, height) from a PNG IHDR or a JPEG SOF header without decoding pixels; None if not found."""
    if data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) >= 24 and data[12:16] == b"IHDR":
        w, h = struct.unpack(">II", data[16:24])
        return int(w), int(h)
    if data[:2] != b"\xff\xd8":
        return None
    i, n = 2, len(data)
    while i + 4 <= n:
        if data[i] != 0xFF:
            return None
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7:  # markers without a length
            i += 2
            continue
        seg_len = struct.unpack(">H", data[i + 2:i + 4])[0]
        if marker in (0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF):
            if i + 9 > n:
                return None
            h, w = struct.unpack(">HH", data[i + 5:i + 9])
            return int(w), int(h)
        if marker == 0xDA or seg_len < 2:  # start of scan before any frame header: malformed
            return None
        i += 2 + seg_len
    return None


class FrameKeySource:
    """Per-camera frame keys by key id, read lazily from a keys directory (None: the default one) and read again
    when a frame names an unknown key id and the key file changed since (a camera added while the pipeline
    runs). Picklable: keys are read inside the worker."""

    def __init__(self, keys_dir: Optional[str] = None) -> None:
        self.keys_dir = keys_dir
        self._keys: Optional[dict[bytes, bytes]] = None
        self._stamp: Optional[tuple[int, int]] = None

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_keys": None, "_stamp": None}

    def _file_stamp(self) -> Optional[tuple[int, int]]:
        try:
            st = frame_keys_path(Path(self.keys_dir) if self.keys_dir else None).stat()
        except OSError:
            return None
        return st.st_mtime_ns, st.st_size

    def get(self, kid: bytes) -> Optional[bytes]:
        kid = bytes(kid)
        if self._keys is not None and kid in self._keys:
            return self._keys[kid]
        stamp = self._file_stamp()
        if self._keys is None or stamp != self._stamp:
            try:
                self._keys = dict(load_frame_keys(Path(self.keys_dir) if self.keys_dir else None).keys)
                self._stamp = stamp
            except KeyringError as exc:
                logger.warning("cannot read the frame keys: %s", exc)
                self._keys = self._keys or {}
        return self._keys.get(kid)


def decrypt_image(frame: CameraFrame, keys: Optional[FrameKeySource]) -> bytes:
    """The encoded image of a frame (decrypted when it names a frame key); DecodeError when it cannot be."""
    if frame.image_key_id is None:
        return frame.image

    key = keys.get(frame.image_key_id) if keys is not None else None
    if key is None:
        raise DecodeError("unknown_frame_key", frame.image_key_id.hex()[:32])
    try:
        return decrypt_frame(key, frame.image, frame_aad(frame.camera_id, frame.epoch, frame.seq,
                                                         frame.capture_ts_us, frame.width, frame.height,
                                                         frame.encoding))
    except DecryptionError:
        raise DecodeError("undecryptable_frame", f"key {frame.image_key_id.hex()}") from None


def decode_frame(rec: KafkaRecord, max_frame_bytes: int, max_pixels: int = DEFAULT_MAX_PIXELS,
                 keys: Optional[FrameKeySource] = None) -> FrameContext:
    """The FrameContext of one record; DecodeError (with its DLQ reason) for anything unsafe or broken."""
    value = rec.value
    if len(value) > max_frame_bytes:
        raise DecodeError("oversized", f"{len(value)} bytes > {max_frame_bytes}")
    try:
        frame = CameraFrame.from_bytes(value)
    except SchemaError as exc:
        raise DecodeError(exc.reason, exc.detail) from None
    except (TypeError, ValueError) as exc:
        raise DecodeError("corrupt", type(exc).__name__) from None
    ids = dict(camera_id=frame.camera_id, epoch=frame.epoch, seq=frame.seq)
    if frame.encoding not in ENCODINGS:
        raise _with(DecodeError("unsupported_encoding", repr(frame.encoding)[:40]), ids)
    if frame.width <= 0 or frame.height <= 0 or frame.width * frame.height > max_pixels:
        raise _with(DecodeError("too_many_pixels", f"declared {frame.width}x{frame.height}"), ids)
    try:
        data = decrypt_image(frame, keys)
    except DecodeError as exc:
        raise _with(exc, ids) from None
    size = image_size(data)
    if size is None:
        raise _with(DecodeError("corrupt_image", "no image header"), ids)
    if size[0] * size[1] > max_pixels:
        raise _with(DecodeError("too_many_pixels", f"image header {size[0]}x{size[1]}"), ids)
    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    if image is None or image.ndim != 3 or image.shape[2] != 3:
        raise _with(DecodeError("corrupt_image", f"{frame.encoding} did not decode"), ids)
    if (image.shape[1], image.shape[0]) != (frame.width, frame.height):
        raise _with(DecodeError("dimension_mismatch", f"declared {frame.width}x{frame.height}, "
                                f"image {image.shape[1]}x{image.shape[0]}"), ids)
    return FrameContext(source_topic=rec.topic, source_partition=rec.partition, source_offset=rec.offset,
                        raw_sha256=hashlib.sha256(data).digest(), raw_size=len(data), image=image,
                        width=frame.width, height=frame.height, capture_ts_us=frame.capture_ts_us, **ids)


def _with(exc: DecodeError, ids: dict) -> DecodeError:
    exc.ids = ids  # type: ignore[attr-defined]  # camera coordinates for the DeadLetter
    return exc


class _DecodeFn(beam.DoFn):
    def __init__(self, max_frame_bytes: int, max_pixels: int, keys: FrameKeySource) -> None:
        self._max_frame_bytes = max_frame_bytes
        self._max_pixels = max_pixels
        self._keys = keys
        self._latency = Metrics.distribution(STAGE, "frame_us")

    def process(self, rec: KafkaRecord) -> Iterator[object]:
        try:
            start = time.perf_counter()
            frame = decode_frame(rec, self._max_frame_bytes, self._max_pixels, self._keys)
            self._latency.update(int((time.perf_counter() - start) * 1e6))
            yield frame
        except DecodeError as exc:
            ids = getattr(exc, "ids", {})
            logger.warning("frame %s/%s/%s to DLQ: %s", rec.topic, rec.partition, rec.offset, exc.reason)
            yield pvalue.TaggedOutput(DLQ_TAG, dead_letter(rec.topic, rec.partition, rec.offset, STAGE,
                                                           exc.reason, rec.value, exc.detail, **ids))
        except Exception as exc:  # any other decoder failure is still a bad record, never a crashed pipeline
            logger.warning("frame %s/%s/%s to DLQ: %s", rec.topic, rec.partition, rec.offset, type(exc).__name__)
            yield pvalue.TaggedOutput(DLQ_TAG, dead_letter(rec.topic, rec.partition, rec.offset, STAGE,
                                                           "decode_error", rec.value, type(exc).__name__))


class Decode(beam.PTransform):
    """KafkaRecord -> FrameContext (main output) | DeadLetter (``dlq`` output).

    ``keys_dir``: where the per-camera frame keys are (default: ``$RISKMASK_KEYS_DIR`` or the local stack's)."""

    def __init__(self, max_frame_bytes: int, max_pixels: int = DEFAULT_MAX_PIXELS,
                 keys_dir: Optional[str] = None) -> None:
        super().__init__()
        self._fn = _DecodeFn(max_frame_bytes, max_pixels, FrameKeySource(keys_dir))

    def expand(self, pcoll: beam.PCollection) -> pvalue.DoOutputsTuple:
        return pcoll | "Decode" >> beam.ParDo(self._fn).with_outputs(DLQ_TAG, main="frames")
