"""Many cameras from one file: ``riskmask produce --cameras cameras.toml``.

The file holds one ``[[camera]]`` table per camera::

    [[camera]]
    id = "lobby-1"
    source = "rtsp://10.0.0.5/stream1"
    encrypt = true

    [[camera]]
    id = "gate"
    source = "clips/gate.mp4"
    fps = 10
    loop = true

Keys: ``id`` and ``source`` (required), ``fps``, ``loop``, ``max_frames``, ``resize`` ("WxH"), ``jpeg_quality``,
``encrypt``, ``topic``; the command's flags give the defaults. Each camera runs in its own thread with its own
sequence numbers and reconnect policy, on one shared Kafka producer.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
from pathlib import Path
from typing import Optional

from pipelines.ingest.producer import (CameraProducer, ProducerConfig, ProducerError, ProduceStats, make_kafka_producer,
                                       parse_resize, source_for)

logger = logging.getLogger(__name__)


CAMERA_KEYS = {"id": str, "source": str, "fps": (int, float), "loop": bool, "max_frames": int, "resize": str,
               "jpeg_quality": int, "encrypt": bool, "topic": str}


def load_cameras(path: Path, base: ProducerConfig) -> list[ProducerConfig]:
    """One ProducerConfig per ``[[camera]]`` table of a TOML file (``base`` gives the shared settings);
    ProducerError naming the file, camera and key for anything invalid."""
    import tomllib

    try:
        doc = tomllib.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ProducerError(f"cameras file not found: {path}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ProducerError(f"cannot read cameras file {path}: {type(exc).__name__}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ProducerError(f"{path}: invalid TOML: {exc}") from None
    tables = doc.get("camera")
    if not isinstance(tables, list) or not tables or not all(isinstance(t, dict) for t in tables):
        raise ProducerError(f"{path}: expected one or more [[camera]] tables")
    configs, seen = [], set()
    for i, table in enumerate(tables, 1):
        where = f"{path}: camera #{i}"
        for key, value in table.items():
            if key not in CAMERA_KEYS:
                raise ProducerError(f"{where}: unknown key {key!r} (known: {', '.join(CAMERA_KEYS)})")
            if isinstance(value, bool) and CAMERA_KEYS[key] is not bool or not isinstance(value, CAMERA_KEYS[key]):
                raise ProducerError(f"{where}: {key!r} has the wrong type ({type(value).__name__})")
        for key in ("id", "source"):
            if key not in table:
                raise ProducerError(f"{where}: missing {key!r}")
        if table["id"] in seen:
            raise ProducerError(f"{where}: camera id {table['id']!r} appears twice")
        seen.add(table["id"])
        try:
            configs.append(dataclasses.replace(
                base, camera_id=table["id"], source=table["source"], fps=table.get("fps", base.fps),
                loop=table.get("loop", base.loop), max_frames=table.get("max_frames", base.max_frames),
                resize=parse_resize(table["resize"]) if "resize" in table else base.resize,
                jpeg_quality=table.get("jpeg_quality", base.jpeg_quality),
                encrypt=table.get("encrypt", base.encrypt), topic=table.get("topic", base.topic)))
        except ProducerError as exc:
            raise ProducerError(f"{where} ({table['id']}): {exc}") from None
    return configs


def run_cameras(configs: list[ProducerConfig], progress: bool = False,
                stop: threading.Event | None = None) -> list[ProduceStats]:
    """Run every camera in its own thread on one shared Kafka producer; returns their statistics (in order).
    The first camera that fails stops the others, and its error is raised once all have ended."""
    if not configs:
        return []
    stop = stop or threading.Event()
    sources = [source_for(c, stop) for c in configs]  # bad sources fail before connecting
    shared = make_kafka_producer(configs[0].bootstrap_servers, configs[0].connect_timeout_s)
    results: list[Optional[ProduceStats]] = [None] * len(configs)
    errors: list[BaseException] = []

    def one(i: int) -> None:
        try:
            cam = CameraProducer(configs[i], kafka_producer=shared)
            results[i] = cam.run(sources[i], progress=progress)
        except BaseException as exc:  # noqa: BLE001 - reported by the caller after every camera ended
            errors.append(exc)
            stop.set()

    threads = [threading.Thread(target=one, args=(i,), name=f"camera-{c.camera_id}", daemon=True)
               for i, c in enumerate(configs)]
    try:
        for t in threads:
            t.start()
        while any(t.is_alive() for t in threads):
            for t in threads:
                t.join(timeout=0.2)
    except KeyboardInterrupt:
        stop.set()
        for t in threads:
            t.join(timeout=30)
    finally:
        shared.close(timeout=10)
    if errors:
        raise errors[0]
    return [r if r is not None else ProduceStats(camera_id=c.camera_id, epoch=0, interrupted=True)
            for r, c in zip(results, configs)]
