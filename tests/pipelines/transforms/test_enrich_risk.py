"""EnrichRisk with real SFace templates of real people: matches, near misses, ambiguity, staleness, no
templates past the stage, keyed subject references, the policy hook, and the Beam stage with a watchlist sync."""

from __future__ import annotations

import hashlib
import math
import time
from collections import OrderedDict
from typing import Any

import cv2
import numpy as np
import pytest

from infra import sample_data
from pipelines.frame import FrameContext
from pipelines.masking.policy import Policy
from pipelines.recognition.matching import AMBIGUOUS, MATCHED, STALE, UNKNOWN
from pipelines.recognition.watchlist_index import Subject, WatchlistIndex, subject_ref
from pipelines.tracking.tracks import DETECTED, GAP_FILLED, TrackedFace
from pipelines.transforms.enrich_risk import (EnrichRisk, LedgerWatchlistSource, RiskConfig, StaticWatchlistSource,
                                              _Refresher, enrich_frame)
from pipelines.transforms.mask_faces import decide_face

pytestmark = pytest.mark.timeout(600)

SUSPECT = Subject(b"\xa1" * 32, risk=95, suspect=True)     # subject_a, registered high-risk suspect
LOW_RISK = Subject(b"\xb2" * 32, risk=20, suspect=False)   # subject_b, registered low risk
REF_KEY = b"r" * 32


@pytest.fixture(scope="module")
def templates() -> dict[str, np.ndarray]:
    """Real SFace embeddings, one per photo (the largest face in each)."""
    from pipelines.models.detector import load_detector
    from pipelines.models.recognizer import load_recognizer

    det, rec = load_detector("yunet"), load_recognizer()
    out: dict[str, np.ndarray] = {}
    for photo in sample_data.sample_photos():
        if photo.duplicate_of or photo.partial:
            continue
        image = cv2.imread(str(photo.path))
        face = max(det.detect(image), key=lambda d: d.w * d.h)
        out[photo.name] = rec.embed(image, [face])[0]
    image = sample_data.astronaut()
    out["astronaut"] = rec.embed(image, det.detect(image)[:1])[0]
    return out


@pytest.fixture(scope="module")
def index(templates: dict[str, np.ndarray]) -> WatchlistIndex:
    # subject_a enrolled from two photos; the third photo (obama3.jpg) is the "camera" view.
    return WatchlistIndex.build([(SUSPECT, [templates["obama.jpg"], templates["obama2.jpg"]]),
                                 (LOW_RISK, [templates["biden.jpg"]])], height=42, synced_at=1000.0)


def face(emb: np.ndarray | None, track: int = 1, source: str = DETECTED, w: float = 120.0) -> TrackedFace:
    return TrackedFace(x=10.0, y=10.0, w=w, h=w * 1.2, score=0.9, track_id=track, source=source, embedding=emb,
                       embedding_fresh=emb is not None)


def frame_of(*faces: Any) -> FrameContext:
    img = np.zeros((8, 8, 3), np.uint8)
    return FrameContext("frames.raw", 0, 0, "cam-1", 0, 0, 0, 8, 8, hashlib.sha256(b"x").digest(), img,
                        tracked=tuple(faces))


