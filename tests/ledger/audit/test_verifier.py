"""Auditor: an intact exported chain verifies; every kind of tampering is detected at the first bad block."""

from __future__ import annotations

import dataclasses
import os
from typing import Any, Callable, Optional

import pytest

from ledger.audit import verifier as audit
from ledger.config import Genesis, ValidatorInfo
from ledger.ops.exporter import to_ledger_block
from ledger.registry import payloads
from ledger.registry.payloads import AnchorTx
from ledger.types import crypto, merkle
from ledger.types.block import PRECOMMIT, Block, BlockHeader, CommitCertificate, Transaction, Vote, validator_set_hash
from pipelines import audit_chain
from schemas.messages import AuditBlock, AuditRecord, CommitSig, LedgerBlock

CHAIN = "audit-test"
N_BLOCKS = 6


@dataclasses.dataclass
class Net:
    genesis: Genesis
    keys: list[crypto.PrivateKey]
    manager: crypto.PrivateKey
    pipeline: crypto.PrivateKey


@pytest.fixture(scope="module")
def net() -> Net:
    keys = [crypto.PrivateKey.generate() for _ in range(4)]
    vals = tuple(ValidatorInfo(i, k.public_key().to_bytes(), f"127.0.0.1:{1000 + i}", f"127.0.0.1:{2000 + i}")
                 for i, k in enumerate(keys))
    return Net(Genesis(CHAIN, 1_700_000_000_000, vals), keys, crypto.PrivateKey.generate(),
               crypto.PrivateKey.generate())


def _anchor_tx(net: Net, h: int, anchor: tuple, count: int = 3) -> Transaction:
    root, start, end = anchor[:3]
    block_hash = anchor[3] if len(anchor) > 3 else b"\x00" * 32
    a = AnchorTx(camera_id="cam-1", window_start_us=start, window_end_us=end, record_count=count,
                 merkle_root=root, audit_index=h - 1, audit_block_hash=block_hash)
    return Transaction.create(net.pipeline, CHAIN, payloads.OP_ANCHOR, h, 1_700_000_000_000 + h, payloads.encode(a))


def _register_tx(net: Net, h: int) -> Transaction:
    tx = payloads.SubjectTx(op=payloads.OP_REGISTER, pseudonym=os.urandom(32), pkey_id=b"p" * 8, version=1,
                            nonce=os.urandom(12), ciphertext=os.urandom(700), kek_id=b"k" * 8,
                            key_commitment=os.urandom(32))
    return Transaction.create(net.manager, CHAIN, payloads.OP_REGISTER, h, 1_700_000_000_000 + h, payloads.encode(tx))


def _cert(net: Net, height: int, block_hash: bytes, signers=(0, 1, 2), keys=None) -> CommitCertificate:
    keys = keys or net.keys
    votes = [Vote.create(keys[v], CHAIN, PRECOMMIT, height, 0, block_hash, v) for v in signers]
    return CommitCertificate.from_votes(votes)


def build_chain(net: Net, n: int = N_BLOCKS, roots: Optional[dict[int, tuple[bytes, int, int]]] = None,
                header_hook: Optional[Callable[[int, BlockHeader], BlockHeader]] = None,
                evidence: Optional[dict[int, list]] = None) -> list[LedgerBlock]:
    """A valid exported chain (each block: one register, one anchor), optionally with a mutated header."""
    prev = net.genesis.hash()
    vhash = validator_set_hash(net.genesis.public_keys())
    out = []
    for h in range(1, n + 1):
        root = (roots or {}).get(h, (crypto.sha256(b"root%d" % h), h * 1000, h * 1000 + 2))
        blk = Block.build(CHAIN, h, 0, 1_700_000_000_000 + h * 1000, prev, (h % 4), vhash,
                          [_register_tx(net, h), _anchor_tx(net, h, root)], (evidence or {}).get(h, ()))
        if header_hook is not None:
            blk = Block(header_hook(h, blk.header), blk.txs, blk.evidence)
        cert = _cert(net, h, blk.hash(), signers=(0, 1, 2, 3) if h % 2 else (0, 2, 3))
        out.append(to_ledger_block(blk.encode(), cert.encode()))
        prev = blk.hash()
    return out


