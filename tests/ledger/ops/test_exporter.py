"""Exporter against a real 4-node cluster and a real broker: resume without gaps after stop and kill -9, and
the auditor's tamper suite on copies of the exported topic (each tampering detected, first bad block named)."""

from __future__ import annotations

import dataclasses
import signal
import subprocess
import sys
import time

import pytest

from ledger.client import keys as keyring, privacy
from ledger.config import KeyFile
from ledger.ops import exporter
from ledger.ops.manager_cli import RegistryClient
from ledger.registry.payloads import AnchorTx
from ledger.types import crypto
from ledger.types.block import PRECOMMIT, BlockHeader, CommitCertificate, Vote
from riskmask.cli import main as riskmask_main
from schemas.messages import CommitSig, LedgerBlock
from tests.ledger_util import make_cluster, wait_for

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    base = tmp_path_factory.mktemp("exporter")
    cluster = make_cluster(base / "ledger")
    keyring.init_keyring(base / "keys")
    try:
        cluster.up(wait_height=1, timeout_s=90)
        mgr = RegistryClient.from_dir(base / "ledger", "manager", base / "keys")
        pipe = RegistryClient.from_dir(base / "ledger", "pipeline", need_keyring=False)
        anchors = []
        for i in range(3):
            rec = privacy.SubjectRecord.make(risk=10 * i, suspect=bool(i % 2))
            mgr.register(privacy.Identity(f"Export Subject {i}", "1970-01-0%d" % (i + 1)), rec)
            anchors.append(pipe.submit_anchor(AnchorTx(camera_id="cam-x", window_start_us=i, window_end_us=i + 5,
                                                       record_count=3, merkle_root=crypto.sha256(b"%d" % i))))
        mgr.close()
        pipe.close()
        yield {"cluster": cluster, "dir": base / "ledger", "anchors": anchors}
    finally:
        cluster.down()


def _clients(env, role: str = "auditor"):
    from ledger.client.api_client import LedgerClient

    c = env["cluster"]
    return [LedgerClient(c.api_address(i), c.key_seed(role), 10.0) for i in range(c.n)]


def _heights(bootstrap: str, topic: str) -> list[int]:
    return [LedgerBlock.from_bytes(v).height for _, v in exporter.read_range(bootstrap, topic)]


def test_exporter_resumes_after_stop_without_gaps(env, kafka_bootstrap, topic_factory) -> None:
    topic = topic_factory(prefix="ledger-blocks")
    chain_id = env["cluster"].genesis.chain_id
    assert exporter.last_exported_height(kafka_bootstrap, topic, chain_id) == 0
    first = exporter.Exporter(kafka_bootstrap, topic, _clients(env), chain_id, batch=3)
    assert first.start() == 1
    assert first.step() == 3 and first.step() == 3
    first.close()
    assert _heights(kafka_bootstrap, topic) == list(range(1, 7))
    second = exporter.Exporter(kafka_bootstrap, topic, _clients(env), chain_id, batch=7)
    assert second.start() == 7
    target = env["cluster"].heights([0])[0]
    second.run(poll_s=0.1, stop_at=target)
    hs = _heights(kafka_bootstrap, topic)
    assert hs == list(range(1, len(hs) + 1)) and hs[-1] >= target
    assert exporter.last_exported_height(kafka_bootstrap, topic, chain_id) == hs[-1]
    with pytest.raises(Exception, match="chain"):
        exporter.last_exported_height(kafka_bootstrap, topic, "another-chain")


def test_exporter_killed_mid_run_resumes_without_gaps(env, kafka_bootstrap, topic_factory) -> None:
    topic = topic_factory(prefix="ledger-blocks")
    cmd = [sys.executable, "-m", "riskmask.cli", "-q", "ledger", "export", "--bootstrap", kafka_bootstrap,
           "--topic", topic, "--ledger-dir", str(env["dir"])]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for(lambda: exporter.end_offset(kafka_bootstrap, topic) >= 5, 90, "the exporter to write blocks")
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    killed_at = _heights(kafka_bootstrap, topic)
    time.sleep(1.0)  # let the chain grow past the kill point
    target = env["cluster"].heights([0])[0]
    rc = subprocess.run(cmd + ["--until", str(target)], timeout=180, capture_output=True, text=True)
    assert rc.returncode == 0, rc.stderr[-2000:]
    hs = _heights(kafka_bootstrap, topic)
    assert hs[:len(killed_at)] == killed_at
    assert hs == list(range(1, len(hs) + 1)) and hs[-1] >= target, "gap or duplicate after restart"


# ------------------------------------------------------------------------------------------------------------
# Tamper suite on copies of an exported topic


@pytest.fixture(scope="module")
def exported(env, kafka_bootstrap):
    import uuid

    from infra import broker

    topic = f"ledger-blocks-{uuid.uuid4().hex[:8]}"
    broker.create_topics(kafka_bootstrap, [topic])
    exp = exporter.Exporter(kafka_bootstrap, topic, _clients(env), env["cluster"].genesis.chain_id)
    exp.start()
    while exp.step():
        pass
    exp.close()
    msgs = [LedgerBlock.from_bytes(v) for _, v in exporter.read_range(kafka_bootstrap, topic)]
    assert len(msgs) >= 8 and sum(len(m.txs) for m in msgs) >= 6
    return topic, msgs


