"""RFC 6962 Merkle tree: published roots/proofs, an independent naive reference, and mutated proofs."""

from __future__ import annotations

import hashlib

import pytest

from ledger.errors import ProofError
from ledger.types import merkle

# RFC 6962 test inputs and results as published with the Certificate Transparency reference code.
CT_LEAVES = [bytes.fromhex(h) for h in ("", "00", "10", "2021", "3031", "40414243", "5051525354555657",
                                         "606162636465666768696a6b6c6d6e6f")]
CT_ROOTS = [bytes.fromhex(h) for h in (
    "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
    "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
    "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
    "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
    "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
    "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
    "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
    "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
    "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328")]
CT_INCLUSION = [
    (0, 8, ["96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4"]),
    (5, 8, ["bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
            "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
            "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7"]),
]
CT_CONSISTENCY = [
    (1, 8, ["96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4"]),
    (2, 8, ["5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4"]),
    (6, 8, ["0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a",
            "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
            "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7"]),
]

N = 33  # every tree shape up to just past a power of two


# -- an independent, naive reference written straight from RFC 6962 section 2.1 ------------------------------
def ref_mth(d: list[bytes]) -> bytes:
    if not d:
        return hashlib.sha256(b"").digest()
    if len(d) == 1:
        return hashlib.sha256(b"\x00" + d[0]).digest()
    k = 1
    while k * 2 < len(d):
        k *= 2
    return hashlib.sha256(b"\x01" + ref_mth(d[:k]) + ref_mth(d[k:])).digest()


def ref_path(m: int, d: list[bytes]) -> list[bytes]:
    if len(d) == 1:
        return []
    k = 1
    while k * 2 < len(d):
        k *= 2
    if m < k:
        return ref_path(m, d[:k]) + [ref_mth(d[k:])]
    return ref_path(m - k, d[k:]) + [ref_mth(d[:k])]


def ref_subproof(m: int, d: list[bytes], b: bool) -> list[bytes]:
    n = len(d)
    if m == n:
        return [] if b else [ref_mth(d)]
    k = 1
    while k * 2 < n:
        k *= 2
    if m <= k:
        return ref_subproof(m, d[:k], b) + [ref_mth(d[k:])]
    return ref_subproof(m - k, d[k:], False) + [ref_mth(d[:k])]


LEAVES = [b"leaf-%d" % i for i in range(N)]


def test_published_roots_and_proofs():
    for n in range(len(CT_LEAVES) + 1):
        assert merkle.merkle_root(CT_LEAVES[:n]) == CT_ROOTS[n]
    assert merkle.EMPTY_ROOT == CT_ROOTS[0]
    for index, size, proof in CT_INCLUSION:
        proof = [bytes.fromhex(p) for p in proof]
        assert merkle.inclusion_proof(CT_LEAVES[:size], index) == proof
        merkle.verify_inclusion(merkle.leaf_hash(CT_LEAVES[index]), index, size, proof, CT_ROOTS[size])
    for m, n, proof in CT_CONSISTENCY:
        proof = [bytes.fromhex(p) for p in proof]
        assert merkle.consistency_proof(CT_LEAVES[:n], m) == proof
        merkle.verify_consistency(m, n, CT_ROOTS[m], CT_ROOTS[n], proof)


def test_roots_match_reference_for_every_size():
    for n in range(N + 1):
        want = ref_mth(LEAVES[:n])
        assert merkle.merkle_root(LEAVES[:n]) == want
        assert merkle.MerkleTree(LEAVES[:n]).root() == want
        assert merkle.root_from_leaf_hashes([merkle.leaf_hash(x) for x in LEAVES[:n]]) == want


def test_every_inclusion_proof_matches_reference_and_verifies():
    for n in range(1, N + 1):
        tree = merkle.MerkleTree(LEAVES[:n])
        root = ref_mth(LEAVES[:n])
        for i in range(n):
            proof = tree.inclusion_proof(i)
            assert proof == ref_path(i, LEAVES[:n])
            merkle.verify_inclusion(merkle.leaf_hash(LEAVES[i]), i, n, proof, root)


def test_every_consistency_proof_matches_reference_and_verifies():
    for n in range(1, N + 1):
        tree = merkle.MerkleTree(LEAVES[:n])
        for m in range(1, n + 1):
            proof = tree.consistency_proof(m)
            assert proof == ref_subproof(m, LEAVES[:n], True)
            merkle.verify_consistency(m, n, ref_mth(LEAVES[:m]), ref_mth(LEAVES[:n]), proof)
    merkle.verify_consistency(0, 5, merkle.EMPTY_ROOT, ref_mth(LEAVES[:5]), [])


