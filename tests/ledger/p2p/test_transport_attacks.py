"""Attacks on the validator transport, run against real node processes over real sockets.

Each test plays the attacker from the test process: a host that can reach the validators' p2p ports
(relay, impersonation, unauthenticated memory exhaustion), a Byzantine validator that holds its real key
(proposal and gossip flooding, a forged status to a wiped node), and checks what the real nodes did.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sqlite3
import stat
import struct
import threading
import time
from pathlib import Path

import pytest

from ledger.config import KeyFile
from ledger.ops.cluster import Cluster
from ledger.p2p import sync, transport as p2p
from ledger.types import crypto
from ledger.types.block import (TX_ANCHOR, Block, Proposal, ProposalStub, Transaction, Vote, decode_message,
                                validator_set_hash)
from tests.ledger_util import heights, make_cluster, wait_for

pytestmark = pytest.mark.slow

MiB = 1024 * 1024


@pytest.fixture
def cluster(tmp_path):
    c = make_cluster(tmp_path / "c")
    try:
        yield c
    finally:
        c.down()


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024.0
    raise AssertionError(f"no VmRSS for pid {pid}")


def _validator_key(c: Cluster, i: int) -> crypto.PrivateKey:
    return crypto.PrivateKey.from_seed(KeyFile.load(c.dir / "keys" / f"node{i}.key").seed)


def _top(c: Cluster, nodes) -> int:
    return max(heights(c, nodes).values(), default=-1)


class _RssSampler:
    """Samples the resident size of some processes every 50 ms on a thread; keeps the maximum."""

    def __init__(self, pids: dict[int, int]) -> None:
        self.pids = pids
        self.base = {i: _rss_mb(p) for i, p in pids.items()}
        self.peak = dict(self.base)
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            for i, p in self.pids.items():
                try:
                    self.peak[i] = max(self.peak[i], _rss_mb(p))
                except (OSError, AssertionError):
                    pass
            time.sleep(0.05)

    def __enter__(self) -> "_RssSampler":
        self._t.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._t.join()

    def growth(self) -> dict[int, float]:
        return {i: round(self.peak[i] - self.base[i], 1) for i in self.pids}


# -- relay / impersonation / non-validator -----------------------------------------------------------------

async def _read_some(reader: asyncio.StreamReader, n: int, timeout: float) -> bytes:
    try:
        return await asyncio.wait_for(reader.readexactly(n), timeout)
    except (asyncio.IncompleteReadError, asyncio.TimeoutError, ConnectionError):
        return b""


async def _old_style_relay(c: Cluster) -> dict:
    """The relay of issue 12: splice validator 0's handshake answer into a connection to validator 3,
    claiming to be validator 0, then ask validator 3 for blocks. Returns what the attacker obtained."""
    g = c.genesis
    out = {"hello3": b"", "auth0": b"", "frames": []}
    r3, w3 = await asyncio.open_connection(*g.validators[3].p2p_hostport)
    r0, w0 = await asyncio.open_connection(*g.validators[0].p2p_hostport)
    try:
        hello3 = await _read_some(r3, 71, 3.0)  # u32 len | type | genesis(32) | index(2) | challenge(32)
        hello0 = await _read_some(r0, 71, 3.0)
        out["hello3"] = hello3
        if len(hello3) != 71 or len(hello0) != 71:
            return out
        c3, c0 = hello3[-32:], hello0[-32:]
        gh = hello3[5:37]
        w0.write(struct.pack(">IB", 67, 1) + gh + struct.pack(">H", 3) + c3)  # to 0: "I am 3", 3's challenge
        await w0.drain()
        auth0 = await _read_some(r0, 69, 3.0)
        out["auth0"] = auth0
        if len(auth0) != 69:
            return out
        w3.write(struct.pack(">IB", 67, 1) + gh + struct.pack(">H", 0) + c0)  # to 3: "I am 0", 0's challenge
        w3.write(auth0)  # validator 0's signature, relayed
        w3.write(struct.pack(">IB", 11, p2p.T_SYNC_REQ) + struct.pack(">QH", 1, 8))
        await w3.drain()
        await _read_some(r3, 69, 3.0)  # validator 3's AUTH
        deadline = time.monotonic() + 4.0
        while time.monotonic() < deadline:
            head = await _read_some(r3, 4, max(0.1, deadline - time.monotonic()))
            if len(head) != 4:
                break
            (n,) = struct.unpack(">I", head)
            if n > 64 * MiB:
                break
            body = await _read_some(r3, n, 3.0)
            if len(body) != n:
                break
            out["frames"].append(body[0])
    finally:
        w0.close()
        w3.close()
    return out


def test_relay_and_impersonation_refused(cluster):
    """A host between two validators can neither relay one's handshake to the other nor pose as one."""
    cluster.up(wait_height=2, timeout_s=120)
    g = cluster.genesis

    async def scenario() -> tuple[dict, list, list]:
        relay = await _old_style_relay(cluster)
        got: list = []

        async def on_msg(peer, t, b):
            got.append((peer, t))

        impostors = []
        # A validator index with a key not in the genesis, and a "validator 0" without validator 0's key.
        for idx in (0, 1):
            imp = p2p.P2P(g, idx, crypto.PrivateKey.generate(), on_msg)
            await imp.start("127.0.0.1", 0)
            impostors.append(imp)
        await asyncio.sleep(4.0)
        connected = [imp.connected() for imp in impostors]
        for imp in impostors:
            await imp.stop()
        return relay, got, connected

    relay, got, connected = asyncio.run(scenario())
    print("relay attack obtained frame types:", relay["frames"], "auth0 bytes:", len(relay["auth0"]))
    assert relay["frames"] == [], f"the relayed handshake was accepted: frames {relay['frames']} received"
    assert not relay["auth0"], "validator 0 signed a handshake for an unauthenticated peer"
    assert got == [], f"an impostor received frames {got[:5]}"
    assert connected == [[], []], f"an impostor completed a handshake: {connected}"
    # The real validators are still all connected to each other.
    for i in range(4):
        with cluster.client(i, "auditor") as cl:
            assert sorted(cl.status()["peers"]) == [j for j in range(4) if j != i]


