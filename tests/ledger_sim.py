"""Deterministic in-memory network of consensus state machines (virtual time, seeded randomness).

Used by tests/ledger/consensus/test_state.py and bench/fuzz_decoders.py-style long runs. It plays the runtime: executes
actions in order, delivers broadcasts with random delays (reordering), drops and duplicates, fires timeouts,
serves sync requests from an honest node's finalized log, and can partition nodes, crash/restart them from
their persisted signed messages, or make one validator Byzantine.
"""

from __future__ import annotations

import dataclasses
import heapq
import random
from dataclasses import dataclass, field
from typing import Optional

from ledger.consensus import (BlockContent, Broadcast, ChainTip, CommitReceived, ConsensusParams, ConsensusState,
                              Decide, PersistSigned, ProposalReceived, RecordEvidence, RequestSync, ScheduleTimeout,
                              TimeoutFired, TxsAvailable, VoteReceived)
from ledger.errors import DecodeError
from ledger.types import crypto
from ledger.types.block import (PRECOMMIT, PREVOTE, TX_ANCHOR, Block, CommitCertificate, Proposal, Transaction, Vote,
                                decode_message)

CHAIN = "sim-chain"
GENESIS_HASH = crypto.sha256(b"sim genesis")
GENESIS_TIME = 1_700_000_000_000
FAST = ConsensusParams(timeout_propose=0.3, timeout_propose_delta=0.1, timeout_prevote=0.2,
                       timeout_prevote_delta=0.1, timeout_precommit=0.2, timeout_precommit_delta=0.1,
                       timeout_commit=0.05, timeout_max=2.0)


def validator_keys(n: int) -> list[crypto.PrivateKey]:
    return [crypto.PrivateKey.from_seed(crypto.sha256(b"sim validator %d" % i)) for i in range(n)]


def client_txs(count: int, start_nonce: int = 0) -> list[Transaction]:
    key = crypto.PrivateKey.from_seed(crypto.sha256(b"sim client"))
    return [Transaction.create(key, CHAIN, TX_ANCHOR, start_nonce + i, GENESIS_TIME + i, b"anchor %d" % i)
            for i in range(count)]


class SafetyViolation(AssertionError):
    pass


@dataclass
class NodeRuntime:
    """What a node runtime keeps: durable signed messages, finalized chain, mempool, evidence."""

    index: int
    persisted: list[bytes] = field(default_factory=list)
    chain: list[tuple[Block, CommitCertificate]] = field(default_factory=list)
    mempool: dict[bytes, Transaction] = field(default_factory=dict)
    evidence: list = field(default_factory=list)
    sm: Optional[ConsensusState] = None
    up: bool = True          # False: crashed (processes nothing)
    epoch: int = 0           # bumps on restart so old timeouts are ignored

    @property
    def tip(self) -> ChainTip:
        if not self.chain:
            return ChainTip(0, GENESIS_HASH, GENESIS_TIME)
        b = self.chain[-1][0]
        return ChainTip(b.height, b.hash(), b.header.timestamp_ms)


