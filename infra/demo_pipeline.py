"""The pipeline side of ``riskmask demo``: the ``riskmask run`` subprocess and the reader of its outputs.

The pipeline runs as a child process (streaming, FnApiRunner) with a parent-death signal, so it never outlives
the demo. :class:`Collector` reads ``frames.redacted`` and ``frames.dlq`` from their end offsets as they were
before the run, keeping only this run's records (matched by camera id and epoch): a persistent stack may hold
older runs' records.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import subprocess
import threading
import time
from pathlib import Path
from typing import Any, Optional

from infra.stack import StackInfo
from pipelines.runner import register_run
from riskmask import procs
from riskmask.errors import ServiceError
from schemas.messages import DeadLetter, RedactedFrame

logger = logging.getLogger(__name__)

GROUP_ID = "riskmask-demo"
REDACTED, DLQ = "frames.redacted", "frames.dlq"


class DemoError(ServiceError):
    """A step the demo cannot do without (stack, sample data, pipeline start) failed; one line says why."""


class PipelineProcess:
    """``riskmask run`` against the stack, as a child process logging to a file."""

    def __init__(self, info: StackInfo, extra: list[str], log_path: Path) -> None:
        cmd = procs.python_module("riskmask", "run", "--bootstrap-servers", info.bootstrap,
                                  "--group-id", GROUP_ID, *extra)
        env = dict(os.environ, **info.env(), PYTHONUNBUFFERED="1")
        self.log_path = log_path
        with open(log_path, "ab") as log:
            log.write(f"--- {time.strftime('%Y-%m-%dT%H:%M:%S')} {' '.join(cmd)}\n".encode())
            log.flush()
            self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                         env=env, preexec_fn=procs.die_with_parent(signal.SIGKILL))

    def finished(self) -> bool:
        return self.proc.poll() is not None

    def check(self, expect_exit: bool = False) -> None:
        """Raise DemoError when the pipeline has exited (live run) or exited with an error (``expect_exit``)."""
        rc = self.proc.poll()
        if rc is not None and not (expect_exit and rc == 0):
            raise DemoError(f"the pipeline exited with code {self.proc.returncode}: {last_line(self.log_path)} "
                            f"(full log: {self.log_path})")

    def stop(self) -> None:
        """SIGTERM (streaming has no end of its own), SIGKILL after 15 s; always reaped."""
        if self.proc.poll() is not None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)


def run_flags() -> set[str]:
    """Every option string ``riskmask run`` accepts (read from the command itself, so the demo follows it)."""
    parser = argparse.ArgumentParser()
    register_run(parser.add_subparsers())
    run = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices["run"]
    return {opt for a in run._actions for opt in a.option_strings}


def pipeline_ledger_args(info: StackInfo, flags: Optional[set[str]] = None,
                         frames: int = 80) -> tuple[list[str], str]:
    """Flags that connect ``riskmask run`` to the stack's ledger and keys, for those the command has.

    Returns (flags, recognition status text: "requested" or why not). The pipeline also gets the RISKMASK_*
    variables naming the stack, so options that default from them need no flag. Audit blocks are cut every
    quarter of the clip (a divisor of its length), so that a short clip yields complete (and anchored) blocks for
    the auditor.
    """
    flags = run_flags() if flags is None else flags
    ledger = Path(info.ledger_dir)
    values = {"--ledger-dir": info.ledger_dir, "--keys-dir": info.keys_dir,
              "--ledger-key": str(ledger / "keys" / "pipeline.key"),
              "--pipeline-key": str(ledger / "keys" / "pipeline.key"),
              "--ledger-api": ",".join(info.api_addresses), "--ledger-addresses": ",".join(info.api_addresses)}
    args: list[str] = []
    for flag, value in values.items():
        if flag in flags:
            args += [flag, value]
    if "--audit-block-records" in flags:
        # a divisor of the clip length, so that every frame's record lands in a complete block (the auditor key
        # opens the per-face decisions of every frame); about a quarter of the clip
        size = max(1, frames // 4)
        while frames % size:
            size -= 1
        args += ["--audit-block-records", str(size)]
    for switch in ("--recognition", "--recognize", "--audit", "--anchor-audit-blocks"):  # opt-in switches
        if switch in flags:
            args.append(switch)
    if "--ledger-dir" not in flags:
        return args, ("not in the pipeline yet (`riskmask run` has no ledger options): every face is treated as "
                      "unknown and gets the strongest mask")
    return args, "requested"


class Collector(threading.Thread):
    """Reads frames.redacted and frames.dlq from their current end, keeping this run's records (by epoch)."""

    def __init__(self, bootstrap: str, camera_id: str, warmup_id: str, epoch: int) -> None:
        super().__init__(name="demo-collector", daemon=True)
        from kafka import KafkaConsumer, TopicPartition  # deferred: loads kafka, which only this path needs

        self.camera_id, self.warmup_id, self.epoch = camera_id, warmup_id, epoch
        self.redacted: dict[int, Any] = {}
        self.dead: set[int] = set()
        self.warm = False
        self.error: Optional[BaseException] = None
        self._stop_evt = threading.Event()
        try:
            self._consumer = KafkaConsumer(bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False,
                                           max_partition_fetch_bytes=32 * 1024 * 1024,
                                           fetch_max_bytes=64 * 1024 * 1024, request_timeout_ms=30000,
                                           consumer_timeout_ms=500)
        except Exception as exc:  # NoBrokersAvailable and friends
            raise DemoError(f"cannot read the output topics at {bootstrap}: {type(exc).__name__}: {exc}") from None
        tps = []
        for topic in (REDACTED, DLQ):
            parts = self._consumer.partitions_for_topic(topic) or {0}
            tps += [TopicPartition(topic, p) for p in sorted(parts)]
        self._consumer.assign(tps)
        self._consumer.seek_to_end(*tps)
        for tp in tps:  # resolve the end positions now, before anything is produced
            self._consumer.position(tp)

    def check(self) -> None:
        """Raise DemoError when the reader thread died (the outputs could no longer be seen)."""
        if self.error is not None:
            raise DemoError(f"reading the output topics failed: {type(self.error).__name__}: {self.error}")

    def accounted(self) -> int:
        return len(self.redacted) + len(self.dead - set(self.redacted))

    def run(self) -> None:
        try:
            while not self._stop_evt.is_set():
                for tp, recs in self._consumer.poll(timeout_ms=300).items():
                    for rec in recs:
                        try:
                            self._take(tp.topic, rec.value)
                        except Exception as exc:  # not ours to judge: a foreign or corrupt record is skipped
                            logger.debug("skipping %s@%s: %s", tp.topic, rec.offset, exc)
        except Exception as exc:  # surfaced by the waiting step as a timeout with this cause
            logger.warning("demo collector stopped: %s", exc)
            self.error = exc
        finally:
            self._consumer.close()

    def _take(self, topic: str, value: bytes) -> None:
        if topic == REDACTED:
            frame = RedactedFrame.from_bytes(value)
            if frame.epoch != self.epoch:
                return
            if frame.camera_id == self.warmup_id:
                self.warm = True
            elif frame.camera_id == self.camera_id:
                self.redacted.setdefault(frame.seq, frame)
            return
        dl = DeadLetter.from_bytes(value)
        if dl.epoch != self.epoch:
            return
        if dl.camera_id == self.warmup_id:
            self.warm = True
        elif dl.camera_id == self.camera_id and dl.seq is not None:
            self.dead.add(dl.seq)

    def stop(self) -> None:
        self._stop_evt.set()
        if self.is_alive():
            self.join(timeout=10)


def last_line(path: Path) -> str:
    try:
        lines = [ln.strip() for ln in path.read_text(errors="replace").splitlines() if ln.strip()]
    except OSError:
        return "no log"
    return lines[-1][-300:] if lines else "no output"
