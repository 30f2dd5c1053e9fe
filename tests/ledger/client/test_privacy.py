"""Privacy module: canonical identity, keyed pseudonyms, AES-GCM sealing, key wrapping, crypto-shredding."""

from __future__ import annotations

import datetime as dt
import os
import stat

import numpy as np
import pytest

from ledger.client import keys, privacy
from ledger.client.privacy import Identity, SubjectRecord

KEY = bytes(range(32))
CHAIN = "riskmask-test"


def _record(n_templates: int = 2) -> SubjectRecord:
    rng = np.random.default_rng(7)
    temps = [rng.standard_normal(128).astype(np.float32) for _ in range(n_templates)]
    return SubjectRecord.make(risk=85, suspect=True, templates=temps, attributes={"case": "A-17", "unit": "x"},
                              updated_us=1_700_000_000_000_000)


@pytest.mark.parametrize("a,b", [
    ("Jane  Doe", "jane doe"),
    ("  JANE\tDOE\n", "jane doe"),
    ("Ｊａｎｅ Ｄｏｅ", "jane doe"),              # full-width forms (NFKC)
    ("STRASSE", "straße"),                      # case folding: ß -> ss
    ("Jane\u200bDoe", "janedoe"),              # zero-width space (format char) removed
    ("Zoë", "Zoe\u0308"),                       # composed vs decomposed
    ("ﬁona", "FIONA"),                         # ligature
])
def test_canonical_text_equivalences(a: str, b: str) -> None:
    assert privacy.canonical_text(a) == privacy.canonical_text(b)


def test_canonical_text_keeps_distinct_names_distinct() -> None:
    assert privacy.canonical_text("Jane Doe") != privacy.canonical_text("Jane Dow")
    assert privacy.canonical_text("Jan e") != privacy.canonical_text("Jane")


@pytest.mark.parametrize("raw", ["1980-03-12", "1980/03/12", "1980.3.12", "19800312", "12.03.1980", "12-03-1980",
                                 "12 March 1980", "March 12, 1980", "12th mar 1980", "Mar. 12 1980",
                                 "１９８０-０３-１２", " 1980-03-12 "])
def test_canonical_date_formats(raw: str) -> None:
    assert privacy.canonical_date(raw) == "1980-03-12"


def test_canonical_date_slash_forms() -> None:
    assert privacy.canonical_date("25/12/1990") == "1990-12-25"   # day first (25 > 12)
    assert privacy.canonical_date("12/25/1990") == "1990-12-25"   # month first (25 > 12)
    assert privacy.canonical_date("07/07/1990") == "1990-07-07"
    with pytest.raises(privacy.InvalidIdentity, match="ambiguous"):
        privacy.canonical_date("03/04/1990")


@pytest.mark.parametrize("raw", ["", "1980-02-30", "31.04.1980", "yesterday", "1899-12-31", "12 Smarch 1980",
                                 "1980-13-01"])
def test_canonical_date_rejects(raw: str) -> None:
    with pytest.raises(privacy.InvalidIdentity):
        privacy.canonical_date(raw)


def test_canonical_date_rejects_future() -> None:
    with pytest.raises(privacy.InvalidIdentity, match="out of range"):
        privacy.canonical_date("2030-01-01", today=dt.date(2026, 1, 1))


def test_id_number_separators_ignored() -> None:
    assert privacy.canonical_id_number("AB 123-456.7") == privacy.canonical_id_number("ab1234567")


def test_pseudonym_deterministic_and_canonical() -> None:
    a = privacy.pseudonym(KEY, Identity("Jane Doe", "1980-03-12", "X 123"))
    b = privacy.pseudonym(KEY, Identity("  JANE   doe ", "12.03.1980", "x-123"))
    assert a == b and len(a) == 32


def test_pseudonym_depends_on_key_and_every_field() -> None:
    base = privacy.pseudonym(KEY, Identity("Jane Doe", "1980-03-12", "X123"))
    assert privacy.pseudonym(os.urandom(32), Identity("Jane Doe", "1980-03-12", "X123")) != base
    assert privacy.pseudonym(KEY, Identity("Jane Dow", "1980-03-12", "X123")) != base
    assert privacy.pseudonym(KEY, Identity("Jane Doe", "1980-03-13", "X123")) != base
    assert privacy.pseudonym(KEY, Identity("Jane Doe", "1980-03-12", "X124")) != base
    assert privacy.pseudonym(KEY, Identity("Jane Doe", "1980-03-12")) != base


