"""Registry state on a node (index, key store hooks, watchlist paging) against the real node store."""

from __future__ import annotations

import base64
import hashlib
import os
import time
from dataclasses import dataclass

import numpy as np
import pytest

from ledger.client import privacy
from ledger.node.store import Store
from ledger.registry import payloads
from ledger.registry.kinds import TX_ANCHOR, TX_ERASE, TX_REGISTER
from ledger.registry.payloads import AnchorTx, EraseTx, SubjectTx
from ledger.registry.service import RegistryService
from ledger.registry.state import RegistryIndex

CHAIN = "registry-unit"
KEK, KID = os.urandom(32), b"kekid-01"


@pytest.fixture()
def service(tmp_path):
    store = Store(tmp_path / "ledger.db", CHAIN, hashlib.sha256(b"g").digest())
    svc = RegistryService(RegistryIndex(tmp_path / "registry.db"), store)
    yield svc, store
    svc.index.close()
    store.close()


def _sealed_tx(p: bytes, version: int, risk: int = 60):
    rec = privacy.SubjectRecord.make(risk=risk, suspect=False, templates=[np.ones(128, np.float32)])
    sealed = privacy.seal_record(rec, CHAIN, p, version, KEK, KID)
    op = payloads.OP_REGISTER if version == 1 else payloads.OP_UPDATE
    tx = SubjectTx(op=op, pseudonym=p, pkey_id=b"p" * 8, version=version, nonce=sealed.nonce,
                   ciphertext=sealed.ciphertext, kek_id=KID, key_commitment=sealed.key_commitment)
    return payloads.encode(tx), sealed


@dataclass(frozen=True)
class _Tx:
    """The fields of a ledger transaction the application reads."""

    kind: int
    sender: bytes
    payload: bytes


def _kind_of(payload: bytes) -> int:
    """The transaction kind whose payload operation ``payload`` carries (anchor for an opaque payload)."""
    return payloads.decode(payload).op if payload[:4] == payloads.MAGIC and len(payload) > 5 else TX_ANCHOR


def _txs(items):
    """(hash, payload) -> (hash, transaction of the payload's own kind)."""
    return [(h, _Tx(_kind_of(pl), b"s" * 32, pl)) for h, pl in items]


def _check(svc, payload: bytes, role: str):
    try:
        kind = _kind_of(payload)
    except payloads.PayloadError:
        kind = TX_REGISTER
    return svc.check_tx(kind, payload, role)


def _open(svc, p: bytes) -> privacy.SubjectRecord:
    import base64
    s = svc.subject_json(p)
    wrapped = base64.b64decode(s["wrapped_key"]) if s["wrapped_key"] else None
    return privacy.open_record(base64.b64decode(s["nonce"]), base64.b64decode(s["ciphertext"]), wrapped, CHAIN, p,
                               s["version"], KEK)


def test_register_update_erase_lifecycle(service) -> None:
    svc, store = service
    p = os.urandom(32)
    reg, sealed = _sealed_tx(p, 1)
    assert _check(svc, reg, "manager") is None
    svc.upload_key(p, sealed.wrapped_key)
    svc.apply_block(1, _txs([(b"h1" * 16, reg)]))
    assert store.get_wrapped_key(p) == sealed.wrapped_key
    assert _open(svc, p).risk == 60
    assert "already registered" in _check(svc, reg, "manager")

    upd, sealed2 = _sealed_tx(p, 2, risk=95)
    assert "does not follow" in _check(svc, _sealed_tx(p, 3)[0], "manager")
    svc.upload_key(p, sealed2.wrapped_key)
    svc.apply_block(2, _txs([(b"h2" * 16, upd)]))
    assert _open(svc, p).risk == 95 and store.get_wrapped_key(p) == sealed2.wrapped_key

    erase = payloads.encode(EraseTx(pseudonym=p, version=3))
    assert _check(svc, erase, "manager") is None
    svc.apply_block(3, _txs([(b"h3" * 16, erase)]))
    assert store.get_wrapped_key(p) is None
    out = svc.subject_json(p)
    assert out["status"] == "erased" and out["ciphertext"] is None and out["wrapped_key"] is None
    with pytest.raises(privacy.KeyErased):
        privacy.open_record(sealed2.nonce, sealed2.ciphertext, store.get_wrapped_key(p), CHAIN, p, 2, KEK)
    assert "erased" in _check(svc, _sealed_tx(p, 4)[0], "manager")
    assert "erased" in _check(svc, reg, "manager")
    # erased bytes are gone from the node's database files
    for f in store.path.parent.iterdir():
        if f.is_file():
            assert sealed2.wrapped_key not in f.read_bytes(), f


