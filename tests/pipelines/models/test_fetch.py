"""Model files: pinned hashes, extraction of only the model from a wheel, cache reuse, bad files refused."""

from __future__ import annotations

import pathlib
import shutil
import zipfile

import pytest

from pipelines.models import fetch
from pipelines.models.fetch import MODELS, ModelError, model_path


@pytest.fixture(scope="module")
def real_yunet() -> pathlib.Path:
    return model_path("yunet")  # the real pinned file (fetched from PyPI on a fresh machine)


def _wheel(tmp: pathlib.Path, member: str, payload: bytes) -> pathlib.Path:
    whl = tmp / "fake-0.0.0-py3-none-any.whl"
    with zipfile.ZipFile(whl, "w") as zf:
        zf.writestr(member, payload)
        zf.writestr("fake/other_file.jpg", b"not a model, must not be extracted")
    return whl


def test_registry_pins() -> None:
    assert set(MODELS) == {"yunet", "sface", "centerface"}
    for spec in MODELS.values():
        assert len(spec.sha256) == 64 and spec.size > 0 and "==" in spec.wheel and spec.member.endswith(".onnx")


def test_real_model_verifies(real_yunet: pathlib.Path) -> None:
    fetch.verify(MODELS["yunet"], real_yunet)
    assert fetch.sha256_file(real_yunet) == MODELS["yunet"].sha256


def test_cached_path_reused_without_download(tmp_path, real_yunet, monkeypatch) -> None:
    shutil.copyfile(real_yunet, tmp_path / MODELS["yunet"].filename)

    def no_download(*_a, **_k):
        raise AssertionError("a verified cached model must not be downloaded again")

    monkeypatch.setattr(fetch, "_download_wheel", no_download)
    assert model_path("yunet", cache_dir=tmp_path) == tmp_path / MODELS["yunet"].filename
    monkeypatch.setenv(fetch.ENV_MODEL_DIR, str(tmp_path))
    assert model_path("yunet") == tmp_path / MODELS["yunet"].filename


def test_user_supplied_file_with_wrong_hash_rejected(tmp_path, real_yunet) -> None:
    bad = tmp_path / "yunet.onnx"
    data = bytearray(real_yunet.read_bytes())
    data[1000] ^= 0xFF  # same size, one flipped byte
    bad.write_bytes(bytes(data))
    with pytest.raises(ModelError, match="SHA-256"):
        model_path("yunet", path=bad)
    assert model_path("yunet", path=real_yunet) == real_yunet
    with pytest.raises(ModelError, match="not a file"):
        model_path("yunet", path=tmp_path / "missing.onnx")
    with pytest.raises(ModelError, match="unknown model"):
        model_path("nope")


def test_fetch_extracts_only_the_model_and_rejects_a_bad_wheel(tmp_path, real_yunet, monkeypatch) -> None:
    spec = MODELS["yunet"]
    cache = tmp_path / "cache"
    payload = {"bytes": b"x" * spec.size}

    def fake_download(s, dest):
        dest.mkdir(parents=True, exist_ok=True)
        return _wheel(dest, s.member, payload["bytes"])

    monkeypatch.setattr(fetch, "_download_wheel", fake_download)
    with pytest.raises(ModelError, match="SHA-256"):
        model_path("yunet", cache_dir=cache)
    assert not (cache / spec.filename).exists()  # a wrong file never reaches the cache
    # a corrupted cached copy is discarded and replaced by a verified one
    cache.mkdir(exist_ok=True)
    (cache / spec.filename).write_bytes(b"corrupt")
    payload["bytes"] = real_yunet.read_bytes()
    got = model_path("yunet", cache_dir=cache)
    assert got == cache / spec.filename and fetch.sha256_file(got) == spec.sha256
    assert sorted(p.name for p in cache.iterdir()) == [spec.filename]


def test_wheel_without_member(tmp_path, monkeypatch) -> None:
    def fake_download(s, dest):
        dest.mkdir(parents=True, exist_ok=True)
        return _wheel(dest, "elsewhere/model.onnx", b"abc")

    monkeypatch.setattr(fetch, "_download_wheel", fake_download)
    with pytest.raises(ModelError, match="not found"):
        fetch.fetch("centerface", tmp_path)