def rotate_to(base: np.ndarray, cos: float, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    b = base.astype(np.float64) / np.linalg.norm(base)
    r = rng.standard_normal(b.shape)
    r -= (r @ b) * b
    r /= np.linalg.norm(r)
    return (cos * b + math.sqrt(1 - cos * cos) * r).astype(np.float32)


def test_real_faces_match_only_their_subject(index: WatchlistIndex, templates: dict[str, np.ndarray]) -> None:
    cfg = RiskConfig(subject_ref_key=REF_KEY)
    fr = frame_of(face(templates["obama3.jpg"], 1), face(templates["astronaut"], 2), face(None, 3, GAP_FILLED))
    out, stats = enrich_frame(fr, index, 1001.0, cfg)
    suspect, stranger, gap = out.tracked
    assert suspect.identity == MATCHED and suspect.risk == 95 and suspect.suspect
    assert suspect.match_score > 0.6
    assert suspect.subject_ref == subject_ref(REF_KEY, SUSPECT.pseudonym)
    assert stranger.identity == UNKNOWN and stranger.risk is None and stranger.subject_ref is None
    assert gap.identity == UNKNOWN and gap.risk is None
    assert all(f.embedding is None for f in out.tracked)  # no template travels past this stage
    assert stats == {MATCHED: 1, AMBIGUOUS: 0, UNKNOWN: 2, STALE: 0, "match_failed": 0}


def test_low_risk_match_carries_no_reference(index: WatchlistIndex, templates: dict[str, np.ndarray]) -> None:
    # A second, different view of subject_b is not available: a lightly perturbed template stands in.
    view = rotate_to(templates["biden.jpg"], 0.8, seed=1)
    out, _ = enrich_frame(frame_of(face(view)), index, 1001.0, RiskConfig(subject_ref_key=REF_KEY))
    (f,) = out.tracked
    assert f.identity == MATCHED and f.risk == 20 and not f.suspect and f.subject_ref is None


def test_near_miss_just_under_threshold_is_unknown_and_strongest(index: WatchlistIndex,
                                                                  templates: dict[str, np.ndarray]) -> None:
    cfg = RiskConfig()
    policy = Policy.load("default")
    enrolled = index.templates[0]
    under = rotate_to(enrolled, cfg.match.threshold - 0.02, seed=2)
    over = rotate_to(enrolled, cfg.match.threshold + 0.12, seed=3)
    out, _ = enrich_frame(frame_of(face(under, 1), face(over, 2)), index, 1001.0, cfg)
    miss, hit = out.tracked
    assert miss.identity == UNKNOWN and miss.risk is None
    assert hit.identity == MATCHED and hit.risk == 95
    assert decide_face(policy, miss) == policy.strongest(miss.w, miss.h)
    assert decide_face(policy, hit) == policy.decide(hit.w, hit.h, 95, True)
    assert decide_face(policy, hit).disclosed and not decide_face(policy, miss).disclosed


def test_ambiguous_between_two_subjects_is_strongest(templates: dict[str, np.ndarray]) -> None:
    # The same person enrolled twice under two pseudonyms (e.g. a duplicate registration): a camera view
    # of them is close to both, so it cannot be attributed and must not be disclosed.
    twin = Subject(b"\xc3" * 32, risk=95, suspect=True)
    idx = WatchlistIndex.build([(SUSPECT, [templates["obama.jpg"]]), (twin, [templates["obama2.jpg"]])], 7, 1000.0)
    out, _ = enrich_frame(frame_of(face(templates["obama3.jpg"])), idx, 1001.0, RiskConfig())
    (f,) = out.tracked
    assert f.identity == AMBIGUOUS and f.risk is None and f.match_score > 0.6
    policy = Policy.load("default")
    assert decide_face(policy, f) == policy.strongest(f.w, f.h)


def test_stale_watchlist_masks_everyone(index: WatchlistIndex, templates: dict[str, np.ndarray]) -> None:
    cfg = RiskConfig(max_staleness_s=30.0)
    out, stats = enrich_frame(frame_of(face(templates["obama3.jpg"])), index, 1031.0, cfg)
    (f,) = out.tracked
    assert f.identity == STALE and f.risk is None and f.embedding is None and stats[STALE] == 1
    assert out.tracked[0].subject_ref is None
    fresh, _ = enrich_frame(frame_of(face(templates["obama3.jpg"])), index, 1029.0, cfg)
    assert fresh.tracked[0].identity == MATCHED
    never, _ = enrich_frame(frame_of(face(templates["obama3.jpg"])), WatchlistIndex.empty(), 1.0, cfg)
    assert never.tracked[0].identity == STALE


def test_gap_filled_and_bare_detections_get_the_strongest_mask() -> None:
    policy = Policy.load("default")
    gap = face(None, source=GAP_FILLED).replace(identity=MATCHED, risk=95, suspect=True)  # even if mislabelled
    assert decide_face(policy, gap) == policy.strongest(gap.w, gap.h)
    from pipelines.models.detection import Detection

    bare = Detection(0.0, 0.0, 50.0, 60.0, 0.9, np.zeros((5, 2), np.float32))
    assert decide_face(policy, bare) == policy.strongest(50.0, 60.0)


def test_match_cache_is_content_addressed(index: WatchlistIndex, templates: dict[str, np.ndarray]) -> None:
    cache: OrderedDict = OrderedDict()
    cfg = RiskConfig()
    enrich_frame(frame_of(face(templates["obama3.jpg"])), index, 1001.0, cfg, cache)
    assert len(cache) == 1
    out, _ = enrich_frame(frame_of(face(templates["obama3.jpg"]), face(templates["astronaut"], 2)), index,
                          1001.0, cfg, cache)
    assert len(cache) == 2 and [f.identity for f in out.tracked] == [MATCHED, UNKNOWN]


def test_refresher_keeps_last_index_when_sync_fails(index: WatchlistIndex) -> None:
    calls = []

    class Flaky:  # unit-test stand-in for the ledger client: first sync works, then the ledger is down
        def sync(self, current: WatchlistIndex, now: float) -> WatchlistIndex:
            calls.append(now)
            if len(calls) > 1:
                raise ConnectionError("ledger unreachable")
            return index.touched(now)

    clock = [2000.0]
    r = _Refresher(Flaky(), 5.0, lambda: clock[0])
    r.maybe_sync()
    assert r.index.height == 42 and r.index.synced_at == 2000.0
    clock[0] = 2003.0
    r.maybe_sync()  # not due yet
    assert len(calls) == 1
    clock[0] = 2040.0
    r.maybe_sync()
    assert len(calls) == 2 and r.index.synced_at == 2000.0  # kept, and now 40 s old: stale at 30 s
    assert r.index.is_stale(clock[0], RiskConfig().max_staleness_s)


def test_ledger_source_indexes_the_decrypted_watchlist(templates: dict[str, np.ndarray]) -> None:
    """The real ledger Watchlist opens real sealed records (AES-GCM, wrapped keys); the ledger API is
    replaced by a stand-in feeding it endpoint records, as the HTTP sync would."""
    import base64
    import os

    from ledger.client import privacy
    from ledger.client.watchlist import Watchlist

    chain, kek, kek_id = "test-chain", os.urandom(32), b"kek00001"
    watchlist = Watchlist({kek_id: kek}, chain)

    def endpoint_record(subject: Subject, version: int, height: int, status: str = "live") -> dict:
        rec = privacy.SubjectRecord.make(subject.risk, subject.suspect, [templates["obama.jpg"]])
        sealed = privacy.seal_record(rec, chain, subject.pseudonym, version, kek, kek_id)
        return {"pseudonym": subject.pseudonym.hex(), "status": status, "version": version, "height": height,
                "nonce": base64.b64encode(sealed.nonce).decode(),
                "ciphertext": base64.b64encode(sealed.ciphertext).decode(),
                "wrapped_key": base64.b64encode(sealed.wrapped_key).decode()}

    class Sync:  # stand-in for WatchlistSync: same attributes, records pushed by the test
        def __init__(self) -> None:
            self.watchlist = watchlist
            self.pending: list[tuple[dict, int]] = []

        def sync(self) -> int:
            for rec, height in self.pending:
                self.watchlist.apply_record(rec)
                self.watchlist.height = height
            n, self.pending = len(self.pending), []
            return n

    sync = Sync()
    src = LedgerWatchlistSource(lambda: sync)
    sync.pending = [(endpoint_record(SUSPECT, 1, 10), 10)]
    idx = src.sync(WatchlistIndex.empty(), 100.0)
    assert idx.height == 10 and len(idx) == 1 and idx.subjects[0].risk == 95
    out, _ = enrich_frame(frame_of(face(templates["obama3.jpg"])), idx, 101.0, RiskConfig())
    assert out.tracked[0].identity == MATCHED and out.tracked[0].risk == 95
    same = src.sync(idx, 105.0)
    assert same.height == 10 and same.synced_at == 105.0 and same.templates is idx.templates
    sync.pending = [({"pseudonym": SUSPECT.pseudonym.hex(), "status": "erased", "version": 2, "height": 12}, 12)]
    erased = src.sync(same, 110.0)
    assert erased.height == 12 and len(erased) == 0
    out, _ = enrich_frame(frame_of(face(templates["obama3.jpg"])), erased, 111.0, RiskConfig())
    assert out.tracked[0].identity == UNKNOWN


def test_config_validation() -> None:
    with pytest.raises(ValueError):
        RiskConfig(max_staleness_s=5.0, sync_interval_s=10.0)
    with pytest.raises(ValueError):
        RiskConfig(max_staleness_s=0.0)


@pytest.mark.parametrize("background", [False, True])
def test_beam_stage_matches_and_reports_height(index: WatchlistIndex, templates: dict[str, np.ndarray],
                                              background: bool) -> None:
    import apache_beam as beam
    from apache_beam.testing import test_pipeline
    from apache_beam.testing.util import assert_that, equal_to

    frames = [frame_of(face(templates["obama3.jpg"]), face(templates["astronaut"], 2)).replace(seq=i)
              for i in range(3)]

    def summary(f: FrameContext) -> tuple:
        return (f.seq, tuple((x.identity, x.risk, x.embedding is None) for x in f.tracked),
                getattr(f, "watchlist_height", 42))

    cfg = RiskConfig(background_sync=background, sync_interval_s=1.0)
    expected = [(i, ((MATCHED, 95, True), (UNKNOWN, None, True)), 42) for i in range(3)]
    with test_pipeline.TestPipeline() as p:
        out = p | beam.Create(frames) | EnrichRisk(lambda: StaticWatchlistSource(index), cfg)
        assert_that(out | beam.Map(summary), equal_to(expected))


def test_suspect_stays_identifiable_low_risk_and_bystander_do_not(index: WatchlistIndex,
                                                                 templates: dict[str, np.ndarray]) -> None:
    """Scene of three real people: the registered suspect (subject_a), a registered low-risk person
    (subject_b) and an unregistered bystander (astronaut). Detect, track, embed, match, mask with the default
    policy, then re-identify each face in the output against its unmasked embedding."""
    from infra import scenes
    from pipelines.masking.filters import apply_mask
    from pipelines.models.detector import load_detector
    from pipelines.models.recognizer import load_recognizer
    from pipelines.tracking.tracks import FaceTracker
    from pipelines.transforms.embed_faces import EmbedConfig, track_and_embed

    photos = {p.name: p for p in sample_data.sample_photos()}
    sources = [scenes.FaceSource(cv2.imread(str(photos[n].path)), photos[n].face_box, photos[n].label)
               for n in ("obama3.jpg", "biden.jpg")] + [sample_data.astronaut_source()]
    placements = [scenes.Placement(0, 140, (250.0, 330.0)), scenes.Placement(1, 140, (640.0, 330.0)),
                  scenes.Placement(2, 140, (1030.0, 330.0))]
    image, boxes = scenes.compose_frame(sources, placements, sample_data.background("coffee"))
    det, rec = load_detector("yunet"), load_recognizer()
    dets = sorted(det.detect(image), key=lambda d: d.x)
    assert len(dets) == 3
    fr = FrameContext("frames.raw", 0, 0, "cam-1", 0, 0, 0, image.shape[1], image.shape[0],
                      hashlib.sha256(image.tobytes()).digest(), image, detections=tuple(dets))
    # subject_b needs a second view to be enrolled from: enrol the scene's own embedding of them
    # (the "registration photo"), the suspect is enrolled from two other photos.
    fr, _ = track_and_embed(fr, FaceTracker(), rec, EmbedConfig())
    b_view = fr.tracked[1].embedding
    idx = index.with_updates([(LOW_RISK, [b_view])], [], index.height + 1, 1000.0)
    out, _ = enrich_frame(fr, idx, 1001.0, RiskConfig())
    identities = [(f.identity, f.risk) for f in out.tracked]
    assert identities == [(MATCHED, 95), (MATCHED, 20), (UNKNOWN, None)]
    policy = Policy.load("default")
    masked = image.copy()
    for f in out.tracked:
        apply_mask(masked, f.box, decide_face(policy, f))
    before = rec.embed(image, dets)
    after = rec.embed(masked, dets)
    cos = [float(a @ b) for a, b in zip(before, after)]
    assert cos[0] >= 0.6, f"suspect no longer identifiable: {cos}"
    assert cos[1] < 0.363 and cos[2] < 0.363, f"low-risk person or bystander still identifiable: {cos}"



@pytest.fixture(scope="module")
def ledger_env(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """A real 4-node ledger cluster (separate processes) and a privacy keyring."""
    from ledger.client import keys as keyring
    from tests.ledger_util import make_cluster

    base = tmp_path_factory.mktemp("risk-ledger")
    cluster = make_cluster(base / "ledger")
    try:
        cluster.up(wait_height=1, timeout_s=120)
        keyring.save_keyring(keyring.Keyring.generate(), base / "keys")
        yield {"dir": base / "ledger", "keys": base / "keys"}
    finally:
        cluster.down()


@pytest.mark.slow
def test_watchlist_from_a_real_ledger_register_then_erase(ledger_env: Any, templates: dict[str, np.ndarray]) -> None:
    """Register a suspect with the manager role; the pipeline role syncs, decrypts and matches; an erasure
    takes the subject out on the next sync; anchoring an audit block commits on the same ledger."""
    from ledger.ops.manager_cli import RegistryClient
    from pipelines.audit_chain import CameraChain, FlushRule
    from pipelines.transforms.audit import LedgerAnchorer
    from pipelines.transforms.enrich_risk import LedgerSyncFactory
    from schemas.messages import AuditRecord

    manager = RegistryClient.from_dir(ledger_env["dir"], "manager", ledger_env["keys"])
    ident = privacy_identity()
    try:
        manager.register(ident, _record(95, True, [templates["obama.jpg"], templates["obama2.jpg"]]))
        src = LedgerWatchlistSource(LedgerSyncFactory(str(ledger_env["dir"]), "pipeline", str(ledger_env["keys"])))
        idx = src.sync(WatchlistIndex.empty(), time.time())
        assert len(idx) == 1 and idx.height > 0 and idx.subjects[0].risk == 95
        out, _ = enrich_frame(frame_of(face(templates["obama3.jpg"]), face(templates["astronaut"], 2)), idx,
                              time.time(), RiskConfig())
        assert [(f.identity, f.risk) for f in out.tracked] == [(MATCHED, 95), (UNKNOWN, None)]
        manager.erase(ident)
        idx2 = src.sync(idx, time.time())
        assert len(idx2) == 0 and idx2.height > idx.height
        out, _ = enrich_frame(frame_of(face(templates["obama3.jpg"])), idx2, time.time(), RiskConfig())
        assert out.tracked[0].identity == UNKNOWN
    finally:
        manager.close()

    chain = CameraChain("cam-1", FlushRule(max_records=2))
    recs = [AuditRecord(camera_id="cam-1", epoch=0, seq=i, capture_ts_us=1_000 + i, raw_sha256=b"\x01" * 32,
                        redacted_sha256=b"\x02" * 32, policy_id="default-v1", detector_id="yunet")
            for i in range(2)]
    block = chain.add(recs[0]) or chain.add(recs[1])
    assert block is not None
    tx_hash = LedgerAnchorer(str(ledger_env["dir"]))(block)
    assert len(tx_hash) == 32
    auditor = RegistryClient.from_dir(ledger_env["dir"], "auditor", need_keyring=False)
    try:
        st = auditor._any(lambda c: c.wait_committed(tx_hash.hex(), timeout_s=60.0))
        assert st["status"] == "committed"
    finally:
        auditor.close()


def privacy_identity() -> Any:
    from ledger.client.privacy import Identity

    return Identity(name="Subject A", birth_date="1961-08-04", id_number="T-0001")


def _record(risk: int, suspect: bool, temps: list[np.ndarray]) -> Any:
    from ledger.client.privacy import SubjectRecord

    return SubjectRecord.make(risk, suspect, temps)


def test_source_factory_without_ledger_is_an_empty_current_watchlist(templates: dict[str, np.ndarray]) -> None:
    import pickle

    from pipelines.transforms.enrich_risk import WatchlistSourceFactory

    factory = pickle.loads(pickle.dumps(WatchlistSourceFactory()))
    idx = factory().sync(WatchlistIndex.empty(), 500.0)
    assert len(idx) == 0 and not idx.is_stale(510.0, 30.0)
    out, _ = enrich_frame(frame_of(face(templates["obama3.jpg"])), idx, 510.0, RiskConfig())
    assert out.tracked[0].identity == UNKNOWN
    assert isinstance(WatchlistSourceFactory("/nonexistent")(), LedgerWatchlistSource)


def test_a_matching_failure_leaves_faces_unknown(index: WatchlistIndex) -> None:
    bad = face(np.full(128, np.nan, np.float32))  # a broken template from a faulty model run
    out, stats = enrich_frame(frame_of(bad), index, 1001.0, RiskConfig())
    assert out.tracked[0].identity == UNKNOWN and out.tracked[0].embedding is None
    assert stats["match_failed"] == 1


def test_recognition_from_options(tmp_path: Any) -> None:
    from types import SimpleNamespace

    import apache_beam as beam

    from pipelines.transforms.enrich_risk import recognition_from_options

    key = tmp_path / "ref.key"
    key.write_bytes(b"k" * 32 + b"\n")
    chain = recognition_from_options(SimpleNamespace(match_threshold=0.6, match_margin=0.1, track_max_gap=3,
                                                     subject_ref_key_file=str(key)))
    assert isinstance(chain, beam.PTransform)
    embed, enrich = chain._parts
    assert embed._config.tracker.max_gap == 3 and embed._config.state == "instance"
    cfg = enrich._fn._config
    assert (cfg.match.threshold, cfg.match.margin, cfg.subject_ref_key) == (0.6, 0.1, b"k" * 32)
    with pytest.raises(ValueError):
        recognition_from_options(SimpleNamespace(watchlist_max_staleness_s=1.0, watchlist_sync_interval_s=5.0))


def test_a_frame_without_tracked_faces_passes_unchanged(index: WatchlistIndex) -> None:
    """Recognition did not run (or the frame is degraded): ``tracked`` stays None, the detections are counted
    as unknown faces and MaskFaces masks them at the strongest level."""
    from pipelines.models.detection import Detection

    bare = Detection(0.0, 0.0, 50.0, 60.0, 0.9, np.zeros((5, 2), np.float32))
    fr = frame_of().replace(detections=(bare,), tracked=None)
    out, stats = enrich_frame(fr, index, 1001.0, RiskConfig())
    assert out is fr and out.tracked is None and stats[UNKNOWN] == 1 and stats[MATCHED] == 0
