"""The auditor fails a certified chain whose block breaks the transaction kinds table, and names the block.

The chain is forged here with real Ed25519 signatures: a manager's registration at height 1, then at height
2 a pipeline-signed "anchor" transaction whose payload erases that subject, certified by a quorum of the
genesis validators (what a colluding quorum could export). Signatures, hashes, Merkle roots and the sender's
role for the kind are all valid; only the kind/payload pairing is wrong.
"""

from __future__ import annotations

import os

import pytest

from ledger.audit import verifier as audit
from ledger.config import ClientInfo, ClientRegistry, Genesis, ValidatorInfo
from ledger.ops.exporter import to_ledger_block
from ledger.registry import payloads
from ledger.types import crypto
from ledger.types.block import (PRECOMMIT, TX_ANCHOR, TX_REGISTER, Block, CommitCertificate, Transaction, Vote,
                                validator_set_hash)

CHAIN = "kinds-audit"
T0 = 1_700_000_000_000


@pytest.fixture(scope="module")
def net():
    keys = [crypto.PrivateKey.generate() for _ in range(4)]
    vals = tuple(ValidatorInfo(i, k.public_key().to_bytes(), f"127.0.0.1:{1000 + i}", f"127.0.0.1:{2000 + i}")
                 for i, k in enumerate(keys))
    manager, pipeline = crypto.PrivateKey.generate(), crypto.PrivateKey.generate()
    clients = ClientRegistry({k.public_key().to_bytes().hex(): ClientInfo(k.public_key().to_bytes(), role, role)
                              for k, role in ((manager, "manager"), (pipeline, "pipeline"))})
    return Genesis(CHAIN, T0, vals), keys, manager, pipeline, clients


def _chain(net, txs_per_block: list[list[Transaction]]) -> list:
    genesis, keys = net[0], net[1]
    prev, out = genesis.hash(), []
    vhash = validator_set_hash(genesis.public_keys())
    for h, txs in enumerate(txs_per_block, start=1):
        blk = Block.build(CHAIN, h, 0, T0 + h * 1000, prev, h % 4, vhash, txs)
        cert = CommitCertificate.from_votes([Vote.create(keys[v], CHAIN, PRECOMMIT, h, 0, blk.hash(), v)
                                             for v in (0, 1, 2)])
        out.append(to_ledger_block(blk.encode(), cert.encode()))
        prev = blk.hash()
    return out


def _verify(net, msgs, with_clients: bool = True) -> audit.AuditReport:
    return audit.verify_stream(net[0], [(i, m.to_bytes()) for i, m in enumerate(msgs)], None,
                               clients=net[4] if with_clients else None)


def _register(net, p: bytes) -> Transaction:
    sub = payloads.SubjectTx(op=payloads.OP_REGISTER, pseudonym=p, pkey_id=b"p" * 8, version=1,
                             nonce=os.urandom(12), ciphertext=os.urandom(300), kek_id=b"k" * 8,
                             key_commitment=os.urandom(32))
    return Transaction.create(net[2], CHAIN, TX_REGISTER, 1, T0 + 1, payloads.encode(sub))


def test_auditor_fails_the_block_with_a_pipeline_anchor_carrying_an_erase(net) -> None:
    p = os.urandom(32)
    attack = Transaction.create(net[3], CHAIN, TX_ANCHOR, 2, T0 + 2,
                                payloads.encode(payloads.EraseTx(pseudonym=p, version=2)))
    msgs = _chain(net, [[_register(net, p)], [attack], []])
    for with_clients in (True, False):  # the pairing needs no client registry to be checked
        report = _verify(net, msgs, with_clients)
        print(report.summary())
        assert not report.ok, report.summary()
        assert report.failure.height == 2, report.failure
        assert "kinds table" in report.failure.reason and "erase" in report.failure.reason
        assert "block 2" in report.summary()


def test_auditor_fails_a_register_kind_carrying_an_erase(net) -> None:
    p = os.urandom(32)
    relabelled = Transaction.create(net[2], CHAIN, TX_REGISTER, 3, T0 + 3,
                                    payloads.encode(payloads.EraseTx(pseudonym=p, version=2)))
    report = _verify(net, _chain(net, [[_register(net, p)], [], [relabelled]]))
    assert not report.ok and report.failure.height == 3, report.summary()
    assert "kinds table" in report.failure.reason


def test_auditor_accepts_kinds_that_follow_the_table(net) -> None:
    p = os.urandom(32)
    anchor = payloads.AnchorTx(camera_id="cam-1", window_start_us=1, window_end_us=2, record_count=3,
                               merkle_root=os.urandom(32))
    txs = [[_register(net, p)],
           [Transaction.create(net[3], CHAIN, TX_ANCHOR, 2, T0 + 2, payloads.encode(anchor)),
            Transaction.create(net[3], CHAIN, TX_ANCHOR, 3, T0 + 3, os.urandom(48))],  # an opaque anchor
           [Transaction.create(net[2], CHAIN, 3, 4, T0 + 4, payloads.encode(payloads.EraseTx(pseudonym=p,
                                                                                           version=2)))]]
    report = _verify(net, _chain(net, txs))
    assert report.ok, report.summary()
    assert report.blocks == 3 and report.anchors == 1
