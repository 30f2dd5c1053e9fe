"""Ledger types: canonical encoding round trips, size limits, signatures, certificates, evidence, fuzzing."""

from __future__ import annotations

import dataclasses
import random
import struct
import time

import pytest

from ledger.errors import DecodeError, SignatureError, ValidationError
from ledger.types import codec, crypto, merkle
from ledger.types.block import (PRECOMMIT, PREVOTE, TX_ANCHOR, TX_ERASE, TX_REGISTER, Block, BlockHeader,
                                CommitCertificate, CommitSig, Evidence, Proposal, ProposalStub, Transaction, Vote,
                                decode_message, quorum, validator_set_hash, verify_commit)

CHAIN = "test-chain"
KEYS = [crypto.PrivateKey.from_seed(crypto.sha256(b"types validator %d" % i)) for i in range(4)]
PUBS = [k.public_key().to_bytes() for k in KEYS]
CLIENT = crypto.PrivateKey.from_seed(crypto.sha256(b"types client"))
GENESIS = crypto.sha256(b"types genesis")


def make_tx(i: int = 0, size: int = 40, kind: int = TX_REGISTER) -> Transaction:
    return Transaction.create(CLIENT, CHAIN, kind, i, 1_700_000_000_000 + i, bytes([i % 256]) * size)


def make_vote(vtype=PREVOTE, height=1, round_=0, bh=b"\x11" * 32, v=0) -> Vote:
    return Vote.create(KEYS[v], CHAIN, vtype, height, round_, bh, v)


def make_evidence() -> Evidence:
    return Evidence.of(make_vote(bh=b"\x01" * 32, v=2), make_vote(bh=None, v=2))


def make_block(ntx: int = 3, nev: int = 1, height: int = 1) -> Block:
    return Block.build(CHAIN, height, 0, 1_700_000_000_000, GENESIS, 1, validator_set_hash(PUBS),
                       [make_tx(i) for i in range(ntx)], [make_evidence()] * nev)


def make_cert(block: Block, round_: int = 0, signers=(0, 1, 2)) -> CommitCertificate:
    return CommitCertificate.from_votes(
        [Vote.create(KEYS[v], CHAIN, PRECOMMIT, block.height, round_, block.hash(), v) for v in signers])


def all_samples():
    block = make_block()
    prop = Proposal.create(KEYS[1], CHAIN, block, 0, -1, 1)
    return {
        "tx": make_tx(),
        "header": block.header,
        "block": block,
        "empty_block": make_block(0, 0),
        "prevote": make_vote(),
        "nil_precommit": make_vote(PRECOMMIT, bh=None),
        "stub": prop.stub,
        "proposal": prop,
        "cert": make_cert(block),
        "evidence": make_evidence(),
    }


@pytest.mark.parametrize("name", list(all_samples()))
def test_round_trip_and_canonical(name):
    obj = all_samples()[name]
    data = obj.encode()
    back = type(obj).decode(data)
    assert back == obj
    assert back.encode() == data
    with pytest.raises(DecodeError):
        type(obj).decode(data + b"\x00")
    for cut in range(len(data)) if len(data) < 2000 else range(0, len(data), 7):
        with pytest.raises(DecodeError):
            type(obj).decode(data[:cut])


def test_every_sample_validates_and_signatures_verify():
    s = all_samples()
    for obj in s.values():
        obj.validate_basic()
    assert s["tx"].verify_signature(CHAIN)
    assert not s["tx"].verify_signature("other-chain")
    assert s["prevote"].verify(CHAIN, PUBS[0])
    assert not s["prevote"].verify(CHAIN, PUBS[1])
    assert s["stub"].verify(CHAIN, PUBS[1])
    assert decode_message(s["proposal"].encode()) == s["proposal"]
    assert decode_message(s["prevote"].encode()) == s["prevote"]
    with pytest.raises(DecodeError):
        decode_message(s["tx"].encode())


