"""Avro single-object serde: round trips with realistic data, typed errors on bad input, schema evolution."""

from __future__ import annotations

import copy
import hashlib
import io
import json
import struct

import cv2
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from schemas import serde


def _jpeg() -> bytes:
    from skimage import data

    img = cv2.cvtColor(data.astronaut(), cv2.COLOR_RGB2BGR)
    return cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, 85])[1].tobytes()


JPEG = _jpeg()
RAW_SHA = hashlib.sha256(JPEG).digest()
RED_SHA = hashlib.sha256(JPEG[::-1]).digest()
T0 = 1_795_826_401_853_000  # microseconds

# Floats are Avro "float" (32-bit): these values are exact in float32, so a round trip compares equal.
FACE_DETECTED = {"x": 212, "y": 48, "w": 96, "h": 118, "score": 0.875, "track_id": 17, "source": "detected",
                 "identity": "unknown", "risk_group": 1, "suspect": False, "mode": "gaussian", "shape": "ellipse",
                 "strength": 11.25, "mask_scale": 1.5, "subject_ref": None}
FACE_SUSPECT = {"x": 700, "y": 300, "w": 40, "h": 52, "score": 0.625, "track_id": None, "source": "tracked",
                "identity": "registered", "risk_group": 4, "suspect": True, "mode": "none", "shape": "box",
                "strength": 0.0, "mask_scale": 0.75, "subject_ref": "ps:3f9a0c"}
MASK = {"x": 188, "y": 18, "w": 144, "h": 178, "mode": "gaussian", "shape": "ellipse"}
AUDIT_RECORD = {"camera_id": "gate-3", "epoch": T0, "seq": 41, "capture_ts_us": T0 + 1_640_000,
                "raw_sha256": RAW_SHA, "redacted_sha256": RED_SHA, "policy_id": "paper-v1",
                "detector_id": "yunet-2023mar", "recognizer_id": "sface-2021dec", "watchlist_height": 12,
                "degraded": False, "masks": [MASK], "auditor_key_id": b"\x05" * 8,
                "sealed_faces": b"\x01" + b"\x09" * 140}
# The same frame and record as written before per-face decisions left the outputs (schemas/history/*.v1)
AUDIT_RECORD_V1 = {k: v for k, v in AUDIT_RECORD.items() if k not in ("masks", "auditor_key_id", "sealed_faces")}
AUDIT_RECORD_V1["faces"] = [FACE_DETECTED, FACE_SUSPECT]

SAMPLES: dict[str, dict] = {
    "riskmask.v1.CameraFrame": {"camera_id": "gate-3", "epoch": T0, "seq": 41, "capture_ts_us": T0 + 1_640_000,
                                "width": 512, "height": 512, "encoding": "jpeg", "image": JPEG,
                                "image_key_id": None},
    "riskmask.v1.FaceDecision": FACE_DETECTED,
    "riskmask.v1.MaskRegion": MASK,
    "riskmask.v1.SealedFaces": {"faces": [FACE_DETECTED, FACE_SUSPECT], "padding": b"\x00" * 7},
    "riskmask.v1.RedactedFrame": {
        "camera_id": "gate-3", "epoch": T0, "seq": 41, "capture_ts_us": T0 + 1_640_000,
        "processed_ts_us": T0 + 1_702_113, "width": 512, "height": 512, "encoding": "jpeg", "image": JPEG,
        "raw_sha256": RAW_SHA, "redacted_sha256": RED_SHA, "policy_id": "paper-v1", "detector_id": "yunet-2023mar",
        "recognizer_id": "sface-2021dec", "watchlist_height": 12, "degraded": True,
        "degraded_reason": "risk lookup stale", "masks": [MASK],
        "source_topic": "frames.raw", "source_partition": 2, "source_offset": 90_210},
    "riskmask.v1.AuditRecord": AUDIT_RECORD,
    "riskmask.v1.AuditBlock": {
        "camera_id": "gate-3", "index": 7, "prev_hash": hashlib.sha256(b"block 6").digest(),
        "window_start_us": T0, "window_end_us": T0 + 10_000_000, "records": [AUDIT_RECORD, AUDIT_RECORD],
        "merkle_root": hashlib.sha256(b"root").digest(), "block_hash": hashlib.sha256(b"block 7").digest(),
        "anchor_tx_hash": hashlib.sha256(b"tx").digest()},
    "riskmask.v1.LedgerBlock": {
        "chain_id": "riskmask-local", "height": 1024, "block_hash": hashlib.sha256(b"h1024").digest(),
        "header": b"\x0a\x20" + bytes(range(32)),
        "txs": [{"kind": "register", "tx_hash": hashlib.sha256(b"t1").digest(), "body": b"\x01" * 300},
                {"kind": "anchor", "tx_hash": hashlib.sha256(b"t2").digest(), "body": RED_SHA}],
        "commit": [{"validator_index": i, "round": 0, "signature": bytes([i]) * 64} for i in range(3)],
        "evidence": [b"\x07" * 150]},
    "riskmask.v1.DeadLetter": {
        "source_topic": "frames.raw", "source_partition": 0, "source_offset": 5, "camera_id": "gate-3",
        "epoch": T0, "seq": 5, "stage": "decode", "reason": "corrupt", "detail": "CameraFrame: EOFError",
        "payload_sha256": RAW_SHA, "payload_size": 1234, "ts_us": T0 + 9},
}


