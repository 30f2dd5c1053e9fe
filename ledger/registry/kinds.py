"""The one table of transaction kinds: kind -> payload operation and type -> roles allowed to submit it.

Every place that decides whether a transaction may enter or change the chain asks this table, through
:func:`check`: API admission and gossip (``ledger.node.node._check_tx``), proposal validation (honest nodes vote nil
on a proposal carrying a transaction the table refuses), ``RegistryService.apply_block`` (defence in depth:
such a transaction has no effect) and the offline auditor (``ledger.audit.verifier``: a block carrying one fails
and is named). The check is stateless (kind, payload bytes, sender role), so every node and every auditor
reaches the same verdict on the same block.

======  ========  =====================  ===============  =================================================
code    kind      payload operation      payload type     roles allowed to submit
======  ========  =====================  ===============  =================================================
1       register  ``OP_REGISTER`` (1)    ``SubjectTx``    manager
2       update    ``OP_UPDATE`` (2)      ``SubjectTx``    manager
3       erase     ``OP_ERASE`` (3)       ``EraseTx``      manager
4       anchor    ``OP_ANCHOR`` (4)      ``AnchorTx``     pipeline (an opaque, non-registry payload is also
                                                          accepted: it anchors nothing and changes no state)
======  ========  =====================  ===============  =================================================

No other role (auditor, validator) submits any kind: validators speak only in consensus messages.
A payload that starts with the registry magic must decode, and its operation must be the kind's.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Optional

from ledger.registry import payloads
from ledger.registry.payloads import AnchorTx, EraseTx, PayloadError, RegistryTx, SubjectTx

TX_REGISTER = 1
TX_UPDATE = 2
TX_ERASE = 3
TX_ANCHOR = 4

FORBIDDEN = "forbidden"  # prefix of a refusal by role (the API answers 403); others are 400


@dataclass(frozen=True)
class TxKind:
    """One row of the table."""

    code: int                   # ``Transaction.kind``
    name: str
    op: int                     # the only registry payload operation this kind carries
    payload_type: type
    roles: frozenset[str]       # sender roles allowed to submit it
    opaque_ok: bool = False     # a payload without the registry magic is accepted (it changes no state)


KINDS: tuple[TxKind, ...] = (
    TxKind(TX_REGISTER, "register", payloads.OP_REGISTER, SubjectTx, frozenset({"manager"})),
    TxKind(TX_UPDATE, "update", payloads.OP_UPDATE, SubjectTx, frozenset({"manager"})),
    TxKind(TX_ERASE, "erase", payloads.OP_ERASE, EraseTx, frozenset({"manager"})),
    TxKind(TX_ANCHOR, "anchor", payloads.OP_ANCHOR, AnchorTx, frozenset({"pipeline"}), opaque_ok=True),
)
BY_CODE: Mapping[int, TxKind] = {k.code: k for k in KINDS}
BY_NAME: Mapping[str, TxKind] = {k.name: k for k in KINDS}
TX_KIND_NAMES: Mapping[int, str] = {k.code: k.name for k in KINDS}
ROLES = ("manager", "pipeline", "auditor", "validator")


def submit_kinds(role: str) -> frozenset[str]:
    """Names of the kinds ``role`` may submit (empty for a role that submits nothing)."""
    return frozenset(k.name for k in KINDS if role in k.roles)


SUBMIT_KINDS: Mapping[str, frozenset[str]] = {r: submit_kinds(r) for r in ROLES}


class KindError(ValueError):
    """A transaction that the table refuses; ``forbidden`` is True when the sender's role is the reason."""

    def __init__(self, reason: str, forbidden: bool = False) -> None:
        super().__init__(reason)
        self.forbidden = forbidden


def _an(word: str) -> str:
    return ("an " if word[:1] in "aeiou" else "a ") + word


def name_of(code: int) -> str:
    """Kind name of a code (``kind<N>`` for a code outside the table)."""
    row = BY_CODE.get(code)
    return row.name if row is not None else f"kind{code}"


def classify(kind: int, payload: bytes, role: Optional[str] = None) -> Optional[RegistryTx]:
    """Check one transaction against the table; returns its decoded registry payload (None when opaque).

    ``role`` is the sender's role (None: check kind and payload only, e.g. for an auditor without a
    client registry). Raises :class:`KindError` with one readable reason.
    """
    row = BY_CODE.get(kind)
    if row is None:
        raise KindError(f"unknown transaction kind {kind}")
    if role is not None and role not in row.roles:
        raise KindError(f"{FORBIDDEN}: role {role} may not submit {row.name} transactions", forbidden=True)
    if not payloads.is_registry_payload(payload):
        if row.opaque_ok:
            return None
        raise KindError(f"{_an(row.name)} transaction needs a registry {row.name} payload")
    try:
        tx = payloads.decode(payload)
    except PayloadError as exc:
        raise KindError(f"invalid registry payload in {_an(row.name)} transaction: {exc}") from None
    if tx.op != row.op or not isinstance(tx, row.payload_type):
        raise KindError(f"{_an(row.name)} transaction carries {_an(payloads.OP_NAMES.get(tx.op, str(tx.op)))} "
                        f"payload; it may carry only {row.name}")
    return tx


def check(kind: int, payload: bytes, role: Optional[str] = None) -> Optional[str]:
    """None when the table allows the transaction, else the reason (starting "forbidden" for a role refusal)."""
    try:
        classify(kind, payload, role)
    except KindError as exc:
        return str(exc)
    return None


def table_rows() -> list[dict[str, object]]:
    """The table as plain rows (docs, status endpoints, tests)."""
    return [{"code": k.code, "kind": k.name, "op": k.op, "payload": k.payload_type.__name__,
             "roles": sorted(k.roles), "opaque_payload": k.opaque_ok} for k in KINDS]


__all__ = ["TX_REGISTER", "TX_UPDATE", "TX_ERASE", "TX_ANCHOR", "FORBIDDEN", "TxKind", "KINDS", "BY_CODE",
           "BY_NAME", "TX_KIND_NAMES", "ROLES", "SUBMIT_KINDS", "KindError", "submit_kinds", "name_of",
           "classify", "check", "table_rows"]
