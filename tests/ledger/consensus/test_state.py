"""The pure consensus state machine: a simulated 4-validator network and single-machine unit checks.

Network runs use virtual time and seeded randomness (tests/ledger_sim.py), so every schedule is reproducible
from its seed. Safety (no two different blocks decided at one height, no honest double-sign) is asserted on
every decision and every signed broadcast.
"""

from __future__ import annotations

import dataclasses
import logging
import random

import pytest

from ledger.consensus import (STEP_PREVOTE, STEP_PROPOSAL, TIMEOUT_COMMIT, TIMEOUT_PRECOMMIT, TIMEOUT_PREVOTE,
                              TIMEOUT_PROPOSE, BlockContent, Broadcast, ChainTip, CommitReceived, ConsensusParams,
                              ConsensusState, Decide, PersistSigned, ProposalReceived, RecordEvidence, RequestSync,
                              ScheduleTimeout, TimeoutFired, TxsAvailable, VoteReceived)
from ledger.errors import ConsensusError
from ledger.types import crypto
from ledger.types.block import (PRECOMMIT, PREVOTE, Block, CommitCertificate, Proposal, Vote, validator_set_hash,
                                verify_commit)
from tests.ledger_sim import CHAIN, FAST, GENESIS_HASH, GENESIS_TIME, Network, client_txs, validator_keys


@pytest.fixture(autouse=True)
def _quiet_consensus_logs():
    # Byzantine schedules log thousands of equivocation warnings; keep test output readable.
    logger = logging.getLogger("ledger.consensus.state")
    old = logger.level
    logger.setLevel(logging.ERROR)
    yield
    logger.setLevel(old)


def assert_chains_consistent(net: Network, min_height: int) -> None:
    """Every finalized chain is a prefix of the longest, linked by hashes, with a valid certificate each."""
    honest = [m for m in net.nodes if m.index not in net.byzantine]
    longest = max(honest, key=lambda m: len(m.chain)).chain
    assert len(longest) >= min_height
    prev = GENESIS_HASH
    for h, (block, cert) in enumerate(longest, start=1):
        assert block.height == h and block.header.prev_hash == prev
        block.validate_basic()
        verify_commit(cert, CHAIN, net.pubs, block_hash=block.hash(), height=h)
        prev = block.hash()
    for m in honest:
        assert [b.hash() for b, _ in m.chain] == [b.hash() for b, _ in longest[:len(m.chain)]]


# -- network runs --------------------------------------------------------------------------------------------
def test_normal_operation_commits_every_tx_once_over_many_heights():
    net = Network(4, seed=7, txs=300)
    net.run(until=120, stop_height=30)
    assert min(net.heights()) >= 30
    assert_chains_consistent(net, 30)
    committed = [tx.hash() for b, _ in net.nodes[0].chain for tx in b.txs]
    assert len(committed) == len(set(committed)) == 300
    # Rotating proposers: every validator built some of the blocks.
    assert {b.header.proposer for b, _ in net.nodes[0].chain} == {0, 1, 2, 3}
    assert all(not m.mempool for m in net.nodes)


@pytest.mark.parametrize("chunk", range(4))
def test_safety_and_liveness_over_200_random_schedules(chunk):
    """Reordering (random delays), duplicates, drops, slow links and a Byzantine validator, 50 seeds each."""
    for seed in range(chunk * 50, chunk * 50 + 50):
        rng = random.Random(seed)
        kind = seed % 4
        if kind == 0:
            kw = dict(max_delay=rng.choice((0.01, 0.2, 0.8)), dup=0.3)
        elif kind == 1:
            kw = dict(drop=rng.uniform(0.05, 0.3), dup=0.1)
        elif kind == 2:
            kw = dict(byzantine=frozenset({rng.randrange(4)}), dup=0.1)
        else:
            kw = dict(byzantine=frozenset({rng.randrange(4)}), drop=0.1, max_delay=0.3)
        net = Network(4, seed=seed, txs=20, **kw)
        net.run(until=300, stop_height=4)
        assert min(len(m.chain) for m in net.honest_up()) >= 4, (seed, kw, net.heights())
        assert_chains_consistent(net, 4)


def test_one_silent_validator_does_not_stop_the_others():
    for silent in range(4):
        net = Network(4, seed=100 + silent, txs=40)
        net.crash(silent)
        net.run(until=120, stop_height=8)
        up = [m for m in net.nodes if m.index != silent]
        assert all(len(m.chain) >= 8 for m in up), net.heights()
        assert len(net.nodes[silent].chain) == 0
        assert_chains_consistent(net, 8)