def test_roles_and_garbage(service) -> None:
    svc, _ = service
    erase_x = payloads.encode(EraseTx(pseudonym=b"x" * 32, version=2))
    anchor = payloads.encode(AnchorTx(camera_id="cam", window_start_us=1, window_end_us=2, record_count=3,
                                      merkle_root=b"r" * 32))
    assert _check(svc, anchor, "pipeline") is None
    assert _check(svc, anchor, "manager").startswith("forbidden")
    reg, _ = _sealed_tx(os.urandom(32), 1)
    assert _check(svc, reg, "pipeline").startswith("forbidden")
    assert "invalid registry payload" in _check(svc, payloads.MAGIC + b"\x01\x09", "manager")
    assert svc.check_tx(TX_ANCHOR, b"not-a-registry-payload", "pipeline") is None  # an opaque anchor
    # the kinds table: a kind carries only its own payload operation
    assert svc.check_tx(TX_REGISTER, reg, "manager") is None
    assert "carries a register payload" in svc.check_tx(TX_ERASE, reg, "manager")
    assert "needs a registry register payload" in svc.check_tx(TX_REGISTER, b"opaque", "manager")
    assert "carries an anchor payload" in svc.check_tx(TX_REGISTER, anchor, "manager")
    assert svc.check_tx(TX_ANCHOR, erase_x, "pipeline").startswith("invalid transaction: an anchor transaction "
                                                                     "carries an erase payload")
    assert "unknown subject" in _check(svc, erase_x, "manager")


def test_same_block_conflicts_apply_deterministically(service) -> None:
    svc, store = service
    p = os.urandom(32)
    reg_a, sa = _sealed_tx(p, 1, risk=10)
    reg_b, sb = _sealed_tx(p, 1, risk=20)
    svc.upload_key(p, sa.wrapped_key)
    svc.upload_key(p, sb.wrapped_key)
    svc.apply_block(1, _txs([(b"a" * 32, reg_a), (b"b" * 32, reg_b)]))
    assert _open(svc, p).risk == 10
    assert store.get_wrapped_key(p) == sa.wrapped_key
    svc.apply_block(1, _txs([(b"c" * 32, reg_b)]))  # replay of an applied height is a no-op
    assert _open(svc, p).risk == 10


def test_register_and_erase_in_one_block_leaves_no_key(service) -> None:
    svc, store = service
    p = os.urandom(32)
    reg, sealed = _sealed_tx(p, 1)
    svc.upload_key(p, sealed.wrapped_key)
    svc.apply_block(1, _txs([(b"a" * 32, reg), (b"e" * 32, payloads.encode(EraseTx(pseudonym=p, version=2)))]))
    assert store.get_wrapped_key(p) is None and svc.subject_json(p)["status"] == "erased"
    assert svc.index.pending(sealed.key_commitment) is None


def test_late_key_upload_and_mismatched_key_refused(service) -> None:
    svc, store = service
    p = os.urandom(32)
    reg, sealed = _sealed_tx(p, 1)
    svc.apply_block(1, _txs([(b"a" * 32, reg)]))
    assert svc.subject_json(p)["wrapped_key"] is None
    other = privacy.wrap_data_key(KEK, KID, os.urandom(32), CHAIN, p)
    svc.upload_key(p, other)  # not the committed key: stays pending, never served
    assert svc.subject_json(p)["wrapped_key"] is None
    svc.upload_key(p, sealed.wrapped_key)
    assert _open(svc, p).risk == 60


