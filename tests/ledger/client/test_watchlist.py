"""Pipeline watchlist: decrypting registry records, matching, incremental sync against a real cluster."""

from __future__ import annotations

import base64
import os

import numpy as np
import pytest

from ledger.client import keys as keyring, privacy
from ledger.client.registry_client import RegistryClient
from ledger.client.watchlist import Watchlist, WatchlistSync
from pipelines.recognition.matching import MatchConfig
from pipelines.recognition.watchlist_index import Subject, index_from_watchlist
from tests.ledger_util import make_cluster

CHAIN = "watch-unit"


def _rec(p: bytes, version: int, kek: bytes, kid: bytes, risk: int, templates, status: str = "live",
         height: int = 1, with_key: bool = True) -> dict:
    record = privacy.SubjectRecord.make(risk=risk, suspect=risk > 80, templates=templates)
    sealed = privacy.seal_record(record, CHAIN, p, version, kek, kid)
    return {"pseudonym": p.hex(), "status": status, "version": version, "height": height,
            "nonce": base64.b64encode(sealed.nonce).decode(), "ciphertext": base64.b64encode(sealed.ciphertext).decode(),
            "wrapped_key": base64.b64encode(sealed.wrapped_key).decode() if with_key else None}


def _match(wl: Watchlist, embedding, threshold: float) -> "tuple[Subject, float] | None":
    """The pipeline's matcher (pipelines.recognition.matching, margin 0) over the decrypted watchlist: the matched subject
    and its cosine, or None for an unknown face."""
    index = index_from_watchlist(wl, 0.0)
    r = index.match(np.asarray(embedding, np.float32).reshape(1, -1), MatchConfig(threshold, 0.0))[0]
    return (index.subjects[r.subject], r.best) if r.matched else None


def test_watchlist_apply_match_and_erase() -> None:
    kek, kid = os.urandom(32), b"kid-0001"
    rng = np.random.default_rng(1)
    ta, tb = rng.standard_normal(128).astype(np.float32), rng.standard_normal(128).astype(np.float32)
    pa, pb = os.urandom(32), os.urandom(32)
    wl = Watchlist({kid: kek}, CHAIN)
    assert _match(wl, ta, 0.3) is None  # empty: unknown face
    assert wl.apply_record(_rec(pa, 1, kek, kid, 90, [ta]))
    assert wl.apply_record(_rec(pb, 1, kek, kid, 20, [tb]))
    m = _match(wl, ta + 0.05 * rng.standard_normal(128).astype(np.float32), 0.363)
    assert m is not None and m[0].pseudonym == pa and m[0].risk == 90 and m[0].suspect and m[1] > 0.9
    assert _match(wl, rng.standard_normal(128), 0.9) is None
    assert _match(wl, np.zeros(128), 0.1) is None
    # an update replaces the entry; an older version never overwrites a newer one
    assert wl.apply_record(_rec(pa, 2, kek, kid, 40, [ta]))
    assert wl.get(pa).risk == 40
    wl.apply_record(_rec(pa, 1, kek, kid, 99, [ta]))
    assert wl.get(pa).risk == 40
    # erasure removes it
    wl.apply_record({"pseudonym": pa.hex(), "status": "erased", "version": 3, "height": 5})
    assert wl.get(pa) is None and len(wl) == 1
    assert _match(wl, ta, 0.5) is None
    assert "risk" in repr(wl.get(pb)) and tb.tobytes() not in repr(wl.get(pb)).encode()


def test_watchlist_fails_closed_on_bad_records() -> None:
    kek, kid = os.urandom(32), b"kid-0001"
    p = os.urandom(32)
    wl = Watchlist({kid: kek}, CHAIN)
    rec = _rec(p, 1, kek, kid, 50, [np.ones(128, np.float32)])
    tampered = dict(rec, ciphertext=base64.b64encode(b"\x00" * 80).decode())
    assert not wl.apply_record(tampered) and wl.get(p) is None and p in wl.unresolved
    assert not wl.apply_record(dict(rec, wrapped_key=None)) and wl.get(p) is None
    other = Watchlist({b"other-id": os.urandom(32)}, CHAIN)  # a keyring without this KEK
    assert not other.apply_record(rec) and len(other) == 0
    assert wl.apply_record(rec) and wl.get(p).risk == 50 and p not in wl.unresolved
    # a later version whose key is missing keeps the older usable entry, and is retried later
    assert not wl.apply_record(_rec(p, 2, kek, kid, 60, [np.ones(128, np.float32)], with_key=False))
    assert wl.get(p).risk == 50 and p in wl.unresolved


