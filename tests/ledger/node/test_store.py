"""The node's SQLite store and the cluster config: durability, conflicts, corruption, key deletion."""

from __future__ import annotations

import json
import os
import stat

import pytest

from ledger.config import ClientRegistry, ConfigError, Genesis, KeyFile, NodeConfig
from ledger.node.store import Store, StoreConflict, StoreCorrupt

GH = b"\x11" * 32


def _store(tmp_path, chain="c1", gh=GH) -> Store:
    return Store(tmp_path / "ledger.db", chain, gh)


def test_blocks_round_trip_and_survive_reopen(tmp_path):
    s = _store(tmp_path)
    assert s.height == 0
    for h in range(1, 4):
        s.save_block(h, bytes([h]) * 32, 1000 + h, b"block%d" % h, b"cert%d" % h, [bytes([h, i]) * 16 for i in range(3)])
    s.close()
    s = _store(tmp_path)
    assert s.height == 3
    b = s.get_block(2)
    assert (b.height, b.block, b.cert, b.n_txs, b.time_ms) == (2, b"block2", b"cert2", 3, 1002)
    assert [x.height for x in s.get_blocks(2, 10)] == [2, 3]
    assert s.tx_location(bytes([3, 1]) * 16) == (3, 1)
    assert s.tx_location(b"\0" * 32) is None
    assert s.has_txs([bytes([1, 0]) * 16, b"\0" * 32]) == {bytes([1, 0]) * 16}
    assert s.last_block_time() == 1003


def test_refuses_gap_and_second_block_at_height(tmp_path):
    s = _store(tmp_path)
    s.save_block(1, b"a" * 32, 1, b"b1", b"c1", [])
    s.save_block(1, b"a" * 32, 1, b"b1", b"c1", [])  # same block again: idempotent
    with pytest.raises(StoreConflict):
        s.save_block(1, b"z" * 32, 1, b"other", b"c1", [])
    with pytest.raises(StoreConflict):
        s.save_block(3, b"c" * 32, 1, b"b3", b"c3", [])
    assert s.height == 1


def test_other_chain_data_dir_refused(tmp_path):
    _store(tmp_path).close()
    with pytest.raises(StoreConflict, match="another chain"):
        _store(tmp_path, chain="c2")
    with pytest.raises(StoreConflict, match="another chain"):
        _store(tmp_path, gh=b"\x22" * 32)


def test_signed_votes_persist_and_prune(tmp_path):
    s = _store(tmp_path)
    s.save_signed(1, 0, 2, b"vote-1-0-2")
    s.save_signed(5, 1, 1, b"vote-5-1-1")
    s.close()
    s = _store(tmp_path)
    assert s.get_signed(1, 0, 2) == b"vote-1-0-2"
    assert [m for *_, m in s.signed_from(2)] == [b"vote-5-1-1"]
    for h in range(1, 4):
        s.save_block(h, bytes([h]) * 32, h, b"b", b"c", [])
    assert s.get_signed(1, 0, 2) is None  # below the finalized height: pruned
    assert s.get_signed(5, 1, 1) == b"vote-5-1-1"


def test_evidence_deduplicated(tmp_path):
    s = _store(tmp_path)
    assert s.add_evidence(3, 2, "duplicate_vote", b"ev", 10)
    assert not s.add_evidence(3, 2, "duplicate_vote", b"ev", 11)
    ev = s.list_evidence()
    assert len(ev) == 1 and ev[0]["validator"] == 2 and ev[0]["kind"] == "duplicate_vote"


def test_wrapped_key_deleted_from_file(tmp_path):
    s = _store(tmp_path)
    marker = os.urandom(16) * 4
    s.put_wrapped_key(b"P" * 32, marker, 7)
    assert s.get_wrapped_key(b"P" * 32) == marker
    assert s.delete_wrapped_key(b"P" * 32)
    assert not s.delete_wrapped_key(b"P" * 32)
    assert s.get_wrapped_key(b"P" * 32) is None
    s.close()
    for f in tmp_path.iterdir():
        assert marker not in f.read_bytes(), f"deleted key bytes still in {f.name}"