def test_crash_mid_run_then_restart_catches_up():
    net = Network(4, seed=11, txs=60)
    net.run(until=2.0)
    net.crash(2)
    h = max(net.heights())
    net.run(until=net.now + 10, stop_height=h + 5)
    assert min(len(m.chain) for m in net.nodes if m.index != 2) >= h + 5
    net.restart(2)
    target = max(net.heights()) + 3
    net.run(until=net.now + 60, stop_height=target)
    assert len(net.nodes[2].chain) >= target
    assert_chains_consistent(net, target)


def test_two_of_four_silent_halts_then_recovers():
    net = Network(4, seed=5, txs=30)
    net.run(until=1.0)
    net.partitioned = {1, 3}
    base = max(net.heights())
    net.run(until=net.now + 60)
    # At most the height in flight when the partition began may still finish; then nothing.
    stalled = net.heights()
    assert max(stalled) <= base + 1
    net.run(until=net.now + 60)
    assert net.heights() == stalled
    net.partitioned = set()
    healed_at = net.now
    net.run(until=net.now + 60, stop_height=max(stalled) + 3)
    assert min(net.heights()) >= max(stalled) + 3
    assert net.now - healed_at < 20  # a new block within 20 s (virtual) of quorum returning
    assert_chains_consistent(net, max(stalled) + 3)


def test_two_crashed_validators_restart_from_persisted_state():
    net = Network(4, seed=21, txs=30)
    net.run(until=1.5)
    net.crash(0)
    net.crash(1)
    frozen = net.heights()
    net.run(until=net.now + 30)
    assert max(net.heights()[2:]) <= max(frozen) + 1
    net.restart(0)
    net.restart(1)
    target = max(net.heights()) + 3
    net.run(until=net.now + 60, stop_height=target)
    assert min(net.heights()) >= target
    assert_chains_consistent(net, target)


def test_random_crashes_and_restarts_never_double_sign():
    for seed in range(30):
        rng = random.Random(seed)
        net = Network(4, seed=seed, txs=30, drop=0.05, dup=0.1)
        down = None
        for _ in range(30):
            net.run(until=net.now + rng.uniform(0.05, 0.6))
            if down is None and rng.random() < 0.5:
                down = rng.randrange(4)
                net.crash(down)
            elif down is not None and rng.random() < 0.5:
                net.restart(down)
                down = None
        if down is not None:
            net.restart(down)
        target = max(net.heights()) + 2
        net.run(until=net.now + 120, stop_height=target)
        assert min(net.heights()) >= target, (seed, net.heights())
        assert_chains_consistent(net, target)  # and the simulator checked every signed broadcast


def test_byzantine_validator_is_caught_and_honest_ones_continue():
    evidence_seen = 0
    evidence_committed = 0
    for seed in range(12):
        byz = seed % 4
        net = Network(4, seed=seed, txs=40, byzantine=frozenset({byz}))
        net.run(until=200, stop_height=10)
        assert min(len(m.chain) for m in net.honest_up()) >= 10, (seed, net.heights())
        assert_chains_consistent(net, 10)
        for m in net.honest_up():
            for ev in m.evidence:
                ev.verify(CHAIN, net.pubs)
                assert ev.validator == byz
            evidence_seen += len(m.evidence)
        for block, _ in net.nodes[(byz + 1) % 4].chain:
            for ev in block.evidence:
                ev.verify(CHAIN, net.pubs)
                assert ev.validator == byz
                evidence_committed += 1
    assert evidence_committed > 0 or evidence_seen > 0
    assert evidence_committed > 0  # evidence reaches the chain through the block builder


# -- single state machine ------------------------------------------------------------------------------------
KEYS = validator_keys(4)
PUBS = [k.public_key().to_bytes() for k in KEYS]
TIP = ChainTip(0, GENESIS_HASH, GENESIS_TIME)


def machine(index: int, signed=(), validate=None, txs=()) -> ConsensusState:
    return ConsensusState(CHAIN, PUBS, index, KEYS[index], TIP, FAST,
                          build_block=lambda h, r: BlockContent(GENESIS_TIME + 5, list(txs)),
                          validate_block=validate, signed_messages=signed)


def block_for(height=1, round_=0, proposer=None, prev=GENESIS_HASH, txs=(), ts=GENESIS_TIME + 1) -> Block:
    proposer = (height + round_) % 4 if proposer is None else proposer
    return Block.build(CHAIN, height, round_, ts, prev, proposer, validator_set_hash(PUBS), list(txs))


