"""Audit records and per-camera hash-chained blocks: flush rules, Merkle roots (RFC 6962, via ledger.types.merkle),
chain links, tamper detection, anchors, and no personal data in records."""

from __future__ import annotations

import hashlib

import pytest

from ledger.types import merkle
from pipelines.audit_chain import (ZERO_HASH, AuditChainError, CameraChain, FlushRule, anchor_tx, block_hash,
                                   make_block, merkle_root, record_from_redacted, scrub_face, verify_block,
                                   verify_chain)
from schemas.messages import AuditBlock, AuditRecord, FaceDecision, MaskRegion, RedactedFrame


def face(identity: str = "unknown", mode: str = "gaussian", ref: str | None = None) -> FaceDecision:
    return FaceDecision(x=10, y=20, w=80, h=96, score=0.9, risk_group=1 if mode != "none" else 4, mode=mode,
                        strength=30.0 if mode != "none" else 0.0, track_id=3, identity=identity,
                        suspect=mode == "none", subject_ref=ref)


def record(seq: int, camera: str = "cam-1", ts_us: int | None = None) -> AuditRecord:
    return AuditRecord(camera_id=camera, epoch=0, seq=seq,
                       capture_ts_us=1_000_000 + 40_000 * seq if ts_us is None else ts_us,
                       raw_sha256=hashlib.sha256(b"raw%d" % seq).digest(),
                       redacted_sha256=hashlib.sha256(b"red%d" % seq).digest(), policy_id="default-v1",
                       detector_id="yunet-2023mar", masks=(MaskRegion(x=4, y=8, w=92, h=110, mode="gaussian"),),
                       recognizer_id="sface-2021dec",
                       watchlist_height=42)


def test_flush_by_count_and_chain_links() -> None:
    chain = CameraChain("cam-1", FlushRule(max_records=3, max_window_us=10**12))
    blocks = [b for b in (chain.add(record(i)) for i in range(9)) if b is not None]
    assert [b.index for b in blocks] == [0, 1, 2]
    assert [len(b.records) for b in blocks] == [3, 3, 3]
    assert blocks[0].prev_hash == ZERO_HASH
    assert blocks[1].prev_hash == blocks[0].block_hash and blocks[2].prev_hash == blocks[1].block_hash
    verify_chain(blocks)
    assert chain.pending == [] and chain.flush() is None


def test_flush_by_elapsed_capture_time() -> None:
    chain = CameraChain("cam-1", FlushRule(max_records=1000, max_window_us=1_000_000))
    out = [chain.add(record(i, ts_us=i * 300_000)) for i in range(5)]  # 0, .3, .6, .9, 1.2 s
    assert out[:3] == [None, None, None]
    assert out[3] is None  # 0.9 s spanned: not yet
    block = out[4]
    assert block is not None and len(block.records) == 5
    assert (block.window_start_us, block.window_end_us) == (0, 1_200_000)


def test_merkle_root_is_rfc6962_over_avro_records() -> None:
    recs = [record(i) for i in range(5)]
    block = make_block("cam-1", 0, ZERO_HASH, recs)
    leaves = [r.to_bytes() for r in recs]
    assert block.merkle_root == merkle.merkle_root(leaves) == merkle_root(leaves)
    # Each record can be proven to be in the anchored root on its own.
    for i, leaf in enumerate(leaves):
        merkle.verify_inclusion(merkle.leaf_hash(leaf), i, len(leaves), merkle.inclusion_proof(leaves, i),
                                block.merkle_root)
    # Known RFC 6962 values: one empty leaf, and the empty tree.
    assert merkle_root([b""]).hex() == "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d"
    assert merkle_root([]).hex() == "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"


def test_block_hash_covers_every_header_field() -> None:
    base = dict(camera_id="cam-1", index=4, prev_hash=b"\x01" * 32, window_start_us=10, window_end_us=20,
                record_count=3, root=b"\x02" * 32)
    h = block_hash(**base)
    for key, other in [("camera_id", "cam-2"), ("index", 5), ("prev_hash", b"\x03" * 32),
                       ("window_start_us", 11), ("window_end_us", 21), ("record_count", 4),
                       ("root", b"\x04" * 32)]:
        assert block_hash(**{**base, key: other}) != h, key
    with pytest.raises(AuditChainError):
        block_hash(**{**base, "prev_hash": b"short"})


