"""No risk metadata in clear on the outputs, no picture on frames.raw, and the auditor still sees everything.

One real run of the whole product (``riskmask demo --keep-stack``: embedded broker, 4 ledger node processes,
two registered subjects (a fictional suspect, risk 85, and a low-risk person), ``riskmask run`` as a subprocess with recognition and
audit anchoring on), then every topic is read back as an attacker and as an auditor would read it:

* a consumer of frames.redacted decodes every record and finds no identity class, risk group, suspect flag,
  track id or subject reference, in any field or any byte outside the image;
* frames.raw holds no decodable picture (no JPEG start-of-image marker anywhere, cv2.imdecode refuses every
  payload): raw-frame encryption is on in the demo;
* the offline auditor (``riskmask audit verify``, a separate process) verifies the ledger, the audit chains and
  the anchors; every record's Merkle inclusion proof verifies against its ledger anchor; and with the auditor
  key ``riskmask audit decisions`` lists the per-face decisions (the matched suspect among them), while another
  auditor key opens nothing.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import cv2
import numpy as np
import pytest

pytestmark = pytest.mark.timeout(900)

FRAMES = 12
CAMERA = "demo-cam-1"
DECISION_FIELDS = ("identity", "risk_group", "suspect", "track_id", "subject_ref", "faces")
IDENTITY_WORDS = (b"matched", b"unknown", b"ambiguous", b"stale", b"registered")


def _riskmask(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "riskmask", *args], capture_output=True, text=True,
                          timeout=timeout)


def _read(bootstrap: str, topic: str) -> list[bytes]:
    from kafka import KafkaConsumer, TopicPartition

    consumer = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False, consumer_timeout_ms=3000,
                             max_partition_fetch_bytes=32 * 1024 * 1024, fetch_max_bytes=64 * 1024 * 1024)
    try:
        tps = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or {0})]
        consumer.assign(tps)
        consumer.seek_to_beginning(*tps)
        return [r.value for r in consumer]
    finally:
        consumer.close()


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Any:
    base = tmp_path_factory.mktemp("output-privacy")
    home, out = base / "home", base / "out"
    res = _riskmask("demo", "--home", str(home), "--out", str(out), "--frames", str(FRAMES), "--size", "640x360",
                    "--fps", "0", "--keep-stack", timeout=800)
    try:
        assert res.returncode == 0, (res.stdout + res.stderr)[-4000:]
        stack = json.loads((home / "stack.json").read_text())
        yield SimpleNamespace(home=home, bootstrap=stack["bootstrap"], keys=Path(stack["keys_dir"]),
                              genesis=Path(stack["ledger_dir"]) / "genesis.json",
                              summary=json.loads((out / "summary.json").read_text()))
    finally:
        _riskmask("down", "--home", str(home), timeout=120)


def decodable_jpegs(data: bytes) -> list[int]:
    """Offsets in ``data`` where a JPEG that OpenCV decodes starts (every start-of-image marker is tried: random
    ciphertext contains the 3 marker bytes now and then, a picture decodes)."""
    found, i = [], data.find(b"\xff\xd8\xff")
    while i >= 0:
        if cv2.imdecode(np.frombuffer(data[i:], np.uint8), cv2.IMREAD_COLOR) is not None:
            found.append(i)
        i = data.find(b"\xff\xd8\xff", i + 1)
    return found


def _walk_keys(value: Any) -> set[str]:
    if isinstance(value, dict):
        return set(value) | {k for v in value.values() for k in _walk_keys(v)}
    if isinstance(value, list):
        return {k for v in value for k in _walk_keys(v)}
    return set()


def test_frames_redacted_carries_no_identity_risk_suspect_or_track(run) -> None:
    from schemas import serde
    from schemas.messages import RedactedFrame

    values = _read(run.bootstrap, "frames.redacted")
    ours = 0
    for value in values:
        frame = RedactedFrame.from_bytes(value)
        ours += frame.camera_id == CAMERA
        fields = _walk_keys(serde.decode("RedactedFrame", value))
        assert not fields & set(DECISION_FIELDS), f"seq {frame.seq}: {sorted(fields & set(DECISION_FIELDS))}"
        envelope = value.replace(frame.image, b"")  # every byte of the record except the picture itself
        for word in IDENTITY_WORDS:
            assert word not in envelope, f"seq {frame.seq}: {word!r} in the record"
        assert all(m.mode != "none" for m in frame.masks)  # disclosed faces are not even listed
    assert ours == FRAMES
    # not vacuous: the run did recognise and disclose the registered suspect (the auditor sees it below)
    assert run.summary["recognition"] == "ok"


def test_frames_raw_holds_no_decodable_picture(run) -> None:
    from schemas.messages import CameraFrame

    values = _read(run.bootstrap, "frames.raw")
    assert len(values) >= FRAMES
    for value in values:
        assert decodable_jpegs(value) == []  # no picture starts anywhere in the record
        frame = CameraFrame.from_bytes(value)
        assert frame.image_key_id is not None
        assert cv2.imdecode(np.frombuffer(frame.image, np.uint8), cv2.IMREAD_COLOR) is None
    assert run.summary["config"]["raw_frames_encrypted"] is True
    assert run.summary["frames"]["redacted"] == FRAMES  # and the pipeline decrypted every one of them


def test_auditor_verifies_chain_anchors_and_per_frame_proofs(run) -> None:
    from ledger.audit.verifier import LedgerVerifier
    from ledger.config import Genesis
    from ledger.types import merkle
    from schemas.messages import AuditBlock

    res = _riskmask("audit", "verify", "--genesis", str(run.genesis), "--bootstrap", run.bootstrap, "--json")
    assert res.returncode == 0, res.stdout + res.stderr
    report = json.loads(res.stdout)
    assert report["ok"] and report["audit_blocks"] >= 4 and report["anchored_audit_blocks"] >= 1, report
    verifier = LedgerVerifier(Genesis.load(run.genesis))
    for offset, value in enumerate(_read(run.bootstrap, "ledger.blocks")):
        verifier.feed_bytes(value, offset)
    roots = {(a.anchor.camera_id, a.anchor.audit_index): a.anchor.merkle_root for a in verifier.anchors.values()}
    proven = 0
    for value in _read(run.bootstrap, "audit.blocks"):
        block = AuditBlock.from_bytes(value)
        root = roots.get((block.camera_id, block.index))
        if block.camera_id != CAMERA or root is None:
            continue
        leaves = [r.to_bytes() for r in block.records]
        for i, leaf in enumerate(leaves):  # each frame's record proven against the root anchored on the ledger
            merkle.verify_inclusion(merkle.leaf_hash(leaf), i, len(leaves), merkle.inclusion_proof(leaves, i), root)
            assert block.records[i].sealed_faces is not None
            proven += 1
    assert proven >= FRAMES // 4


def test_auditor_key_lists_the_decisions_and_no_other_key_does(run, tmp_path: Path) -> None:
    key = run.keys / "auditor.x25519"
    res = _riskmask("audit", "decisions", "--auditor-key", str(key), "--genesis", str(run.genesis),
                    "--bootstrap", run.bootstrap, "--camera", CAMERA, "--json")
    assert res.returncode == 0, res.stdout + res.stderr
    rows = [json.loads(line) for line in res.stdout.splitlines() if line.startswith("{")]
    faces = [r for r in rows if "face" in r]
    assert {r["seq"] for r in faces} == set(range(FRAMES))
    # Subject A (fictional suspect, risk 85: group 3) and Subject B (risk 20: group 1) were recognised
    assert any(r["identity"] == "matched" and r["suspect"] and r["risk_group"] == 3 for r in faces), faces
    assert any(r["identity"] == "matched" and not r["suspect"] and r["risk_group"] == 1 for r in faces), faces
    assert any(r["identity"] == "unknown" and r["risk_group"] == 1 for r in faces)
    assert all(r["track_id"] is not None for r in faces if r["source"] == "detected")
    text = _riskmask("audit", "decisions", "--auditor-key", str(key), "--genesis", str(run.genesis),
                     "--bootstrap", run.bootstrap, "--camera", CAMERA)
    assert text.returncode == 0 and "matched group 3 suspect" in text.stdout

    from ledger.client.keys import init_auditor_key

    init_auditor_key(tmp_path)  # another auditor: its key opens nothing
    other = _riskmask("audit", "decisions", "--auditor-key", str(tmp_path), "--bootstrap", run.bootstrap,
                      "--camera", CAMERA)
    assert other.returncode == 1 and "Traceback" not in other.stderr
    assert other.stdout.strip().splitlines()[-1].startswith("FAILED") and "not this key" in other.stdout
