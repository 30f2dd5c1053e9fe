"""Authenticated, encrypted peer-to-peer transport between validators: asyncio TCP, sealed frames.

Topology: every pair of validators keeps one connection; the lower index dials the higher one and redials
with exponential backoff (0.1 s doubling to 2 s) whenever it drops.

Handshake (SIGMA-style, in the spirit of Noise XX, with each validator's Ed25519 key pinned from the genesis):

1. initiator -> responder ``MSG1`` (72 bytes) = magic | genesis hash | initiator index | responder index |
   initiator ephemeral X25519 key;
2. responder -> initiator ``MSG2`` (36 bytes) = magic | responder ephemeral X25519 key;
3. both derive, with HKDF-SHA256 over the X25519 secret and salted with the transcript hash
   ``th = SHA-256(protocol | genesis hash | initiator | responder | e_i | e_r)``, one ChaCha20-Poly1305 key
   per direction;
4. initiator -> responder ``AUTH_I`` (80 bytes) = sealed Ed25519 signature over ``0x01 | th``;
5. the responder checks it against the genesis key of the claimed initiator index and only then answers
   ``AUTH_R`` = sealed signature over ``0x02 | th``, which the initiator checks against the genesis key of the
   validator it dialled.

Why this and not mutual TLS: stdlib ``ssl`` cannot pin a bare Ed25519 key without a certificate chain
(no verify callback; self-signed certificates would have to be distributed beside the genesis), and a
responder cannot look at the client's key before its own CertificateVerify is signed. Here the side any host
can reach (the responder) verifies the peer before it signs anything, so it is no signing oracle; the
initiator signs first, but only to a host at a genesis address, over a transcript that names both ephemeral
keys, both indices, the direction and the genesis, sealed under keys only the two ends of this one TCP
connection hold: the signature is worthless on any other connection (a relay cannot splice it, a
man-in-the-middle cannot open it). Every later frame is ``u32 length | ChaCha20-Poly1305(type | body)`` with
a per-direction counter nonce and the length as associated data, so nothing can be injected, replayed,
reordered or dropped silently after the handshake.

Pre-authentication limits: the handshake messages are read with their exact sizes (no length prefix before
authentication), the whole handshake must finish in :data:`HANDSHAKE_TIMEOUT_S`, and at most
:data:`MAX_PENDING` unauthenticated inbound connections exist at once (a new one pushes out the oldest, so a
flood cannot lock real validators out for longer than it keeps reconnecting). Stream buffers are small
(:data:`STREAM_LIMIT`): a peer declaring a large frame is read in steps, never buffered ahead.

Budgets: each peer's send queue holds at most :data:`SEND_QUEUE_BYTES`; a peer that does not read past that is
cut off. :meth:`P2P.cut_off` disconnects a validator, records the reason (``on_fault``) and refuses it for a
while (10 s, doubling on every repeat up to 5 minutes; back to 10 s after 5 quiet minutes). The node uses
it for its own budgets (proposal buffer, gossip inbox: :mod:`ledger.node.peers`).
"""

from __future__ import annotations

import asyncio
import collections
import logging
import struct
import time
from dataclasses import dataclass, field
from typing import Awaitable, Callable, Optional

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from ledger.config import Genesis
from ledger.types import crypto

logger = logging.getLogger(__name__)

PROTOCOL = b"riskmask/ledger/p2p/v2"
DOMAIN_P2P_AUTH = b"riskmask/ledger/p2p-auth/v2"
MAGIC = b"RMP2"
MSG1_LEN = 4 + 32 + 2 + 2 + 32
MSG2_LEN = 4 + 32
TAG_LEN = 16
AUTH_LEN = 64 + TAG_LEN
DIR_INITIATOR = b"\x01"
DIR_RESPONDER = b"\x02"

MAX_FRAME = 32 * 1024 * 1024  # type + body of one authenticated frame
HANDSHAKE_TIMEOUT_S = 3.0  # lifetime of an unauthenticated connection
MAX_PENDING = 16  # unauthenticated inbound connections at once
STREAM_LIMIT = 256 * 1024
SEND_QUEUE_MAX = 20000  # frames; beyond it the oldest are dropped (consensus re-sends what matters)
SEND_QUEUE_BYTES = 64 * 1024 * 1024  # bytes; beyond it the peer is cut off (it does not read)
SEND_BATCH_BYTES = 1024 * 1024  # frames sealed and written together
BACKOFF_MIN_S = 0.1
BACKOFF_MAX_S = 2.0
BAN_MIN_S = 10.0
BAN_MAX_S = 300.0

# Frame types (node-level meaning; kept here so every user agrees on the numbers).
T_PROPOSAL = 10
T_VOTE = 11
T_TXS = 12
T_STATUS = 13
T_SYNC_REQ = 14
T_SYNC_RESP = 15
T_BLOCK_PART = 16