def test_domain_separation():
    v = make_vote(PREVOTE)
    as_precommit = Vote(PRECOMMIT, v.height, v.round, v.block_hash, v.validator, v.signature)
    assert not as_precommit.verify(CHAIN, PUBS[0])
    msg = b"same bytes"
    sig = KEYS[0].sign(crypto.DOMAIN_TX, msg, CHAIN)
    pk = KEYS[0].public_key()
    assert pk.verify(crypto.DOMAIN_TX, msg, sig, CHAIN)
    for dom in (crypto.DOMAIN_PROPOSAL, crypto.DOMAIN_PREVOTE, crypto.DOMAIN_PRECOMMIT, crypto.DOMAIN_API_REQUEST,
                crypto.DOMAIN_P2P_HANDSHAKE, crypto.DOMAIN_CHECKPOINT):
        assert not pk.verify(dom, msg, sig, CHAIN)
    assert not pk.verify(crypto.DOMAIN_TX, msg, sig, "")
    assert not pk.verify(crypto.DOMAIN_TX, msg, sig[:-1] + bytes((sig[-1] ^ 1,)), CHAIN)
    assert not pk.verify(crypto.DOMAIN_TX, msg, sig[:63], CHAIN)
    # Chain id and domain are length-prefixed: shifting bytes between them changes the signed bytes.
    assert crypto.signing_bytes(b"ab", b"c", "d") != crypto.signing_bytes(b"a", b"c", "bd")


def test_keys_serialise_and_reject_garbage():
    k = crypto.PrivateKey.generate()
    k2 = crypto.PrivateKey.from_seed(k.seed())
    assert k2.public_key() == k.public_key()
    assert crypto.PublicKey.from_bytes(k.public_key().to_bytes()) == k.public_key()
    assert "seed" not in repr(k) and k.seed().hex() not in repr(k)
    with pytest.raises(SignatureError):
        crypto.PublicKey.from_bytes(b"\x01" * 31)
    with pytest.raises(SignatureError):
        crypto.PrivateKey.from_seed(b"\x01" * 31)
    assert not crypto.verify_raw(b"\x00" * 5, b"m", b"\x00" * 64)


def test_caching_verifier_caches_and_distinguishes():
    cv = crypto.CachingVerifier(max_entries=8)
    v = make_vote()
    assert v.verify(CHAIN, PUBS[0], cv) and v.verify(CHAIN, PUBS[0], cv)
    assert cv.hits == 1 and cv.misses == 1
    forged = Vote(v.type, v.height, v.round, v.block_hash, v.validator, b"\x00" * 64)
    assert not forged.verify(CHAIN, PUBS[0], cv) and not forged.verify(CHAIN, PUBS[0], cv)
    for i in range(20):
        make_vote(round_=i).verify(CHAIN, PUBS[0], cv)
    assert len(cv._cache) <= 8


def test_tx_hash_and_payload_limits():
    tx = make_tx()
    assert tx.hash() == crypto.sha256(tx.encode())
    big = make_tx(size=codec.MAX_PAYLOAD_BYTES)
    assert len(big.encode()) <= codec.MAX_TX_BYTES
    assert Transaction.decode(big.encode()) == big
    with pytest.raises(ValidationError):
        make_tx(size=codec.MAX_PAYLOAD_BYTES + 1)
    with pytest.raises(ValidationError):
        make_tx(size=0)
    over = bytearray(big.encode())
    struct.pack_into(">I", over, 1 + 1 + 32 + 8 + 8, codec.MAX_PAYLOAD_BYTES + 1)
    with pytest.raises(DecodeError):
        Transaction.decode(bytes(over) + b"\0")
    with pytest.raises(DecodeError):
        Transaction.decode(b"\x10" * (codec.MAX_TX_BYTES + 1))
    with pytest.raises(ValidationError):
        Transaction(9, tx.sender, 0, 0, b"x", tx.signature).validate_basic()
    with pytest.raises(DecodeError):
        Transaction.decode(tx.encode()[:1] + b"\x09" + tx.encode()[2:])


