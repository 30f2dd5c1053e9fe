"""onnxruntime execution providers by short name: ``cpu`` (default), ``cuda``, ``tensorrt``.

A provider is used only when this onnxruntime build offers it (``onnxruntime-gpu`` for CUDA/TensorRT); asking
for one it does not offer is a clear error, never a silent fall back to the CPU. After a session is made,
:func:`check_session` verifies that onnxruntime really put the requested provider first (it falls back to the
CPU without an error when, e.g., the CUDA libraries cannot be loaded).
"""

from __future__ import annotations

import logging
from typing import Any

from pipelines.models.fetch import ModelError
from riskmask.errors import UserError

logger = logging.getLogger(__name__)

PROVIDERS: dict[str, tuple[str, ...]] = {
    "cpu": ("CPUExecutionProvider",),
    "cuda": ("CUDAExecutionProvider", "CPUExecutionProvider"),
    "tensorrt": ("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"),
}
DEFAULT_PROVIDER = "cpu"


class ProviderError(ModelError, UserError):
    """The requested execution provider is unknown or not offered by this onnxruntime."""


def available() -> list[str]:
    import onnxruntime as ort  # deferred: loads onnxruntime, which only this path needs

    return list(ort.get_available_providers())


def ort_providers(name: str) -> list[str]:
    """onnxruntime's provider list for ``name``; raises ProviderError when this build cannot run it."""
    key = (name or DEFAULT_PROVIDER).strip().lower()
    if key not in PROVIDERS:
        raise ProviderError(f"unknown execution provider {name!r}; choose one of {', '.join(PROVIDERS)}")
    wanted = PROVIDERS[key]
    have = available()
    if wanted[0] not in have:
        raise ProviderError(f"execution provider {key} is not available in this onnxruntime (it offers "
                            f"{', '.join(have)}); install onnxruntime-gpu with matching CUDA libraries, "
                            f"or use --execution-provider cpu")
    return [p for p in wanted if p in have]


def session_of(model: Any) -> Any:
    """The onnxruntime session inside a detector or recogniser (through wrappers such as the tiny-face pass)."""
    seen = 0
    while model is not None and seen < 8:
        session = getattr(model, "_session", None)
        if session is not None:
            return session
        model, seen = getattr(model, "base", None), seen + 1
    raise ProviderError("cannot find the onnxruntime session of this model to check its provider")


def check_session(session: Any, name: str) -> None:
    """Refuse a session on which onnxruntime silently replaced the requested provider."""
    key = (name or DEFAULT_PROVIDER).strip().lower()
    got = list(session.get_providers())
    if not got or got[0] != PROVIDERS[key][0]:
        raise ProviderError(f"onnxruntime did not start the {key} execution provider (session runs on "
                            f"{', '.join(got) or 'nothing'}); check the GPU driver and CUDA libraries")
    logger.info("onnxruntime session on %s", got[0])


class DetectorFactory:
    """Picklable detector factory for DetectFaces with an execution provider."""

    def __init__(self, name: str, threads: int, score_threshold: Any, provider: str) -> None:
        self.name, self.threads, self.score_threshold, self.provider = name, threads, score_threshold, provider

    def __call__(self) -> Any:
        from pipelines.models.detector import load_detector  # deferred: loads cv2, which only this path needs

        det = load_detector(self.name, threads=self.threads, score_threshold=self.score_threshold,
                            providers=ort_providers(self.provider))
        check_session(session_of(det), self.provider)
        return det


class RecognizerFactory:
    """Picklable recogniser factory for EmbedFaces with an execution provider."""

    def __init__(self, threads: int, provider: str) -> None:
        self.threads, self.provider = threads, provider

    def __call__(self) -> Any:
        from pipelines.models.recognizer import load_recognizer  # deferred: loads cv2, which only this path needs

        rec = load_recognizer(threads=self.threads, provider=self.provider)
        check_session(session_of(rec), self.provider)
        return rec


__all__ = ["DEFAULT_PROVIDER", "DetectorFactory", "PROVIDERS", "ProviderError", "RecognizerFactory",
           "available", "check_session", "ort_providers", "session_of"]