OnMessage = Callable[[int, int, bytes], Awaitable[None]]
OnConnect = Callable[[int], Awaitable[None]]
OnFault = Callable[[int, str], None]


class P2PError(Exception):
    """A peer violated the protocol (bad frame, bad handshake)."""


def _nonce(counter: int) -> bytes:
    return b"\0\0\0\0" + struct.pack(">Q", counter)


class Channel:
    """The two sealed directions of one authenticated connection (counter nonces, never reused)."""

    def __init__(self, send_key: bytes, recv_key: bytes) -> None:
        self._tx = ChaCha20Poly1305(send_key)
        self._rx = ChaCha20Poly1305(recv_key)
        self._ns = 0
        self._nr = 0

    def seal_auth(self, data: bytes) -> bytes:
        out = self._tx.encrypt(_nonce(self._ns), data, b"auth")
        self._ns += 1
        return out

    def open_auth(self, data: bytes) -> bytes:
        try:
            out = self._rx.decrypt(_nonce(self._nr), data, b"auth")
        except InvalidTag:
            raise P2PError("handshake authentication does not open") from None
        self._nr += 1
        return out

    def seal(self, plain: bytes) -> bytes:
        head = struct.pack(">I", len(plain) + TAG_LEN)
        out = head + self._tx.encrypt(_nonce(self._ns), plain, head)
        self._ns += 1
        return out

    def open(self, head: bytes, sealed: bytes) -> bytes:
        try:
            out = self._rx.decrypt(_nonce(self._nr), sealed, head)
        except InvalidTag:
            raise P2PError("frame failed authentication") from None
        self._nr += 1
        return out


def transcript_hash(genesis_hash: bytes, initiator: int, responder: int, e_i: bytes, e_r: bytes) -> bytes:
    return crypto.sha256(PROTOCOL + genesis_hash + struct.pack(">HH", initiator, responder) + e_i + e_r)


def derive_channel(secret: X25519PrivateKey, peer_public: bytes, th: bytes, initiator: bool) -> Channel:
    try:
        shared = secret.exchange(X25519PublicKey.from_public_bytes(peer_public))
    except ValueError as exc:  # a low-order point gives an all-zero secret
        raise P2PError(f"bad ephemeral key: {exc}") from None
    okm = HKDF(hashes.SHA256(), 64, th, PROTOCOL + b"/keys").derive(shared)
    i2r, r2i = okm[:32], okm[32:]
    return Channel(i2r, r2i) if initiator else Channel(r2i, i2r)


async def read_sealed(reader: asyncio.StreamReader, chan: Channel) -> tuple[int, bytes]:
    head = await reader.readexactly(4)
    (n,) = struct.unpack(">I", head)
    if n < 1 + TAG_LEN or n > MAX_FRAME + TAG_LEN:
        raise P2PError(f"frame length {n} out of range")
    plain = chan.open(head, await reader.readexactly(n))
    return plain[0], plain[1:]


def _public(key: X25519PrivateKey) -> bytes:
    return key.public_key().public_bytes_raw()


@dataclass
class Peer:
    index: int
    writer: asyncio.StreamWriter
    chan: Channel
    queue: collections.deque = field(default_factory=collections.deque)
    queued_bytes: int = 0
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    task: Optional[asyncio.Task] = None
    dropped: int = 0


