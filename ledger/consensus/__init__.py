"""Tendermint-style BFT consensus as a pure state machine (see docs/ledger-core.md, section 4)."""

from ledger.consensus.events import (STEP_NAMES, STEP_NEW_HEIGHT, STEP_PRECOMMIT, STEP_PREVOTE,
                                     STEP_PROPOSAL, STEP_PROPOSE, TIMEOUT_COMMIT, TIMEOUT_PRECOMMIT, TIMEOUT_PREVOTE,
                                     TIMEOUT_PROPOSE, Action, BlockBuilder, BlockContent, Broadcast, ChainTip,
                                     CommitReceived, ConsensusParams, Decide, Event, PersistSigned,
                                     ProposalReceived, RecordEvidence, RequestSync, ScheduleTimeout, TimeoutFired,
                                     TxsAvailable, VoteReceived)
from ledger.consensus.state import ConsensusState

__all__ = ["STEP_NAMES", "STEP_NEW_HEIGHT", "STEP_PRECOMMIT", "STEP_PREVOTE", "STEP_PROPOSAL", "STEP_PROPOSE",
           "TIMEOUT_COMMIT", "TIMEOUT_PRECOMMIT", "TIMEOUT_PREVOTE", "TIMEOUT_PROPOSE", "Action", "BlockBuilder",
           "BlockContent", "Broadcast", "ChainTip", "CommitReceived", "ConsensusParams", "ConsensusState",
           "Decide", "Event", "PersistSigned", "ProposalReceived", "RecordEvidence", "RequestSync",
           "ScheduleTimeout", "TimeoutFired", "TxsAvailable", "VoteReceived"]