def verify(net: Net, msgs: list[LedgerBlock], audit_blocks=None) -> audit.AuditReport:
    ledger = [(i, m.to_bytes()) for i, m in enumerate(msgs)]
    audits = None if audit_blocks is None else [(i, b.to_bytes()) for i, b in enumerate(audit_blocks)]
    return audit.verify_stream(net.genesis, ledger, audits)


def _failed_at(report: audit.AuditReport, height: int, reason: str) -> None:
    assert not report.ok, report.summary()
    assert report.failure.height == height, report.failure
    assert reason in report.failure.reason, report.failure
    assert f"block {height}" in report.summary()


def test_intact_chain_verifies(net: Net) -> None:
    report = verify(net, build_chain(net))
    assert report.ok, report.summary()
    assert report.blocks == N_BLOCKS and report.last_height == N_BLOCKS
    assert report.kinds == {"register": N_BLOCKS, "anchor": N_BLOCKS}
    assert report.anchors == N_BLOCKS
    assert "INTACT" in report.summary()


def test_exported_block_round_trips_through_avro(net: Net) -> None:
    msg = build_chain(net, 1)[0]
    again = LedgerBlock.from_bytes(msg.to_bytes())
    assert again == msg and len(again.commit) == 4


def _replace_tx_body(msg: LedgerBlock, i: int, body: bytes, rehash: bool) -> LedgerBlock:
    txs = list(msg.txs)
    txs[i] = dataclasses.replace(txs[i], body=body, tx_hash=crypto.sha256(body) if rehash else txs[i].tx_hash)
    return dataclasses.replace(msg, txs=tuple(txs))


def test_modified_tx_detected(net: Net) -> None:
    chain = build_chain(net)
    body = bytearray(chain[2].txs[0].body)
    body[60] ^= 0x01  # inside the payload
    bad = list(chain)
    bad[2] = _replace_tx_body(chain[2], 0, bytes(body), rehash=False)
    _failed_at(verify(net, bad), 3, "hash does not match")
    bad[2] = _replace_tx_body(chain[2], 0, bytes(body), rehash=True)  # consistent hash: signature breaks
    _failed_at(verify(net, bad), 3, "signature is invalid")


def test_modified_tx_resigned_breaks_merkle_root(net: Net) -> None:
    chain = build_chain(net)
    other = _register_tx(net, 3)  # validly signed by the manager, but not the tx the block committed to
    bad = list(chain)
    bad[2] = _replace_tx_body(chain[2], 0, other.encode(), rehash=True)
    _failed_at(verify(net, bad), 3, "Merkle root")


def test_removed_block_detected(net: Net) -> None:
    chain = build_chain(net)
    report = verify(net, chain[:2] + chain[3:])
    _failed_at(report, 4, "expected height 3")
    assert "gap" in report.failure.reason


def test_swapped_blocks_detected(net: Net) -> None:
    chain = build_chain(net)
    swapped = chain[:2] + [chain[3], chain[2]] + chain[4:]
    _failed_at(verify(net, swapped), 4, "expected height 3")


def test_forged_signature_detected(net: Net) -> None:
    chain = build_chain(net)
    sigs = list(chain[3].commit)
    sig = bytearray(sigs[1].signature)
    sig[10] ^= 0xFF
    sigs[1] = dataclasses.replace(sigs[1], signature=bytes(sig))
    bad = chain[:3] + [dataclasses.replace(chain[3], commit=tuple(sigs))] + chain[4:]
    _failed_at(verify(net, bad), 4, "invalid precommit signature")


def test_duplicated_signer_detected(net: Net) -> None:
    chain = build_chain(net)
    c = chain[1].commit  # (0, 2, 3)
    bad = [chain[0], dataclasses.replace(chain[1], commit=(c[0], c[1], c[1]))] + chain[2:]
    _failed_at(verify(net, bad), 2, "appears twice")


