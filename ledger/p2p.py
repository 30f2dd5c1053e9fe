"""Authenticated peer-to-peer transport between validators: asyncio TCP, length-prefixed frames.

Topology: every pair of validators keeps one connection; the lower index dials the higher one and redials
with exponential backoff (0.1 s doubling to 2 s) whenever it drops. Each connection starts with a mutual
handshake that proves both validator keys:

1. both sides send ``HELLO`` = genesis hash (32) | own index (u16) | fresh random challenge (32);
2. both answer ``AUTH`` = Ed25519 signature, in the p2p-handshake domain, over
   genesis hash | peer's challenge | own challenge | own index | peer index.

A side whose genesis differs, whose index is unknown or whose signature does not verify with its genesis
public key is dropped. After the handshake, frames are ``u32 length | u8 type | body`` (length counts type
and body, at most :data:`MAX_FRAME`). The transport carries opaque bodies; :mod:`ledger.node` gives the
types their meaning. A slow peer never blocks the others: each peer has its own bounded send queue and the
oldest frames are dropped when it overflows (consensus re-sends what matters).
"""

from __future__ import annotations

import asyncio
import logging
import os
import struct
from dataclasses import dataclass, field
from typing import Awaitable, Callable, Optional

from ledger import crypto
from ledger.config import Genesis

logger = logging.getLogger(__name__)

MAX_FRAME = 32 * 1024 * 1024
HANDSHAKE_TIMEOUT_S = 5.0
SEND_QUEUE_MAX = 20000
BACKOFF_MIN_S = 0.1
BACKOFF_MAX_S = 2.0

# Frame types (node-level meaning; kept here so every user agrees on the numbers).
T_HELLO = 1
T_AUTH = 2
T_PROPOSAL = 10
T_VOTE = 11
T_TXS = 12
T_STATUS = 13
T_SYNC_REQ = 14
T_SYNC_RESP = 15
T_BLOCK_PART = 16

OnMessage = Callable[[int, int, bytes], Awaitable[None]]
OnConnect = Callable[[int], Awaitable[None]]


class P2PError(Exception):
    """A peer violated the protocol (bad frame, bad handshake)."""


def _handshake_msg(genesis_hash: bytes, peer_challenge: bytes, own_challenge: bytes, own: int,
                   peer: int) -> bytes:
    return genesis_hash + peer_challenge + own_challenge + struct.pack(">HH", own, peer)