def test_watchlist_paging_by_height(service) -> None:
    svc, _ = service
    subjects = []
    for h in range(1, 6):
        txs = []
        for _ in range(3):
            p = os.urandom(32)
            reg, sealed = _sealed_tx(p, 1)
            svc.upload_key(p, sealed.wrapped_key)
            txs.append((os.urandom(32), reg))
            subjects.append(p)
        svc.apply_block(h, _txs(txs))
    seen, since, pages = set(), 0, 0
    while True:
        page = svc.watchlist_json(since, limit=4)
        pages += 1
        seen.update(r["pseudonym"] for r in page["records"])
        assert all(r["wrapped_key"] for r in page["records"])
        since = page["next_since"]
        if page["complete"]:
            break
    assert seen == {p.hex() for p in subjects} and pages >= 3
    assert svc.watchlist_json(5)["records"] == []
    # one height holding more than a page is returned whole
    assert len(svc.watchlist_json(0, limit=2)["records"]) == 3


def test_anchor_index(service) -> None:
    svc, _ = service
    a = AnchorTx(camera_id="cam-7", window_start_us=5, window_end_us=9, record_count=12, merkle_root=b"m" * 32)
    svc.apply_block(1, _txs([(b"t" * 32, payloads.encode(a))]))
    row = svc.index.anchor(b"t" * 32)
    assert row["camera_id"] == "cam-7" and row["record_count"] == 12 and row["height"] == 1


# ------------------------------------------------------------------------------------------------------------
# Against a real 4-node cluster, through the `riskmask` command line (in-process main())

import json  # noqa: E402

from ledger.client import keys as keyring  # noqa: E402
from ledger.ops.manager_cli import RegistryClient  # noqa: E402
from riskmask.cli import main as riskmask_main  # noqa: E402
from tests.ledger_util import make_cluster  # noqa: E402

OBAMA = {"name": "Barack  OBAMA", "birth": "04.08.1961", "id": "P-1234 567"}
BIDEN = {"name": "Joe Biden", "birth": "1942-11-20", "id": ""}


@pytest.fixture(scope="module")
def photos():
    from infra.sample_data import subject_photos

    ph = subject_photos()
    return {"a": [p for p in ph["subject_a"] if p.name.startswith("obama")], "b": ph["subject_b"]}


@pytest.fixture(scope="module")
def env(tmp_path_factory, photos):
    base = tmp_path_factory.mktemp("registry")
    cluster = make_cluster(base / "ledger")
    keys_dir = base / "keys"
    try:
        cluster.up(wait_height=1, timeout_s=90)
        assert riskmask_main(["-q", "keys", "init", "--keys-dir", str(keys_dir)]) == 0
        yield {"cluster": cluster, "keys": keys_dir, "dir": base / "ledger"}
    finally:
        cluster.down()


def cli(env, capsys, *args: str) -> tuple[int, str, str]:
    capsys.readouterr()
    rc = riskmask_main(["-q", *args, "--ledger-dir", str(env["dir"]), "--keys-dir", str(env["keys"])])
    out = capsys.readouterr()
    return rc, out.out, out.err


def _ident(p: dict, **over) -> list[str]:
    d = {**p, **over}
    args = ["--name", d["name"], "--birth-date", d["birth"]]
    return args + (["--id-number", d["id"]] if d["id"] else [])


def _client(env) -> RegistryClient:
    return RegistryClient.from_dir(env["dir"], "manager", env["keys"])


def _subject_count(env) -> int:
    c = _client(env)
    try:
        return len(c._any(lambda x: x.request("GET", "/v1/registry/watchlist", query={"since": 0}))["records"])
    finally:
        c.close()


