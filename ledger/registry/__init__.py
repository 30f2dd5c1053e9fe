"""The ledger's application: the risk registry behind one ABCI-like interface.

* :mod:`ledger.registry.kinds` — the one table of transaction kinds (kind -> payload operation and type ->
  roles allowed to submit it) and its stateless check, used at admission, on gossip, in proposal validation,
  on apply and by the auditor;
* :mod:`ledger.registry.payloads` — the registry payloads (subject records, erasures, audit anchors), written
  and read with the ledger's one binary codec (:mod:`ledger.types.codec`);
* :mod:`ledger.registry.state` — the SQLite index of the registry state a node derives from its blocks;
* :mod:`ledger.registry.service` — :class:`~ledger.registry.service.RegistryService`, the application a
  node drives: ``check_tx`` (admission: the table, then the state), ``apply_block`` (a finalized block),
  plus the deletable key store hooks; a proposed block is checked with the table alone
  (``kinds.check`` per transaction, in ``ledger.node.node``), so honest nodes vote nil on a breaking one;
* :mod:`ledger.registry.endpoints` — its HTTP endpoints.

This package imports only the ledger core (codec, errors, and lazily the HTTP server and client), never
``pipelines`` or ``infra``.
"""

from __future__ import annotations

from ledger.registry.kinds import (KINDS, SUBMIT_KINDS, TX_ANCHOR, TX_ERASE, TX_KIND_NAMES, TX_REGISTER, TX_UPDATE,
                                   KindError, TxKind, check, classify)

__all__ = ["KINDS", "SUBMIT_KINDS", "TX_ANCHOR", "TX_ERASE", "TX_KIND_NAMES", "TX_REGISTER", "TX_UPDATE",
           "KindError", "TxKind", "check", "classify"]