def test_too_few_signers_detected(net: Net) -> None:
    chain = build_chain(net)
    bad = chain[:4] + [dataclasses.replace(chain[4], commit=chain[4].commit[:2])] + chain[5:]
    _failed_at(verify(net, bad), 5, "quorum is 3")


def test_block_signed_by_non_validator_detected(net: Net) -> None:
    chain = build_chain(net)
    outsiders = [crypto.PrivateKey.generate() for _ in range(4)]
    forged = _cert(net, 3, chain[2].block_hash, signers=(0, 1, 2), keys=outsiders)
    sigs = tuple(CommitSig(validator_index=s.validator, round=s.round, signature=s.signature) for s in forged.sigs)
    bad = chain[:2] + [dataclasses.replace(chain[2], commit=sigs)] + chain[3:]
    _failed_at(verify(net, bad), 3, "invalid precommit signature")
    # a signer index outside the genesis validator set
    real = chain[2].commit
    extra = (real[0], real[1], CommitSig(validator_index=7, round=0, signature=real[2].signature))
    bad[2] = dataclasses.replace(chain[2], commit=extra)
    _failed_at(verify(net, bad), 3, "not in genesis")


def test_wrong_merkle_root_detected(net: Net) -> None:
    """A header with a wrong tx root, properly hashed, chained and signed by the validators, is still caught."""
    def hook(h: int, hd: BlockHeader) -> BlockHeader:
        return dataclasses.replace(hd, tx_root=crypto.sha256(b"bogus")) if h == 4 else hd

    _failed_at(verify(net, build_chain(net, header_hook=hook)), 4, "Merkle root")


def test_header_tampering_detected(net: Net) -> None:
    chain = build_chain(net)
    hd = BlockHeader.decode(chain[2].header)
    altered = dataclasses.replace(hd, timestamp_ms=hd.timestamp_ms + 1).encode()
    _failed_at(verify(net, chain[:2] + [dataclasses.replace(chain[2], header=altered)] + chain[3:]), 3,
               "block hash does not match")
    # rehashing the altered header breaks the certificate (signed over the original hash)
    rehashed = dataclasses.replace(chain[2], header=altered, block_hash=crypto.sha256(altered))
    _failed_at(verify(net, chain[:2] + [rehashed] + chain[3:]), 3, "invalid precommit signature")


def test_other_genesis_or_chain_refused(net: Net) -> None:
    chain = build_chain(net)
    other_keys = [crypto.PrivateKey.generate() for _ in range(4)]
    other = Genesis(CHAIN, net.genesis.genesis_time, tuple(
        ValidatorInfo(i, k.public_key().to_bytes(), "127.0.0.1:1", "127.0.0.1:2") for i, k in enumerate(other_keys)))
    report = audit.verify_stream(other, [(i, m.to_bytes()) for i, m in enumerate(chain)])
    _failed_at(report, 1, "prev_hash")
    renamed = [dataclasses.replace(chain[0], chain_id="other")] + chain[1:]
    _failed_at(verify(net, renamed), 1, "chain id")


def test_duplicate_tolerated_fork_refused(net: Net) -> None:
    chain = build_chain(net)
    report = verify(net, chain[:3] + [chain[2]] + chain[3:])
    assert report.ok and report.duplicates == 1
    fork = build_chain(net, 3)[2]  # another valid block 3 (different txs), signed by the validators
    _failed_at(verify(net, chain[:4] + [dataclasses.replace(fork, height=3)] + chain[4:]), 3, "different block")


def test_undecodable_message_detected(net: Net) -> None:
    chain = build_chain(net, 2)
    data = [(0, chain[0].to_bytes()), (1, b"\xc3\x01garbage")]
    report = audit.verify_stream(net.genesis, data)
    assert not report.ok and "offset 1" in str(report.failure)


# -- audit blocks ----------------------------------------------------------------------------------------------