def test_samples_cover_every_schema() -> None:
    assert sorted(SAMPLES) == serde.schema_names()


@pytest.mark.parametrize("name", sorted(SAMPLES))
def test_round_trip(name: str) -> None:
    data = serde.encode(name, SAMPLES[name])
    assert data[:2] == serde.MAGIC and data[2:10] == serde.fingerprint(name)
    assert serde.decode(name, data) == SAMPLES[name]
    assert serde.encode(name, serde.decode(name, data)) == data  # canonical: decode -> encode is identical


@pytest.mark.parametrize("name", sorted(SAMPLES))
def test_short_names_and_defaults(name: str) -> None:
    short = name.rsplit(".", 1)[1]
    assert serde.fingerprint(short) == serde.fingerprint(name)
    schema = json.loads(json.dumps(serde.load_schema(name), default=str))
    minimal = {k: v for k, v in SAMPLES[name].items()
               if not any(f["name"] == k and "default" in f for f in schema["fields"])}
    decoded = serde.decode(name, serde.encode(name, minimal))
    for f in schema["fields"]:
        if "default" in f:
            assert decoded[f["name"]] == f["default"], f["name"]


def test_fingerprints_are_distinct_and_stable() -> None:
    fps = [serde.fingerprint(n) for n in serde.schema_names()]
    assert len(set(fps)) == len(fps) and all(len(fp) == 8 for fp in fps)
    assert serde.peek_fingerprint(serde.encode("CameraFrame", SAMPLES["riskmask.v1.CameraFrame"])) == fps[
        serde.schema_names().index("riskmask.v1.CameraFrame")]


def test_float32_fields_round_trip_to_float32() -> None:
    face = dict(FACE_DETECTED, score=0.87)
    out = serde.decode("FaceDecision", serde.encode("FaceDecision", face))
    assert out["score"] == struct.unpack("<f", struct.pack("<f", 0.87))[0] and out["score"] == pytest.approx(0.87)


# --- bad input: always SchemaError with a reason, never another exception -------------------------------------

FRAME = serde.encode("CameraFrame", SAMPLES["riskmask.v1.CameraFrame"])


