"""The ledger node process: consensus + store + p2p + HTTP API + mempool, on one asyncio loop.

The pure state machine (:mod:`ledger.consensus`) decides; this module feeds it events (p2p messages,
timeouts, new transactions, synced blocks) one at a time and executes its actions strictly in order:
``PersistSigned`` is committed to SQLite (fsync) before any later action runs, so a vote is durable before
it can leave the node. Finalized blocks are stored with their commit certificates, their transactions leave
the mempool and the registry state (:mod:`ledger.registry`) is updated.

Run: ``python -m ledger.node --config node0.json`` (or ``riskmask ledger node --config ...``).
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import errno
import logging
import time
from typing import Any, Optional

from ledger.config import ClientInfo, ClientRegistry, ConfigError, Genesis, KeyFile, NodeConfig
from ledger.consensus.events import (STEP_PROPOSAL, BlockContent, Broadcast, ChainTip, ConsensusParams, Decide,
                                     PersistSigned, ProposalReceived, RecordEvidence, RequestSync, ScheduleTimeout,
                                     TimeoutFired, TxsAvailable, VoteReceived)
from ledger.consensus.state import ConsensusState
from ledger.errors import LedgerError
from ledger.node.blocksync import BlockSync, SyncDone
from ledger.node.fastverify import make_verifier
from ledger.node.mempool import Mempool, MempoolFull
from ledger.node.store import Store, StoreError
from ledger.node.view import NodeView
from ledger.p2p import sync, transport as p2p
from ledger.registry import kinds as tx_kinds
from ledger.rpc.api import LedgerApi
from ledger.types import crypto
from ledger.types.block import (Block, CommitCertificate, Evidence, Proposal, Transaction, Vote, decode_message,
                                tx_hash, verify_commit)

logger = logging.getLogger(__name__)

STATUS_INTERVAL_S = 1.0
GOSSIP_INTERVAL_S = 0.005
MAX_FUTURE_MS = 10_000
MAX_PENDING_EVIDENCE = 1000
ADMIT_CHUNK = 8  # transactions verified between yields to the event loop


_START = object()  # queue marker: run ConsensusState.start()


def now_ms() -> int:
    return int(time.time() * 1000)


class LedgerNode(BlockSync, NodeView):
    """One validator node. ``await start()``, then ``await stop()``."""

    def __init__(self, cfg: NodeConfig) -> None:
        self.cfg = cfg
        self.genesis = Genesis.load(cfg.genesis_file)
        if not 0 <= cfg.index < self.genesis.n:
            raise ConfigError(f"node index {cfg.index} is not a validator of genesis (n = {self.genesis.n})")
        self.chain_id = self.genesis.chain_id
        self.clients = ClientRegistry.load(cfg.clients_file).with_validators(self.genesis)
        kf = KeyFile.load(cfg.key_file)
        self.key = crypto.PrivateKey.from_seed(kf.seed)
        if self.key.public_key().to_bytes() != self.genesis.validators[cfg.index].public_key:
            raise ConfigError(f"key file {cfg.key_file} does not hold validator {cfg.index}'s key")
        self.public_keys = self.genesis.public_keys()
        self.verifier = make_verifier(200_000)
        self.store = Store(cfg.data_dir / "ledger.db", self.chain_id, self.genesis.hash())
        self.mempool = Mempool(cfg.mempool_max_txs, cfg.mempool_max_bytes)
        self.pending_evidence: dict[bytes, Evidence] = {}
        self.registry = self._make_registry()
        self._registry_pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="registry")
        self.api = LedgerApi(self, self.clients, cfg.api_max_body, cfg.api_clock_skew, cfg.api_max_batch)
        if self.registry is not None:
            self.registry.install(self.api)
        self.p2p = p2p.P2P(self.genesis, cfg.index, self.key, self._on_frame, self._on_connect)
        self.consensus: Optional[ConsensusState] = None
        self._events: collections.deque = collections.deque()
        self._drain_task: Optional[asyncio.Task] = None
        self._tx_inbox: collections.deque = collections.deque()  # (peer, digest, body)
        self._tx_inbox_bytes = 0
        self._tx_inbox_peer: dict[int, int] = collections.defaultdict(int)
        self._tx_recent: "collections.OrderedDict[bytes, None]" = collections.OrderedDict()
        # (peer, height, round) -> digest -> whether it reached consensus while its height was current
        self._proposals_seen: dict[tuple[int, int, int], dict[bytes, bool]] = {}
        self._uncertified_warned: set[int] = set()
        self._certified: dict[int, int] = {}  # while silent after a wipe: validator -> certified height
        self._status_cache: tuple[int, bytes, bytes] = (0, b"", b"")
        self.p2p.on_fault = self._on_peer_fault
        self._tx_task: Optional[asyncio.Task] = None
        self._io = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="store")
        self._gossip: list[bytes] = []
        self._tasks: list[asyncio.Task] = []
        self._peer_heights: dict[int, int] = {}
        self._sync_inflight: Optional[tuple[int, int, float]] = None  # (peer, start, deadline)
        self._merkle_cache: "collections.OrderedDict[int, tuple]" = collections.OrderedDict()
        self._last_hash = self.genesis.hash()
        self._last_time = self.genesis.genesis_time
        self._closing = False
        # -1: started without any data and nothing heard yet; H: stay silent through height H; None: normal.
        self._quiet_through: Optional[int] = None
        self._consensus_reset = False
        self.fatal: Optional[str] = None
        self.stop_event: Optional[asyncio.Event] = None

    # -- setup ---------------------------------------------------------------------------------------------
    def _make_registry(self) -> Any:
        # deferred: the registry application loads only on nodes that serve it
        from ledger.registry.service import RegistryService
        from ledger.registry.state import RegistryIndex  # deferred: as above

        index = RegistryIndex(self.cfg.data_dir / "registry.db")
        return RegistryService(index, self.store, lambda: self.store.height, role_of=self._sender_role)

    def _sender_role(self, sender: bytes) -> Optional[str]:
        """Role of a transaction sender's key in the client registry (None for an unknown key)."""
        info = self.clients.lookup(sender.hex())
        return None if info is None else info.role

    def _tip(self) -> ChainTip:
        h = self.store.height
        if h == 0:
            return ChainTip(0, self.genesis.hash(), self.genesis.genesis_time)
        b = self.store.get_block(h)
        return ChainTip(h, b.hash, b.time_ms)

    def _replay_registry(self) -> None:
        """Bring the registry index up to the stored chain (it is derived state, rebuilt if lost)."""
        if self.registry is None:
            return
        start = self.registry.index.applied_height + 1
        for h in range(start, self.store.height + 1):
            blk = Block.decode(self.store.get_block(h).block)
            self.registry.apply_block(h, [(tx.hash(), tx) for tx in blk.txs])

    async def start(self) -> None:
        self._replay_registry()
        self._params = ConsensusParams(
            timeout_propose=self.cfg.timeout_propose, timeout_propose_delta=self.cfg.timeout_propose_delta,
            timeout_prevote=self.cfg.timeout_prevote, timeout_prevote_delta=self.cfg.timeout_prevote_delta,
            timeout_precommit=self.cfg.timeout_precommit,
            timeout_precommit_delta=self.cfg.timeout_precommit_delta,
            timeout_commit=self.cfg.block_interval, timeout_max=self.cfg.timeout_max,
            max_block_txs=self.cfg.max_block_txs, max_block_bytes=self.cfg.max_block_bytes)
        tip = self._tip()
        if tip.height == 0 and not self.store.signed_from(1) and self.genesis.n > 1:
            self._quiet_through = -1
        self.consensus = self._make_consensus()
        host, port = p2p_host_port(self.cfg.p2p_listen)
        await _retry_bind(lambda: self.p2p.start(host, port))
        ahost, aport = p2p_host_port(self.cfg.api_listen)
        await _retry_bind(lambda: self.api.start(ahost, aport))
        self._events.appendleft(_START)  # before anything peers sent meanwhile
        self._kick()
        loop = asyncio.get_running_loop()
        self._tasks = [loop.create_task(self._status_loop()), loop.create_task(self._gossip_loop())]
        logger.info("node %d started at height %d (chain %s, p2p %s, api %s)", self.cfg.index, tip.height,
                    self.chain_id, self.cfg.p2p_listen, self.cfg.api_listen)

    async def stop(self) -> None:
        self._closing = True
        for t in self._tasks:
            t.cancel()
        await self.api.stop()
        await self.p2p.stop()
        if self._tx_task is not None:
            self._tx_task.cancel()
        if self._drain_task is not None:
            self._drain_task.cancel()
            await asyncio.gather(self._drain_task, return_exceptions=True)
        self._io.shutdown(wait=True)
        self._registry_pool.shutdown(wait=True)
        if self.registry is not None:
            self.registry.index.close()
        self.store.close()

    # -- the event loop around the state machine --------------------------------------------------------
    def feed(self, event: Any) -> None:
        """Queue an input event; one drain task handles the queue, one event at a time, in order."""
        self._events.append(event)
        self._kick()

    def _kick(self) -> None:
        if self._drain_task is None and self.consensus is not None and not self._closing:
            self._drain_task = asyncio.get_running_loop().create_task(self._drain())

    async def _drain(self) -> None:
        try:
            while self._events and not self._closing:
                ev = self._events.popleft()
                if ev is _START:
                    actions = self.consensus.start()
                elif isinstance(ev, SyncDone):
                    self._sync_done(ev)
                    continue
                else:
                    actions = self.consensus.handle(ev)
                await self._execute(actions)
                if self._consensus_reset:
                    self._restart_consensus()
        except (StoreError, LedgerError) as exc:
            self._die(f"{type(exc).__name__}: {exc}")
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a bug must stop the node, never leave it half-applied
            logger.exception("consensus step failed")
            self._die(f"internal error: {exc}")
        finally:
            self._drain_task = None

    def _make_consensus(self) -> ConsensusState:
        tip = self._tip()
        self._last_hash, self._last_time = tip.block_hash, tip.timestamp_ms
        signed = [m for *_, m in self.store.signed_from(tip.height + 1)]
        return ConsensusState(self.chain_id, self.public_keys, self.cfg.index, self.key, tip, self._params,
                              self._build_block, self._validate_block, self.verifier, signed)

    def _restart_consensus(self) -> None:
        """Rebuild the state machine from the store (what it signed is restored) and fetch the block."""
        self._consensus_reset = False
        self._events.clear()
        self.consensus = self._make_consensus()
        self._sync_inflight = None
        self._events.append(_START)
        self._request_sync(self.store.height + 1)

    def _die(self, reason: str) -> None:
        """Fail hard: stop processing and make the process exit non-zero."""
        logger.critical("stopping the node: %s", reason)
        self.fatal = reason
        self._closing = True
        self._events.clear()
        if self.stop_event is not None:
            self.stop_event.set()

    async def _execute(self, actions: list) -> None:
        loop = asyncio.get_running_loop()
        for a in actions:
            if self._consensus_reset:
                return  # the rest belongs to a decision we refused
            if isinstance(a, PersistSigned):
                # Durable before anything later runs; the fsync happens off the loop so the API and p2p
                # keep being served meanwhile.
                await loop.run_in_executor(self._io, self.store.save_signed, a.height, a.round, a.step, a.data)
            elif isinstance(a, Broadcast):
                if self._is_quiet():
                    continue
                mtype = p2p.T_PROPOSAL if isinstance(a.message, Proposal) else p2p.T_VOTE
                self.p2p.broadcast(mtype, a.data)
            elif isinstance(a, ScheduleTimeout):
                asyncio.get_running_loop().call_later(a.duration_s, self._fire,
                                                      TimeoutFired(a.kind, a.height, a.round))
            elif isinstance(a, Decide):
                await self._commit(a.block, a.certificate)
            elif isinstance(a, RecordEvidence):
                self._record_evidence(a.evidence)
            elif isinstance(a, RequestSync):
                self._request_sync(a.height)
            else:
                logger.warning("unknown consensus action %r", type(a).__name__)

    def _is_quiet(self) -> bool:
        """True while a node that lost its data must not send what it signs (see _note_peer_height)."""
        if self._quiet_through is None:
            return False
        if self._quiet_through < 0:
            return True
        if self.store.height + 1 > self._quiet_through:
            logger.info("rejoined at height %d; voting again", self.store.height + 1)
            self._quiet_through = None
            return False
        return True

    def _fire(self, ev: Any) -> None:
        if not self._closing:
            self.feed(ev)

    # -- decisions -----------------------------------------------------------------------------------------
    async def _commit(self, block: Block, cert: CommitCertificate) -> None:
        h = block.header.height
        try:  # defence in depth: never store a block whose certificate an auditor would reject
            verify_commit(cert, self.chain_id, self.public_keys, block.hash(), h, self.verifier)
        except LedgerError as exc:
            logger.critical("consensus decided height %d with an invalid certificate (%s); sigs %s; "
                            "not storing it, restarting consensus from the stored tip and syncing", h, exc,
                            [(s.validator, s.round) for s in cert.sigs])
            self._consensus_reset = True
            return
        hashes = [tx.hash() for tx in block.txs]
        await asyncio.get_running_loop().run_in_executor(
            self._io, self.store.save_block, h, block.hash(), block.header.timestamp_ms, block.encode(),
            cert.encode(), hashes)
        self._last_hash, self._last_time = block.hash(), block.header.timestamp_ms
        observer = getattr(self, "commit_observer", None)  # ledger.node.metrics: commit latency
        if observer is not None:
            observer(h, block.header.timestamp_ms)
        self.mempool.remove(hashes)
        for ev in block.evidence:
            self.pending_evidence.pop(ev.encode(), None)
        if self.registry is not None:
            # Derived state, applied in block order on one worker thread so its fsyncs stay off the
            # consensus path; rebuilt from the stored blocks after a restart if a crash cut it short.
            self._registry_pool.submit(self._apply_registry, h, list(zip(hashes, block.txs)))
        if h % 100 == 0:
            logger.info("height %d (%d txs in this block, mempool %d)", h, len(hashes), len(self.mempool))
        if len(self.mempool):
            self._events.append(TxsAvailable())

    def _apply_registry(self, height: int, txs: list[tuple[bytes, Transaction]]) -> None:
        try:
            self.registry.apply_block(height, txs)
        except Exception:
            logger.exception("registry could not apply block %d", height)

    def _record_evidence(self, ev: Evidence) -> None:
        data = ev.encode()
        kind = {1: "duplicate_vote", 2: "duplicate_proposal"}.get(ev.kind, str(ev.kind))
        if self.store.add_evidence(ev.height, ev.validator, kind, data, now_ms()):
            logger.warning("evidence: validator %d equivocated at height %d (%s)", ev.validator, ev.height, kind)
        if len(self.pending_evidence) < MAX_PENDING_EVIDENCE:
            self.pending_evidence.setdefault(data, ev)

    def _build_block(self, height: int, round_: int) -> BlockContent:
        txs = self.mempool.take(self.cfg.max_block_txs, self.cfg.max_block_bytes - 64 * 1024)
        evidence = list(self.pending_evidence.values())[:16]
        return BlockContent(now_ms(), txs, evidence)

    def _validate_block(self, block: Block) -> bool:
        """Application checks of a proposed block (False: this node votes nil): signatures, the kinds table
        (kind, payload operation, sender role) for every transaction, no replayed tx."""
        if block.header.timestamp_ms > now_ms() + MAX_FUTURE_MS:
            return False
        seen: set[bytes] = set()
        for tx in block.txs:
            h = tx.hash()
            if h in seen:
                return False
            seen.add(h)
            if h in self.mempool:
                continue  # verified at admission (signature and kinds table)
            reason = self._check_tx(tx)
            if reason is not None:
                logger.warning("refusing the proposal for height %d round %d by validator %d: tx %s: %s",
                               block.header.height, block.header.round, block.header.proposer, h.hex()[:16],
                               reason)
                return False
        if self.store.has_txs(seen):
            return False
        return True

    def _check_tx(self, tx: Transaction, caller_role: Optional[str] = None) -> Optional[str]:
        """None when ``tx`` may enter the chain, else the reason: the kinds table (kind, payload operation,
        sender role; :mod:`ledger.registry.kinds`), the caller's role, the signature. Stateless, so
        admission, gossip and proposal validation reach the same verdict."""
        sender = self.clients.lookup(tx.sender.hex())
        if sender is None:
            return "forbidden: transaction sender is not a registered client"
        try:
            tx_kinds.classify(tx.kind, tx.payload, sender.role)
        except tx_kinds.KindError as exc:
            return str(exc) if exc.forbidden else f"invalid transaction: {exc}"
        if caller_role is not None and caller_role not in tx_kinds.BY_CODE[tx.kind].roles:
            return f"forbidden: role {caller_role} may not submit {tx_kinds.name_of(tx.kind)} transactions"
        if not tx.verify_signature(self.chain_id, self.verifier):
            return "bad transaction signature"
        return None

    # -- mempool admission (API + p2p) ---------------------------------------------------------------------
    async def submit_txs(self, txs: list[bytes],
                         client: ClientInfo) -> list[tuple[Optional[str], Optional[str]]]:
        out: list[tuple[Optional[str], Optional[str]]] = []
        fresh: list[tuple[bytes, Transaction, bytes]] = []
        for k, raw in enumerate(txs):
            if k and k % ADMIT_CHUNK == 0:
                await asyncio.sleep(0)  # let consensus messages through between signature checks
            res = self._admit(raw, client.role)
            out.append(res[:2])
            if res[2] is not None:
                fresh.append(res[2])
        if fresh:
            committed = self.store.has_txs(h for h, _, _ in fresh)
            t = time.monotonic()
            for h, tx, raw in fresh:
                if h in committed:
                    continue
                try:
                    if self.mempool.add(h, tx, raw, t):
                        self._gossip.append(raw)
                except MempoolFull as exc:
                    idx = next(i for i, (hh, _) in enumerate(out) if hh == h.hex())
                    out[idx] = (None, f"busy: {exc}")
            if len(self.mempool):
                self.feed(TxsAvailable())
        return out

    def _admit(self, raw: bytes, role: str) -> tuple[Optional[str], Optional[str], Optional[tuple]]:
        if len(raw) > self.cfg.max_tx_bytes:
            return None, f"transaction of {len(raw)} bytes exceeds the limit of {self.cfg.max_tx_bytes}", None
        try:
            tx = Transaction.decode(raw)
            tx.validate_basic()
        except (LedgerError, ValueError) as exc:
            return None, f"malformed transaction: {exc}", None
        h = tx_hash(raw)  # decode is canonical, so the raw bytes are the encoding
        if h in self.mempool:
            return h.hex(), None, None
        reason = self._check_tx(tx, role)
        if reason is None and self.registry is not None:  # the registry state (versions, erased subjects)
            reason = self.registry.check_tx(tx.kind, tx.payload, self._sender_role(tx.sender))
        if reason is not None:
            return None, reason, None
        return h.hex(), None, (h, tx, raw)

    async def _tx_worker(self) -> None:
        """Admit gossiped transactions in small steps, so votes and proposals never queue behind them."""
        try:
            while self._tx_inbox and not self._closing:
                peer, _, body = self._tx_inbox.popleft()
                self._tx_inbox_bytes -= len(body)
                self._tx_inbox_peer[peer] -= len(body)
                try:
                    await self._on_peer_txs(body)
                except (LedgerError, ValueError) as exc:  # a malformed frame must not stop the worker
                    logger.debug("bad transactions frame from validator %d: %s", peer, exc)
        finally:
            self._tx_task = None

    async def _on_peer_txs(self, body: bytes) -> None:
        fresh = []
        for k, raw in enumerate(sync.decode_txs(body)):
            if k and k % ADMIT_CHUNK == 0:
                await asyncio.sleep(0)
            if len(raw) > self.cfg.max_tx_bytes:
                continue
            try:
                tx = Transaction.decode(raw)
                tx.validate_basic()
            except (LedgerError, ValueError):
                continue
            h = tx_hash(raw)
            if h in self.mempool or self._check_tx(tx) is not None:
                continue
            fresh.append((h, tx, raw))
        if not fresh:
            return
        committed = self.store.has_txs(h for h, _, _ in fresh)
        t = time.monotonic()
        for h, tx, raw in fresh:
            if h not in committed:
                try:
                    self.mempool.add(h, tx, raw, t)
                except MempoolFull:
                    break
        if len(self.mempool):
            self.feed(TxsAvailable())

    async def _gossip_loop(self) -> None:
        while True:
            await asyncio.sleep(GOSSIP_INTERVAL_S)
            if self._gossip:
                batch, self._gossip = self._gossip, []
                for i in range(0, len(batch), 2000):
                    self.p2p.broadcast(p2p.T_TXS, sync.encode_txs(batch[i:i + 2000]))

    # -- p2p -----------------------------------------------------------------------------------------------
    async def _on_connect(self, peer: int) -> None:
        self.p2p.send(peer, p2p.T_STATUS, self._status_body())
        # Re-send what we signed at the current height: the peer may have missed it while away.
        if self._is_quiet():
            return
        h = self.store.height + 1
        for _, _, step, msg in self.store.signed_from(h):
            self.p2p.send(peer, p2p.T_PROPOSAL if step == STEP_PROPOSAL else p2p.T_VOTE, msg)

    async def _on_frame(self, peer: int, mtype: int, body: bytes) -> None:
        try:
            if mtype == p2p.T_VOTE or mtype == p2p.T_PROPOSAL:
                msg = decode_message(body)
                if isinstance(msg, Vote):
                    self.feed(VoteReceived(msg))
                elif isinstance(msg, Proposal) and self._note_proposal(peer, msg, body):
                    self.feed(ProposalReceived(msg))
            elif mtype == p2p.T_TXS:
                self._queue_gossip(peer, body)
            elif mtype == p2p.T_STATUS:
                height, _, block_hash, cert = sync.decode_status(body)
                self._peer_heights[peer] = height
                self._note_peer_height(peer, height, block_hash, cert)
                if height > self.store.height:
                    self._request_sync(self.store.height + 1, prefer=peer)
            elif mtype == p2p.T_SYNC_REQ:
                start, count = sync.decode_request(body)
                self.p2p.send(peer, p2p.T_SYNC_RESP, self._sync_response(start, count))
            elif mtype == p2p.T_SYNC_RESP:
                self._on_sync_response(peer, sync.decode_response(body))
            else:
                logger.debug("ignoring frame type %d from validator %d", mtype, peer)
        except (LedgerError, ValueError) as exc:
            logger.debug("bad frame type %d from validator %d: %s", mtype, peer, exc)

    async def _status_loop(self) -> None:
        while True:
            await asyncio.sleep(STATUS_INTERVAL_S)
            self.p2p.broadcast(p2p.T_STATUS, self._status_body())
            inflight = self._sync_inflight
            if inflight is not None and time.monotonic() > inflight[2]:
                self._sync_inflight = None
            ahead = [p for p, h in self._peer_heights.items() if h > self.store.height and p in self.p2p.peers]
            if ahead:
                self._request_sync(self.store.height + 1, prefer=max(ahead, key=self._peer_heights.get))


async def _retry_bind(start: Any, wait_s: float = 10.0) -> Any:
    """Bind, retrying while the port is briefly held (e.g. as the local port of an outgoing connection)."""
    deadline = time.monotonic() + wait_s
    while True:
        try:
            return await start()
        except OSError as exc:
            if exc.errno != errno.EADDRINUSE or time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.2)


def p2p_host_port(addr: str) -> tuple[str, int]:
    host, _, port = addr.rpartition(":")
    return host.strip("[]"), int(port)