def _audit_chain(n: int) -> tuple[list[AuditBlock], dict[int, tuple[bytes, int, int]]]:
    """Audit blocks built by the pipeline's own block maker, and the anchor (root, window) of each."""
    blocks, anchors, prev = [], {}, b"\x00" * 32
    for i in range(n):
        recs = [AuditRecord(camera_id="cam-1", epoch=1, seq=i * 3 + j, capture_ts_us=(i + 1) * 1000 + j,
                            raw_sha256=os.urandom(32), redacted_sha256=os.urandom(32), policy_id="paper",
                            detector_id="yunet") for j in range(3)]
        blk = audit_chain.make_block("cam-1", i, prev, recs)
        blocks.append(blk)
        anchors[i + 1] = (blk.merkle_root, blk.window_start_us, blk.window_end_us, blk.block_hash)
        prev = blk.block_hash
    return blocks, anchors


def test_audit_blocks_match_anchors(net: Net) -> None:
    ablocks, roots = _audit_chain(N_BLOCKS)
    chain = build_chain(net, roots=roots)
    report = verify(net, chain, ablocks)
    assert report.ok, report.summary()
    assert report.audit_blocks == N_BLOCKS and report.anchored_audit_blocks == N_BLOCKS


def test_audit_block_tampering_detected(net: Net) -> None:
    ablocks, roots = _audit_chain(4)
    chain = build_chain(net, 4, roots=roots)
    recs = list(ablocks[2].records)
    recs[1] = dataclasses.replace(recs[1], policy_id="none")
    bad = ablocks[:2] + [dataclasses.replace(ablocks[2], records=tuple(recs))] + ablocks[3:]
    report = verify(net, chain, bad)
    assert not report.ok and "cam-1#2" in str(report.failure) and "Merkle root" in str(report.failure)
    # re-rooted but not re-hashed: the block hash no longer matches its header fields
    rerooted = dataclasses.replace(bad[2], merkle_root=merkle.merkle_root([r.to_bytes() for r in recs]))
    report = verify(net, chain, ablocks[:2] + [rerooted] + ablocks[3:])
    assert not report.ok and "block hash" in str(report.failure)
    # fully re-sealed: the chain link to the next block breaks, and the ledger anchor no longer matches
    fixed = audit_chain.make_block("cam-1", 2, ablocks[1].block_hash, recs)
    report = verify(net, chain, ablocks[:2] + [fixed])
    assert report.ok and report.unanchored_audit_blocks == 1  # its new root is not anchored anywhere
    report = verify(net, chain, ablocks[:2] + [fixed] + ablocks[3:])
    assert not report.ok and "cam-1#3" in str(report.failure) and "prev_hash" in str(report.failure)
    wrong_anchor = dataclasses.replace(fixed, anchor_tx_hash=chain[2].txs[1].tx_hash)
    report = verify(net, chain, ablocks[:2] + [wrong_anchor])
    assert not report.ok and "does not match its ledger anchor" in str(report.failure)
    # an anchor reference not (yet) in the exported ledger: counted and warned about, not a failure
    pending = dataclasses.replace(ablocks[3], anchor_tx_hash=b"\x07" * 32)
    report = verify(net, chain[:3], ablocks[:3] + [pending])
    assert report.ok and report.unanchored_audit_blocks == 1 and "not in the exported ledger" in report.summary()
    report = verify(net, chain, ablocks[:1] + ablocks[2:])
    assert not report.ok and "expected index 1" in str(report.failure)


def _registry(**roles: crypto.PrivateKey) -> Any:
    from ledger.config import ClientInfo, ClientRegistry

    return ClientRegistry({k.public_key().to_bytes().hex(): ClientInfo(k.public_key().to_bytes(), role, role)
                           for role, k in roles.items()})


