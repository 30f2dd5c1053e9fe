"""Decode stage: valid JPEG/PNG frames decode; every kind of bad record goes to the DLQ without pixels."""

from __future__ import annotations

import hashlib
import struct
import zlib

import numpy as np
import pytest
from apache_beam.testing.util import assert_that, equal_to

from pipelines.transforms.dead_letter import DLQ_TAG
from pipelines.transforms.decode import Decode, DecodeError, decode_frame, image_size
from schemas.messages import DeadLetter
from tests.pipeline_support import beam_test_pipeline, camera_frame, jpeg, record

MAX = 256 * 1024  # small, so the oversized record stays cheap to pickle into the test pipeline


@pytest.fixture(scope="module")
def image() -> np.ndarray:
    rng = np.random.default_rng(1)
    img = np.zeros((96, 128, 3), np.uint8)
    img[:, :] = (40, 120, 200)
    img[20:60, 30:90] = rng.integers(0, 255, (40, 60, 3), dtype=np.uint8)
    return img


def _png_header(width: int, height: int) -> bytes:
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    chunk = b"IHDR" + ihdr
    return b"\x89PNG\r\n\x1a\n" + struct.pack(">I", len(ihdr)) + chunk + struct.pack(">I", zlib.crc32(chunk))


def test_image_size_reads_jpeg_and_png_headers(image):
    assert image_size(jpeg(image)) == (128, 96)
    import cv2

    assert image_size(cv2.imencode(".png", image)[1].tobytes()) == (128, 96)
    assert image_size(_png_header(70000, 70000)) == (70000, 70000)
    assert image_size(b"GIF89a....") is None
    assert image_size(b"\xff\xd8\xff\xda\x00\x02") is None  # scan before any frame header


@pytest.mark.parametrize("encoding", ["jpeg", "png"])
def test_valid_frame_decodes(image, encoding):
    cf = camera_frame(image, seq=7, encoding=encoding)
    ctx = decode_frame(record(cf.to_bytes(), offset=3), MAX)
    assert (ctx.camera_id, ctx.epoch, ctx.seq, ctx.source_offset) == ("cam-t", 1, 7, 3)
    assert ctx.image.shape == (96, 128, 3)
    assert ctx.raw_sha256 == hashlib.sha256(cf.image).digest() and ctx.raw_size == len(cf.image)
    if encoding == "png":
        assert np.array_equal(ctx.image, image)
    assert ctx.dedupe_key == "cam-t/1/7"


def _bad_records(image) -> dict[str, bytes]:
    good = camera_frame(image, seq=1)
    corrupt = bytearray(good.image)
    corrupt[200:] = b"\x00" * (len(corrupt) - 200)  # header intact, entropy-coded data destroyed
    return {
        "oversized": camera_frame(image, seq=2, data=np.random.default_rng(0).bytes(MAX + 10)).to_bytes(),
        "not_avro": b"this is not an avro message at all",
        "foreign_schema": DeadLetter("t", 0, 0, "decode", "x", b"\x00" * 32, 1, 1).to_bytes(),
        "corrupt": good.to_bytes()[:40],
        "corrupt_image": camera_frame(image, seq=3, data=b"\xff\xd8\xff\xe0garbage").to_bytes(),
        "corrupt_image_data": camera_frame(image, seq=4, data=bytes(corrupt)).to_bytes(),
        "dimension_mismatch": camera_frame(image[:50], seq=5, data=good.image).to_bytes(),
        "unsupported_encoding": camera_frame(image, seq=6, encoding="gif", data=good.image).to_bytes(),
        "too_many_pixels": camera_frame(image, seq=8, encoding="png", data=_png_header(60000, 60000)).to_bytes(),
    }


def test_bad_records_raise_with_reason(image):
    for expected, value in _bad_records(image).items():
        with pytest.raises(DecodeError) as err:
            decode_frame(record(value), MAX)
        reason = err.value.reason
        if expected == "corrupt_image_data":
            # libjpeg may recover a damaged scan as grey pixels; what matters is it never passes as the input
            assert reason in ("corrupt_image",), reason
        else:
            assert reason == expected, (expected, reason)


def test_pipeline_routes_bad_records_to_dlq_without_pixels(image):
    good = [camera_frame(image, seq=i).to_bytes() for i in range(3)]
    bad = {k: v for k, v in _bad_records(image).items() if k != "corrupt_image_data"}
    values = good + list(bad.values())
    records = [record(v, offset=i) for i, v in enumerate(values)]
    digests = {i: (hashlib.sha256(v).digest(), len(v)) for i, v in enumerate(values)}  # small closure
    with beam_test_pipeline() as p:
        import apache_beam as beam

        out = p | beam.Create(records, reshuffle=False) | Decode(MAX)
        assert_that(out["frames"] | "seq" >> beam.Map(lambda f: (f.seq, f.image.shape)),
                    equal_to([(i, (96, 128, 3)) for i in range(3)]), label="frames")

        def check(dl: DeadLetter):
            assert (dl.payload_sha256, dl.payload_size) == digests[dl.source_offset]
            assert dl.stage == "decode"
            blob = dl.to_bytes()
            assert len(blob) < 1024  # a digest, never the image
            return dl.source_offset, dl.reason

        assert_that(out[DLQ_TAG] | "dl" >> beam.Map(check),
                    equal_to([(3 + i, reason) for i, reason in enumerate(bad)]), label="dlq")