def test_non_validator_gets_no_signature(cluster):
    """A node answers a host that claims a validator index with nothing signed (no signing oracle)."""
    cluster.up(wait_height=1, timeout_s=120)
    g = cluster.genesis
    pub3 = crypto.PublicKey.from_bytes(g.validators[3].public_key)

    async def probe() -> bytes:
        r, w = await asyncio.open_connection(*g.validators[3].p2p_hostport)
        try:
            challenge = os.urandom(32)
            w.write(struct.pack(">IB", 67, 1) + g.hash() + struct.pack(">H", 0) + challenge)
            await w.drain()
            data = b""
            deadline = time.monotonic() + 6.0
            while time.monotonic() < deadline:
                try:
                    chunk = await asyncio.wait_for(r.read(4096), max(0.1, deadline - time.monotonic()))
                except (asyncio.TimeoutError, ConnectionError):
                    break
                if not chunk:
                    break
                data += chunk
            return challenge + data
        finally:
            w.close()

    raw = asyncio.run(probe())
    challenge, data = raw[:32], raw[32:]
    # The old handshake answered HELLO (71 bytes) then AUTH (u32 | type | 64-byte signature): a signature
    # by validator 3 over our challenge, before we proved anything, would make the node a signing oracle.
    signed_ours = False
    if len(data) >= 140:
        node_challenge, sig = data[39:71], data[76:140]
        msg = g.hash() + challenge + node_challenge + struct.pack(">HH", 3, 0)
        signed_ours = pub3.verify(crypto.DOMAIN_P2P_HANDSHAKE, msg, sig)
    print("bytes sent by the node to an unauthenticated peer:", len(data))
    assert not signed_ours, "validator 3 signed our challenge before we proved anything"
    assert len(data) <= 64, f"the node sent {len(data)} bytes to an unauthenticated peer"

    # The same host speaking the current handshake, claiming validator 0 with its own key: it gets the
    # node's ephemeral key (nothing signed), then, with a proof that does not verify, only a closed socket.
    from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

    async def probe_current() -> tuple[bytes, bytes]:
        r, w = await asyncio.open_connection(*g.validators[3].p2p_hostport)
        try:
            eph = X25519PrivateKey.generate()
            e_i = eph.public_key().public_bytes_raw()
            w.write(p2p.MAGIC + g.hash() + struct.pack(">HH", 0, 3) + e_i)
            await w.drain()
            msg2 = await _read_some(r, p2p.MSG2_LEN, 5.0)
            if len(msg2) != p2p.MSG2_LEN:
                return msg2, b""
            th = p2p.transcript_hash(g.hash(), 0, 3, e_i, msg2[4:])
            chan = p2p.derive_channel(eph, msg2[4:], th, initiator=True)
            fake = crypto.PrivateKey.generate()  # not validator 0's key
            w.write(chan.seal_auth(fake.sign(p2p.DOMAIN_P2P_AUTH, p2p.DIR_INITIATOR + th, g.chain_id)))
            await w.drain()
            try:
                rest = await asyncio.wait_for(r.read(), 6.0)
            except (asyncio.TimeoutError, ConnectionError):
                rest = b"?timeout"
            return msg2, rest
        finally:
            w.close()

    msg2, rest = asyncio.run(probe_current())
    assert len(msg2) == p2p.MSG2_LEN and msg2[:4] == p2p.MAGIC
    assert rest == b"", f"after a failed proof the node sent {len(rest)} more bytes or kept the connection"