def test_sender_roles_checked_against_the_client_registry(net: Net) -> None:
    chain = [(i, m.to_bytes()) for i, m in enumerate(build_chain(net))]
    ok = audit.verify_stream(net.genesis, chain, clients=_registry(manager=net.manager, pipeline=net.pipeline))
    assert ok.ok, ok.summary()
    assert ok.roles_checked == 2 * N_BLOCKS and "roles checked" in ok.summary()
    unchecked = audit.verify_stream(net.genesis, chain)
    assert unchecked.ok and unchecked.roles_checked is None and "not checked" in unchecked.summary()
    # The pipeline key swapped with the manager's: registrations now come from a pipeline-role key.
    swapped = audit.verify_stream(net.genesis, chain, clients=_registry(manager=net.pipeline, pipeline=net.manager))
    _failed_at(swapped, 1, "role 'pipeline' may not submit 'register'")
    # A sender the registry does not know.
    missing = audit.verify_stream(net.genesis, chain, clients=_registry(manager=net.manager))
    _failed_at(missing, 1, "neither a validator nor a registered client")


def _double_vote(net: Net, validator: int, height: int, key: Optional[crypto.PrivateKey] = None) -> Any:
    from ledger.types.block import Evidence

    k = key or net.keys[validator]
    a = Vote.create(k, CHAIN, PRECOMMIT, height, 0, crypto.sha256(b"one"), validator)
    b = Vote.create(k, CHAIN, PRECOMMIT, height, 0, crypto.sha256(b"two"), validator)
    return Evidence.of(a, b)


def test_evidence_is_carried_reverified_and_reported(net: Net) -> None:
    chain = build_chain(net, evidence={3: [_double_vote(net, 2, 2)]})
    assert len(chain[2].evidence) == 1 and LedgerBlock.from_bytes(chain[2].to_bytes()) == chain[2]
    report = verify(net, chain)
    assert report.ok, report.summary()
    assert report.evidence == {2: 1} and "v2 x1" in report.summary()
    # Evidence stripped from the exported block: the header's evidence hash no longer matches.
    _failed_at(verify(net, chain[:2] + [dataclasses.replace(chain[2], evidence=())] + chain[3:]), 3,
               "evidence hash")
    # An accusation forged with another key fails verification even when the header commits to it.
    forged = build_chain(net, evidence={3: [_double_vote(net, 1, 2, key=crypto.PrivateKey.generate())]})
    _failed_at(verify(net, forged), 3, "evidence 0 does not verify")


def test_second_copy_at_a_height_must_be_byte_identical(net: Net) -> None:
    """A forged copy of a verified block (same header and hash, a 1-signer certificate) is not a duplicate."""
    chain = build_chain(net)
    forged = dataclasses.replace(chain[2], commit=chain[2].commit[:1])
    _failed_at(verify(net, chain[:3] + [forged] + chain[3:]), 3, "not byte-identical")
    # same certificate, one transaction relabelled: still not the block that was verified
    txs = list(chain[2].txs)
    txs[0] = dataclasses.replace(txs[0], kind="erase")
    _failed_at(verify(net, chain[:3] + [dataclasses.replace(chain[2], txs=tuple(txs))]), 3, "not byte-identical")
    # the exact bytes again (an at-least-once export) are skipped
    report = verify(net, chain[:3] + [LedgerBlock.from_bytes(chain[2].to_bytes())] + chain[3:])
    assert report.ok and report.duplicates == 1, report.summary()


# -- one test per check that nothing else above exercises (bench/audit_mutation.py: 0 survivors) ----------------


def _with_header(net: Net, height: int, change: Callable[[BlockHeader], BlockHeader]) -> list[LedgerBlock]:
    """A valid chain whose block ``height`` has a changed header, re-hashed and signed by the validators
    (a colluding quorum, or a buggy node): only the header checks can catch it."""
    chain = build_chain(net, header_hook=lambda h, hd: change(hd) if h == height else hd)
    # the exported message keeps the stream's chain id and height (the header carries the changed ones)
    chain[height - 1] = dataclasses.replace(chain[height - 1], chain_id=CHAIN, height=height)
    return chain


def test_signed_header_with_another_chain_id_detected(net: Net) -> None:
    _failed_at(verify(net, _with_header(net, 2, lambda hd: dataclasses.replace(hd, chain_id="other-chain"))), 2,
               "header chain id")


