"""Typed message dataclasses: they mirror the .avsc files exactly and round-trip through the Avro framing."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import typing

import cv2
import pytest

from schemas import messages as m, serde

PRIMITIVES = {"string": str, "bytes": bytes, "long": int, "int": int, "boolean": bool, "float": float,
              "double": float}


def _avro_record(name: str) -> dict:
    """The self-contained schema of a top-level record, as plain JSON."""
    return json.loads(json.dumps({k: v for k, v in serde.load_schema(name).items() if not k.startswith("__")}))


def _nested_record(parent: str, field: str) -> dict:
    (f,) = [f for f in _avro_record(parent)["fields"] if f["name"] == field]
    return f["type"]["items"]


def _schema_of(cls: type[m.Message]) -> dict:
    if cls is m.LedgerTx:
        return _nested_record("riskmask.v1.LedgerBlock", "txs")
    if cls is m.CommitSig:
        return _nested_record("riskmask.v1.LedgerBlock", "commit")
    return _avro_record(cls.SCHEMA)


ALL_CLASSES = (*m.TOP_LEVEL, m.LedgerTx, m.CommitSig)


def _expected_type(avro_type: typing.Any) -> typing.Any:
    if isinstance(avro_type, str):
        return PRIMITIVES[avro_type]
    if isinstance(avro_type, list):
        assert len(avro_type) == 2 and avro_type[0] == "null", f"only ['null', T] unions are used: {avro_type}"
        return typing.Optional[_expected_type(avro_type[1])]
    if avro_type.get("type") == "array":
        items = avro_type["items"]
        if isinstance(items, str) and items in PRIMITIVES:
            return tuple[PRIMITIVES[items], ...]
        name = items["name"] if isinstance(items, dict) else items
        return tuple[getattr(m, name.rsplit(".", 1)[-1]), ...]
    raise AssertionError(f"unexpected Avro type {avro_type}")


def test_top_level_covers_every_schema_file() -> None:
    assert sorted(c.SCHEMA for c in m.TOP_LEVEL) == serde.schema_names()


@pytest.mark.parametrize("cls", ALL_CLASSES, ids=lambda c: c.__name__)
def test_dataclass_fields_match_avsc(cls: type[m.Message]) -> None:
    schema = _schema_of(cls)
    assert schema["name"].rsplit(".", 1)[-1] == cls.__name__
    avro_fields = {f["name"]: f for f in schema["fields"]}
    dc_fields = {f.name: f for f in dataclasses.fields(cls)}
    assert set(dc_fields) == set(avro_fields)
    hints = typing.get_type_hints(cls)
    for name, af in avro_fields.items():
        assert hints[name] == _expected_type(af["type"]), name
        df = dc_fields[name]
        has_default = df.default is not dataclasses.MISSING
        if "default" in af:
            expected = tuple(af["default"]) if isinstance(af["default"], list) else af["default"]
            assert has_default and df.default == expected, name
        elif has_default:  # allowed only as the empty list of an array field
            assert df.default == () and isinstance(af["type"], dict) and af["type"]["type"] == "array", name
    for name, nested in cls.NESTED.items():
        assert hints[name] == tuple[nested, ...]


def _jpeg() -> bytes:
    from skimage import data

    return cv2.imencode(".jpg", cv2.cvtColor(data.astronaut(), cv2.COLOR_RGB2BGR))[1].tobytes()


JPEG = _jpeg()
SHA_A = hashlib.sha256(JPEG).digest()
SHA_B = hashlib.sha256(b"redacted").digest()
T0 = 1_795_826_401_853_000
FACE = m.FaceDecision(x=212, y=48, w=96, h=118, score=0.875, risk_group=1, mode="gaussian", strength=11.25,
                      track_id=17, shape="ellipse", mask_scale=1.5)
SUSPECT = m.FaceDecision(x=700, y=300, w=40, h=52, score=0.625, risk_group=4, mode="none", strength=0.0,
                         source="tracked", identity="registered", suspect=True, mask_scale=0.75,
                         subject_ref="ps:3f9a0c")
MASK = m.MaskRegion(x=188, y=18, w=144, h=178, mode="gaussian", shape="ellipse")
RECORD = m.AuditRecord(camera_id="gate-3", epoch=T0, seq=41, capture_ts_us=T0 + 40_000, raw_sha256=SHA_A,
                       redacted_sha256=SHA_B, policy_id="paper-v1", detector_id="yunet-2023mar",
                       masks=(MASK,), recognizer_id="sface-2021dec", watchlist_height=12,
                       auditor_key_id=b"\x01" * 8, sealed_faces=b"\x01" + b"\x02" * 120)

SAMPLES: list[m.Message] = [
    m.CameraFrame(camera_id="gate-3", epoch=T0, seq=41, capture_ts_us=T0 + 40_000, width=512, height=512,
                  image=JPEG),
    FACE,
    SUSPECT,
    m.RedactedFrame(camera_id="gate-3", epoch=T0, seq=41, capture_ts_us=T0 + 40_000, processed_ts_us=T0 + 90_000,
                    width=512, height=512, image=JPEG, raw_sha256=SHA_A, redacted_sha256=SHA_B,
                    policy_id="paper-v1", detector_id="yunet-2023mar", masks=(MASK,), degraded=True,
                    degraded_reason="risk lookup stale", source_topic="frames.raw", source_partition=1,
                    source_offset=77),
    m.RedactedFrame(camera_id="lobby", epoch=T0, seq=0, capture_ts_us=T0, processed_ts_us=T0 + 1, width=64,
                    height=48, image=b"\x89PNG", raw_sha256=SHA_A, redacted_sha256=SHA_A, policy_id="p",
                    detector_id="d", encoding="png"),
    RECORD,
    m.AuditBlock(camera_id="gate-3", index=7, prev_hash=SHA_B, window_start_us=T0, window_end_us=T0 + 10_000_000,
                 merkle_root=SHA_A, block_hash=SHA_B, records=(RECORD, RECORD), anchor_tx_hash=SHA_A),
    m.LedgerBlock(chain_id="riskmask-local", height=1024, block_hash=SHA_A, header=b"\x0a\x20" + SHA_B,
                  txs=(m.LedgerTx(kind="register", tx_hash=SHA_A, body=b"\x01" * 300),
                       m.LedgerTx(kind="anchor", tx_hash=SHA_B, body=SHA_B)),
                  commit=tuple(m.CommitSig(validator_index=i, round=1, signature=bytes([i]) * 64) for i in range(3))),
    m.DeadLetter(source_topic="frames.raw", source_partition=0, source_offset=5, stage="decode", reason="corrupt",
                 payload_sha256=SHA_A, payload_size=1234, ts_us=T0 + 9, camera_id="gate-3", epoch=T0, seq=5,
                 detail="CameraFrame: EOFError"),
    m.DeadLetter(source_topic="frames.raw", source_partition=3, source_offset=0, stage="decode", reason="not_avro",
                 payload_sha256=SHA_B, payload_size=0, ts_us=T0),
    MASK,
    m.SealedFaces(faces=(FACE, SUSPECT)),
    m.CameraFrame(camera_id="gate-3", epoch=T0, seq=42, capture_ts_us=T0 + 80_000, width=512, height=512,
                  image=b"\x00" * 12 + b"\x55" * 300, image_key_id=b"\x07" * 8),
]


def test_samples_cover_every_class() -> None:
    assert {type(s) for s in SAMPLES} == set(m.TOP_LEVEL)


@pytest.mark.parametrize("msg", SAMPLES, ids=lambda s: type(s).__name__)
def test_round_trip_bytes_and_dict(msg: m.Message) -> None:
    data = msg.to_bytes()
    assert serde.peek_fingerprint(data) == serde.fingerprint(msg.SCHEMA)
    back = type(msg).from_bytes(data)
    assert back == msg and hash(back) == hash(msg)
    assert back.to_bytes() == data
    assert type(msg).from_dict(msg.to_dict()) == msg
    assert serde.decode(msg.SCHEMA, data) == msg.to_dict()


def test_nested_values_come_back_typed() -> None:
    frame = m.RedactedFrame.from_bytes(SAMPLES[3].to_bytes())
    assert all(isinstance(f, m.MaskRegion) for f in frame.masks) and frame.masks[0].shape == "ellipse"
    block = m.AuditBlock.from_bytes(SAMPLES[6].to_bytes())
    assert isinstance(block.records[0], m.AuditRecord) and isinstance(block.records[0].masks[0], m.MaskRegion)
    sealed = m.SealedFaces.from_bytes(m.SealedFaces(faces=(FACE, SUSPECT)).to_bytes())
    assert isinstance(sealed.faces[1], m.FaceDecision) and sealed.faces[1].suspect
    ledger = m.LedgerBlock.from_bytes(SAMPLES[7].to_bytes())
    assert isinstance(ledger.txs[0], m.LedgerTx) and isinstance(ledger.commit[2], m.CommitSig)


def test_messages_are_frozen() -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        SAMPLES[0].seq = 1  # type: ignore[misc]


@pytest.mark.parametrize("cls", m.TOP_LEVEL, ids=lambda c: c.__name__)
def test_from_bytes_refuses_other_messages(cls: type[m.Message]) -> None:
    for msg in SAMPLES:
        if type(msg) is not cls:
            with pytest.raises(serde.SchemaError):
                cls.from_bytes(msg.to_bytes())
    with pytest.raises(serde.SchemaError):
        cls.from_bytes(b"")


def test_invalid_field_value_is_schema_error() -> None:
    bad = dataclasses.replace(SAMPLES[0], width=-(2**40))
    with pytest.raises(serde.SchemaError, match="invalid_datum"):
        bad.to_bytes()
    with pytest.raises(serde.SchemaError, match="invalid_datum"):
        dataclasses.replace(FACE, mode=None).to_bytes()  # type: ignore[arg-type]