def test_tampering_is_detected() -> None:
    chain = CameraChain("cam-1", FlushRule(max_records=2))
    b0 = chain.add(record(0)) or chain.add(record(1))
    b1 = chain.add(record(2)) or chain.add(record(3))
    assert b0 is not None and b1 is not None
    verify_chain([b0, b1])
    edited = AuditRecord(**{**b0.records[0].__dict__, "redacted_sha256": b"\x00" * 32})
    forged = AuditBlock(**{**b0.__dict__, "records": (edited,) + b0.records[1:]})
    with pytest.raises(AuditChainError, match="merkle root"):
        verify_block(forged)
    resealed = make_block("cam-1", 0, ZERO_HASH, forged.records)  # a consistent forgery breaks the link
    with pytest.raises(AuditChainError, match="prev_hash"):
        verify_chain([resealed, b1])
    with pytest.raises(AuditChainError, match="does not follow"):
        verify_chain([b1, b0])
    dropped = AuditBlock(**{**b0.__dict__, "records": b0.records[:1]})
    with pytest.raises(AuditChainError):
        verify_block(dropped)
    with pytest.raises(AuditChainError, match="zero prev_hash"):
        verify_block(make_block("cam-1", 0, b"\x05" * 32, b0.records))


def test_blocks_survive_the_wire() -> None:
    chain = CameraChain("cam-1", FlushRule(max_records=2))
    chain.add(record(0))
    block = chain.add(record(1))
    assert block is not None
    again = AuditBlock.from_bytes(block.to_bytes())
    verify_block(again)
    assert again.block_hash == block.block_hash


def test_records_of_other_cameras_and_bad_rules_are_refused() -> None:
    chain = CameraChain("cam-1")
    with pytest.raises(AuditChainError):
        chain.add(record(0, camera="cam-2"))
    with pytest.raises(AuditChainError):
        make_block("cam-1", 0, ZERO_HASH, [])
    with pytest.raises(AuditChainError):
        FlushRule(max_records=0)


def _auditor_keys() -> tuple[bytes, bytes]:
    from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
    from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat, PublicFormat

    priv = X25519PrivateKey.generate()
    return (priv.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption()),
            priv.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw))


REDACTED = RedactedFrame(
    camera_id="cam-1", epoch=1, seq=7, capture_ts_us=123, processed_ts_us=456, width=640, height=480,
    image=b"\xff\xd8jpeg", raw_sha256=b"\x01" * 32, redacted_sha256=b"\x02" * 32, policy_id="default-v1",
    detector_id="yunet-2023mar", recognizer_id="sface-2021dec", watchlist_height=42,
    masks=(MaskRegion(x=0, y=0, w=100, h=120, mode="gaussian"),))
DECISIONS = (face("unknown", ref="leaked-ref"), face("matched", "gaussian", ref="not-disclosed"),
             face("matched", "none", ref="ab12cd34ef56ab12"))


def test_record_from_redacted_seals_decisions_for_the_auditor_only() -> None:
    from ledger.audit.decisions import DecisionsError, open_faces

    private, public = _auditor_keys()
    rec = record_from_redacted(REDACTED, DECISIONS, public)
    assert (rec.camera_id, rec.epoch, rec.seq, rec.capture_ts_us) == ("cam-1", 1, 7, 123)
    assert rec.raw_sha256 == b"\x01" * 32 and rec.redacted_sha256 == b"\x02" * 32
    assert (rec.policy_id, rec.detector_id, rec.recognizer_id, rec.watchlist_height) == \
        ("default-v1", "yunet-2023mar", "sface-2021dec", 42)
    assert rec.masks == REDACTED.masks and rec.sealed_faces is not None and len(rec.auditor_key_id) == 8
    wire = rec.to_bytes()
    for clear in (b"jpeg", b"matched", b"unknown", b"ab12cd34ef56ab12", b"leaked-ref"):
        assert clear not in wire
    opened = open_faces(AuditRecord.from_bytes(wire), private)
    assert [f.identity for f in opened] == ["unknown", "matched", "matched"]
    assert [f.subject_ref for f in opened] == [None, None, "ab12cd34ef56ab12"]  # scrubbed before sealing
    assert [(f.track_id, f.risk_group, f.suspect) for f in opened] == [(3, 1, False), (3, 1, False), (3, 4, True)]
    # another auditor's key, or the seal moved onto another frame's record, does not open
    with pytest.raises(DecisionsError):
        open_faces(rec, _auditor_keys()[0])
    import dataclasses

    with pytest.raises(DecisionsError):
        open_faces(dataclasses.replace(rec, seq=8), private)
    assert scrub_face(face("unknown")) == face("unknown")


def test_without_an_auditor_key_no_decision_is_recorded() -> None:
    rec = record_from_redacted(REDACTED, DECISIONS, None)
    assert rec.sealed_faces is None and rec.auditor_key_id is None and rec.masks == REDACTED.masks
    assert b"matched" not in rec.to_bytes()