def test_signed_header_with_another_height_detected(net: Net) -> None:
    chain = build_chain(net)
    header = dataclasses.replace(BlockHeader.decode(chain[3].header), height=40).encode()
    block_hash = crypto.sha256(header)
    # the precommits are for height 4 and this header's hash: only the header's own height is wrong
    sigs = tuple(CommitSig(validator_index=s.validator, round=s.round, signature=s.signature)
                 for s in _cert(net, 4, block_hash).sigs)
    bad = dataclasses.replace(chain[3], header=header, block_hash=block_hash, commit=sigs)
    _failed_at(verify(net, chain[:3] + [bad]), 4, "header height 40")


def test_signed_header_with_another_validator_set_detected(net: Net) -> None:
    _failed_at(verify(net, _with_header(net, 3, lambda hd: dataclasses.replace(hd, validators_hash=b"\x05" * 32))),
               3, "validators hash")


def test_block_time_going_backwards_detected(net: Net) -> None:
    _failed_at(verify(net, _with_header(net, 4, lambda hd: dataclasses.replace(hd, timestamp_ms=1_700_000_000_000))),
               4, "time goes backwards")


def test_header_transaction_count_mismatch_detected(net: Net) -> None:
    _failed_at(verify(net, _with_header(net, 5, lambda hd: dataclasses.replace(hd, num_txs=hd.num_txs + 1))), 5,
               "header counts 3 txs")


def test_mislabelled_transaction_kind_detected(net: Net) -> None:
    chain = build_chain(net)
    txs = list(chain[2].txs)
    txs[0] = dataclasses.replace(txs[0], kind="anchor")  # a registration shown to readers as an anchor
    _failed_at(verify(net, chain[:2] + [dataclasses.replace(chain[2], txs=tuple(txs))] + chain[3:]), 3,
               "labelled 'anchor' but is 'register'")


def test_certificate_mixing_rounds_detected(net: Net) -> None:
    """Each precommit is validly signed, but for different rounds: no round had a quorum."""
    chain = build_chain(net)
    votes = [Vote.create(net.keys[v], CHAIN, PRECOMMIT, 3, r, chain[2].block_hash, v)
             for v, r in ((0, 0), (1, 0), (2, 1))]
    sigs = tuple(CommitSig(validator_index=v.validator, round=v.round, signature=v.signature) for v in votes)
    _failed_at(verify(net, chain[:2] + [dataclasses.replace(chain[2], commit=sigs)] + chain[3:]), 3,
               "mixes rounds")


@pytest.mark.parametrize("part", ["header", "tx", "evidence"])
def test_non_canonical_encodings_refused(net: Net, part: str) -> None:
    """Bytes that are not the canonical encoding (here: one trailing byte) never verify, whichever part."""
    chain = build_chain(net, evidence={3: [_double_vote(net, 2, 2)]})
    msg = chain[2]
    if part == "header":
        bad = dataclasses.replace(msg, header=msg.header + b"\x00")
    elif part == "tx":
        bad = _replace_tx_body(msg, 0, msg.txs[0].body + b"\x00", rehash=True)
    else:
        bad = dataclasses.replace(msg, evidence=(msg.evidence[0] + b"\x00",))
    report = verify(net, chain[:2] + [bad] + chain[3:])
    assert not report.ok and report.failure.height == 3, report.summary()


def test_duplicate_audit_block_tolerated_altered_copy_refused(net: Net) -> None:
    ablocks, roots = _audit_chain(3)
    chain = build_chain(net, 3, roots=roots)
    report = verify(net, chain, ablocks[:2] + [ablocks[1]] + ablocks[2:])
    assert report.ok and report.audit_blocks == 3, report.summary()
    other = _audit_chain(2)[0][1]  # another valid block 1 of cam-1 (other records, other hash)
    report = verify(net, chain, ablocks[:2] + [other] + ablocks[2:])
    assert not report.ok and "different audit block at an already seen index" in str(report.failure)
    # the same block hash with records swapped out: a copy must be byte-identical, not just share the hash
    recs = list(ablocks[1].records)
    recs[0] = dataclasses.replace(recs[0], policy_id="none")
    forged = dataclasses.replace(ablocks[1], records=tuple(recs))
    report = verify(net, chain, ablocks[:2] + [forged] + ablocks[2:])
    assert not report.ok and "cam-1#1" in str(report.failure) and "not byte-identical" in str(report.failure)