@pytest.mark.parametrize("data, reason", [
    (b"", "not_avro"),
    (b"\xc3", "not_avro"),
    (b"\xc3\x01\x00\x00", "not_avro"),
    (b"hello world, not avro at all", "not_avro"),
    (b"\x00\x01" + FRAME[2:], "not_avro"),
    (FRAME[:10], "corrupt"),
    (FRAME[:11], "corrupt"),
    (FRAME[:-1], "corrupt"),
    (FRAME[: len(FRAME) // 2], "corrupt"),
    (FRAME + b"\x00", "trailing_bytes"),
    (FRAME + FRAME, "trailing_bytes"),
    (FRAME[:2] + b"\xff" * 8 + FRAME[10:], "foreign_schema"),
])
def test_bad_messages_raise_schema_error(data: bytes, reason: str) -> None:
    with pytest.raises(serde.SchemaError) as info:
        serde.decode("CameraFrame", data)
    assert info.value.reason == reason


@pytest.mark.parametrize("name", sorted(SAMPLES))
def test_foreign_schema_is_refused(name: str) -> None:
    data = serde.encode(name, SAMPLES[name])
    for other in SAMPLES:
        if other != name:
            with pytest.raises(serde.SchemaError) as info:
                serde.decode(other, data)
            assert info.value.reason == "foreign_schema"


def test_not_bytes_unknown_schema_and_oversized() -> None:
    with pytest.raises(serde.SchemaError, match="not_bytes"):
        serde.decode("CameraFrame", "text")  # type: ignore[arg-type]
    with pytest.raises(serde.SchemaError, match="unknown_schema"):
        serde.decode("NoSuchThing", FRAME)
    with pytest.raises(serde.SchemaError, match="unknown_schema"):
        serde.encode("NoSuchThing", {})
    with pytest.raises(serde.SchemaError, match="oversized"):
        serde.decode("CameraFrame", FRAME[:10] + bytes(serde.MAX_MESSAGE_BYTES))
    big = dict(SAMPLES["riskmask.v1.CameraFrame"], image=bytes(serde.MAX_MESSAGE_BYTES))
    with pytest.raises(serde.SchemaError, match="oversized"):
        serde.encode("CameraFrame", big)


@pytest.mark.parametrize("change", [
    {"seq": "41"}, {"width": 2**31}, {"image": "not bytes"}, {"camera_id": None}, {"extra_field": 1},
])
def test_invalid_datum(change: dict) -> None:
    datum = dict(SAMPLES["riskmask.v1.CameraFrame"], **change)
    with pytest.raises(serde.SchemaError) as info:
        serde.encode("CameraFrame", datum)
    assert info.value.reason == "invalid_datum"


def test_invalid_datum_detail_is_bounded() -> None:
    """The error quotes the bad value; an image or a name must not end up in logs in full."""
    datum = dict(SAMPLES["riskmask.v1.CameraFrame"], camera_id=JPEG)
    with pytest.raises(serde.SchemaError) as info:
        serde.encode("CameraFrame", datum)
    assert len(str(info.value)) < 300


def test_missing_required_field_is_invalid() -> None:
    datum = dict(SAMPLES["riskmask.v1.CameraFrame"])
    del datum["image"]
    with pytest.raises(serde.SchemaError, match="invalid_datum"):
        serde.encode("CameraFrame", datum)


def test_invalid_utf8_in_string_is_corrupt() -> None:
    good = serde.encode("CameraFrame", dict(SAMPLES["riskmask.v1.CameraFrame"], camera_id="abcd"))
    bad = good.replace(b"abcd", b"\xff\xfe\xfd\xfc", 1)
    with pytest.raises(serde.SchemaError, match="corrupt"):
        serde.decode("CameraFrame", bad)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=256))
def test_fuzz_random_bytes(data: bytes) -> None:
    with pytest.raises(serde.SchemaError):
        serde.decode("CameraFrame", data)


@settings(max_examples=300, deadline=None)
@given(name=st.sampled_from(sorted(SAMPLES)), body=st.binary(max_size=512))
def test_fuzz_valid_header_random_body(name: str, body: bytes) -> None:
    """A right fingerprint over a random body either decodes to a valid datum or raises SchemaError."""
    data = serde.MAGIC + serde.fingerprint(name) + body
    try:
        out = serde.decode(name, data)
    except serde.SchemaError:
        return
    serde.encode(name, out)  # anything accepted is a valid datum of the schema


@settings(max_examples=300, deadline=None)
@given(name=st.sampled_from(sorted(SAMPLES)), pos=st.integers(min_value=0), flip=st.integers(1, 255),
       cut=st.integers(min_value=0))
def test_fuzz_mutated_real_messages(name: str, pos: int, flip: int, cut: int) -> None:
    data = bytearray(serde.encode(name, SAMPLES[name]))
    data[pos % len(data)] ^= flip
    data = bytes(data[: len(data) - cut % 64])
    try:
        out = serde.decode(name, data)
    except serde.SchemaError:
        return
    serde.encode(name, out)


# --- schema evolution ------------------------------------------------------------------------------------

def _camera_frame_v2(default: str = "unknown") -> dict:
    """The shipped CameraFrame schema plus one field with a default: a compatible newer version."""
    raw = json.loads((serde.SCHEMA_DIR / "camera_frame.avsc").read_text())
    v2 = copy.deepcopy(raw)
    v2["fields"].append({"name": "site", "type": "string", "default": default})
    return v2


def test_newer_reader_reads_old_messages_with_default() -> None:
    v2 = _camera_frame_v2()
    old = serde.encode("CameraFrame", SAMPLES["riskmask.v1.CameraFrame"])
    out = serde.decode("CameraFrame", old, reader_schema=v2)
    assert out == dict(SAMPLES["riskmask.v1.CameraFrame"], site="unknown")


def test_newer_reader_reads_newer_messages() -> None:
    import fastavro

    v2 = fastavro.parse_schema(_camera_frame_v2())
    new_fp = serde._fingerprint_of(v2)
    assert new_fp != serde.fingerprint("CameraFrame")
    import io

    buf = io.BytesIO()
    fastavro.schemaless_writer(buf, v2, dict(SAMPLES["riskmask.v1.CameraFrame"], site="north gate"))
    new_msg = serde.MAGIC + new_fp + buf.getvalue()
    # the newer reader accepts its own version ...
    assert serde.decode("CameraFrame", new_msg, reader_schema=v2)["site"] == "north gate"
    # ... an older reader refuses it unless told about the writer, and then drops the field it does not know
    with pytest.raises(serde.SchemaError, match="foreign_schema"):
        serde.decode("CameraFrame", new_msg)
    out = serde.decode("CameraFrame", new_msg, writer_schemas={new_fp: v2})
    assert out == SAMPLES["riskmask.v1.CameraFrame"]


