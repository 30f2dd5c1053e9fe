"""Inputs (events) and outputs (actions) of the consensus state machine, and its parameters.

The runtime feeds events to :meth:`ConsensusState.handle` and executes the returned actions strictly in
order: a :class:`PersistSigned` must be durable before any later action runs (no double-sign after a crash).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Sequence, Union

from ledger.types.block import Block, CommitCertificate, Evidence, Proposal, Transaction, Vote
from ledger.types.codec import MAX_BLOCK_BYTES, MAX_BLOCK_TXS

# Steps of a round; the last three are also the ``step`` of a persisted signed message (height, round, step).
STEP_NEW_HEIGHT = 0
STEP_PROPOSE = 1
STEP_PREVOTE = 2
STEP_PRECOMMIT = 3
STEP_PROPOSAL = STEP_PROPOSE
STEP_NAMES = {STEP_NEW_HEIGHT: "new-height", STEP_PROPOSE: "propose", STEP_PREVOTE: "prevote",
              STEP_PRECOMMIT: "precommit"}

# Timeout kinds.
TIMEOUT_COMMIT = "commit"
TIMEOUT_PROPOSE = "propose"
TIMEOUT_PREVOTE = "prevote"
TIMEOUT_PRECOMMIT = "precommit"


# Same shape as ledger/audit/verifier.py:AuditReport, pipelines/video_io.py:TranscodeResult: unrelated field lists.
@dataclass(frozen=True)
class ConsensusParams:
    """Timeouts in seconds; a round's timeout is ``min(base + delta * round, timeout_max)``."""

    timeout_propose: float = 1.0
    timeout_propose_delta: float = 0.5
    timeout_prevote: float = 0.5
    timeout_prevote_delta: float = 0.5
    timeout_precommit: float = 0.5
    timeout_precommit_delta: float = 0.5
    timeout_commit: float = 1.0   # wait at a new height when no transactions are pending (empty-block pace)
    timeout_max: float = 10.0
    max_block_txs: int = MAX_BLOCK_TXS
    max_block_bytes: int = MAX_BLOCK_BYTES

    def timeout(self, kind: str, round_: int) -> float:
        if kind == TIMEOUT_COMMIT:
            return self.timeout_commit
        base, delta = {TIMEOUT_PROPOSE: (self.timeout_propose, self.timeout_propose_delta),
                       TIMEOUT_PREVOTE: (self.timeout_prevote, self.timeout_prevote_delta),
                       TIMEOUT_PRECOMMIT: (self.timeout_precommit, self.timeout_precommit_delta)}[kind]
        return min(base + delta * round_, self.timeout_max)


# Same shape as ledger/consensus/events.py:TimeoutFired, ledger/types/votes.py:CommitSig: unrelated frozen records.
@dataclass(frozen=True)
class ChainTip:
    """The last finalized block: height 0 means genesis (genesis hash, genesis time)."""

    height: int
    block_hash: bytes
    timestamp_ms: int


@dataclass(frozen=True)
class BlockContent:
    """What the runtime's block builder supplies when this node proposes a new block."""

    timestamp_ms: int
    txs: Sequence[Transaction] = ()
    evidence: Sequence[Evidence] = ()


#: ``build_block(height, round) -> BlockContent``: reads the runtime's clock and mempool.
BlockBuilder = Callable[[int, int], BlockContent]


# -- input events --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ProposalReceived:
    proposal: Proposal


@dataclass(frozen=True)
class VoteReceived:
    vote: Vote


@dataclass(frozen=True)
class TimeoutFired:
    kind: str
    height: int
    round: int


@dataclass(frozen=True)
class TxsAvailable:
    """The mempool holds transactions: start the height now if this node proposes round 0."""


@dataclass(frozen=True)
class CommitReceived:
    """A finalized block and its certificate fetched by sync, for the current height."""

    block: Block
    certificate: CommitCertificate


Event = Union[ProposalReceived, VoteReceived, TimeoutFired, TxsAvailable, CommitReceived]


# -- output actions ------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class PersistSigned:
    """Durably store ``data`` (an encoded Vote or Proposal this node signed) BEFORE any later action."""

    height: int
    round: int
    step: int
    data: bytes = field(repr=False)


@dataclass(frozen=True)
class Broadcast:
    """Send ``data`` (the encoding of ``message``) to every peer."""

    message: Union[Vote, Proposal] = field(repr=False)
    data: bytes = field(repr=False)


@dataclass(frozen=True)
class ScheduleTimeout:
    kind: str
    height: int
    round: int
    duration_s: float


@dataclass(frozen=True)
class Decide:
    """``block`` is final: store it with ``certificate`` before running later actions."""

    block: Block = field(repr=False)
    certificate: CommitCertificate = field(repr=False)

    @property
    def height(self) -> int:
        return self.block.height


@dataclass(frozen=True)
class RecordEvidence:
    evidence: Evidence


@dataclass(frozen=True)
class RequestSync:
    """Peers are ahead: fetch finalized blocks from ``height`` on and feed them as CommitReceived."""

    height: int


Action = Union[PersistSigned, Broadcast, ScheduleTimeout, Decide, RecordEvidence, RequestSync]