async def read_frame(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    head = await reader.readexactly(4)
    (n,) = struct.unpack(">I", head)
    if n < 1 or n > MAX_FRAME:
        raise P2PError(f"frame length {n} out of range")
    data = await reader.readexactly(n)
    return data[0], data[1:]


def encode_frame(mtype: int, body: bytes) -> bytes:
    return struct.pack(">IB", len(body) + 1, mtype) + body


@dataclass
class Peer:
    index: int
    writer: asyncio.StreamWriter
    queue: asyncio.Queue = field(default_factory=lambda: asyncio.Queue(SEND_QUEUE_MAX))
    task: Optional[asyncio.Task] = None
    dropped: int = 0


class P2P:
    """Connections to every other validator of ``genesis``; deliver frames to ``on_message``."""

    def __init__(self, genesis: Genesis, index: int, key: "crypto.PrivateKey", on_message: OnMessage,
                 on_connect: Optional[OnConnect] = None) -> None:
        self.genesis = genesis
        self.genesis_hash = genesis.hash()
        self.index = index
        self.key = key
        self.on_message = on_message
        self.on_connect = on_connect
        self.peers: dict[int, Peer] = {}
        self._server: Optional[asyncio.base_events.Server] = None
        self._tasks: set[asyncio.Task] = set()
        self._closing = False
        self._pubkeys = [crypto.PublicKey.from_bytes(v.public_key) for v in genesis.validators]

    # -- lifecycle -----------------------------------------------------------------------------------------
    async def start(self, host: str, port: int) -> int:
        self._server = await asyncio.start_server(self._accept, host, port, reuse_address=True,
                                                  limit=MAX_FRAME + 16)
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
        for t in list(self._tasks):
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def _spawn(self, coro: Awaitable) -> asyncio.Task:
        t = asyncio.ensure_future(coro)
        self._tasks.add(t)
        t.add_done_callback(self._tasks.discard)
        return t

    # -- sending -------------------------------------------------------------------------------------------
    def connected(self) -> list[int]:
        return sorted(self.peers)

    def send(self, peer: int, mtype: int, body: bytes) -> bool:
        p = self.peers.get(peer)
        if p is None:
            return False
        frame = encode_frame(mtype, body)
        if p.queue.full():
            try:
                p.queue.get_nowait()
                p.dropped += 1
            except asyncio.QueueEmpty:
                pass
        p.queue.put_nowait(frame)
        return True

    def broadcast(self, mtype: int, body: bytes) -> int:
        frame = encode_frame(mtype, body)
        n = 0
        for p in self.peers.values():
            if p.queue.full():
                try:
                    p.queue.get_nowait()
                    p.dropped += 1
                except asyncio.QueueEmpty:
                    pass
            p.queue.put_nowait(frame)
            n += 1
        return n

    async def _sender(self, peer: Peer) -> None:
        try:
            while True:
                frame = await peer.queue.get()
                chunks = [frame]
                while not peer.queue.empty() and len(chunks) < 256:
                    chunks.append(peer.queue.get_nowait())
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
            try:
                reader, writer = await asyncio.wait_for(
                    asyncio.open_connection(host, port, limit=MAX_FRAME + 16), HANDSHAKE_TIMEOUT_S)
            except (OSError, asyncio.TimeoutError):
                await asyncio.sleep(backoff)
                backoff = min(BACKOFF_MAX_S, backoff * 2)
                continue
            try:
                got = await self._handshake(reader, writer, expect=peer_index)
                backoff = BACKOFF_MIN_S
                await self._run_peer(got, reader, writer)
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
        try:
            got = await self._handshake(reader, writer, expect=None)
            if got > self.index:
                raise P2PError(f"validator {got} must be dialled by us, not dial in")
            await self._run_peer(got, reader, writer)
        except (P2PError, ConnectionError, asyncio.IncompleteReadError, asyncio.TimeoutError) as exc:
            logger.debug("inbound connection refused: %s", exc)
        except asyncio.CancelledError:
            pass
        finally:
            writer.close()
            if task is not None:
                self._tasks.discard(task)

    async def _handshake(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                         expect: Optional[int]) -> int:
        challenge = os.urandom(32)
        writer.write(encode_frame(T_HELLO, self.genesis_hash + struct.pack(">H", self.index) + challenge))
        await writer.drain()
        mtype, body = await asyncio.wait_for(read_frame(reader), HANDSHAKE_TIMEOUT_S)
        if mtype != T_HELLO or len(body) != 66:
            raise P2PError("bad hello")
        if body[:32] != self.genesis_hash:
            raise P2PError("peer runs another chain (genesis hash differs)")
        (peer,) = struct.unpack(">H", body[32:34])
        peer_challenge = body[34:]
        if peer >= self.genesis.n or peer == self.index or (expect is not None and peer != expect):
            raise P2PError(f"unexpected peer index {peer}")
        sig = self.key.sign(crypto.DOMAIN_P2P_HANDSHAKE,
                            _handshake_msg(self.genesis_hash, peer_challenge, challenge, self.index, peer))
        writer.write(encode_frame(T_AUTH, sig))
        await writer.drain()
        mtype, body = await asyncio.wait_for(read_frame(reader), HANDSHAKE_TIMEOUT_S)
        expected = _handshake_msg(self.genesis_hash, challenge, peer_challenge, peer, self.index)
        if mtype != T_AUTH or not self._pubkeys[peer].verify(crypto.DOMAIN_P2P_HANDSHAKE, expected, body):
            raise P2PError(f"validator {peer} failed to prove its key")
        return peer

    async def _run_peer(self, index: int, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        old = self.peers.get(index)
        if old is not None:  # a newer connection replaces a stale one
            old.writer.close()
            if old.task is not None:
                old.task.cancel()
        peer = Peer(index, writer)
        peer.task = self._spawn(self._sender(peer))
        self.peers[index] = peer
        logger.info("validator %d connected", index)
        try:
            if self.on_connect is not None:
                await self.on_connect(index)
            while True:
                mtype, body = await read_frame(reader)
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