def proposal_for(block: Block, round_=0, pol=-1, proposer=None) -> Proposal:
    proposer = (block.height + round_) % 4 if proposer is None else proposer
    return Proposal.create(KEYS[proposer], CHAIN, block, round_, pol, proposer)


def votes_of(actions, vtype=None) -> list[Vote]:
    out = [a.message for a in actions if isinstance(a, Broadcast) and isinstance(a.message, Vote)]
    return [v for v in out if vtype is None or v.type == vtype]


def started(sm: ConsensusState) -> list:
    acts = sm.start()
    acts += sm.handle(TimeoutFired(TIMEOUT_COMMIT, 1, 0))
    return acts


def test_persist_precedes_broadcast_and_proposer_proposes():
    sm = machine(1)  # proposer of (1, 0)
    acts = started(sm)
    kinds = [type(a) for a in acts]
    i = kinds.index(PersistSigned)
    assert kinds[i + 1] is Broadcast and isinstance(acts[i + 1].message, Proposal)
    assert acts[i].step == STEP_PROPOSAL and acts[i].data == acts[i + 1].data
    prevotes = votes_of(acts, PREVOTE)
    assert len(prevotes) == 1 and prevotes[0].block_hash == acts[i + 1].message.block_hash
    for a, b in zip(acts, acts[1:]):
        if isinstance(b, Broadcast) and b.message.__class__ is Vote and b.message.validator == 1:
            assert isinstance(a, PersistSigned) and a.data == b.data and a.step == STEP_PREVOTE


def test_txs_available_starts_the_round_zero_proposer_only():
    p = machine(1)
    p.start()
    assert any(isinstance(a, Broadcast) for a in p.handle(TxsAvailable()))
    other = machine(2)
    other.start()
    assert other.handle(TxsAvailable()) == []


@pytest.mark.parametrize("bad", ["wrong_parent", "bad_root", "wrong_proposer_in_header", "old_timestamp",
                                 "app_rejects", "wrong_validators"])
def test_invalid_block_gets_a_nil_prevote(bad):
    validate = (lambda b: False) if bad == "app_rejects" else None
    sm = machine(0, validate=validate)
    started(sm)
    good = block_for()
    hd = good.header
    if bad == "wrong_parent":
        block = block_for(prev=crypto.sha256(b"elsewhere"))
    elif bad == "bad_root":
        block = Block(dataclasses.replace(hd, tx_root=b"\x07" * 32), good.txs)
    elif bad == "wrong_proposer_in_header":
        block = block_for(proposer=3)
    elif bad == "old_timestamp":
        block = block_for(ts=GENESIS_TIME - 1)
    elif bad == "wrong_validators":
        block = Block(dataclasses.replace(hd, validators_hash=b"\x01" * 32), good.txs)
    else:
        block = good
    acts = sm.handle(ProposalReceived(proposal_for(block)))
    prevotes = votes_of(acts, PREVOTE)
    assert len(prevotes) == 1 and prevotes[0].block_hash is None


def test_valid_block_gets_a_prevote_and_bad_signatures_are_ignored():
    sm = machine(0)
    started(sm)
    block = block_for()
    p = proposal_for(block)
    forged = Proposal(dataclasses.replace(p.stub, signature=b"\x00" * 64), block)
    assert votes_of(sm.handle(ProposalReceived(forged))) == []
    assert votes_of(sm.handle(ProposalReceived(proposal_for(block, proposer=2)))) == []  # not its turn
    acts = sm.handle(ProposalReceived(p))
    assert [v.block_hash for v in votes_of(acts, PREVOTE)] == [block.hash()]
    # Two forged prevotes do not make a polka; two real ones (with ours) do.
    for v in (2, 3):
        bad = Vote(PREVOTE, 1, 0, block.hash(), v, b"\x01" * 64)
        assert votes_of(sm.handle(VoteReceived(bad))) == []
    acts = []
    for v in (2, 3):
        acts += sm.handle(VoteReceived(Vote.create(KEYS[v], CHAIN, PREVOTE, 1, 0, block.hash(), v)))
    assert [v.block_hash for v in votes_of(acts, PRECOMMIT)] == [block.hash()]
    assert sm.locked_round == 0 and sm.locked_hash == block.hash()
    decided = []
    for v in (1, 2):
        decided += [a for a in sm.handle(VoteReceived(
            Vote.create(KEYS[v], CHAIN, PRECOMMIT, 1, 0, block.hash(), v))) if isinstance(a, Decide)]
    assert len(decided) == 1 and decided[0].block == block
    cert = decided[0].certificate
    verify_commit(cert, CHAIN, PUBS, block_hash=block.hash(), height=1)
    assert [s.validator for s in cert.sigs] == [0, 1, 2]
    assert sm.height == 2 and sm.tip.block_hash == block.hash()


