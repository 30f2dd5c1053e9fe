"""Vote bookkeeping for one height: per (round, type) the signers of each value, with O(1) tallies.

A value's tally is the number of distinct validators that signed a vote for it. An equivocating validator's
second (conflicting) vote is kept too: "2f+1 distinct validators signed prevote(v)" is a sound polka whatever
else some of them signed (two quorums intersect in an honest validator, who signs once), and counting it lets a
polka relayed by an honest proposer be recognised even where the equivocator's other vote arrived first.
"""

from __future__ import annotations

from typing import Optional

from ledger.types.block import PRECOMMIT, PREVOTE, Vote

MAX_VALUES_PER_VALIDATOR = 3  # beyond this, only nil and proposed blocks are counted (see ConsensusState)


class VoteSet:
    """Votes of one type for one (height, round)."""

    __slots__ = ("first", "by_value", "_per_validator")

    def __init__(self) -> None:
        self.first: dict[int, Vote] = {}                          # validator -> first vote seen
        self.by_value: dict[Optional[bytes], dict[int, Vote]] = {}  # value -> validator -> vote
        self._per_validator: dict[int, int] = {}

    def get(self, validator: int) -> Optional[Vote]:
        return self.first.get(validator)

    def has(self, vote: Vote) -> bool:
        """True when this validator's vote for this value is already counted."""
        signers = self.by_value.get(vote.block_hash)
        return signers is not None and vote.validator in signers

    def can_add(self, validator: int) -> bool:
        return self._per_validator.get(validator, 0) < MAX_VALUES_PER_VALIDATOR

    def add(self, vote: Vote) -> int:
        """Count ``vote`` (caller checked :meth:`has` is False); returns the value's new tally."""
        self.first.setdefault(vote.validator, vote)
        self._per_validator[vote.validator] = self._per_validator.get(vote.validator, 0) + 1
        signers = self.by_value.get(vote.block_hash)
        if signers is None:
            signers = self.by_value[vote.block_hash] = {}
        signers[vote.validator] = vote
        return len(signers)

    def count(self, block_hash: Optional[bytes]) -> int:
        signers = self.by_value.get(block_hash)
        return 0 if signers is None else len(signers)

    @property
    def total(self) -> int:
        """Distinct validators that sent any vote."""
        return len(self.first)

    def votes_for(self, block_hash: Optional[bytes]) -> list[Vote]:
        return list(self.by_value.get(block_hash, {}).values())

    @property
    def tally(self) -> dict[Optional[bytes], int]:
        return {k: len(v) for k, v in self.by_value.items()}


class HeightVotes:
    """All rounds' prevotes and precommits of one height, plus who sent anything in each round."""

    def __init__(self) -> None:
        self._sets: dict[tuple[int, int], VoteSet] = {}
        self.senders: dict[int, set[int]] = {}

    def get(self, round_: int, vtype: int) -> VoteSet:
        vs = self._sets.get((round_, vtype))
        if vs is None:
            vs = self._sets[(round_, vtype)] = VoteSet()
        return vs

    def prevotes(self, round_: int) -> Optional[VoteSet]:
        return self._sets.get((round_, PREVOTE))

    def precommits(self, round_: int) -> Optional[VoteSet]:
        return self._sets.get((round_, PRECOMMIT))

    def add_sender(self, round_: int, validator: int) -> int:
        s = self.senders.get(round_)
        if s is None:
            s = self.senders[round_] = set()
        s.add(validator)
        return len(s)