def test_pseudonym_field_boundaries_are_unambiguous() -> None:
    # length prefixes: moving characters between fields must change the pseudonym
    a = privacy.pseudonym(KEY, Identity("ab", "1980-03-12", "c"))
    b = privacy.pseudonym(KEY, Identity("a", "1980-03-12", "bc"))
    assert a != b


def test_pseudonym_rejects_missing_fields_and_short_keys() -> None:
    with pytest.raises(privacy.InvalidIdentity, match="name"):
        privacy.pseudonym(KEY, Identity("  \u200b ", "1980-03-12"))
    with pytest.raises(privacy.InvalidIdentity):
        privacy.pseudonym(KEY, Identity("Jane", ""))
    with pytest.raises(privacy.PrivacyError):
        privacy.pseudonym(b"short", Identity("Jane", "1980-03-12"))


def test_identity_repr_hides_identifiers() -> None:
    ident = Identity("Jane Doe", "1980-03-12", "X123")
    assert "Jane" not in repr(ident) and "1980" not in repr(ident)


def test_record_encoding_round_trip_canonical() -> None:
    rec = _record()
    data = rec.encode()
    back = SubjectRecord.decode(data)
    assert back == rec and back.encode() == data
    assert np.allclose(back.template_arrays()[0], rec.template_arrays()[0])
    with pytest.raises(privacy.InvalidRecord):
        SubjectRecord.decode(data + b"\x00")
    with pytest.raises(privacy.InvalidRecord):
        SubjectRecord.decode(data[:-1])


@pytest.mark.parametrize("kwargs,match", [
    ({"risk": 101}, "risk"), ({"risk": -1}, "risk"), ({"risk": True}, "risk"),
    ({"templates": [np.zeros(127)]}, "128"), ({"templates": [np.full(128, np.nan)]}, "non-finite"),
    ({"attributes": {"Bad Key": "v"}}, "attribute key"), ({"attributes": {"k": "v" * 2000}}, "longer"),
])
def test_record_validation(kwargs: dict, match: str) -> None:
    args = {"risk": 10, "suspect": False, **kwargs}
    with pytest.raises(privacy.InvalidRecord, match=match):
        SubjectRecord.make(**args)


def test_seal_open_round_trip() -> None:
    kek, kid = os.urandom(32), keys.key_id(os.urandom(32))
    p = privacy.pseudonym(KEY, Identity("Jane Doe", "1980-03-12"))
    rec = _record()
    sealed = privacy.seal_record(rec, CHAIN, p, 1, kek, kid)
    assert privacy.wrapped_kek_id(sealed.wrapped_key) == kid
    assert len(sealed.wrapped_key) == privacy.WRAPPED_KEY_LEN
    assert rec.templates[0] not in sealed.ciphertext and b"A-17" not in sealed.ciphertext
    assert privacy.open_record(sealed.nonce, sealed.ciphertext, sealed.wrapped_key, CHAIN, p, 1, kek) == rec
    # fresh data key and nonce every time
    again = privacy.seal_record(rec, CHAIN, p, 1, kek, kid)
    assert again.ciphertext != sealed.ciphertext and again.wrapped_key != sealed.wrapped_key