def test_block_limits():
    with pytest.raises(DecodeError):
        Block.decode(b"\x12" + b"\0" * codec.MAX_BLOCK_BYTES)
    block = make_block(0, 0)
    head = block.encode()[:-6]  # tag + header
    with pytest.raises(DecodeError):
        Block.decode(head + struct.pack(">I", codec.MAX_BLOCK_TXS + 1) + b"\0\0")
    with pytest.raises(DecodeError):
        Block.decode(head + struct.pack(">I", 0) + struct.pack(">H", codec.MAX_BLOCK_EVIDENCE + 1))
    with pytest.raises(ValidationError):
        Block(block.header, tuple([make_tx()] * (codec.MAX_BLOCK_TXS + 1))).encode()
    # A block just over 8 MiB by payload volume cannot be encoded.
    fat = make_tx(size=codec.MAX_PAYLOAD_BYTES)
    n = codec.MAX_BLOCK_BYTES // len(fat.encode()) + 1
    with pytest.raises(ValidationError):
        Block.build(CHAIN, 1, 0, 0, GENESIS, 1, validator_set_hash(PUBS), [fat] * n).encode()
    under = Block.build(CHAIN, 1, 0, 0, GENESIS, 1, validator_set_hash(PUBS), [fat] * (n - 2))
    assert Block.decode(under.encode()) == under


def test_block_validate_basic_catches_bad_contents():
    block = make_block()
    hd = block.header
    wrong_root = Block(dataclasses.replace(hd, tx_root=b"\x00" * 32), block.txs, block.evidence)
    wrong_count = Block(dataclasses.replace(hd, num_txs=2), block.txs, block.evidence)
    wrong_ev = Block(dataclasses.replace(hd, evidence_hash=merkle.EMPTY_ROOT), block.txs,
                     block.evidence)
    for b in (wrong_root, wrong_count, wrong_ev):
        assert Block.decode(b.encode()) == b  # well-formed bytes ...
        with pytest.raises(ValidationError):  # ... with wrong contents
            b.validate_basic()
    assert block.header.tx_root == merkle.merkle_root([t.encode() for t in block.txs])
    assert block.hash() == crypto.sha256(block.header.encode())


def test_non_canonical_forms_are_refused():
    v = make_vote().encode()
    bad_flag = v[:14] + b"\x02" + v[15:]
    with pytest.raises(DecodeError):
        Vote.decode(bad_flag)
    with pytest.raises(DecodeError):
        Vote.decode(v[:1] + b"\x03" + v[2:])  # unknown vote type
    cert = make_cert(make_block()).encode()
    # Swap the first two signature entries: validators out of order.
    head, e1, e2, rest = cert[:43], cert[43:113], cert[113:183], cert[183:]
    with pytest.raises(DecodeError):
        CommitCertificate.decode(head + e2 + e1 + rest)
    ev = make_evidence()
    swapped = b"".join((b"\x16", bytes((ev.kind,)), codec.blob(ev.b), codec.blob(ev.a)))
    with pytest.raises(DecodeError):
        Evidence.decode(swapped)
    same = b"".join((b"\x16", bytes((ev.kind,)), codec.blob(ev.a), codec.blob(ev.a)))
    with pytest.raises(DecodeError):
        Evidence.decode(same)
    hd = make_block().header.encode()
    bad_utf8 = hd[:1] + b"\x02\xc3\x28" + hd[2 + len(CHAIN):]
    with pytest.raises(DecodeError):
        BlockHeader.decode(bad_utf8)
    stub = all_samples()["stub"]
    assert stub.encode()[13:17] == b"\0\0\0\0"  # pol_round -1 is stored as 0
    late = dataclasses.replace(stub, round=5, pol_round=4)
    assert late.encode()[13:17] == struct.pack(">I", 5) and ProposalStub.decode(late.encode()) == late
    with pytest.raises(ValidationError):  # decodes, but a pol_round not below the round is invalid
        ProposalStub.decode(stub.encode()[:13] + struct.pack(">I", 1) + stub.encode()[17:]).validate_basic()