# -- unauthenticated memory exhaustion ---------------------------------------------------------------------

def test_200_unauthenticated_huge_frames_keep_memory_and_commits(cluster):
    cluster.up(wait_height=2, timeout_s=120)
    pid = cluster.pid(0)
    host, port = cluster.genesis.validators[0].p2p_hostport
    base = _rss_mb(pid)
    h0 = _top(cluster, [0])

    async def flood(count: int) -> list:
        conns = []
        for _ in range(count):
            try:
                r, w = await asyncio.open_connection(host, port)
            except OSError:
                continue
            conns.append((r, w))
            w.write(struct.pack(">I", 32 * MiB) + b"\x01" + os.urandom(MiB))  # declares 32 MiB, sends 1 MiB
        for _, w in conns:
            try:
                await asyncio.wait_for(w.drain(), 0.5)
            except (asyncio.TimeoutError, ConnectionError):
                pass
        return conns

    async def scenario() -> tuple[int, int, int]:
        loop = asyncio.get_running_loop()
        conns = await flood(200)
        h_start = await loop.run_in_executor(None, _top, cluster, [0])
        for _ in range(10):  # keep it up for 5 s: 20 fresh connections every half second
            conns += await flood(20)
            await asyncio.sleep(0.5)
        h_end = await loop.run_in_executor(None, _top, cluster, [0])
        for _, w in conns:
            w.close()
        return len(conns), h_start, h_end

    with _RssSampler({0: pid}) as s:
        n, h_start, h_end = asyncio.run(scenario())
    growth = s.peak[0] - base
    print(f"node 0 resident: base {base:.1f} MB, peak {s.peak[0]:.1f} MB (+{growth:.1f}) after {n} "
          f"connections; heights {h0} -> {h_start} -> {h_end} while they were open")
    assert n >= 300
    assert growth < 50, f"node 0 grew by {growth:.1f} MB under unauthenticated connections"
    assert h_end >= h_start + 3, f"node 0 stopped committing under the flood ({h_start} -> {h_end})"
    with cluster.client(0, "auditor") as cl:
        assert sorted(cl.status()["peers"]) == [1, 2, 3]