def test_tampered_ciphertext_detected() -> None:
    kek, kid = os.urandom(32), b"k" * 8
    p = os.urandom(32)
    sealed = privacy.seal_record(_record(), CHAIN, p, 1, kek, kid)
    for i in (0, len(sealed.ciphertext) // 2, len(sealed.ciphertext) - 1):
        bad = bytearray(sealed.ciphertext)
        bad[i] ^= 0x01
        with pytest.raises(privacy.DecryptionError):
            privacy.open_record(sealed.nonce, bytes(bad), sealed.wrapped_key, CHAIN, p, 1, kek)
    bad_nonce = bytes([sealed.nonce[0] ^ 1]) + sealed.nonce[1:]
    with pytest.raises(privacy.DecryptionError):
        privacy.open_record(bad_nonce, sealed.ciphertext, sealed.wrapped_key, CHAIN, p, 1, kek)


def test_aad_binds_chain_subject_and_version() -> None:
    kek, kid = os.urandom(32), b"k" * 8
    p, other = os.urandom(32), os.urandom(32)
    sealed = privacy.seal_record(_record(), CHAIN, p, 3, kek, kid)
    with pytest.raises(privacy.DecryptionError):
        privacy.open_record(sealed.nonce, sealed.ciphertext, sealed.wrapped_key, CHAIN, p, 2, kek)
    with pytest.raises(privacy.DecryptionError):
        privacy.open_record(sealed.nonce, sealed.ciphertext, sealed.wrapped_key, "other-chain", p, 3, kek)
    with pytest.raises(privacy.DecryptionError):  # wrapped key is bound to the subject too
        privacy.open_record(sealed.nonce, sealed.ciphertext, sealed.wrapped_key, CHAIN, other, 3, kek)
    # even with the right data key, the record AAD refuses another subject
    dk = privacy.unwrap_data_key(kek, sealed.wrapped_key, CHAIN, p)
    rewrapped = privacy.wrap_data_key(kek, kid, dk, CHAIN, other)
    with pytest.raises(privacy.DecryptionError, match="record authentication"):
        privacy.open_record(sealed.nonce, sealed.ciphertext, rewrapped, CHAIN, other, 3, kek)


def test_key_wrap_unwrap_and_wrong_kek() -> None:
    kek, dk, p = os.urandom(32), os.urandom(32), os.urandom(32)
    wrapped = privacy.wrap_data_key(kek, b"12345678", dk, CHAIN, p)
    assert dk not in wrapped
    assert privacy.unwrap_data_key(kek, wrapped, CHAIN, p) == dk
    with pytest.raises(privacy.DecryptionError, match="wrong KEK"):
        privacy.unwrap_data_key(os.urandom(32), wrapped, CHAIN, p)
    with pytest.raises(privacy.DecryptionError):
        privacy.unwrap_data_key(kek, wrapped[:-1], CHAIN, p)
    with pytest.raises(privacy.PrivacyError):
        privacy.wrap_data_key(kek[:16], b"12345678", dk, CHAIN, p)


def test_crypto_shredding_after_key_deletion() -> None:
    """Once the wrapped data key is deleted, the KEK alone cannot open the ciphertext."""
    kek, kid = os.urandom(32), b"k" * 8
    p = os.urandom(32)
    sealed = privacy.seal_record(_record(), CHAIN, p, 1, kek, kid)
    key_store = {p: sealed.wrapped_key}
    assert privacy.open_record(sealed.nonce, sealed.ciphertext, key_store.get(p), CHAIN, p, 1, kek).risk == 85
    del key_store[p]
    with pytest.raises(privacy.KeyErased):
        privacy.open_record(sealed.nonce, sealed.ciphertext, key_store.get(p), CHAIN, p, 1, kek)
    # the KEK used directly as a data key does not open it either
    with pytest.raises(Exception):
        from cryptography.hazmat.primitives.ciphers.aead import AESGCM
        AESGCM(kek).decrypt(sealed.nonce, sealed.ciphertext, privacy.record_aad(CHAIN, p, 1))


def test_key_commitment_binds_wrapped_key() -> None:
    w1 = privacy.wrap_data_key(os.urandom(32), b"k" * 8, os.urandom(32), CHAIN, b"p")
    assert privacy.key_commitment(w1) == privacy.key_commitment(bytes(w1))
    assert privacy.key_commitment(w1) != privacy.key_commitment(w1[:-1] + bytes([w1[-1] ^ 1]))


def test_keyring_init_permissions_and_reload(tmp_path) -> None:
    path = keys.init_keyring(tmp_path / "k")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    ring = keys.load_keyring(tmp_path / "k")
    assert len(ring.pseudonym_key) == 32 and len(ring.kek) == 32 and ring.pseudonym_key != ring.kek
    with pytest.raises(keys.KeyringError, match="already exists"):
        keys.init_keyring(tmp_path / "k")
    os.chmod(path, 0o644)
    with pytest.raises(keys.KeyringError, match="accessible by others"):
        keys.load_keyring(tmp_path / "k")


def test_keyring_rotation_keeps_old_keys(tmp_path) -> None:
    keys.init_keyring(tmp_path)
    old = keys.load_keyring(tmp_path)
    p = os.urandom(32)
    sealed = privacy.seal_record(_record(), CHAIN, p, 1, old.kek, old.active_kek)
    new = keys.rotate(tmp_path, kek=True, pseudonym_key=True)
    assert new.active_kek != old.active_kek and new.active_pseudonym != old.active_pseudonym
    reloaded = keys.load_keyring(tmp_path)
    kek = reloaded.kek_for(privacy.wrapped_kek_id(sealed.wrapped_key))
    assert privacy.open_record(sealed.nonce, sealed.ciphertext, sealed.wrapped_key, CHAIN, p, 1, kek).risk == 85
    assert [k for k, _ in reloaded.search_keys()][0] == new.active_pseudonym
    assert len(reloaded.search_keys()) == 2


def test_keyring_rejects_corruption(tmp_path) -> None:
    path = keys.init_keyring(tmp_path)
    text = path.read_text().replace('"keks"', '"kexs"')
    with pytest.raises(keys.KeyringError):
        keys.Keyring.from_json(text)
    with pytest.raises(keys.KeyringError, match="no keyring"):
        keys.load_keyring(tmp_path / "missing")


# --- sealing for auditors (X25519 + HKDF-SHA256 + AES-256-GCM) and the auditor key files --------------------


def test_auditor_seal_opens_only_with_the_auditor_key_and_its_frame(tmp_path):
    import os
    import stat

    from ledger.client import keys as keyring
    from ledger.client.privacy import DecryptionError, auditor_key_id, decisions_aad, open_for_auditor, seal_for_auditor

    keyring.init_auditor_key(tmp_path)
    assert stat.S_IMODE(os.stat(tmp_path / keyring.AUDITOR_KEY_FILE).st_mode) == 0o600
    pub, priv = keyring.load_auditor_public_key(tmp_path), keyring.load_auditor_private_key(tmp_path)
    aad = decisions_aad("cam", 1, 2, b"\x01" * 32, b"\x02" * 32)
    plain = b"identity=matched group=4 suspect=1 track=7"
    sealed = seal_for_auditor(pub, plain, aad)
    assert plain not in sealed and sealed[1:9] == auditor_key_id(pub)
    assert sealed != seal_for_auditor(pub, plain, aad)  # fresh ephemeral key and nonce each time
    assert open_for_auditor(priv, sealed, aad) == plain
    other = tmp_path / "other"
    keyring.init_auditor_key(other)
    bad = [(keyring.load_auditor_private_key(other), sealed, aad),  # another auditor
           (priv, sealed, decisions_aad("cam", 1, 3, b"\x01" * 32, b"\x02" * 32)),  # moved to another frame
           (priv, sealed[:-1] + bytes([sealed[-1] ^ 1]), aad),  # tampered
           (priv, sealed[:20], aad)]  # truncated
    for key, box, data in bad:
        with pytest.raises(DecryptionError):
            open_for_auditor(key, box, data)
    with pytest.raises(keyring.KeyringError, match="already exists"):
        keyring.init_auditor_key(tmp_path)
    os.chmod(tmp_path / keyring.AUDITOR_KEY_FILE, 0o644)
    with pytest.raises(keyring.KeyringError, match="accessible by others"):
        keyring.load_auditor_private_key(tmp_path)


def test_camera_frame_keys_are_per_camera_and_private(tmp_path):
    import os
    import stat

    from ledger.client import keys as keyring

    kid_a, key_a = keyring.camera_frame_key("cam-a", tmp_path)
    kid_b, key_b = keyring.camera_frame_key("cam-b", tmp_path)
    assert kid_a != kid_b and key_a != key_b and len(key_a) == 32
    assert keyring.camera_frame_key("cam-a", tmp_path) == (kid_a, key_a)  # stable once made
    assert stat.S_IMODE(os.stat(keyring.frame_keys_path(tmp_path)).st_mode) == 0o600
    with pytest.raises(keyring.KeyringError, match="no frame key"):
        keyring.camera_frame_key("cam-c", tmp_path, create=False)
    os.chmod(keyring.frame_keys_path(tmp_path), 0o640)
    with pytest.raises(keyring.KeyringError, match="accessible by others"):
        keyring.load_frame_keys(tmp_path)
