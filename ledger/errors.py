"""Typed errors of the ledger core (types, crypto, Merkle proofs, consensus)."""

from __future__ import annotations


class LedgerError(Exception):
    """Base class of every ledger-core error."""


class DecodeError(LedgerError, ValueError):
    """Bytes that are truncated, oversized, non-canonical, carry trailing data or an unknown tag."""


class ValidationError(LedgerError, ValueError):
    """A well-formed object whose contents break a rule (wrong root, bad height, limits, ...)."""


class SignatureError(LedgerError):
    """A missing, malformed or invalid signature or public key."""


class ProofError(LedgerError):
    """A Merkle inclusion or consistency proof that does not verify."""


class ConsensusError(LedgerError):
    """Misuse of the consensus state machine (bad configuration or restore data)."""