def _sealed(blk: AuditBlock, **changes: Any) -> AuditBlock:
    """``blk`` with ``changes``, Merkle root and block hash recomputed (a consistent, re-sealed forgery)."""
    b = dataclasses.replace(blk, **changes)
    root = merkle.merkle_root([r.to_bytes() for r in b.records])
    digest = audit_chain.block_hash(b.camera_id, b.index, b.prev_hash, b.window_start_us, b.window_end_us,
                                    len(b.records), root)
    return dataclasses.replace(b, merkle_root=root, block_hash=digest)


def test_audit_block_window_ending_before_it_starts_detected(net: Net) -> None:
    ablocks, _ = _audit_chain(1)
    bad = _sealed(ablocks[0], window_start_us=ablocks[0].window_end_us + 10)
    report = verify(net, build_chain(net, 2), [bad])
    assert not report.ok and "window ends before it starts" in str(report.failure)


def test_record_of_another_camera_in_an_audit_block_detected(net: Net) -> None:
    ablocks, _ = _audit_chain(1)
    recs = list(ablocks[0].records)
    recs[2] = dataclasses.replace(recs[2], camera_id="cam-2")
    report = verify(net, build_chain(net, 2), [_sealed(ablocks[0], records=tuple(recs))])
    assert not report.ok and "record of another camera" in str(report.failure)


def test_anchor_naming_another_audit_block_detected(net: Net) -> None:
    """The ledger anchor matches the block's root and window but names another audit block hash."""
    ablocks, roots = _audit_chain(3)
    roots[2] = roots[2][:3] + (b"\x09" * 32,)
    report = verify(net, build_chain(net, 3, roots=roots), ablocks)
    assert not report.ok and "cam-1#1" in str(report.failure) and "index/hash differ" in str(report.failure)


def test_verify_command_refuses_a_missing_ledger_topic(net: Net, kafka_bootstrap: str, tmp_path: Any) -> None:
    import argparse
    import json

    from riskmask.errors import UserError

    (tmp_path / "genesis.json").write_text(json.dumps(net.genesis.to_dict()))
    args = argparse.Namespace(genesis=tmp_path / "genesis.json", clients=None, bootstrap=kafka_bootstrap,
                              ledger_topic=f"absent-{os.urandom(6).hex()}", audit_topic="", json=False)
    with pytest.raises(UserError, match="does not exist"):
        audit._cmd_verify(args)


def test_kind_carrying_another_operation_detected(net: Net) -> None:
    """A pipeline-signed anchor-kind transaction carrying an erase payload, committed by a quorum: the kinds
    table check names it (signature, role and certificate are all valid)."""
    chain = build_chain(net, 2)
    erase = payloads.EraseTx(pseudonym=os.urandom(32), version=2)
    tx = Transaction.create(net.pipeline, CHAIN, payloads.OP_ANCHOR, 3, 1_700_000_003_000, payloads.encode(erase))
    blk = Block.build(CHAIN, 3, 0, 1_700_000_003_000, chain[1].block_hash, 3,
                      validator_set_hash(net.genesis.public_keys()), [tx], ())
    msg = to_ledger_block(blk.encode(), _cert(net, 3, blk.hash()).encode())
    clients = _registry(manager=net.manager, pipeline=net.pipeline)
    report = audit.verify_stream(net.genesis, [(i, m.to_bytes()) for i, m in enumerate(chain + [msg])],
                                 clients=clients)
    _failed_at(report, 3, "kinds table")