def test_equivocating_votes_and_proposals_produce_evidence():
    sm = machine(0)
    started(sm)
    a = Vote.create(KEYS[3], CHAIN, PREVOTE, 1, 0, b"\x0a" * 32, 3)
    b = Vote.create(KEYS[3], CHAIN, PREVOTE, 1, 0, None, 3)
    sm.handle(VoteReceived(a))
    assert sm.handle(VoteReceived(a)) == []  # a duplicate is silent
    ev = [x.evidence for x in sm.handle(VoteReceived(b)) if isinstance(x, RecordEvidence)]
    assert len(ev) == 1 and ev[0].validator == 3
    ev[0].verify(CHAIN, PUBS)
    p1 = proposal_for(block_for(txs=client_txs(1)))
    p2 = proposal_for(block_for(txs=client_txs(2)))
    sm.handle(ProposalReceived(p1))
    ev = [x.evidence for x in sm.handle(ProposalReceived(p2)) if isinstance(x, RecordEvidence)]
    assert len(ev) == 1 and ev[0].validator == 1
    assert sm.proposals[0] == p1  # the first one stays


def test_double_sign_refused_after_restore():
    sm = machine(0)
    started(sm)
    block = block_for()
    acts = sm.handle(ProposalReceived(proposal_for(block)))
    persisted = [a.data for a in acts if isinstance(a, PersistSigned)]
    assert len(persisted) == 1
    # Crash and restart: the persisted prevote is restored.
    sm2 = machine(0, signed=persisted)
    acts = sm2.start()
    assert sm2.round == 0
    # Another valid proposal for (1, 0) arrives first this time: the machine must not prevote it.
    other = block_for(txs=client_txs(1))
    acts += sm2.handle(ProposalReceived(proposal_for(other)))
    assert not [a for a in acts if isinstance(a, PersistSigned)]
    sent = votes_of(acts, PREVOTE)
    assert sent and all(v.block_hash == block.hash() for v in sent)  # only the original, re-sent


def test_lock_survives_restart():
    sm = machine(0)
    started(sm)
    block = block_for()
    acts = sm.handle(ProposalReceived(proposal_for(block)))
    for v in (2, 3):
        acts += sm.handle(VoteReceived(Vote.create(KEYS[v], CHAIN, PREVOTE, 1, 0, block.hash(), v)))
    persisted = [a.data for a in acts if isinstance(a, PersistSigned)]
    assert [Vote.decode(d).type for d in persisted] == [PREVOTE, PRECOMMIT]
    sm2 = machine(0, signed=persisted)
    sm2.start()
    assert sm2.locked_round == 0 and sm2.locked_hash == block.hash()
    acts = sm2.handle(TimeoutFired(TIMEOUT_PRECOMMIT, 1, 0))  # on to round 1
    assert sm2.round == 1
    fresh = block_for(round_=1, txs=client_txs(1))
    acts += sm2.handle(ProposalReceived(proposal_for(fresh, round_=1)))
    prevotes = [v for v in votes_of(acts, PREVOTE) if v.round == 1]
    assert len(prevotes) == 1 and prevotes[0].block_hash is None  # locked on the round-0 block


def test_restore_rejects_foreign_or_conflicting_messages():
    foreign = Vote.create(KEYS[1], CHAIN, PREVOTE, 1, 0, None, 1).encode()
    with pytest.raises(ConsensusError):
        machine(0, signed=[foreign])
    a = Vote.create(KEYS[0], CHAIN, PREVOTE, 1, 0, None, 0).encode()
    b = Vote.create(KEYS[0], CHAIN, PREVOTE, 1, 0, b"\x02" * 32, 0).encode()
    with pytest.raises(ConsensusError):
        machine(0, signed=[a, b])
    with pytest.raises(ConsensusError):
        ConsensusState(CHAIN, PUBS, 0, KEYS[1], TIP)  # key of another validator