def test_older_records_never_undo_an_erasure_or_a_newer_version() -> None:
    """What a lagging or lying node may serve later: older versions of subjects this watchlist already knows."""
    kek, kid = os.urandom(32), b"kid-0001"
    t = np.random.default_rng(7).standard_normal(128).astype(np.float32)
    p, q = os.urandom(32), os.urandom(32)
    wl = Watchlist({kid: kek}, CHAIN)
    assert wl.apply_record(_rec(p, 1, kek, kid, 95, [t]))
    wl.apply_record({"pseudonym": p.hex(), "status": "erased", "version": 2, "height": 4})
    assert not wl.apply_record(_rec(p, 1, kek, kid, 95, [t])) or wl.get(p) is None
    assert wl.get(p) is None and _match(wl, t, 0.5) is None  # the erased subject stays erased
    # version 2 of q is wanted but its key is missing: an older version 1 must not be applied instead
    assert not wl.apply_record(_rec(q, 2, kek, kid, 20, [t], with_key=False))
    assert not wl.apply_record(_rec(q, 1, kek, kid, 95, [t])) and wl.get(q) is None and q in wl.unresolved
    assert wl.apply_record(_rec(q, 2, kek, kid, 20, [t])) and wl.get(q).risk == 20


@pytest.mark.slow
def test_watchlist_incremental_sync_against_cluster(tmp_path) -> None:
    cluster = make_cluster(tmp_path / "ledger")
    keyring.init_keyring(tmp_path / "keys")
    ring = keyring.load_keyring(tmp_path / "keys")
    try:
        cluster.up(wait_height=1, timeout_s=90)
        mgr = RegistryClient.from_dir(tmp_path / "ledger", "manager", tmp_path / "keys")
        rng = np.random.default_rng(3)
        temps = {i: rng.standard_normal(128).astype(np.float32) for i in range(3)}
        idents = {i: privacy.Identity(f"Watch Subject {i}", f"1980-01-1{i}") for i in range(3)}
        for i in range(2):
            mgr.register(idents[i], privacy.SubjectRecord.make(risk=30 + i, suspect=False, templates=[temps[i]]))
        from ledger.client.api_client import LedgerClient

        clients = [LedgerClient.for_validator(v, cluster.key_seed("pipeline")) for v in cluster.genesis.validators]
        sync = WatchlistSync(clients, Watchlist(ring.keks, cluster.genesis.chain_id), cluster.genesis.public_keys())
        assert sync.sync() == 2 and len(sync.watchlist) == 2
        h1 = sync.watchlist.height
        assert h1 >= 1
        # current at a certified height: at least the highest certified tip seen, no node caught lagging
        assert sync.confirmed_height >= 1 and h1 >= sync.confirmed_height == sync.seen_height
        assert sync.stale_nodes == {}
        m = _match(sync.watchlist, temps[1], 0.363)
        assert m is not None and m[0].risk == 31
        # nothing changed: an incremental sync applies nothing
        assert sync.sync() == 0
        mgr.update(idents[0], risk=95, suspect=True)
        mgr.register(idents[2], privacy.SubjectRecord.make(risk=5, suspect=False, templates=[temps[2]]))
        mgr.erase(idents[1])
        assert sync.sync() == 3  # exactly the three changed subjects
        wl = sync.watchlist
        assert wl.height > h1 and len(wl) == 2
        assert _match(wl, temps[0], 0.363)[0].risk == 95 and _match(wl, temps[0], 0.363)[0].suspect
        assert _match(wl, temps[1], 0.363) is None  # erased
        assert _match(wl, temps[2], 0.363)[0].risk == 5
        # the pipeline key may read the watchlist but not submit registry transactions
        pipe = RegistryClient.from_dir(tmp_path / "ledger", "pipeline", tmp_path / "keys")
        from ledger.ops.manager_cli import RegistryError

        with pytest.raises(RegistryError, match="may not"):
            pipe.register(privacy.Identity("Not Allowed", "1999-09-09"), privacy.SubjectRecord.make(1, False))
        mgr.close()
        pipe.close()
    finally:
        cluster.down()