def test_cluster_register_search_update_round_trip(env, photos, capsys) -> None:
    a = photos["a"]
    rc, out, err = cli(env, capsys, "register", *_ident(OBAMA), "--risk", "85", "--suspect", "--photo", str(a[0]),
                       "--photo", str(a[1]), "--attr", "case=A-17")
    assert rc == 0, err
    assert "registered subject" in out and "2 face template(s)" in out
    assert "obama" not in (out + err).lower() and "1961" not in out + err
    # search with differently typed identity fields: same canonical form, same pseudonym
    rc, out, _ = cli(env, capsys, "search", "--json", *_ident(OBAMA, name="barack obama", birth="1961-08-04",
                                                             id="p1234567"))
    res = json.loads(out)
    assert rc == 0 and res["status"] == "live" and res["risk"] == 85 and res["suspect"] is True
    assert res["templates"] == 2 and res["attributes"] == {"case": "A-17"} and res["version"] == 1
    # the decrypted templates recognise a third photo of the same person, not another person
    from pipelines.models.recognizer import MATCH_THRESHOLD
    from pipelines.recognition.enrolment import face_templates

    record = _client(env).search(privacy.Identity(OBAMA["name"], OBAMA["birth"], OBAMA["id"])).record
    probe_same, probe_other = face_templates([a[2], photos["b"][0]])
    sims = [max(privacy.cosine(t, p) for t in record.template_arrays()) for p in (probe_same, probe_other)]
    assert sims[0] >= MATCH_THRESHOLD > sims[1], sims
    rc, out, _ = cli(env, capsys, "update-risk", *_ident(OBAMA), "--risk", "40", "--not-suspect")
    assert rc == 0 and "version 2" in out
    rc, out, _ = cli(env, capsys, "search", "--json", *_ident(OBAMA))
    res = json.loads(out)
    assert (res["risk"], res["suspect"], res["version"], res["templates"]) == (40, False, 2, 2)
    # a search with a wrong field finds nothing
    rc, out, _ = cli(env, capsys, "search", *_ident(OBAMA, birth="1961-08-05"))
    assert rc == 1 and "unknown" in out


def test_cluster_bad_input_writes_nothing(env, photos, tmp_path, capsys) -> None:
    import cv2

    before = _subject_count(env)
    blank = tmp_path / "blank.jpg"
    cv2.imwrite(str(blank), np.full((240, 320, 3), 127, np.uint8))
    a_img, b_img = cv2.imread(str(photos["a"][0])), cv2.imread(str(photos["b"][0]))
    h = 400
    pair = np.hstack([cv2.resize(x, (int(x.shape[1] * h / x.shape[0]), h)) for x in (a_img, b_img)])
    two = tmp_path / "two.jpg"
    cv2.imwrite(str(two), pair)
    b = str(photos["b"][0])
    cases = [
        (["register", *_ident(BIDEN), "--risk", "101", "--photo", b], "0..100"),
        (["register", *_ident(BIDEN), "--risk", "-1", "--photo", b], "0..100"),
        (["register", "--birth-date", "1942-11-20", "--risk", "50", "--photo", b], "--name"),
        (["register", *_ident(BIDEN, birth="1942-11-31"), "--risk", "50", "--photo", b], "impossible date"),
        (["register", *_ident(BIDEN, birth="03/04/1942"), "--risk", "50", "--photo", b], "ambiguous"),
        (["register", *_ident(BIDEN), "--risk", "50"], "--photo"),
        (["register", *_ident(BIDEN), "--risk", "50", "--photo", str(blank)], "no face"),
        (["register", *_ident(BIDEN), "--risk", "50", "--photo", str(two)], "2 faces"),
        (["register", *_ident(BIDEN), "--risk", "50", "--photo", str(tmp_path / "missing.jpg")], "cannot read"),
        (["register", *_ident(OBAMA), "--risk", "50", "--photo", str(photos["a"][2])], "already registered"),
        (["update-risk", *_ident(BIDEN), "--risk", "10"], "unknown subject"),
        (["update-risk", *_ident(OBAMA), "--risk", "200"], "0..100"),
        (["erase", *_ident(BIDEN)], "unknown subject"),
    ]
    for args, reason in cases:
        try:
            rc, out, err = cli(env, capsys, *args)
        except SystemExit as exc:  # argparse rejects before any handler runs
            rc, err = exc.code, capsys.readouterr().err
        assert rc == 2, (args, rc, err)
        lines = [ln for ln in err.strip().splitlines() if ln and not ln.startswith(("usage", " "))]
        assert len(lines) == 1 and reason in lines[0], (args, err)
    assert _subject_count(env) == before


def _node_files(cluster) -> list:
    files = []
    for i in range(cluster.n):
        files += [f for f in cluster.data_dir(i).rglob("*") if f.is_file()]
    files += [f for f in (cluster.dir / "logs").rglob("*") if f.is_file()]
    return files