def test_corrupt_file_fails_hard(tmp_path):
    (tmp_path / "ledger.db").write_bytes(b"this is not a database" * 100)
    with pytest.raises(StoreCorrupt):
        _store(tmp_path)


def test_corrupt_block_blob_detected(tmp_path):
    s = _store(tmp_path)
    s.save_block(1, b"a" * 32, 1, b"block-one", b"cert", [])
    s._db.execute("UPDATE blocks SET block=? WHERE height=1", (b"block-ONE",))
    with pytest.raises(StoreCorrupt, match="checksum"):
        s.get_block(1)


def _genesis_dict(n=4):
    return {"chain_id": "t", "genesis_time": 1, "validators": [
        {"index": i, "public_key": (bytes([i + 1]) * 32).hex(),
         "p2p_address": f"127.0.0.1:{1000 + i}", "api_address": f"127.0.0.1:{2000 + i}"} for i in range(n)]}


def test_genesis_quorum_and_validation():
    g = Genesis.from_dict(_genesis_dict())
    assert (g.n, g.f, g.quorum) == (4, 1, 3)
    assert Genesis.from_dict(_genesis_dict(7)).quorum == 5
    assert g.hash() == Genesis.from_dict(g.to_dict()).hash()
    bad = _genesis_dict()
    bad["validators"][1]["public_key"] = "zz"
    with pytest.raises(ConfigError, match=r"validators\[1\].public_key"):
        Genesis.from_dict(bad)
    bad = _genesis_dict()
    bad["validators"][2]["p2p_address"] = "nohost"
    with pytest.raises(ConfigError, match="host:port"):
        Genesis.from_dict(bad)
    bad = _genesis_dict()
    bad["validators"][3]["public_key"] = bad["validators"][0]["public_key"]
    with pytest.raises(ConfigError, match="distinct"):
        Genesis.from_dict(bad)


def test_client_registry_and_node_config(tmp_path):
    with pytest.raises(ConfigError, match="role must be one of"):
        ClientRegistry.from_dict({"clients": [{"public_key": "11" * 32, "role": "root"}]})
    reg = ClientRegistry.from_dict({"clients": [{"public_key": "AB" * 32, "role": "auditor"}]})
    assert reg.lookup("ab" * 32).role == "auditor"
    cfg_path = tmp_path / "n.json"
    cfg_path.write_text(json.dumps({"index": 0, "genesis_file": "g.json", "clients_file": "c.json",
                                    "key_file": "k.key", "data_dir": "d", "block_interval": 0.5}))
    cfg = NodeConfig.load(cfg_path)
    assert cfg.data_dir == tmp_path.resolve() / "d" and cfg.block_interval == 0.5
    cfg_path.write_text(json.dumps({"index": 0, "genesis_file": "g", "clients_file": "c", "key_file": "k",
                                    "data_dir": "d", "timeout_propose": -1}))
    with pytest.raises(ConfigError, match="timeout_propose"):
        NodeConfig.load(cfg_path)
    cfg_path.write_text("{not json")
    with pytest.raises(ConfigError, match="not valid JSON"):
        NodeConfig.load(cfg_path)
    with pytest.raises(ConfigError, match="not found"):
        NodeConfig.load(tmp_path / "missing.json")


def test_key_file_mode_0600_enforced(tmp_path):
    p = tmp_path / "k.key"
    KeyFile(b"\x01" * 32, "manager").save(p)
    assert stat.S_IMODE(p.stat().st_mode) == 0o600
    assert KeyFile.load(p).seed == b"\x01" * 32
    os.chmod(p, 0o644)
    with pytest.raises(ConfigError, match="too open"):
        KeyFile.load(p)