def test_commit_certificate_verification():
    block = make_block()
    cert = make_cert(block)
    verify_commit(cert, CHAIN, PUBS, block_hash=block.hash(), height=1)
    verify_commit(make_cert(block, signers=(0, 1, 2, 3)), CHAIN, PUBS)
    with pytest.raises(ValidationError):  # below quorum
        verify_commit(make_cert(block, signers=(0, 1)), CHAIN, PUBS)
    with pytest.raises(ValidationError):
        verify_commit(cert, CHAIN, PUBS, block_hash=b"\x00" * 32)
    with pytest.raises(ValidationError):
        verify_commit(cert, CHAIN, PUBS, height=2)
    forged = CommitCertificate(cert.height, cert.block_hash, cert.sigs[:2] + (
        CommitSig(3, 0, cert.sigs[2].signature),))
    with pytest.raises(SignatureError):
        verify_commit(forged, CHAIN, PUBS)
    with pytest.raises(SignatureError):
        verify_commit(cert, "other-chain", PUBS)
    mixed = CommitCertificate(cert.height, cert.block_hash, cert.sigs[:2] + (
        CommitSig(2, 1, Vote.create(KEYS[2], CHAIN, PRECOMMIT, 1, 1, block.hash(), 2).signature),))
    with pytest.raises(ValidationError):
        verify_commit(mixed, CHAIN, PUBS)
    prevote_sigs = CommitCertificate(1, block.hash(), tuple(
        CommitSig(v, 0, Vote.create(KEYS[v], CHAIN, PREVOTE, 1, 0, block.hash(), v).signature) for v in range(3)))
    with pytest.raises(SignatureError):  # prevotes are no commit
        verify_commit(prevote_sigs, CHAIN, PUBS)
    assert quorum(4) == 3 and quorum(7) == 5 and quorum(1) == 1


def test_evidence_rules():
    ev = make_evidence()
    ev.verify(CHAIN, PUBS)
    assert ev.validator == 2 and ev.height == 1
    with pytest.raises(ValidationError):  # same value twice is no equivocation
        Evidence.of(make_vote(v=1), Vote(PREVOTE, 1, 0, b"\x11" * 32, 1, b"\x05" * 64))
    with pytest.raises(ValidationError):  # different validators
        Evidence.of(make_vote(v=1), make_vote(v=2, bh=None))
    with pytest.raises(ValidationError):  # different rounds
        Evidence.of(make_vote(v=1), make_vote(v=1, round_=1, bh=None))
    forged = Evidence.of(make_vote(v=1), Vote(PREVOTE, 1, 0, None, 1, b"\x05" * 64))
    with pytest.raises(SignatureError):
        forged.verify(CHAIN, PUBS)
    b1, b2 = make_block(1, 0), make_block(2, 0)
    p1 = ProposalStub.create(KEYS[1], CHAIN, 1, 0, -1, b1.hash(), 1)
    p2 = ProposalStub.create(KEYS[1], CHAIN, 1, 0, -1, b2.hash(), 1)
    pev = Evidence.of(p1, p2)
    pev.verify(CHAIN, PUBS)
    assert Evidence.decode(pev.encode()) == pev and pev.validator == 1


def test_proposal_checks_block_binding():
    block = make_block()
    p = Proposal.create(KEYS[1], CHAIN, block, 0, -1, 1)
    p.validate_basic()
    other = Proposal(p.stub, make_block(2))
    with pytest.raises(ValidationError):
        other.validate_basic()
    with pytest.raises(ValidationError):
        ProposalStub(1, 0, 0, block.hash(), 1, b"\0" * 64).validate_basic()  # pol_round must be < round


# -- decoder fuzzing ---------------------------------------------------------------------------------------
def _seeds() -> list[bytes]:
    s = all_samples()
    return [s["tx"].encode(), make_tx(3, 200, TX_ERASE).encode(), make_tx(4, 1, TX_ANCHOR).encode(),
            s["block"].encode(), s["empty_block"].encode(), make_block(5, 2, height=7).encode(),
            s["prevote"].encode(), s["cert"].encode(), s["evidence"].encode(), s["proposal"].encode()]


def mutate(rng: random.Random, seeds: list[bytes]) -> bytes:
    """A random or mutated byte string (flips, splices, length-field rewrites, truncation, extension)."""
    op = rng.random()
    if op < 0.08:
        return bytes(rng.getrandbits(8) for _ in range(rng.randrange(0, 300)))
    data = bytearray(rng.choice(seeds))
    for _ in range(rng.randint(1, 4)):
        kind = rng.randrange(7)
        if not data:
            break
        pos = rng.randrange(len(data))
        if kind == 0:
            data[pos] ^= 1 << rng.randrange(8)
        elif kind == 1:
            data[pos] = rng.choice((0, 1, 2, 0x7F, 0x80, 0xFF))
        elif kind == 2:
            del data[pos:pos + rng.randint(1, 8)]
        elif kind == 3:
            data[pos:pos] = bytes(rng.getrandbits(8) for _ in range(rng.randint(1, 8)))
        elif kind == 4 and pos + 4 <= len(data):
            struct.pack_into(">I", data, pos, rng.choice((0, 1, 0xFFFFFFFF, 0x7FFFFFFF, len(data), pos)))
        elif kind == 5:
            other = rng.choice(seeds)
            cut = rng.randrange(len(other) + 1)
            data = data[:pos] + other[cut:]
        else:
            data = data[:pos] if rng.random() < 0.5 else data + bytes(rng.randint(1, 4))
    return bytes(data)