class P2P:
    """Connections to every other validator of ``genesis``; deliver frames to ``on_message``."""

    def __init__(self, genesis: Genesis, index: int, key: "crypto.PrivateKey", on_message: OnMessage,
                 on_connect: Optional[OnConnect] = None, on_fault: Optional[OnFault] = None) -> None:
        self.genesis = genesis
        self.genesis_hash = genesis.hash()
        self.index = index
        self.key = key
        self.on_message = on_message
        self.on_connect = on_connect
        self.on_fault = on_fault
        self.peers: dict[int, Peer] = {}
        self.faults: list[tuple[int, str]] = []
        self.refused_unauthenticated = 0
        self._banned_until: dict[int, float] = {}
        self._ban_s: dict[int, float] = {}
        self._pending: "collections.OrderedDict[int, asyncio.StreamWriter]" = collections.OrderedDict()
        self._pending_seq = 0
        self._server: Optional[asyncio.base_events.Server] = None
        self._tasks: set[asyncio.Task] = set()
        self._closing = False
        self._pubkeys = [crypto.PublicKey.from_bytes(v.public_key) for v in genesis.validators]

    # -- lifecycle -----------------------------------------------------------------------------------------
    async def start(self, host: str, port: int) -> int:
        self._server = await asyncio.start_server(self._accept, host, port, reuse_address=True,
                                                  limit=STREAM_LIMIT)
        for v in self.genesis.validators:
            if v.index > self.index:
                self._spawn(self._dial_loop(v.index))
        return self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        self._closing = True
        if self._server is not None:
            self._server.close()
        for p in list(self.peers.values()):
            p.writer.close()
        for w in list(self._pending.values()):
            w.close()
        for t in list(self._tasks):
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def _spawn(self, coro: Awaitable) -> asyncio.Task:
        t = asyncio.ensure_future(coro)
        self._tasks.add(t)
        t.add_done_callback(self._tasks.discard)
        return t

    # -- faults --------------------------------------------------------------------------------------------
    def banned(self, peer: int) -> bool:
        return time.monotonic() < self._banned_until.get(peer, 0.0)

    def cut_off(self, peer: int, reason: str) -> None:
        """Disconnect validator ``peer`` for breaking a budget or the protocol; refuse it for a while."""
        now = time.monotonic()
        if now - self._banned_until.get(peer, now) > BAN_MAX_S:  # well behaved for a long while: start over
            self._ban_s.pop(peer, None)
        ban = min(BAN_MAX_S, self._ban_s.get(peer, BAN_MIN_S / 2) * 2)
        self._ban_s[peer] = ban
        self._banned_until[peer] = now + ban
        logger.warning("cut off validator %d for %.0f s: %s", peer, ban, reason)
        self.faults.append((peer, reason))
        del self.faults[:-100]
        if self.on_fault is not None:
            try:
                self.on_fault(peer, reason)
            except Exception:  # recording must never keep a bad peer connected
                logger.exception("recording a fault of validator %d failed", peer)
        p = self.peers.pop(peer, None)
        if p is not None:  # its reader sees the end of the stream and leaves
            p.writer.close()
            if p.task is not None:
                p.task.cancel()
            logger.info("validator %d disconnected", peer)

    # -- sending -------------------------------------------------------------------------------------------
    def connected(self) -> list[int]:
        return sorted(self.peers)

    def _enqueue(self, p: Peer, plain: bytes) -> None:
        if len(p.queue) >= SEND_QUEUE_MAX:
            p.queued_bytes -= len(p.queue.popleft())
            p.dropped += 1
        p.queue.append(plain)
        p.queued_bytes += len(plain)
        if p.queued_bytes > SEND_QUEUE_BYTES:
            self.cut_off(p.index, f"send queue over {SEND_QUEUE_BYTES} bytes (the peer does not read)")
            return
        p.wake.set()

    def send(self, peer: int, mtype: int, body: bytes) -> bool:
        p = self.peers.get(peer)
        if p is None:
            return False
        self._enqueue(p, bytes((mtype,)) + body)
        return True

    def broadcast(self, mtype: int, body: bytes) -> int:
        plain = bytes((mtype,)) + body
        peers = list(self.peers.values())
        for p in peers:
            self._enqueue(p, plain)
        return len(peers)

    async def _sender(self, peer: Peer) -> None:
        try:
            while True:
                await peer.wake.wait()
                peer.wake.clear()
                while peer.queue:
                    # Small batches: what waits in the transport is at most one batch, the rest stays
                    # in the queue where its budget counts it.
                    chunks, size = [], 0
                    while peer.queue and len(chunks) < 256 and size < SEND_BATCH_BYTES:
                        plain = peer.queue.popleft()
                        peer.queued_bytes -= len(plain)
                        size += len(plain)
                        chunks.append(peer.chan.seal(plain))
                    peer.writer.write(b"".join(chunks))
                    await peer.writer.drain()
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            peer.writer.close()

    # -- connections ----------------------------------------------------------------------------------------
    async def _dial_loop(self, peer_index: int) -> None:
        host, port = self.genesis.validators[peer_index].p2p_hostport
        backoff = BACKOFF_MIN_S
        while not self._closing:
            wait = self._banned_until.get(peer_index, 0.0) - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
                continue
            try:
                reader, writer = await asyncio.wait_for(
                    asyncio.open_connection(host, port, limit=STREAM_LIMIT), HANDSHAKE_TIMEOUT_S)
            except (OSError, asyncio.TimeoutError):
                await asyncio.sleep(backoff)
                backoff = min(BACKOFF_MAX_S, backoff * 2)
                continue
            try:
                chan = await asyncio.wait_for(self._initiate(reader, writer, peer_index), HANDSHAKE_TIMEOUT_S)
                backoff = BACKOFF_MIN_S
                await self._run_peer(peer_index, chan, reader, writer)
            except (P2PError, ConnectionError, asyncio.IncompleteReadError, asyncio.TimeoutError) as exc:
                logger.debug("connection to validator %d failed: %s", peer_index, exc)
            finally:
                writer.close()
            if not self._closing:
                await asyncio.sleep(backoff)
                backoff = min(BACKOFF_MAX_S, backoff * 2)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._tasks.add(task)
        self._pending_seq += 1
        slot = self._pending_seq
        if len(self._pending) >= MAX_PENDING:  # the oldest unauthenticated connection makes room
            _, oldest = self._pending.popitem(last=False)
            oldest.close()
            self.refused_unauthenticated += 1
            if self.refused_unauthenticated in (1, 100) or self.refused_unauthenticated % 10000 == 0:
                logger.warning("more than %d unauthenticated p2p connections: dropped the oldest (%d so far)",
                               MAX_PENDING, self.refused_unauthenticated)
        self._pending[slot] = writer
        try:
            try:
                got, chan = await asyncio.wait_for(self._respond(reader, writer), HANDSHAKE_TIMEOUT_S)
            finally:
                self._pending.pop(slot, None)
            await self._run_peer(got, chan, reader, writer)
        except (P2PError, ConnectionError, asyncio.IncompleteReadError, asyncio.TimeoutError) as exc:
            logger.debug("inbound connection refused: %s", exc)
        except asyncio.CancelledError:
            pass
        finally:
            writer.close()
            if task is not None:
                self._tasks.discard(task)

    async def _initiate(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, peer: int) -> Channel:
        eph = X25519PrivateKey.generate()
        e_i = _public(eph)
        writer.write(MAGIC + self.genesis_hash + struct.pack(">HH", self.index, peer) + e_i)
        await writer.drain()
        msg2 = await reader.readexactly(MSG2_LEN)
        if msg2[:4] != MAGIC:
            raise P2PError("peer does not speak this protocol")
        e_r = msg2[4:]
        th = transcript_hash(self.genesis_hash, self.index, peer, e_i, e_r)
        chan = derive_channel(eph, e_r, th, initiator=True)
        writer.write(chan.seal_auth(self.key.sign(DOMAIN_P2P_AUTH, DIR_INITIATOR + th, self.genesis.chain_id)))
        await writer.drain()
        sig = chan.open_auth(await reader.readexactly(AUTH_LEN))
        if not self._pubkeys[peer].verify(DOMAIN_P2P_AUTH, DIR_RESPONDER + th, sig, self.genesis.chain_id):
            raise P2PError(f"validator {peer} failed to prove its key")
        return chan

    async def _respond(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> tuple[int, Channel]:
        msg1 = await reader.readexactly(MSG1_LEN)
        if msg1[:4] != MAGIC:
            raise P2PError("not a validator handshake")
        if msg1[4:36] != self.genesis_hash:
            raise P2PError("peer runs another chain (genesis hash differs)")
        peer, me = struct.unpack(">HH", msg1[36:40])
        if me != self.index:
            raise P2PError(f"peer meant validator {me}")
        if not 0 <= peer < self.index:  # lower indices dial higher ones
            raise P2PError(f"validator {peer} may not dial in to validator {self.index}")
        if self.banned(peer):
            raise P2PError(f"validator {peer} is cut off for now")
        e_i = msg1[40:]
        eph = X25519PrivateKey.generate()
        e_r = _public(eph)
        th = transcript_hash(self.genesis_hash, peer, self.index, e_i, e_r)
        chan = derive_channel(eph, e_i, th, initiator=False)
        writer.write(MAGIC + e_r)
        await writer.drain()
        sig = chan.open_auth(await reader.readexactly(AUTH_LEN))
        if not self._pubkeys[peer].verify(DOMAIN_P2P_AUTH, DIR_INITIATOR + th, sig, self.genesis.chain_id):
            raise P2PError(f"peer failed to prove validator {peer}'s key")
        # Verified: only now sign.
        writer.write(chan.seal_auth(self.key.sign(DOMAIN_P2P_AUTH, DIR_RESPONDER + th, self.genesis.chain_id)))
        await writer.drain()
        return peer, chan

    async def _run_peer(self, index: int, chan: Channel, reader: asyncio.StreamReader,
                        writer: asyncio.StreamWriter) -> None:
        old = self.peers.get(index)
        if old is not None:  # a newer authenticated connection replaces a stale one
            old.writer.close()
            if old.task is not None:
                old.task.cancel()
        peer = Peer(index, writer, chan)
        peer.task = self._spawn(self._sender(peer))
        self.peers[index] = peer
        logger.info("validator %d connected", index)
        try:
            if self.on_connect is not None:
                await self.on_connect(index)
            while self.peers.get(index) is peer:
                mtype, body = await read_sealed(reader, chan)
                try:
                    await self.on_message(index, mtype, body)
                except asyncio.CancelledError:
                    raise
                except Exception:  # a bad message must not kill the connection loop
                    logger.exception("handling a frame of type %d from validator %d failed", mtype, index)
        finally:
            if self.peers.get(index) is peer:
                del self.peers[index]
                logger.info("validator %d disconnected", index)
            if peer.task is not None:
                peer.task.cancel()