# --- raw-frame encryption: the pipeline decrypts with the camera's key; what it cannot decrypt goes to the DLQ --


def _encrypted(image: np.ndarray, keys_dir, seq: int = 3, camera: str = "cam-t"):
    """A CameraFrame encrypted by the real producer code path (camera key created in ``keys_dir``)."""
    import dataclasses

    from ledger.client.keys import camera_frame_key
    from ledger.client.privacy import encrypt_frame, frame_aad

    kid, key = camera_frame_key(camera, keys_dir)
    plain = camera_frame(image, seq=seq, camera_id=camera)
    aad = frame_aad(plain.camera_id, plain.epoch, plain.seq, plain.capture_ts_us, plain.width, plain.height,
                    plain.encoding)
    return plain, dataclasses.replace(plain, image=encrypt_frame(key, plain.image, aad), image_key_id=kid)


def test_encrypted_frame_decrypts_with_the_camera_key(image, tmp_path):
    import cv2

    from pipelines.transforms.decode import FrameKeySource

    plain, enc = _encrypted(image, tmp_path)
    assert not enc.image.startswith(b"\xff\xd8") and cv2.imdecode(np.frombuffer(enc.image, np.uint8), 1) is None
    ctx = decode_frame(record(enc.to_bytes()), MAX, keys=FrameKeySource(str(tmp_path)))
    assert ctx.raw_sha256 == hashlib.sha256(plain.image).digest() and ctx.raw_size == len(plain.image)
    assert ctx.image.shape == image.shape and ctx.seq == 3


def test_frames_that_cannot_be_decrypted_raise_with_reason(image, tmp_path):
    import dataclasses

    from pipelines.transforms.decode import FrameKeySource

    _, enc = _encrypted(image, tmp_path / "a")
    cases = [
        (enc, FrameKeySource(str(tmp_path / "empty")), "unknown_frame_key"),  # the pipeline lacks the key
        (enc, None, "unknown_frame_key"),
        (dataclasses.replace(enc, seq=4), FrameKeySource(str(tmp_path / "a")), "undecryptable_frame"),  # replayed
        (dataclasses.replace(enc, image=enc.image[:-1] + bytes([enc.image[-1] ^ 1])),
         FrameKeySource(str(tmp_path / "a")), "undecryptable_frame"),  # tampered
    ]
    _, other = _encrypted(image, tmp_path / "b")  # same camera id, another deployment's key
    cases.append((dataclasses.replace(enc, image_key_id=other.image_key_id), FrameKeySource(str(tmp_path / "b")),
                  "undecryptable_frame"))
    for frame, keys, reason in cases:
        with pytest.raises(DecodeError) as info:
            decode_frame(record(frame.to_bytes()), MAX, keys=keys)
        assert info.value.reason == reason
        assert info.value.ids == {"camera_id": "cam-t", "epoch": frame.epoch, "seq": frame.seq}


def test_pipeline_sends_undecryptable_frames_to_dlq_without_pixels(image, tmp_path):
    _, good = _encrypted(image, tmp_path / "k", seq=0)
    _, foreign = _encrypted(image, tmp_path / "other", seq=1)
    with beam_test_pipeline() as p:
        import apache_beam as beam

        out = (p | beam.Create([record(good.to_bytes(), 0), record(foreign.to_bytes(), 1)], reshuffle=False)
               | Decode(MAX, keys_dir=str(tmp_path / "k")))
        assert_that(out["frames"] | "f" >> beam.Map(lambda f: (f.seq, f.image.shape)), equal_to([(0, image.shape)]),
                    label="frames")
        assert_that(out[DLQ_TAG] | "d" >> beam.Map(lambda d: (d.seq, d.reason, d.payload_size > 0)),
                    equal_to([(1, "unknown_frame_key", True)]), label="dlq")


def test_a_camera_added_while_running_is_decrypted(image, tmp_path):
    from pipelines.transforms.decode import FrameKeySource

    keys = FrameKeySource(str(tmp_path))
    _, first = _encrypted(image, tmp_path, camera="cam-t")
    assert decode_frame(record(first.to_bytes()), MAX, keys=keys).camera_id == "cam-t"
    _, later = _encrypted(image, tmp_path, camera="cam-new")  # its key is made after the source read the file
    assert decode_frame(record(later.to_bytes()), MAX, keys=keys).camera_id == "cam-new"