# -- a Byzantine validator flooding proposals and gossip -----------------------------------------------------

def _big_block_txs(c: Cluster, mib: float) -> list[Transaction]:
    key = crypto.PrivateKey.from_seed(c.key_seed("pipeline"))
    now = int(time.time() * 1000)
    size = 60 * 1024
    return [Transaction.create(key, c.genesis.chain_id, TX_ANCHOR, int.from_bytes(os.urandom(8), "big"), now,
                               os.urandom(size)) for _ in range(int(mib * MiB / size))]


def test_byzantine_proposal_flood_is_cut_off(tmp_path):
    """Validator 3 (its real key, in this process) floods the others with validly signed next-height
    proposals of 2 MiB blocks and 1 MiB gossip frames; honest memory stays bounded, 3 is cut off and
    the honest three keep committing."""
    c = make_cluster(tmp_path / "c", block_interval=5.0)
    try:
        c.up(wait_height=2, timeout_s=120)
        c.kill_node(3, signal.SIGTERM)
        honest = [0, 1, 2]
        g = c.genesis
        key3 = _validator_key(c, 3)
        vhash = validator_set_hash(g.public_keys())
        txs = _big_block_txs(c, 2.0)
        sampler = _RssSampler({i: c.pid(i) for i in honest})

        async def scenario() -> dict:
            async def on_msg(peer, t, b):
                pass

            byz = p2p.P2P(g, 3, key3, on_msg)
            await byz.start(*g.validators[3].p2p_hostport)
            loop = asyncio.get_running_loop()
            deadline = time.monotonic() + 20
            while len(byz.connected()) < 3 and time.monotonic() < deadline:
                await asyncio.sleep(0.1)
            assert byz.connected() == honest, byz.connected()
            sent = 0
            h = await loop.run_in_executor(None, _top, c, honest)
            junk = sync.encode_txs([os.urandom(64 * 1024) for _ in range(16)])
            for step in range(60):
                if step % 5 == 0:
                    h = await loop.run_in_executor(None, _top, c, honest)
                # A node at height h decides h+1 and buffers proposals for h+2.
                for height in (h + 1, h + 2):
                    rnd = (3 - height) % 4
                    blk = Block.build(g.chain_id, height, rnd, g.genesis_time + step, os.urandom(32), 3, vhash,
                                      txs, [])
                    stub = ProposalStub.create(key3, g.chain_id, height, rnd, -1, blk.hash(), 3)
                    data = Proposal(stub, blk).encode()
                    for peer in byz.connected():
                        byz.send(peer, p2p.T_PROPOSAL, data)
                        byz.send(peer, p2p.T_PROPOSAL, data)  # duplicates
                        sent += 2
                for peer in byz.connected():
                    byz.send(peer, p2p.T_TXS, junk)
                    byz.send(peer, p2p.T_TXS, junk)
                await asyncio.sleep(0.1)
            await asyncio.sleep(2.0)
            still = byz.connected()
            await byz.stop()
            return {"sent": sent, "still": still}

        with sampler:
            h_before = _top(c, honest)
            res = asyncio.run(scenario())
        growth = sampler.growth()
        print("byzantine flood:", res, "honest resident growth (MB):", growth)
        logs = {i: c.log_path(i).read_text(errors="replace") for i in honest}
        cut = {i: "cut off validator 3" in logs[i] for i in honest}
        print("cut off:", cut)
        assert all(v < 100 for v in growth.values()), f"honest memory grew {growth} MB"
        assert all(cut.values()), f"not every honest node cut validator 3 off: {cut}"
        wait_for(lambda: min(heights(c, honest).values()) >= h_before + 2, 60, "honest nodes to keep committing")
        for i in honest:
            db = sqlite3.connect(f"file:{c.data_dir(i) / 'ledger.db'}?mode=ro", uri=True)
            try:
                rows = db.execute("SELECT validator, reason FROM peer_faults").fetchall()
            finally:
                db.close()
            assert any(v == 3 for v, _ in rows), f"node {i} recorded no fault for validator 3: {rows}"
    finally:
        c.down()