def _write_copy(bootstrap: str, msgs: list[LedgerBlock]) -> str:
    import uuid

    from kafka import KafkaProducer

    from infra import broker

    topic = f"tampered-{uuid.uuid4().hex[:8]}"
    broker.create_topics(bootstrap, [topic])
    prod = KafkaProducer(bootstrap_servers=bootstrap, acks="all")
    for m in msgs:
        prod.send(topic, value=m.to_bytes(), partition=0)
    prod.flush()
    prod.close()
    return topic


def _verify(env, bootstrap: str, topic: str, capsys) -> tuple[int, str]:
    capsys.readouterr()
    rc = riskmask_main(["-q", "audit", "verify", "--genesis", str(env["dir"] / "genesis.json"), "--bootstrap",
                        bootstrap, "--ledger-topic", topic, "--audit-topic", ""])
    return rc, capsys.readouterr().out


def _resign(env, msg: LedgerBlock, header: bytes) -> LedgerBlock:
    """A block with a new header, hashed and signed by the genesis validators' own keys (a colluding quorum)."""
    cluster = env["cluster"]
    bh = crypto.sha256(header)
    keys = [crypto.PrivateKey.from_seed(KeyFile.load(cluster.dir / "keys" / f"node{i}.key").seed) for i in range(3)]
    cert = CommitCertificate.from_votes(
        [Vote.create(k, cluster.genesis.chain_id, PRECOMMIT, msg.height, 0, bh, i) for i, k in enumerate(keys)])
    return dataclasses.replace(msg, header=header, block_hash=bh, commit=tuple(
        CommitSig(validator_index=s.validator, round=s.round, signature=s.signature) for s in cert.sigs))


def test_exported_topic_verifies_intact(env, kafka_bootstrap, exported, capsys) -> None:
    topic, msgs = exported
    rc, out = _verify(env, kafka_bootstrap, topic, capsys)
    assert rc == 0 and "INTACT" in out, out
    assert f"blocks 1..{msgs[-1].height}" in out and "anchors 3" in out and "register 3" in out