def _all_blocks(cluster) -> list[bytes]:
    out = []
    with cluster.client(0, "auditor", timeout_s=20.0) as c:
        top = c.status()["height"]
        h = 1
        while h <= top:
            bl = c.blocks(h, min(top, h + 99))
            out += [base64.b64decode(b["block"]) + base64.b64decode(b["cert"]) for b in bl]
            h += len(bl)
    return out


def _needles(ident: dict, templates: list[bytes]) -> list[bytes]:
    raw = [ident["name"], ident["name"].lower(), privacy.canonical_text(ident["name"]), ident["birth"],
           privacy.canonical_date(ident["birth"])]
    raw += [w for w in ident["name"].split() if len(w) >= 4]
    if ident["id"]:
        raw += [ident["id"], privacy.canonical_id_number(ident["id"])]
    needles = []
    for s in raw:
        needles += [s.encode("utf-8"), s.encode("utf-16-le")]
    for t in templates:
        needles += [t, t[:32], t[256:288]]
    return needles


def test_cluster_no_identifier_or_template_in_clear(env, photos, capsys, kafka_bootstrap, topic_factory) -> None:
    """Every block, every node's files (databases, WAL, logs) and the exported topic: no raw data."""
    from ledger.client.api_client import LedgerClient
    from ledger.ops import exporter

    c = _client(env)
    try:
        rec = c.search(privacy.Identity(OBAMA["name"], OBAMA["birth"], OBAMA["id"])).record
    finally:
        c.close()
    assert rec is not None and rec.templates
    needles = _needles(OBAMA, list(rec.templates))
    haystacks = [("block", b) for b in _all_blocks(env["cluster"])]
    haystacks += [(str(f), f.read_bytes()) for f in _node_files(env["cluster"])]
    cluster = env["cluster"]
    topic = topic_factory(prefix="ledger-blocks")
    exp = exporter.Exporter(kafka_bootstrap, topic, [LedgerClient(cluster.api_address(0), cluster.key_seed("auditor"))],
                            cluster.genesis.chain_id)
    exp.start()
    while exp.step():
        pass
    exp.close()
    exported = [v for _, v in exporter.read_range(kafka_bootstrap, topic)]
    assert len(exported) >= 3
    haystacks += [(f"{topic} message", v) for v in exported]
    assert len(haystacks) > 10
    for where, data in haystacks:
        for n in needles:
            assert n not in data, f"raw identifier/template bytes found in {where}"


def test_cluster_erasure_crypto_shredding(env, photos, capsys) -> None:
    rc, _, err = cli(env, capsys, "register", *_ident(BIDEN), "--risk", "70", "--photo", str(photos["b"][0]))
    assert rc == 0, err
    c = _client(env)
    ident = privacy.Identity(BIDEN["name"], BIDEN["birth"])
    p, before = c.find(ident)
    wrapped = base64.b64decode(before["wrapped_key"])
    nonce, ct, version = base64.b64decode(before["nonce"]), base64.b64decode(before["ciphertext"]), before["version"]
    cluster = env["cluster"]
    assert any(wrapped in f.read_bytes() for f in _node_files(cluster))  # the key store does hold it now
    rc, out, err = cli(env, capsys, "erase", *_ident(BIDEN))
    assert rc == 0 and "erased" in out, err
    rc, out, _ = cli(env, capsys, "search", *_ident(BIDEN))
    assert rc == 1 and "erased" in out
    # every node: status erased, no key served, and the wrapped key bytes are gone from every file
    for i in range(cluster.n):
        with cluster.client(i, "manager") as nc:
            wait_until = time.monotonic() + 30
            while True:
                s = nc.request("GET", f"/v1/registry/subjects/{p.hex()}")
                if s["status"] == "erased" or time.monotonic() > wait_until:
                    break
                time.sleep(0.2)
        assert s["status"] == "erased" and s["wrapped_key"] is None and s["ciphertext"] is None
    for f in _node_files(cluster):
        assert wrapped not in f.read_bytes(), f"wrapped key still in {f}"
    # the ciphertext is still on the chain, but the KEK alone cannot open it
    assert any(ct in b for b in _all_blocks(cluster))
    with pytest.raises(privacy.KeyErased):
        privacy.open_record(nonce, ct, None, cluster.genesis.chain_id, p, version, c.ring.kek)
    with pytest.raises(Exception):
        from cryptography.hazmat.primitives.ciphers.aead import AESGCM
        AESGCM(c.ring.kek).decrypt(nonce, ct, privacy.record_aad(cluster.genesis.chain_id, p, version))
    # an erased registration cannot be revived, updated or erased again
    rc, _, err = cli(env, capsys, "register", *_ident(BIDEN), "--risk", "10", "--photo", str(photos["b"][0]))
    assert rc == 2 and "erased" in err
    rc, _, err = cli(env, capsys, "update-risk", *_ident(BIDEN), "--risk", "10")
    assert rc == 2 and "erased" in err
    c.close()