def _flip(h: bytes, pos: int) -> bytes:
    return h[:pos] + bytes((h[pos] ^ 0x01,)) + h[pos + 1:]


def _rejects(fn, *args) -> bool:
    try:
        fn(*args)
    except ProofError:
        return True
    return False


def test_every_mutated_inclusion_proof_is_rejected():
    checked = 0
    for n in range(1, N + 1):
        tree = merkle.MerkleTree(LEAVES[:n])
        root = tree.root()
        for i in range(n):
            leaf = merkle.leaf_hash(LEAVES[i])
            proof = tree.inclusion_proof(i)
            bad = []
            for j in range(len(proof)):
                for pos in (0, 17, 31):
                    bad.append((leaf, i, n, proof[:j] + [_flip(proof[j], pos)] + proof[j + 1:], root))
            bad += [(_flip(leaf, 5), i, n, proof, root), (leaf, i, n, proof, _flip(root, 0)),
                    (leaf, i, n, proof + [root], root), (leaf, i, n, proof + [b"\0" * 32], root),
                    (leaf, i, n, proof[:-1], root) if proof else (leaf, i, n, [root], root),
                    (leaf, i, n, proof[:31] + [proof[0][:31]] if proof else [b"x"], root),
                    (leaf, -1, n, proof, root), (leaf, n, n, proof, root)]
            for other in range(n):  # the right proof at any other index
                if other != i and LEAVES[other] != LEAVES[i]:
                    bad.append((leaf, other, n, proof, root))
            for size in range(1, N + 2):
                # Another claimed size whose audit path has another length. (A size with the same path
                # shape cannot be told apart by any verifier: the size must come authenticated, as
                # num_txs does inside the certified block header.)
                if size != n and i < size and len(ref_path(i, [b""] * size)) != len(proof):
                    bad.append((leaf, i, size, proof, root))
            for args in bad:
                assert _rejects(merkle.verify_inclusion, *args), (n, i, args[1], args[2])
                checked += 1
    assert checked > 10000


def test_every_mutated_consistency_proof_is_rejected():
    checked = 0
    for n in range(2, N + 1):
        tree = merkle.MerkleTree(LEAVES[:n])
        new_root = tree.root()
        for m in range(1, n):
            old_root = tree.root(m)
            proof = tree.consistency_proof(m)
            bad = []
            for j in range(len(proof)):
                bad.append((m, n, old_root, new_root, proof[:j] + [_flip(proof[j], j % 32)] + proof[j + 1:]))
            bad += [(m, n, _flip(old_root, 1), new_root, proof), (m, n, old_root, _flip(new_root, 2), proof),
                    (m, n, old_root, new_root, proof[:-1]), (m, n, old_root, new_root, proof + [new_root]),
                    (m, n, old_root, new_root, []), (n, m, new_root, old_root, proof),
                    (m, n, old_root, new_root, proof[1:])]
            # Other claimed sizes whose proof has another shape (same-shape sizes are indistinguishable,
            # see the inclusion test).
            for mm in range(1, n + 1):
                if mm != m and len(ref_subproof(mm, [b""] * n, True)) != len(proof):
                    bad.append((mm, n, old_root, new_root, proof))
            for nn in range(m, N + 2):
                if nn != n and len(ref_subproof(m, [b""] * nn, True)) != len(proof):
                    bad.append((m, nn, old_root, new_root, proof))
            for args in bad:
                assert _rejects(merkle.verify_consistency, *args), args[:2]
                checked += 1
    assert checked > 10000


def test_equal_and_empty_sizes():
    r4 = merkle.merkle_root(LEAVES[:4])
    merkle.verify_consistency(4, 4, r4, r4, [])
    assert _rejects(merkle.verify_consistency, 4, 4, r4, merkle.merkle_root(LEAVES[:5]), [])
    assert _rejects(merkle.verify_consistency, 4, 4, r4, r4, [r4])
    assert _rejects(merkle.verify_consistency, 0, 4, merkle.EMPTY_ROOT, r4, [r4])
    with pytest.raises(ValueError):
        merkle.inclusion_proof(LEAVES[:4], 4)
    with pytest.raises(ValueError):
        merkle.consistency_proof(LEAVES[:4], 0)
    with pytest.raises(ProofError):
        merkle.verify_inclusion(b"short", 0, 1, [], r4)