def test_tamper_suite_on_exported_copy(env, kafka_bootstrap, exported, capsys) -> None:
    _, msgs = exported
    i = next(k for k, m in enumerate(msgs) if m.txs and 2 <= k < len(msgs) - 1)  # a tx block, not first or last
    m = msgs[i]
    h = m.height
    outsiders = [crypto.PrivateKey.generate() for _ in range(3)]
    chain_id = env["cluster"].genesis.chain_id

    def modified_tx() -> list[LedgerBlock]:
        body = bytearray(m.txs[0].body)
        body[len(body) // 2] ^= 1
        txs = (dataclasses.replace(m.txs[0], body=bytes(body)),) + m.txs[1:]
        return msgs[:i] + [dataclasses.replace(m, txs=txs)] + msgs[i + 1:]

    def forged_signature() -> list[LedgerBlock]:
        sig = bytearray(m.commit[0].signature)
        sig[5] ^= 0x40
        commit = (dataclasses.replace(m.commit[0], signature=bytes(sig)),) + m.commit[1:]
        return msgs[:i] + [dataclasses.replace(m, commit=commit)] + msgs[i + 1:]

    def non_validator() -> list[LedgerBlock]:
        votes = [Vote.create(k, chain_id, PRECOMMIT, h, 0, m.block_hash, v) for v, k in enumerate(outsiders)]
        commit = tuple(CommitSig(validator_index=v.validator, round=0, signature=v.signature) for v in votes)
        return msgs[:i] + [dataclasses.replace(m, commit=commit)] + msgs[i + 1:]

    def wrong_merkle_root() -> list[LedgerBlock]:
        hd = BlockHeader.decode(m.header)
        bad = _resign(env, m, dataclasses.replace(hd, tx_root=crypto.sha256(b"not the root")).encode())
        return msgs[:i] + [bad]

    cases = {
        "modified tx": (modified_tx(), h, "tx 0"),
        "removed block": (msgs[:i] + msgs[i + 1:], h + 1, "expected height"),
        "two blocks swapped": (msgs[:i] + [msgs[i + 1], m] + msgs[i + 2:], h + 1, "expected height"),
        "forged signature": (forged_signature(), h, "invalid precommit signature"),
        "duplicated signer": (msgs[:i] + [dataclasses.replace(m, commit=(m.commit[0],) * 3)] + msgs[i + 1:], h,
                              "appears twice"),
        "too few signers": (msgs[:i] + [dataclasses.replace(m, commit=m.commit[:2])] + msgs[i + 1:], h,
                            "distinct signers"),
        "signed by non-validators": (non_validator(), h, "invalid precommit signature"),
        "wrong Merkle root": (wrong_merkle_root(), h, "Merkle root"),
    }
    for name, (tampered, bad_height, reason) in cases.items():
        topic = _write_copy(kafka_bootstrap, tampered)
        rc, out = _verify(env, kafka_bootstrap, topic, capsys)
        assert rc != 0, f"{name}: not detected\n{out}"
        assert "FAILED" in out and f"FIRST BAD BLOCK: block {bad_height}" in out and reason in out, f"{name}: {out}"


def test_audit_follow_reports_blocks_and_stops_at_tampering(env, kafka_bootstrap, exported, capsys) -> None:
    topic, msgs = exported
    genesis = str(env["dir"] / "genesis.json")
    capsys.readouterr()
    rc = riskmask_main(["-q", "audit", "follow", "--genesis", genesis, "--bootstrap", kafka_bootstrap,
                        "--ledger-topic", topic, "--idle-exit", "2"])
    out = capsys.readouterr().out
    assert rc == 0, out
    assert out.count("ok height") == len(msgs) and "INTACT" in out
    bad = msgs[:3] + msgs[4:]
    rc = riskmask_main(["-q", "audit", "follow", "--genesis", genesis, "--bootstrap", kafka_bootstrap,
                        "--ledger-topic", _write_copy(kafka_bootstrap, bad), "--idle-exit", "2"])
    out = capsys.readouterr().out
    assert rc == 1 and out.count("ok height") == 3 and f"FAILED block {msgs[4].height}" in out, out


def test_anchor_inclusion_proof_retrievable_and_verified(env) -> None:
    from ledger.ops.manager_cli import RegistryError

    auditor = RegistryClient.from_dir(env["dir"], "auditor", need_keyring=False)
    try:
        for i, (tx_hash, height) in enumerate(env["anchors"]):
            proof = auditor.anchor_proof(tx_hash)
            assert proof["verified"] and proof["height"] == height and len(proof["commit_signers"]) >= 3
            assert proof["anchor"]["merkle_root"] == crypto.sha256(b"%d" % i).hex()
            assert proof["anchor"]["camera_id"] == "cam-x" and proof["anchor"]["record_count"] == 3
        with pytest.raises(RegistryError, match="unknown"):
            auditor.anchor_proof("ab" * 32)
    finally:
        auditor.close()
    # the pipeline key may submit anchors but not read blocks, so it cannot run the full verification
    pipe = RegistryClient.from_dir(env["dir"], "pipeline", need_keyring=False)
    try:
        with pytest.raises(RegistryError, match="cannot read block"):
            pipe.anchor_proof(env["anchors"][0][0])
    finally:
        pipe.close()


def test_audit_verify_with_audit_blocks_topic(env, kafka_bootstrap, topic_factory, capsys) -> None:
    """Audit blocks anchored on the real ledger: intact -> exit 0; a changed record -> exit 1 naming it."""
    import os as _os

    from kafka import KafkaProducer

    from pipelines.audit_chain import anchor_tx, make_block
    from schemas.messages import AuditRecord

    pipe = RegistryClient.from_dir(env["dir"], "pipeline", need_keyring=False)
    blocks, prev = [], b"\x00" * 32
    try:
        for i in range(3):
            recs = [AuditRecord(camera_id="cam-a", epoch=0, seq=i * 4 + j, capture_ts_us=10_000 * i + j,
                                raw_sha256=_os.urandom(32), redacted_sha256=_os.urandom(32), policy_id="default",
                                detector_id="yunet") for j in range(4)]
            blk = make_block("cam-a", i, prev, recs)
            tx_hash, _ = pipe.submit_anchor(anchor_tx(blk))
            blocks.append(dataclasses.replace(blk, anchor_tx_hash=bytes.fromhex(tx_hash)))
            prev = blk.block_hash
    finally:
        pipe.close()
    ledger_topic = topic_factory(prefix="ledger-blocks")
    exp = exporter.Exporter(kafka_bootstrap, ledger_topic, _clients(env), env["cluster"].genesis.chain_id)
    exp.start()
    while exp.step():
        pass
    exp.close()

    def audit_topic(blks) -> str:
        t = topic_factory(prefix="audit-blocks")
        prod = KafkaProducer(bootstrap_servers=kafka_bootstrap, acks="all")
        for b in blks:
            prod.send(t, key=b.camera_id.encode(), value=b.to_bytes())
        prod.flush()
        prod.close()
        return t

    def run(t: str) -> tuple[int, str]:
        capsys.readouterr()
        rc = riskmask_main(["-q", "audit", "verify", "--genesis", str(env["dir"] / "genesis.json"), "--bootstrap",
                            kafka_bootstrap, "--ledger-topic", ledger_topic, "--audit-topic", t])
        return rc, capsys.readouterr().out

    rc, out = run(audit_topic(blocks))
    assert rc == 0 and "audit blocks 3 over 1 camera(s): 3 anchored" in out, out
    recs = list(blocks[1].records)
    recs[2] = dataclasses.replace(recs[2], policy_id="none")
    rc, out = run(audit_topic([blocks[0], dataclasses.replace(blocks[1], records=tuple(recs)), blocks[2]]))
    assert rc == 1 and "audit block cam-a#1" in out and "Merkle root" in out, out