def test_cluster_kek_rotation_and_rewrap(env, photos, capsys) -> None:
    rc, _, err = cli(env, capsys, "register", "--name", "Rotation Subject", "--birth-date", "1990-01-02",
                     "--risk", "55", "--no-photo")
    assert rc == 0, err
    assert riskmask_main(["-q", "keys", "rotate", "--keys-dir", str(env["keys"])]) == 0
    rc, out, _ = cli(env, capsys, "rewrap", "--check")
    assert rc == 1 and not out.startswith("0 ")
    rc, out, err = cli(env, capsys, "rewrap")
    assert rc == 0, err
    rc, out, _ = cli(env, capsys, "rewrap", "--check")
    assert rc == 0 and out.startswith("0 ")
    rc, out, _ = cli(env, capsys, "search", "--json", "--name", "rotation subject", "--birth-date", "2.1.1990")
    res = json.loads(out)
    assert res["risk"] == 55 and res["status"] == "live"
    ring = keyring.load_keyring(env["keys"])
    c = _client(env)
    p, rec = c.find(privacy.Identity("Rotation Subject", "1990-01-02"))
    assert bytes.fromhex(rec["kek_id"]) == ring.active_kek
    c.close()


def test_missing_key_repaired_from_peer(tmp_path) -> None:
    """A node that missed the key upload lists the subject as missing and repairs it from a peer."""
    stores = [Store(tmp_path / f"n{i}" / "ledger.db", CHAIN, hashlib.sha256(b"g").digest()) for i in range(2)]
    svcs = [RegistryService(RegistryIndex(tmp_path / f"n{i}" / "registry.db"), stores[i]) for i in range(2)]
    p = os.urandom(32)
    reg, sealed = _sealed_tx(p, 1)
    svcs[0].upload_key(p, sealed.wrapped_key)  # node 1 was down during the upload
    for s in svcs:
        s.apply_block(1, _txs([(b"r" * 32, reg)]))
    assert svcs[0].missing_keys() == [] and svcs[1].missing_keys() == [(p, sealed.key_commitment)]
    forged = privacy.wrap_data_key(KEK, KID, os.urandom(32), CHAIN, p)
    assert svcs[1].repair_keys(lambda q: forged) == 0  # a key not matching the commitment is refused
    assert stores[1].get_wrapped_key(p) is None
    served = lambda q: base64.b64decode(svcs[0].subject_json(q)["wrapped_key"])  # noqa: E731
    assert svcs[1].repair_keys(served) == 1
    assert stores[1].get_wrapped_key(p) == sealed.wrapped_key and svcs[1].missing_keys() == []
    assert _open(svcs[1], p).risk == 60
    # erasure clears a still-missing entry too
    p2 = os.urandom(32)
    reg2, _ = _sealed_tx(p2, 1)
    svcs[1].apply_block(2, _txs([(b"s" * 32, reg2)]))
    assert svcs[1].missing_keys() == [(p2, svcs[1].index.subject(p2)["commitment"])]
    svcs[1].apply_block(3, _txs([(b"t" * 32, payloads.encode(EraseTx(pseudonym=p2, version=2)))]))
    assert svcs[1].missing_keys() == []
    for s, st in zip(svcs, stores):
        s.index.close()
        st.close()