def test_timeouts_back_off_and_stale_ones_are_ignored():
    params = ConsensusParams(timeout_propose=1.0, timeout_propose_delta=0.5, timeout_max=3.0)
    assert [params.timeout(TIMEOUT_PROPOSE, r) for r in (0, 1, 2, 10)] == [1.0, 1.5, 2.0, 3.0]
    sm = machine(0)
    acts = started(sm)
    durations = []
    for r in range(4):
        acts = sm.handle(TimeoutFired(TIMEOUT_PROPOSE, 1, r))
        acts += sm.handle(TimeoutFired(TIMEOUT_PREVOTE, 1, r))
        acts += sm.handle(TimeoutFired(TIMEOUT_PRECOMMIT, 1, r))
        durations += [a.duration_s for a in acts if isinstance(a, ScheduleTimeout) and a.kind == TIMEOUT_PROPOSE
                      and a.round == r + 1]
    assert durations == sorted(durations) and durations[-1] > durations[0]
    assert sm.round == 4
    assert sm.handle(TimeoutFired(TIMEOUT_PRECOMMIT, 1, 1)) == []  # stale round
    assert sm.handle(TimeoutFired(TIMEOUT_PROPOSE, 7, 4)) == []    # other height


def test_sync_commit_is_verified_before_deciding():
    block = block_for()
    sigs = [Vote.create(KEYS[v], CHAIN, PRECOMMIT, 1, 0, block.hash(), v) for v in (1, 2, 3)]
    cert = CommitCertificate.from_votes(sigs)
    sm = machine(0)
    sm.start()
    weak = CommitCertificate.from_votes(sigs[:2])
    assert not [a for a in sm.handle(CommitReceived(block, weak)) if isinstance(a, Decide)]
    wrong = block_for(txs=client_txs(1))
    assert not [a for a in sm.handle(CommitReceived(wrong, cert)) if isinstance(a, Decide)]
    acts = sm.handle(CommitReceived(block, cert))
    assert [a.block for a in acts if isinstance(a, Decide)] == [block]
    assert sm.height == 2


def test_far_ahead_messages_request_sync():
    sm = machine(0)
    sm.start()
    v = Vote.create(KEYS[2], CHAIN, PREVOTE, 5, 0, None, 2)
    acts = sm.handle(VoteReceived(v))
    assert [a.height for a in acts if isinstance(a, RequestSync)] == [1]
    assert [a for a in sm.handle(VoteReceived(v)) if isinstance(a, RequestSync)] == []  # once


def test_next_height_messages_are_buffered_and_replayed():
    sm = machine(0)
    started(sm)
    b1 = block_for()
    b2 = block_for(height=2, prev=b1.hash(), ts=GENESIS_TIME + 2)
    early = proposal_for(b2)  # proposer of (2, 0) is validator 2
    assert sm.handle(ProposalReceived(early)) == []
    sigs = [Vote.create(KEYS[v], CHAIN, PRECOMMIT, 1, 0, b1.hash(), v) for v in (1, 2, 3)]
    acts = sm.handle(CommitReceived(b1, CommitCertificate.from_votes(sigs)))
    assert [a.block.height for a in acts if isinstance(a, Decide)] == [1]
    assert [v.block_hash for v in votes_of(acts, PREVOTE) if v.height == 2] == [b2.hash()]


def test_signing_guard_never_signs_a_second_value_for_a_step():
    """Defence in depth below the step logic: the signer itself re-sends, never re-signs, a signed step."""
    sm = machine(0)
    started(sm)
    block = block_for()
    first = sm.handle(ProposalReceived(proposal_for(block)))
    assert len([a for a in first if isinstance(a, PersistSigned)]) == 1
    for machine_ in (sm, machine(0, signed=[a.data for a in first if isinstance(a, PersistSigned)])):
        out: list = []
        machine_._vote(PREVOTE, crypto.sha256(b"another block"), out)
        assert not [a for a in out if isinstance(a, PersistSigned)]
        assert [v.block_hash for v in votes_of(out)] == [block.hash()]


def test_equivocator_flood_cannot_crowd_out_its_vote_in_a_polka():
    sm = machine(3)
    started(sm)
    block = block_for()
    acts = sm.handle(ProposalReceived(proposal_for(block)))
    assert [v.block_hash for v in votes_of(acts, PREVOTE)] == [block.hash()]
    evidence = 0
    for i in range(6):  # validator 0 floods junk prevotes first
        junk = Vote.create(KEYS[0], CHAIN, PREVOTE, 1, 0, crypto.sha256(b"junk %d" % i), 0)
        evidence += sum(isinstance(a, RecordEvidence) for a in sm.handle(VoteReceived(junk)))
    assert evidence == 2  # values 2 and 3 conflict with the first; later junk is no longer stored
    acts = sm.handle(VoteReceived(Vote.create(KEYS[0], CHAIN, PREVOTE, 1, 0, block.hash(), 0)))
    acts += sm.handle(VoteReceived(Vote.create(KEYS[2], CHAIN, PREVOTE, 1, 0, block.hash(), 2)))
    assert [v.block_hash for v in votes_of(acts, PRECOMMIT)] == [block.hash()]