# -- wiped node and a forged status ---------------------------------------------------------------------------

def test_wiped_node_ignores_one_forged_status(tmp_path):
    """Node 3 lost its data. Validator 2 (Byzantine, in this process) tells it the chain is new (height 0)
    while the honest validators are unreachable (stopped); node 3 must sign nothing on that word alone,
    and after hearing the honest ones it stays silent through the real tip + 2."""
    c = make_cluster(tmp_path / "c")
    stopped: list[int] = []
    try:
        c.up(wait_height=4, timeout_s=120)
        c.kill_node(2, signal.SIGTERM)
        c.kill_node(3, signal.SIGTERM)
        tip = _top(c, [0, 1])
        c.wipe_node(3)
        g = c.genesis
        key2 = _validator_key(c, 2)
        for i in (0, 1):
            os.kill(c.pid(i), signal.SIGSTOP)
            stopped.append(i)
        signed_by_3: list[tuple[int, int]] = []

        async def on_msg(peer, t, b):
            if peer == 3 and t in (p2p.T_VOTE, p2p.T_PROPOSAL):
                m = decode_message(b)
                signed_by_3.append((m.height, m.round) if isinstance(m, Vote) else (m.stub.height, m.stub.round))

        async def scenario() -> list:
            byz = p2p.P2P(g, 2, key2, on_msg)

            async def forged_status(peer: int) -> None:
                byz.send(peer, p2p.T_STATUS, sync.encode_status(0, 0))

            byz.on_connect = forged_status
            await byz.start(*g.validators[2].p2p_hostport)
            loop = asyncio.get_running_loop()
            await loop.run_in_executor(None, c.start_node, 3)
            await asyncio.sleep(8.0)  # long past node 3's propose timeout: it would have voted by now
            before = list(signed_by_3)
            for i in list(stopped):
                os.kill(c.pid(i), signal.SIGCONT)
                stopped.remove(i)
            await loop.run_in_executor(
                None, wait_for, lambda: heights(c, [3]).get(3, -1) >= tip, 60, "node 3 to resync")
            await asyncio.sleep(3.0)
            await byz.stop()
            return before

        before = asyncio.run(scenario())
        print(f"tip {tip}; node 3 signed while only the forged status was heard: {before}; "
              f"in all: {signed_by_3}")
        assert before == [], f"node 3 signed {before} on one forged status"
        assert all(h > tip + 2 for h, _ in signed_by_3), f"node 3 signed at a height <= {tip + 2}"
        log3 = c.log_path(3).read_text(errors="replace")
        assert "not signing anything before height" in log3
    finally:
        for i in stopped:
            try:
                os.kill(c.pid(i), signal.SIGCONT)
            except (OSError, TypeError):
                pass
        c.down()


# -- files ------------------------------------------------------------------------------------------------------

def test_data_dirs_0700_databases_0600(cluster):
    cluster.data_dir(0).mkdir(parents=True, exist_ok=True)
    os.chmod(cluster.data_dir(0), 0o755)  # a directory left open by an older version is closed on start
    cluster.up(wait_height=1, timeout_s=120)
    for i in range(4):
        d = cluster.data_dir(i)
        assert stat.S_IMODE(d.stat().st_mode) == 0o700, f"{d} is {oct(stat.S_IMODE(d.stat().st_mode))}"
        dbs = sorted(p for p in d.iterdir() if p.is_file())
        assert any(p.name == "ledger.db" for p in dbs)
        for p in dbs:
            mode = stat.S_IMODE(p.stat().st_mode)
            assert mode == 0o600, f"{p} is {oct(mode)}"