def check_decoder(decode, data: bytes) -> bool:
    """Decode ``data``: DecodeError is fine; acceptance must be canonical. True when accepted."""
    try:
        obj = decode(data)
    except DecodeError:
        return False
    assert obj.encode() == data, f"non-canonical accept by {decode.__qualname__}: {data.hex()[:200]}"
    return True


def run_fuzz(seed: int, count: int) -> dict:
    rng = random.Random(seed)
    seeds = _seeds()
    decoders = (Transaction.decode, Block.decode)
    others = (decode_message, CommitCertificate.decode, Evidence.decode, BlockHeader.decode, Vote.decode)
    accepted = 0
    for i in range(count):
        data = mutate(rng, seeds)
        for dec in decoders:
            accepted += check_decoder(dec, data)
        if i % 4 == 0:
            for dec in others:
                accepted += check_decoder(dec, data)
    return {"inputs": count, "accepted": accepted}


def test_decoder_fuzz_100k():
    t0 = time.monotonic()
    stats = run_fuzz(seed=20261128, count=100_000)
    assert stats["accepted"] > 100  # mutations that stay valid (payload bytes etc.) are accepted canonically
    assert time.monotonic() - t0 < 300


def test_random_field_values_round_trip():
    """Seeded random field values (extremes included) for every type: decode(encode(x)) == x and back."""
    rng = random.Random(99)

    def pick(bits: int) -> int:
        return rng.choice((0, 1, 2 ** bits - 1, rng.getrandbits(bits)))

    for _ in range(300):
        tx = Transaction(rng.choice((TX_REGISTER, TX_ERASE, TX_ANCHOR)), rng.randbytes(32), pick(64), pick(64),
                         rng.randbytes(rng.randint(1, 3000)), rng.randbytes(64))
        hd = BlockHeader(rng.choice(("c", "chain-ü", "x" * 64)), max(1, pick(64)), pick(32), pick(64),
                         rng.randbytes(32), rng.randbytes(32), pick(16), pick(16), rng.randbytes(32),
                         rng.randbytes(32))
        vote = Vote(rng.choice((PREVOTE, PRECOMMIT)), pick(64), pick(32), rng.choice((None, rng.randbytes(32))),
                    pick(16), rng.randbytes(64))
        round_ = pick(32)
        stub = ProposalStub(pick(64), round_, rng.choice((-1, round_ - 1 if round_ else -1)), rng.randbytes(32),
                            pick(16), rng.randbytes(64))
        cert = CommitCertificate(pick(64), rng.randbytes(32), tuple(
            CommitSig(v, pick(32), rng.randbytes(64)) for v in sorted(rng.sample(range(64), rng.randint(1, 5)))))
        block = Block(hd, (tx,) * rng.randint(0, 3))
        for obj in (tx, hd, vote, stub, cert, block, Proposal(stub, block)):
            data = obj.encode()
            back = type(obj).decode(data)
            assert back == obj and back.encode() == data


def test_sodium_backend_agrees_with_openssl() -> None:
    from ledger.node.fastverify import make_verifier, sodium_verify

    key = crypto.PrivateKey.generate()
    pub = key.public_key().to_bytes()
    sig = key.sign_signed(b"block")
    fast, plain = make_verifier(max_entries=8), crypto.CachingVerifier(max_entries=8)
    for args in ((pub, b"block", sig), (pub, b"other", sig), (pub[:-1] + bytes([pub[-1] ^ 1]), b"block", sig),
                 (pub[:5], b"block", sig), (pub, b"block", sig[:10])):
        assert fast(*args) == plain(*args) == sodium_verify(*args) == crypto.verify_raw(*args)
    assert fast(pub, b"block", sig) and fast.hits == 1