class Network:
    """n validators; ``byzantine`` indices get a misbehaving outbound filter."""

    def __init__(self, n: int = 4, seed: int = 0, params: ConsensusParams = FAST, drop: float = 0.0,
                 dup: float = 0.0, max_delay: float = 0.05, byzantine: frozenset = frozenset(),
                 txs: int = 0, verifier: Optional[crypto.Verifier] = None) -> None:
        self.n = n
        self.rng = random.Random(seed)
        self.params = params
        self.drop, self.dup, self.max_delay = drop, dup, max_delay
        self.byzantine = set(byzantine)
        self.keys = validator_keys(n)
        self.pubs = [k.public_key().to_bytes() for k in self.keys]
        self.verifier = verifier or crypto.CachingVerifier()
        self.now = 0.0
        self._q: list = []
        self._seq = 0
        self.partitioned: set[int] = set()
        self.nodes = [NodeRuntime(i) for i in range(n)]
        self.decided: dict[int, bytes] = {}      # height -> block hash (first honest decision)
        self.decide_count = 0
        self.undecodable = 0
        self.relayed = 0
        self.signed_by: dict[tuple[int, int, int, int], bytes] = {}
        for tx in client_txs(txs):
            for node in self.nodes:
                node.mempool[tx.hash()] = tx
        for node in self.nodes:
            self._boot(node)

    # -- node lifecycle -------------------------------------------------------------------------------------
    def _boot(self, node: NodeRuntime) -> None:
        i = node.index

        def build(height: int, round_: int, node=node) -> BlockContent:
            txs = list(node.mempool.values())[:500]
            return BlockContent(GENESIS_TIME + int(self.now * 1000), txs, list(node.evidence))

        def validate(block: Block) -> bool:
            return all(tx.verify_signature(CHAIN, self.verifier) for tx in block.txs)

        node.sm = ConsensusState(CHAIN, self.pubs, i, self.keys[i], node.tip, self.params, build, validate,
                                 self.verifier, signed_messages=list(node.persisted))
        self._run_actions(node, node.sm.start())

    def crash(self, i: int) -> None:
        self.nodes[i].up = False
        self.nodes[i].epoch += 1

    def restart(self, i: int) -> None:
        node = self.nodes[i]
        node.up = True
        node.epoch += 1
        self._boot(node)

    # -- event loop -----------------------------------------------------------------------------------------
    def _push(self, t: float, target: int, item) -> None:
        self._seq += 1
        heapq.heappush(self._q, (t, self._seq, target, item))

    def _send(self, src: int, data: bytes) -> None:
        for j in range(self.n):
            if j == src:
                continue
            payload = self._mutate(src, j, data) if src in self.byzantine else [data]
            for d in payload:
                if src in self.partitioned or j in self.partitioned or self.rng.random() < self.drop:
                    continue
                copies = 2 if self.rng.random() < self.dup else 1
                for _ in range(copies):
                    self._push(self.now + self.rng.uniform(0.001, self.max_delay), j, ("msg", d))

    def _run_actions(self, node: NodeRuntime, actions) -> None:
        persisted_keys = set()
        for a in actions:
            if isinstance(a, PersistSigned):
                node.persisted.append(a.data)
                persisted_keys.add(a.data)
            elif isinstance(a, Broadcast):
                msg = decode_message(a.data)
                who = msg.proposer if isinstance(msg, Proposal) else msg.validator
                # Ordering contract: a message this node signed must have been persisted first
                # (others' votes are relayed as proof of lock).
                assert who != node.index or a.data in node.persisted, "broadcast of an unpersisted message"
                if who != node.index:
                    self.relayed += 1
                elif node.index not in self.byzantine:
                    self._check_no_double_sign(node.index, msg, a.data)
                self._send(node.index, a.data)
            elif isinstance(a, ScheduleTimeout):
                self._push(self.now + a.duration_s, node.index,
                           ("timeout", node.epoch, TimeoutFired(a.kind, a.height, a.round)))
            elif isinstance(a, Decide):
                self._on_decide(node, a)
            elif isinstance(a, RecordEvidence):
                node.evidence.append(a.evidence)
            elif isinstance(a, RequestSync):
                self._push(self.now + 0.01, node.index, ("sync", a.height))

    def _check_no_double_sign(self, who: int, msg, data: bytes) -> None:
        step = 1 if isinstance(msg, Proposal) else (2 if msg.type == PREVOTE else 3)
        key = (who, msg.height, msg.round, step)
        prior = self.signed_by.setdefault(key, data)
        if prior != data:
            raise SafetyViolation(f"validator {who} signed two different messages for {key[1:]}")

    def _on_decide(self, node: NodeRuntime, a: Decide) -> None:
        h = a.block.height
        assert h == len(node.chain) + 1, "decided out of order"
        assert a.certificate.block_hash == a.block.hash() and a.certificate.height == h
        bh = a.block.hash()
        if node.index not in self.byzantine:
            prior = self.decided.setdefault(h, bh)
            if prior != bh:
                raise SafetyViolation(f"height {h}: two different blocks decided")
        node.chain.append((a.block, a.certificate))
        self.decide_count += 1
        for tx in a.block.txs:
            node.mempool.pop(tx.hash(), None)
        committed = {e.encode() for e in a.block.evidence}
        node.evidence = [e for e in node.evidence if e.encode() not in committed]
        if node.mempool:
            self._push(self.now, node.index, ("txs",))

    def _deliver(self, node: NodeRuntime, item) -> None:
        kind = item[0]
        if kind == "msg":
            try:
                msg = decode_message(item[1])
            except DecodeError:
                self.undecodable += 1
                return
            ev = VoteReceived(msg) if isinstance(msg, Vote) else ProposalReceived(msg)
        elif kind == "timeout":
            if item[1] != node.epoch:
                return
            ev = item[2]
        elif kind == "txs":
            ev = TxsAvailable()
        elif kind == "sync":
            self._serve_sync(node, item[1])
            return
        else:
            raise AssertionError(kind)
        self._run_actions(node, node.sm.handle(ev))

    def _serve_sync(self, node: NodeRuntime, height: int) -> None:
        if node.index in self.partitioned:
            return
        donors = [m for m in self.nodes if m.index != node.index and m.index not in self.partitioned
                  and m.index not in self.byzantine and len(m.chain) >= height]
        if not donors:
            return
        donor = max(donors, key=lambda m: len(m.chain))
        for block, cert in donor.chain[height - 1:]:
            if node.sm.height != block.height:
                break
            self._run_actions(node, node.sm.handle(CommitReceived(block, cert)))

    def run(self, until: float, stop_height: Optional[int] = None) -> None:
        """Process events until virtual time ``until`` (or every honest up node reached ``stop_height``)."""
        while self._q:
            t, _, target, item = self._q[0]
            if t > until:
                break
            heapq.heappop(self._q)
            self.now = t
            node = self.nodes[target]
            if node.up:
                self._deliver(node, item)
            if stop_height is not None and all(len(m.chain) >= stop_height for m in self.honest_up()):
                return
        self.now = max(self.now, until)

    def honest_up(self) -> list[NodeRuntime]:
        return [m for m in self.nodes if m.up and m.index not in self.byzantine]

    def heights(self) -> list[int]:
        return [len(m.chain) for m in self.nodes]

    # -- Byzantine behaviour --------------------------------------------------------------------------------
    def _mutate(self, src: int, dst: int, data: bytes) -> list[bytes]:
        """What a Byzantine validator sends to ``dst`` instead of its honest message."""
        key, rng = self.keys[src], self.rng
        msg = decode_message(data)
        out = []
        if rng.random() < 0.2:  # bad signature
            junk = bytes(rng.getrandbits(8) for _ in range(64))
            if isinstance(msg, Vote):
                out.append(data[:-64] + junk)
            else:
                out.append(Proposal(dataclasses.replace(msg.stub, signature=junk), msg.block).encode())
        if rng.random() < 0.05:
            out.append(data[: rng.randrange(len(data))])  # truncated garbage: the runtime drops it
        if isinstance(msg, Vote):
            choice = rng.random()
            if choice < 0.4:
                bh = crypto.sha256(b"junk %d" % rng.getrandbits(32)) if rng.random() < 0.5 else None
                out.append(Vote.create(key, CHAIN, msg.type, msg.height, msg.round, bh, src).encode())
            elif choice < 0.6:
                out.append(data)
                other = None if msg.block_hash is not None else crypto.sha256(b"other")
                out.append(Vote.create(key, CHAIN, msg.type, msg.height, msg.round, other, src).encode())
            else:
                out.append(data)
            if rng.random() < 0.1:  # a vote for a later round to drag round skipping
                out.append(Vote.create(key, CHAIN, PREVOTE if rng.random() < 0.5 else PRECOMMIT, msg.height,
                                       msg.round + rng.randint(1, 3), None, src).encode())
        else:
            hd = msg.block.header
            choice = rng.random()
            if choice < 0.3:
                block = Block.build(CHAIN, hd.height, hd.round, hd.timestamp_ms + dst + 1, hd.prev_hash,
                                    hd.proposer, hd.validators_hash, msg.block.txs[: dst], msg.block.evidence)
            elif choice < 0.5:
                block = Block.build(CHAIN, hd.height, hd.round, hd.timestamp_ms,
                                    crypto.sha256(b"wrong parent %d" % dst), hd.proposer, hd.validators_hash,
                                    msg.block.txs)
            elif choice < 0.6:
                good = msg.block
                block = Block(dataclasses.replace(hd, tx_root=crypto.sha256(b"bad root")),
                              good.txs, good.evidence)
            else:
                block = None
            if block is None:
                out.append(data)
            else:
                out.append(Proposal.create(key, CHAIN, block, msg.round, msg.pol_round, src).encode())
        return out
