"""The Tendermint consensus state machine (Buchman, Kwon, Milosevic 2018, Algorithm 1), pure.

No I/O, no clock, no threads: :meth:`ConsensusState.handle` takes one input event and returns the actions the
runtime must execute in order. The "upon" rules of the paper are re-evaluated after every event until none
fires, so any delivery order of the same messages reaches the same decisions.

Safety measures beyond the paper: every incoming signature is verified (through a pluggable, cacheable
verifier); only the first vote per (validator, round, type) and the first proposal per round count, a
conflicting second one becomes evidence; this node never signs two different messages for one
(height, round, step), also across restarts (signed messages are persisted by the runtime and restored here).
"""

from __future__ import annotations

import logging
from typing import Callable, Iterable, Optional, Sequence, Union

from ledger.consensus.events import (STEP_NEW_HEIGHT, STEP_PRECOMMIT, STEP_PREVOTE, STEP_PROPOSAL, STEP_PROPOSE,
                                     TIMEOUT_COMMIT, TIMEOUT_PRECOMMIT, TIMEOUT_PREVOTE, TIMEOUT_PROPOSE, Action,
                                     BlockBuilder, BlockContent, Broadcast, ChainTip, CommitReceived, ConsensusParams,
                                     Decide, Event, PersistSigned, ProposalReceived, RecordEvidence, RequestSync,
                                     ScheduleTimeout, TimeoutFired, TxsAvailable, VoteReceived)
from ledger.consensus.voteset import HeightVotes
from ledger.errors import ConsensusError, DecodeError, LedgerError, ValidationError
from ledger.types import codec, crypto
from ledger.types.block import (PRECOMMIT, PREVOTE, Block, CommitCertificate, Evidence, Proposal, Vote, decode_message,
                                proposer_index, quorum, validator_set_hash, verify_commit, weak_quorum)

logger = logging.getLogger(__name__)

MAX_ROUNDS_AHEAD_VOTES = 64       # votes further ahead than this many rounds are dropped (memory bound)
MAX_ROUNDS_AHEAD_PROPOSALS = 4    # proposals carry whole blocks: keep very few future ones
MAX_FUTURE_MESSAGES = 1024        # buffered messages for the next height
MAX_FUTURE_BYTES = 2 * codec.MAX_BLOCK_BYTES + 1024 * 1024  # their byte budget (two full proposals + votes)

_VOTE_STEP = {PREVOTE: STEP_PREVOTE, PRECOMMIT: STEP_PRECOMMIT}


def _no_content(height: int, round_: int) -> BlockContent:
    return BlockContent(timestamp_ms=0)


