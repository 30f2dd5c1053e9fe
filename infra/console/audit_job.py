"""The console's on-demand audit: export new finalized blocks, then run the offline verifier over the ledger and
audit topics, one run at a time, in a background thread. The verdict names the first bad block."""

from __future__ import annotations

import logging
import threading
import time
from typing import Any, Optional

from infra.console.feed import ConsoleState, LedgerSource, TopicNames
from ledger.audit import verifier as audit
from ledger.client.api_client import LedgerClient
from ledger.config import ClientRegistry, Genesis
from ledger.ops import exporter

logger = logging.getLogger(__name__)


class AuditJob:
    def __init__(self, state: ConsoleState, bootstrap: str, topics: TopicNames, source: Optional[LedgerSource],
                 export: bool = True) -> None:
        self.state, self.bootstrap, self.topics, self.source, self.export = state, bootstrap, topics, source, export
        self._thread: Optional[threading.Thread] = None
        self._lock = threading.Lock()

    @property
    def available(self) -> bool:
        return self.source is not None

    def start(self) -> bool:
        """Start a run; False when one is already running."""
        with self._lock:
            if self._thread is not None and self._thread.is_alive():
                return False
            with self.state.lock:
                runs = int(self.state.audit.get("runs", 0))
                self.state.audit = {"state": "running", "started": time.time(), "runs": runs}
            self._thread = threading.Thread(target=self._run, args=(runs + 1,), name="console-audit", daemon=True)
            self._thread.start()
            return True

    def join(self, timeout_s: float) -> None:
        t = self._thread
        if t is not None:
            t.join(timeout_s)

    def _run(self, run_no: int) -> None:
        t0 = time.monotonic()
        try:
            result = self._verify()
        except Exception as exc:  # noqa: BLE001 - the page shows the error; the console keeps running
            logger.warning("console audit failed: %s", exc)
            result = {"verdict": "ERROR", "error": f"{type(exc).__name__}: {exc}"}
        result.update({"state": "done", "runs": run_no, "finished": time.time(),
                       "seconds": round(time.monotonic() - t0, 2)})
        with self.state.lock:
            self.state.audit = result

    def _verify(self) -> dict[str, Any]:
        if self.source is None:
            raise RuntimeError("no ledger folder configured (--ledger-dir): nothing to audit")
        genesis = Genesis.load(self.source.ledger_dir / "genesis.json")
        exported = 0
        if self.export:
            exp = exporter.Exporter(self.bootstrap, self.topics.ledger,
                                    [LedgerClient(a, self.source.seed) for a in self.source.api_addresses],
                                    genesis.chain_id)
            try:
                exp.start()
                while exp.step():
                    pass
                exported = exp.exported
            finally:
                exp.close()
        if not exporter.topic_exists(self.bootstrap, self.topics.ledger):
            raise RuntimeError(f"topic {self.topics.ledger} does not exist: no exported ledger blocks")
        audit_msgs = None
        if (self.topics.audit and exporter.topic_exists(self.bootstrap, self.topics.audit)
                and exporter.end_offset(self.bootstrap, self.topics.audit) > 0):
            audit_msgs = exporter.read_range(self.bootstrap, self.topics.audit)
        clients_file = self.source.ledger_dir / "clients.json"
        clients = ClientRegistry.load(clients_file) if clients_file.is_file() else None
        r = audit.verify_stream(genesis, exporter.read_range(self.bootstrap, self.topics.ledger), audit_msgs,
                                clients=clients)
        return {"verdict": "PASS" if r.ok else "FAIL", "blocks": r.blocks, "last_height": r.last_height,
                "txs": r.txs, "anchors": r.anchors, "audit_blocks": r.audit_blocks,
                "roles_checked": r.roles_checked, "exported_now": exported,
                "first_bad_block": None if r.failure is None else str(r.failure),
                "first_bad_height": None if r.failure is None else r.failure.height,
                "warnings": list(r.warnings)[:5]}
