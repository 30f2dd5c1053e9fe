"""The one table of transaction kinds (ledger.registry.kinds) and the application's use of it on apply.

Every combination of kind x payload operation x role is checked against the table, the old homes of the
kind constants derive from it, and ``RegistryService.apply_block`` gives a committed transaction that breaks
it no effect (real node store, real SQLite index, real Ed25519 signatures).
"""

from __future__ import annotations

import hashlib
import itertools
import os

import pytest

from ledger import config
from ledger.audit import verifier as audit
from ledger.node.store import Store
from ledger.registry import kinds, payloads
from ledger.registry.kinds import TX_ANCHOR, TX_ERASE, TX_REGISTER, TX_UPDATE
from ledger.registry.payloads import AnchorTx, EraseTx, SubjectTx
from ledger.registry.service import RegistryService
from ledger.registry.state import RegistryIndex
from ledger.types import block as types, crypto
from ledger.types.block import Transaction

CHAIN = "kinds-unit"


def _subject(op: int, p: bytes, version: int) -> bytes:
    return payloads.encode(SubjectTx(op=op, pseudonym=p, pkey_id=b"p" * 8, version=version, nonce=b"n" * 12,
                                     ciphertext=os.urandom(40), kek_id=b"k" * 8, key_commitment=os.urandom(32)))


P = b"s" * 32
PAYLOADS = {
    payloads.OP_REGISTER: _subject(payloads.OP_REGISTER, P, 1),
    payloads.OP_UPDATE: _subject(payloads.OP_UPDATE, P, 2),
    payloads.OP_ERASE: payloads.encode(EraseTx(pseudonym=P, version=2)),
    payloads.OP_ANCHOR: payloads.encode(AnchorTx(camera_id="cam", window_start_us=1, window_end_us=2,
                                                 record_count=3, merkle_root=b"r" * 32)),
}
EXPECTED = {  # the table, written out: kind -> (its payload op, the roles that may submit it)
    TX_REGISTER: (payloads.OP_REGISTER, {"manager"}),
    TX_UPDATE: (payloads.OP_UPDATE, {"manager"}),
    TX_ERASE: (payloads.OP_ERASE, {"manager"}),
    TX_ANCHOR: (payloads.OP_ANCHOR, {"pipeline"}),
}


def test_old_homes_derive_from_the_table() -> None:
    assert types.TX_KIND_NAMES == kinds.TX_KIND_NAMES == {1: "register", 2: "update", 3: "erase", 4: "anchor"}
    assert (types.TX_REGISTER, types.TX_UPDATE, types.TX_ERASE, types.TX_ANCHOR) == (1, 2, 3, 4)
    assert config.SUBMIT_KINDS == kinds.SUBMIT_KINDS
    assert config.SUBMIT_KINDS == {"manager": {"register", "update", "erase"}, "pipeline": {"anchor"},
                                   "auditor": set(), "validator": set()}
    assert all(audit.kind_name(k.code) == k.name for k in kinds.KINDS)
    assert [r["kind"] for r in kinds.table_rows()] == ["register", "update", "erase", "anchor"]


@pytest.mark.parametrize("kind,op,role", list(itertools.product(EXPECTED, PAYLOADS, config.ROLES)))
def test_every_kind_op_role_combination(kind: int, op: int, role: str) -> None:
    own_op, roles = EXPECTED[kind]
    reason = kinds.check(kind, PAYLOADS[op], role)
    if role not in roles:
        assert reason is not None and reason.startswith("forbidden"), reason
    elif op != own_op:
        assert reason is not None and "may carry only" in reason and not reason.startswith("forbidden"), reason
    else:
        assert reason is None, reason
    # without a role (an auditor with no client registry) the pairing alone decides
    assert (kinds.check(kind, PAYLOADS[op]) is None) == (op == own_op)


def test_payload_shapes() -> None:
    assert kinds.check(TX_ANCHOR, b"opaque bytes", "pipeline") is None  # anchors nothing, changes nothing
    for kind in (TX_REGISTER, TX_UPDATE, TX_ERASE):
        assert "needs a registry" in kinds.check(kind, b"opaque bytes", "manager")
    assert "invalid registry payload" in kinds.check(TX_ANCHOR, payloads.MAGIC + b"\x01\x04", "pipeline")
    assert "unknown transaction kind" in kinds.check(9, PAYLOADS[payloads.OP_ANCHOR], "pipeline")
    with pytest.raises(kinds.KindError) as e:
        kinds.classify(TX_ANCHOR, PAYLOADS[payloads.OP_ERASE], "pipeline")
    assert not e.value.forbidden and "an anchor transaction carries an erase payload" in str(e.value)


@pytest.fixture()
def app(tmp_path):
    store = Store(tmp_path / "ledger.db", CHAIN, hashlib.sha256(b"g").digest())
    manager, pipeline = crypto.PrivateKey.generate(), crypto.PrivateKey.generate()
    roles = {manager.public_key().to_bytes(): "manager", pipeline.public_key().to_bytes(): "pipeline"}
    svc = RegistryService(RegistryIndex(tmp_path / "registry.db"), store, role_of=roles.get)
    yield svc, manager, pipeline
    svc.index.close()
    store.close()


def _signed(key: crypto.PrivateKey, kind: int, payload: bytes, nonce: int) -> Transaction:
    return Transaction.create(key, CHAIN, kind, nonce, 1_700_000_000_000 + nonce, payload)


def test_apply_block_gives_a_mismatch_no_effect(app) -> None:
    svc, manager, pipeline = app
    p = os.urandom(32)
    reg = _signed(manager, TX_REGISTER, _subject(payloads.OP_REGISTER, p, 1), 1)
    assert svc.apply_block(1, [(reg.hash(), reg)]) == []
    assert svc.subject_json(p)["status"] == "live"
    erase = payloads.encode(EraseTx(pseudonym=p, version=2))
    attack = _signed(pipeline, TX_ANCHOR, erase, 2)            # the pipeline's anchor carrying an erase
    relabelled = _signed(manager, TX_REGISTER, erase, 3)         # a register carrying an erase
    stranger = _signed(crypto.PrivateKey.generate(), TX_ERASE, erase, 4)  # an unregistered sender
    by_pipeline = _signed(pipeline, TX_ERASE, erase, 5)          # the right pairing, the wrong role
    refused = svc.apply_block(2, [(t.hash(), t) for t in (attack, relabelled, stranger, by_pipeline)])
    assert [h for h, _ in refused] == [attack.hash(), relabelled.hash(), stranger.hash(), by_pipeline.hash()]
    assert "carries an erase payload" in refused[0][1] and refused[3][1].startswith("forbidden")
    assert svc.subject_json(p)["status"] == "live" and svc.index.applied_height == 2
    # the manager's own erase, as the table allows, still works
    ok = _signed(manager, TX_ERASE, erase, 6)
    assert svc.apply_block(3, [(ok.hash(), ok)]) == []
    assert svc.subject_json(p)["status"] == "erased"


def test_check_tx_at_admission(app) -> None:
    svc, _, _ = app
    erase = payloads.encode(EraseTx(pseudonym=os.urandom(32), version=2))
    assert svc.check_tx(TX_ANCHOR, erase, "pipeline").startswith("invalid transaction: an anchor transaction")
    assert svc.check_tx(TX_ERASE, erase, "pipeline").startswith("forbidden")
    assert "unknown subject" in svc.check_tx(TX_ERASE, erase, "manager")
    assert svc.check_tx(TX_ANCHOR, PAYLOADS[payloads.OP_ANCHOR], "pipeline") is None