class ConsensusState:
    """One validator's (or observer's, when ``my_index`` is None) view of consensus."""

    def __init__(self, chain_id: str, public_keys: Sequence[bytes], my_index: Optional[int],
                 private_key: Optional[crypto.PrivateKey], tip: ChainTip,
                 params: Optional[ConsensusParams] = None, build_block: Optional[BlockBuilder] = None,
                 validate_block: Optional[Callable[[Block], bool]] = None,
                 verifier: Optional[crypto.Verifier] = None, signed_messages: Iterable[bytes] = ()) -> None:
        self.chain_id = chain_id
        self.public_keys = [bytes(k) for k in public_keys]
        self.n = len(self.public_keys)
        if not 1 <= self.n <= codec.MAX_VALIDATORS:
            raise ConsensusError("validator set must hold 1..64 keys")
        self.quorum = quorum(self.n)
        self.weak = weak_quorum(self.n)
        self.validators_hash = validator_set_hash(self.public_keys)
        if my_index is not None:
            if not 0 <= my_index < self.n:
                raise ConsensusError(f"validator index {my_index} outside 0..{self.n - 1}")
            if private_key is None or private_key.public_key().to_bytes() != self.public_keys[my_index]:
                raise ConsensusError("private key does not match the validator's genesis public key")
        self.me = my_index
        self.key = private_key
        self.params = params or ConsensusParams()
        self.build_block = build_block or _no_content
        self.validate_block = validate_block
        self.verifier = verifier or crypto.CachingVerifier()
        self._signed: dict[tuple[int, int, int], bytes] = {}
        self._started = False
        self._reset(tip)
        self._restore(signed_messages)

    # -- per-height state ----------------------------------------------------------------------------------
    def _reset(self, tip: ChainTip) -> None:
        self.tip = tip
        self.height = tip.height + 1
        self.round = 0
        self.step = STEP_NEW_HEIGHT
        self.locked_round = -1
        self.locked_hash: Optional[bytes] = None
        self.valid_round = -1
        self.valid_block: Optional[Block] = None
        self.proposals: dict[int, Proposal] = {}
        self.blocks: dict[bytes, Block] = {}
        self._structural: dict[bytes, Optional[str]] = {}  # block hash -> None (valid) or the reason
        self._app_reason: dict[bytes, Optional[str]] = {}
        self.votes = HeightVotes()
        self._prevote_timeout_done: set[int] = set()
        self._precommit_timeout_done: set[int] = set()
        self._l36_done: set[int] = set()
        self._commit_candidates: list[tuple[int, bytes]] = []
        self._skip_round = -1
        self._future: list[Union[Vote, Proposal]] = []
        self._future_keys: set[tuple] = set()  # one message per (kind, height, round, sender) is buffered
        self._future_bytes = 0
        self._seen_ahead = 0
        self._sync_requested = False
        self._signed = {k: v for k, v in self._signed.items() if k[0] >= self.height}

    def _restore(self, signed_messages: Iterable[bytes]) -> None:
        """Take back the messages this validator signed before a restart (never sign differently)."""
        for data in signed_messages:
            try:
                msg = decode_message(data)
            except DecodeError as exc:
                raise ConsensusError(f"persisted signed message does not decode: {exc}") from None
            who = msg.proposer if isinstance(msg, Proposal) else msg.validator
            if who != self.me:
                raise ConsensusError("persisted signed message is not this validator's")
            if msg.height < self.height:
                continue
            step = STEP_PROPOSAL if isinstance(msg, Proposal) else _VOTE_STEP[msg.type]
            key = (msg.height, msg.round, step)
            if key in self._signed and self._signed[key] != data:
                raise ConsensusError(f"two different signed messages persisted for {key}")
            self._signed[key] = data
            if msg.height != self.height:
                continue
            if isinstance(msg, Proposal):
                self.proposals.setdefault(msg.round, msg)
                self.blocks[msg.block_hash] = msg.block
            else:
                if not self.votes.get(msg.round, msg.type).has(msg):
                    self._add_vote(msg)
                if msg.type == PRECOMMIT and msg.block_hash is not None and msg.round > self.locked_round:
                    self.locked_round, self.locked_hash = msg.round, msg.block_hash
        rounds = [k[1] for k in self._signed if k[0] == self.height]
        if rounds:
            self.round = max(rounds)
        if self.locked_hash is not None and self.locked_hash in self.blocks:
            self.valid_block, self.valid_round = self.blocks[self.locked_hash], self.locked_round

    # -- public API -----------------------------------------------------------------------------------------
    def start(self) -> list[Action]:
        """Begin: resume the restored round, or wait at the new height for the commit timeout."""
        out: list[Action] = []
        if self._started:
            return out
        self._started = True
        if any(k[0] == self.height for k in self._signed):
            self._start_round(self.round, out)
            for step in (STEP_PREVOTE, STEP_PRECOMMIT):
                data = self._signed.get((self.height, self.round, step))
                if data is not None:
                    self.step = max(self.step, step)
                    out.append(Broadcast(decode_message(data), data))
        else:
            out.append(ScheduleTimeout(TIMEOUT_COMMIT, self.height, 0, self.params.timeout(TIMEOUT_COMMIT, 0)))
        self._run_rules(out)
        return out

    def handle(self, event: Event) -> list[Action]:
        """Process one input event; returns the actions to execute in order."""
        out: list[Action] = [] if self._started else self.start()
        if isinstance(event, VoteReceived):
            self._on_vote(event.vote, out)
        elif isinstance(event, ProposalReceived):
            self._on_proposal(event.proposal, out)
        elif isinstance(event, TimeoutFired):
            self._on_timeout(event, out)
        elif isinstance(event, TxsAvailable):
            if self.step == STEP_NEW_HEIGHT and self.me is not None and self._proposer(0) == self.me:
                self._start_round(0, out)
        elif isinstance(event, CommitReceived):
            self._on_commit(event.block, event.certificate, out)
        else:
            raise ConsensusError(f"unknown event {type(event).__name__}")
        self._run_rules(out)
        return out

    # -- inputs ---------------------------------------------------------------------------------------------
    def _proposer(self, round_: int) -> int:
        return proposer_index(self.height, round_, self.n)

    def _note_ahead(self, height: int, out: list[Action]) -> bool:
        """Handle a message for a later height; True when it should be buffered for the next height."""
        if height > self._seen_ahead:
            self._seen_ahead = height
        if height >= self.height + 2:
            self._request_sync(out)
            return False
        return len(self._future) < MAX_FUTURE_MESSAGES

    def _buffer_future(self, msg: Union[Vote, Proposal], key: tuple, size: int) -> None:
        """Keep ``msg`` for the next height: first message per key only, within the byte budget."""
        if key in self._future_keys or self._future_bytes + size > MAX_FUTURE_BYTES:
            return
        self._future_keys.add(key)
        self._future_bytes += size
        self._future.append(msg)

    def _request_sync(self, out: list[Action]) -> None:
        if not self._sync_requested:
            self._sync_requested = True
            out.append(RequestSync(self.height))

    def _on_vote(self, vote: Vote, out: list[Action]) -> None:
        try:
            vote.validate_basic()
        except ValidationError:
            return
        if vote.height != self.height:
            # Only validly signed messages may make this node buffer them or ask for sync.
            if vote.height > self.height and vote.validator < self.n and \
                    vote.round <= MAX_ROUNDS_AHEAD_VOTES and \
                    vote.verify(self.chain_id, self.public_keys[vote.validator], self.verifier) and \
                    self._note_ahead(vote.height, out):
                self._buffer_future(vote, ("v", vote.height, vote.round, vote.type, vote.validator), 256)
            return
        if vote.validator >= self.n or vote.round > self.round + MAX_ROUNDS_AHEAD_VOTES:
            return
        vs = self.votes.get(vote.round, vote.type)
        if vs.has(vote):
            prior = vs.by_value[vote.block_hash][vote.validator]
            if prior == vote:
                return  # duplicate delivery: no second verification
        if not vs.can_add(vote.validator) and vote.block_hash is not None and vote.block_hash not in self.blocks:
            # An equivocator may flood values; past a few per round only nil and proposed blocks (a bounded
            # set) are still counted, so its vote inside a relayed polka is never crowded out.
            return
        if not vote.verify(self.chain_id, self.public_keys[vote.validator], self.verifier):
            logger.debug("dropping vote with a bad signature from validator %s", vote.validator)
            return
        if vs.has(vote):
            return  # same value, another signature: nothing new
        prior = vs.get(vote.validator)
        if prior is not None:
            logger.warning("validator %s equivocated at height %s round %s", vote.validator, vote.height,
                           vote.round)
            out.append(RecordEvidence(Evidence.of(prior, vote)))
        self._add_vote(vote)

    def _add_vote(self, vote: Vote) -> None:
        vs = self.votes.get(vote.round, vote.type)
        count = vs.add(vote)
        if vote.type == PRECOMMIT and vote.block_hash is not None and count == self.quorum:
            self._commit_candidates.append((vote.round, vote.block_hash))
        self._note_sender(vote.round, vote.validator)

    def _note_sender(self, round_: int, validator: int) -> None:
        if self.votes.add_sender(round_, validator) >= self.weak and round_ > self._skip_round:
            self._skip_round = round_

    def _on_proposal(self, p: Proposal, out: list[Action]) -> None:
        stub = p.stub
        try:
            stub.validate_basic()
        except ValidationError:
            return
        if stub.height != self.height:
            if stub.height > self.height and stub.proposer == proposer_index(stub.height, stub.round, self.n) \
                    and stub.round <= MAX_ROUNDS_AHEAD_PROPOSALS \
                    and stub.verify(self.chain_id, self.public_keys[stub.proposer], self.verifier) \
                    and self._note_ahead(stub.height, out):
                try:
                    size = len(p.block.encode())
                except ValidationError:
                    return
                self._buffer_future(p, ("p", stub.height, stub.round), size)
            return
        if stub.round > self.round + MAX_ROUNDS_AHEAD_PROPOSALS or stub.proposer != self._proposer(stub.round):
            return
        try:
            if p.block.hash() != stub.block_hash or p.block.height != stub.height \
                    or p.block.header.round > stub.round:
                return
        except ValidationError:
            return
        prior = self.proposals.get(stub.round)
        if prior is not None and prior.stub == stub:
            return
        if not stub.verify(self.chain_id, self.public_keys[stub.proposer], self.verifier):
            logger.debug("dropping proposal with a bad signature (round %s)", stub.round)
            return
        if prior is not None:
            if (prior.block_hash, prior.pol_round) != (stub.block_hash, stub.pol_round):
                logger.warning("validator %s proposed twice at height %s round %s", stub.proposer, stub.height,
                               stub.round)
                out.append(RecordEvidence(Evidence.of(prior.stub, stub)))
            return
        self.proposals[stub.round] = p
        self.blocks.setdefault(stub.block_hash, p.block)
        self._note_sender(stub.round, stub.proposer)

    def _on_timeout(self, ev: TimeoutFired, out: list[Action]) -> None:
        if ev.height != self.height:
            return
        if ev.kind == TIMEOUT_COMMIT:
            if self.step == STEP_NEW_HEIGHT:
                self._start_round(0, out)
            return
        if ev.round != self.round:
            return
        # Lost messages are never re-sent by the transport: re-send this round's own messages on every
        # timeout, and keep the propose timeout running as a watchdog while the round lasts, so a round
        # whose quorum messages were dropped still completes.
        self._rebroadcast_round(out)
        if self._seen_ahead > self.height:
            self._sync_requested = False
            self._request_sync(out)
        if ev.kind == TIMEOUT_PROPOSE:
            if self.step == STEP_PROPOSE:
                self._vote(PREVOTE, None, out)
                self.step = STEP_PREVOTE
            out.append(ScheduleTimeout(TIMEOUT_PROPOSE, self.height, self.round,
                                       self.params.timeout(TIMEOUT_PROPOSE, self.round)))
        elif ev.kind == TIMEOUT_PREVOTE and self.step == STEP_PREVOTE:
            self._vote(PRECOMMIT, None, out)
            self.step = STEP_PRECOMMIT
        elif ev.kind == TIMEOUT_PRECOMMIT:
            self._start_round(self.round + 1, out)

    def _on_commit(self, block: Block, cert: CommitCertificate, out: list[Action]) -> None:
        if block.height != self.height:
            return
        try:
            verify_commit(cert, self.chain_id, self.public_keys, block_hash=block.hash(), height=self.height,
                          verifier=self.verifier)
        except LedgerError as exc:
            logger.warning("refusing synced block %s: %s", block.height, exc)
            return
        reason = self._check_block(block, app=False)
        if reason is not None:
            logger.error("a quorum certified an invalid block at height %s: %s", block.height, reason)
            return
        self._decide(block, cert, out)

    # -- signing --------------------------------------------------------------------------------------------
    def _emit_signed(self, key: tuple[int, int, int], data: bytes, msg: Union[Vote, Proposal],
                     out: list[Action]) -> None:
        self._signed[key] = data
        out.append(PersistSigned(key[0], key[1], key[2], data))
        out.append(Broadcast(msg, data))

    def _vote(self, vtype: int, block_hash: Optional[bytes], out: list[Action]) -> None:
        if self.me is None:
            return
        key = (self.height, self.round, _VOTE_STEP[vtype])
        data = self._signed.get(key)
        if data is not None:
            prior = Vote.decode(data)
            if prior.block_hash != block_hash:
                logger.warning("refusing to sign a second %s for height %s round %s", vtype, key[0], key[1])
            out.append(Broadcast(prior, data))  # re-send what was signed before
            return
        vote = Vote.create(self.key, self.chain_id, vtype, self.height, self.round, block_hash, self.me)
        self._emit_signed(key, vote.encode(), vote, out)
        self._add_vote(vote)

    def _propose(self, out: list[Action]) -> None:
        key = (self.height, self.round, STEP_PROPOSAL)
        data = self._signed.get(key)
        if data is not None:
            p = Proposal.decode(data)
            out.append(Broadcast(p, data))
        else:
            if self.valid_block is not None:
                block, pol = self.valid_block, self.valid_round
            else:
                block, pol = self._build_block(), -1
                self._structural[block.hash()] = self._app_reason[block.hash()] = None
            p = Proposal.create(self.key, self.chain_id, block, self.round, pol, self.me)
            self._emit_signed(key, p.encode(), p, out)
        self._relay_pol(p, out)
        self.proposals.setdefault(self.round, p)
        self.blocks.setdefault(p.block_hash, p.block)
        self._note_sender(self.round, self.me)

    def _build_block(self) -> Block:
        content = self.build_block(self.height, self.round)
        budget = min(self.params.max_block_bytes, codec.MAX_BLOCK_BYTES) - 4096
        txs = []
        for tx in content.txs[:min(self.params.max_block_txs, codec.MAX_BLOCK_TXS)]:
            size = len(tx.encode()) + 4
            if size > budget:
                break
            budget -= size
            txs.append(tx)
        evidence = []
        for ev in content.evidence[:codec.MAX_BLOCK_EVIDENCE]:
            try:
                ev.verify(self.chain_id, self.public_keys, self.verifier)
            except LedgerError:
                continue
            if ev.height <= self.height:
                evidence.append(ev)
        ts = max(content.timestamp_ms, self.tip.timestamp_ms)
        return Block.build(self.chain_id, self.height, self.round, ts, self.tip.block_hash, self.me,
                           self.validators_hash, txs, evidence)

    def _relay_pol(self, p: Proposal, out: list[Action]) -> None:
        """Send the prevotes that justify re-proposing a block (its proof of lock, round ``pol_round``).

        Peers may have seen an equivocator's other vote, or lost some prevotes; without the relayed polka
        they would prevote nil on the re-proposal and a validator locked on it could never get it decided.
        """
        if p.pol_round < 0:
            return
        pv = self.votes.prevotes(p.pol_round)
        for vote in (pv.votes_for(p.block_hash) if pv is not None else ()):
            out.append(Broadcast(vote, vote.encode()))

    def _rebroadcast_round(self, out: list[Action]) -> None:
        for step in (STEP_PROPOSAL, STEP_PREVOTE, STEP_PRECOMMIT):
            data = self._signed.get((self.height, self.round, step))
            if data is not None:
                msg = decode_message(data)
                out.append(Broadcast(msg, data))
                if isinstance(msg, Proposal):
                    self._relay_pol(msg, out)

    # -- validity -------------------------------------------------------------------------------------------
    def _check_block(self, block: Block, app: bool = True) -> Optional[str]:
        """None when ``block`` may be final at this height, else the reason (cached per block hash).

        ``app=False`` skips the runtime's callback: a block a quorum precommitted was checked by honest
        validators already, and a local view (say, of the clock) must not stall a decision.
        """
        h = block.hash()
        if h not in self._structural:
            self._structural[h] = self._structural_reason(block)
        reason = self._structural[h]
        if reason is not None or not app or self.validate_block is None:
            return reason
        if h not in self._app_reason:
            try:
                ok = bool(self.validate_block(block))
                self._app_reason[h] = None if ok else "rejected by the application"
            except Exception as exc:  # a failing callback must not crash consensus: treat as invalid
                logger.exception("block validation callback failed")
                self._app_reason[h] = f"validation callback failed: {exc}"
        return self._app_reason[h]

    def _structural_reason(self, block: Block) -> Optional[str]:
        hd = block.header
        try:
            block.validate_basic()
        except ValidationError as exc:
            return str(exc)
        if hd.chain_id != self.chain_id:
            return "wrong chain id"
        if hd.height != self.height:
            return f"wrong height {hd.height}"
        if hd.prev_hash != self.tip.block_hash:
            return "wrong parent hash"
        if hd.validators_hash != self.validators_hash:
            return "wrong validator set hash"
        if hd.proposer != self._proposer(hd.round):
            return "header proposer is not the proposer of its round"
        if hd.timestamp_ms < self.tip.timestamp_ms:
            return "timestamp before the parent's"
        for ev in block.evidence:
            try:
                ev.verify(self.chain_id, self.public_keys, self.verifier)
            except LedgerError as exc:
                return f"bad evidence: {exc}"
            if ev.height > self.height:
                return "evidence from the future"
        return None

    def _valid(self, block_hash: bytes) -> bool:
        block = self.blocks.get(block_hash)
        return block is not None and self._check_block(block) is None

    # -- the rules of Algorithm 1 ---------------------------------------------------------------------------
    def _start_round(self, round_: int, out: list[Action]) -> None:
        self.round = round_
        self.step = STEP_PROPOSE
        if self.me is not None and self._proposer(round_) == self.me:
            self._propose(out)
        out.append(ScheduleTimeout(TIMEOUT_PROPOSE, self.height, round_,
                                   self.params.timeout(TIMEOUT_PROPOSE, round_)))

    def _run_rules(self, out: list[Action]) -> None:
        while self._step_rules(out):
            pass

    def _step_rules(self, out: list[Action]) -> bool:
        """Apply the first rule that fires; True when one did (then rules are evaluated again)."""
        h, r = self.height, self.round
        # L49: a decision for any round (a precommit quorum for a block we hold and that is valid).
        for cr, bh in self._commit_candidates:
            block = self.blocks.get(bh)
            if block is None:
                self._request_sync(out)
                continue
            if self._check_block(block, app=False) is None:
                vs = self.votes.precommits(cr)
                cert = CommitCertificate.from_votes(vs.votes_for(bh))
                self._decide(block, cert, out)
                return True
        if self.step == STEP_NEW_HEIGHT:
            if 0 in self.proposals or self._skip_round >= 0:
                self._start_round(max(0, self._skip_round), out)
                return True
            return False
        # L55: f+1 senders in a later round.
        if self._skip_round > r:
            self._start_round(self._skip_round, out)
            return True
        prop = self.proposals.get(r)
        prevotes = self.votes.prevotes(r)
        if self.step == STEP_PROPOSE and prop is not None:
            bh, vr = prop.block_hash, prop.pol_round
            fire = True
            if vr == -1:  # L22
                ok = self._valid(bh) and (self.locked_round == -1 or self.locked_hash == bh)
            else:         # L28: needs the polka of round vr
                pv = self.votes.prevotes(vr)
                fire = 0 <= vr < r and pv is not None and pv.count(bh) >= self.quorum
                ok = fire and self._valid(bh) and (self.locked_round <= vr or self.locked_hash == bh)
            if fire:
                self._vote(PREVOTE, bh if ok else None, out)
                self.step = STEP_PREVOTE
                return True
        if prevotes is not None and self.step >= STEP_PREVOTE:
            # L36: a polka for the proposal of this round.
            if prop is not None and r not in self._l36_done and prevotes.count(prop.block_hash) >= self.quorum \
                    and self._valid(prop.block_hash):
                self._l36_done.add(r)
                if self.step == STEP_PREVOTE:
                    self.locked_round, self.locked_hash = r, prop.block_hash
                    self._vote(PRECOMMIT, prop.block_hash, out)
                    self.step = STEP_PRECOMMIT
                self.valid_round, self.valid_block = r, prop.block
                return True
            if self.step == STEP_PREVOTE:
                if prevotes.count(None) >= self.quorum:  # L44
                    self._vote(PRECOMMIT, None, out)
                    self.step = STEP_PRECOMMIT
                    return True
                if prevotes.total >= self.quorum and r not in self._prevote_timeout_done:  # L34
                    self._prevote_timeout_done.add(r)
                    out.append(ScheduleTimeout(TIMEOUT_PREVOTE, h, r, self.params.timeout(TIMEOUT_PREVOTE, r)))
                    return True
        precommits = self.votes.precommits(r)
        if precommits is not None and precommits.total >= self.quorum and r not in self._precommit_timeout_done:
            self._precommit_timeout_done.add(r)  # L47
            out.append(ScheduleTimeout(TIMEOUT_PRECOMMIT, h, r, self.params.timeout(TIMEOUT_PRECOMMIT, r)))
            return True
        return False

    def _decide(self, block: Block, cert: CommitCertificate, out: list[Action]) -> None:
        logger.debug("decided height %s (%s txs)", block.height, len(block.txs))
        out.append(Decide(block, cert))
        future = self._future
        self._reset(ChainTip(block.height, block.hash(), block.header.timestamp_ms))
        out.append(ScheduleTimeout(TIMEOUT_COMMIT, self.height, 0, self.params.timeout(TIMEOUT_COMMIT, 0)))
        for msg in future:
            if isinstance(msg, Vote):
                self._on_vote(msg, out)
            else:
                self._on_proposal(msg, out)