def test_anchor_transaction_binds_the_block() -> None:
    from ledger.registry import payloads

    chain = CameraChain("cam-1", FlushRule(max_records=2))
    chain.add(record(0))
    block = chain.add(record(1))
    assert block is not None
    tx = anchor_tx(block)
    decoded = payloads.decode(payloads.encode(tx))
    assert decoded.merkle_root == block.merkle_root and decoded.audit_block_hash == block.block_hash
    assert (decoded.camera_id, decoded.audit_index, decoded.record_count) == ("cam-1", 0, 2)
    assert (decoded.window_start_us, decoded.window_end_us) == (block.window_start_us, block.window_end_us)


def test_blocks_written_before_the_v2_schema_still_verify_after_the_upgrade() -> None:
    """A camera's chain started by v1 (per-face decisions in clear) and continued by v2 verifies end to end: a
    v1 record keeps the exact bytes it was anchored with, so its Merkle leaf is unchanged."""
    import io
    import json

    import fastavro

    from ledger.audit.verifier import AuditChainVerifier, BlockInvalid, pipeline_block_hash
    from schemas import serde

    v1_block = fastavro.parse_schema(json.loads((serde.HISTORY_DIR / "audit_block.v1.avsc").read_text()))
    v1_record = fastavro.parse_schema(json.loads((serde.HISTORY_DIR / "audit_record.v1.avsc").read_text()))

    def framed(schema, datum) -> bytes:
        buf = io.BytesIO()
        fastavro.schemaless_writer(buf, schema, datum)
        return serde.MAGIC + serde._fingerprint_of(schema) + buf.getvalue()

    def v1_rec(seq: int) -> dict:
        return {"camera_id": "cam-1", "epoch": 0, "seq": seq, "capture_ts_us": 1_000 + seq,
                "raw_sha256": hashlib.sha256(b"r%d" % seq).digest(), "redacted_sha256": b"\x02" * 32,
                "policy_id": "default-v1", "detector_id": "yunet", "recognizer_id": "", "watchlist_height": -1,
                "degraded": False, "faces": [face("matched", "none", ref="ab12").to_dict()]}

    messages, prev = [], ZERO_HASH
    for index in range(2):  # what the v1 pipeline wrote to audit.blocks
        recs = [v1_rec(index * 2 + j) for j in range(2)]
        root = merkle.merkle_root([framed(v1_record, r) for r in recs])
        digest = block_hash("cam-1", index, prev, recs[0]["capture_ts_us"], recs[-1]["capture_ts_us"], 2, root)
        messages.append(framed(v1_block, {"camera_id": "cam-1", "index": index, "prev_hash": prev,
                                          "window_start_us": recs[0]["capture_ts_us"],
                                          "window_end_us": recs[-1]["capture_ts_us"], "records": recs,
                                          "merkle_root": root, "block_hash": digest, "anchor_tx_hash": None}))
        prev = digest
    old = [AuditBlock.from_bytes(m) for m in messages]
    verify_chain(old)
    assert old[0].records[0].masks == () and old[0].records[0].sealed_faces is None  # nothing carried over
    chain = CameraChain("cam-1", FlushRule(max_records=2), next_index=2, prev_hash=prev)  # upgraded pipeline
    new = [b for b in (chain.add(record(s)) for s in range(4, 8)) if b is not None]
    messages += [b.to_bytes() for b in new]
    verify_chain([AuditBlock.from_bytes(m) for m in messages])
    verifier = AuditChainVerifier({}, block_hash_fn=pipeline_block_hash())
    for offset, m in enumerate(messages):
        verifier.feed(AuditBlock.from_bytes(m), offset)
    assert verifier.count == 4
    # a v1 block whose record was altered after anchoring still fails
    tampered = messages[0].replace(b"default-v1", b"default-v9")
    with pytest.raises(BlockInvalid, match="Merkle root"):
        AuditChainVerifier({}, block_hash_fn=pipeline_block_hash()).feed(AuditBlock.from_bytes(tampered), 0)


def test_sealed_length_does_not_tell_the_number_of_faces() -> None:
    private, public = _auditor_keys()
    from ledger.audit.decisions import open_faces

    sizes = {}
    for n in (0, 1, 3, 8):
        rec = record_from_redacted(REDACTED, DECISIONS[:1] * n, public)
        sizes[n] = len(rec.sealed_faces)
        assert len(open_faces(rec, private)) == n
    assert len(set(sizes.values())) == 1, sizes
    big = record_from_redacted(REDACTED, DECISIONS[:1] * 12, public)
    assert len(big.sealed_faces) > sizes[0] and len(open_faces(big, private)) == 12