def test_older_writer_comes_out_in_current_shape() -> None:
    """Messages of an older version (without `encoding`) decode with the current schema's default."""
    import io

    import fastavro

    raw = json.loads((serde.SCHEMA_DIR / "camera_frame.avsc").read_text())
    v0 = copy.deepcopy(raw)
    v0["fields"] = [f for f in v0["fields"] if f["name"] != "encoding"]
    v0p = fastavro.parse_schema(v0)
    v0_fp = serde._fingerprint_of(v0p)
    datum = {k: v for k, v in SAMPLES["riskmask.v1.CameraFrame"].items() if k != "encoding"}
    buf = io.BytesIO()
    fastavro.schemaless_writer(buf, v0p, datum)
    old_msg = serde.MAGIC + v0_fp + buf.getvalue()
    assert serde.decode("CameraFrame", old_msg, writer_schemas={v0_fp: v0p}) == dict(datum, encoding="jpeg")


def test_incompatible_reader_is_a_schema_error() -> None:
    bad = _camera_frame_v2()
    bad["fields"].append({"name": "required_new", "type": "long"})  # no default: cannot read old data
    with pytest.raises(serde.SchemaError):
        serde.decode("CameraFrame", FRAME, reader_schema=bad)
    with pytest.raises(serde.SchemaError, match="bad_reader_schema"):
        serde.decode("CameraFrame", FRAME, reader_schema={"type": "record", "name": "X", "fields": "nope"})


def test_earlier_schema_versions_in_history_stay_readable() -> None:
    # A LedgerBlock written with v1 (before the evidence field) reads as one with no evidence carried.
    import fastavro

    v1 = fastavro.parse_schema(json.loads((serde.HISTORY_DIR / "ledger_block.v1.avsc").read_text()))
    old = {k: v for k, v in SAMPLES["riskmask.v1.LedgerBlock"].items() if k != "evidence"}
    buf = io.BytesIO()
    fastavro.schemaless_writer(buf, v1, old)
    fp = serde._fingerprint_of(v1)
    assert fp != serde.fingerprint("LedgerBlock")
    decoded = serde.decode("LedgerBlock", serde.MAGIC + fp + buf.getvalue())
    assert decoded == {**old, "evidence": []}
    with pytest.raises(serde.SchemaError, match="foreign_schema"):  # a fingerprint of no version at all
        serde.decode("LedgerBlock", serde.MAGIC + b"\x01" * 8 + buf.getvalue())


@pytest.mark.parametrize("name, file", [("RedactedFrame", "redacted_frame.v1.avsc"),
                                        ("AuditRecord", "audit_record.v1.avsc"),
                                        ("AuditBlock", "audit_block.v1.avsc"),
                                        ("CameraFrame", "camera_frame.v1.avsc")])
def test_v1_frames_and_audit_records_read_after_decisions_left_the_outputs(name: str, file: str) -> None:
    """Topics written before v2 (per-face decisions in clear) stay readable: in the current shape, and the
    decisions they carried are dropped on reading rather than passed on."""
    import fastavro

    v1 = fastavro.parse_schema(json.loads((serde.HISTORY_DIR / file).read_text()))
    full = f"riskmask.v1.{name}"
    current = SAMPLES[full]
    old = {k: v for k, v in current.items() if k not in ("masks", "auditor_key_id", "sealed_faces",
                                                         "image_key_id")}
    if name in ("RedactedFrame", "AuditRecord"):
        old["faces"] = [FACE_DETECTED, FACE_SUSPECT]
    if name == "AuditBlock":
        old["records"] = [AUDIT_RECORD_V1, AUDIT_RECORD_V1]
    buf = io.BytesIO()
    fastavro.schemaless_writer(buf, v1, old)
    fp = serde._fingerprint_of(v1)
    assert fp != serde.fingerprint(name)
    decoded = serde.decode(name, serde.MAGIC + fp + buf.getvalue())
    assert "faces" not in decoded and "suspect" not in json.dumps(decoded, default=str)
    if name == "AuditBlock":
        assert [r["masks"] for r in decoded["records"]] == [[], []]
        assert all(r["sealed_faces"] is None for r in decoded["records"])
    elif name == "CameraFrame":
        assert decoded == dict(current, image_key_id=None)
    else:
        assert decoded["masks"] == [] and decoded["raw_sha256"] == RAW_SHA
