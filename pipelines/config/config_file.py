"""The pipeline's config file (TOML, read with :mod:`tomllib`): one place for everything ``riskmask run`` needs.

Every setting has a command-line flag; a flag given on the command line (or ``$RISKMASK_BOOTSTRAP``) wins over
the file, and the file wins over the built-in defaults. Errors name the file and line::

    riskmask: error: pipeline.toml:7: [detector] threads must be an integer, got "two"

Sections and keys (all optional; see docs/operations.md for a full example)::

    [kafka]    bootstrap_servers, group_id, security_protocol, sasl_mechanism, sasl_username,
               sasl_password_file, ssl_cafile, ssl_certfile, ssl_keyfile, ssl_check_hostname,
               connect_timeout_s, max_frame_bytes
    [topics]   raw, redacted, dlq, audit
    [detector] name, threshold, threads, execution_provider, lookahead
    [policy]   default
    [ledger]   dir, keys_dir, anchor_audit_blocks, match_threshold, match_margin
    [metrics]  port, host
    [runner]   name, job_endpoint, environment_type, environment_config, checkpointing_interval,
               parallelism, bounded, progress_interval_s
    [[camera]] match (glob on the camera id), policy, zones = [{action = "mask" | "ignore",
               polygon = [[x, y], ...], relative = false}]

Camera rules: the first ``[[camera]]`` whose ``match`` glob matches a frame's camera id applies. Its ``policy``
replaces the default policy for that camera. A ``mask`` zone is always masked (whatever was detected), an
``ignore`` zone is never searched: faces whose centre lies in it are left as they are (e.g. a poster or a TV
screen that is not a person). Polygon points are pixels, or fractions of the frame with ``relative = true``.
"""

from __future__ import annotations

import fnmatch
import json
import logging
import re
import tomllib
from dataclasses import dataclass
from typing import Any, Optional, Sequence

from pipelines.config.defaults import OPTIONS
from riskmask.errors import UserError

logger = logging.getLogger(__name__)


class ConfigFileError(UserError):
    """The config file cannot be read or holds an invalid setting (message: ``file:line: what``)."""


class CameraRuleError(UserError):
    """A per-camera rule (policy or privacy zone) is invalid."""


# (section, key) -> (argparse dest of `riskmask run`, type); bool means a TOML boolean. Built from the one
# declaration of the pipeline's settings (pipelines.config.defaults.OPTIONS, ``config=(section, key)``).
SETTINGS: dict[tuple[str, str], tuple[str, type]] = {
    o.config: (o.run_dest, bool if o.type is None else o.type) for o in OPTIONS if o.config is not None}
SECTIONS = sorted({s for s, _ in SETTINGS} | {"camera"})
ZONE_ACTIONS = ("mask", "ignore")


@dataclass(frozen=True)
class Zone:
    action: str  # "mask": always masked; "ignore": never searched
    polygon: tuple[tuple[float, float], ...]
    relative: bool = False

    def points(self, width: int, height: int) -> list[tuple[int, int]]:
        """The polygon in pixels of a ``width`` x ``height`` frame."""
        if self.relative:
            return [(int(round(x * width)), int(round(y * height))) for x, y in self.polygon]
        return [(int(round(x)), int(round(y))) for x, y in self.polygon]

    def contains(self, x: float, y: float, width: int, height: int) -> bool:
        """Whether the point is inside the polygon (even-odd rule)."""
        pts = self.points(width, height)
        inside = False
        j = len(pts) - 1
        for i, (xi, yi) in enumerate(pts):
            xj, yj = pts[j]
            if (yi > y) != (yj > y) and x < (xj - xi) * (y - yi) / ((yj - yi) or 1e-12) + xi:
                inside = not inside
            j = i
        return inside


@dataclass(frozen=True)
class CameraRule:
    match: str
    policy: Optional[str] = None
    zones: tuple[Zone, ...] = ()

    def applies(self, camera_id: str) -> bool:
        return fnmatch.fnmatchcase(camera_id, self.match)


@dataclass(frozen=True)
class PipelineConfig:
    """A validated config file: argparse values by dest, and the camera rules."""

    path: str
    values: dict[str, Any]
    cameras: tuple[CameraRule, ...] = ()


class _Lines:
    """Line numbers of tables and keys in the TOML text (tomllib reports none for valid documents)."""

    def __init__(self, text: str) -> None:
        self.lines = text.splitlines()

    def table(self, section: str, index: Optional[int] = None) -> int:
        seen = -1
        for n, line in enumerate(self.lines, 1):
            s = line.strip()
            if index is None and re.match(rf"^\[\s*{re.escape(section)}\s*\]", s):
                return n
            if index is not None and re.match(rf"^\[\[\s*{re.escape(section)}\s*\]\]", s):
                seen += 1
                if seen == index:
                    return n
        return 0

    def key(self, section: str, key: str, index: Optional[int] = None) -> int:
        start = self.table(section, index)
        for n in range(start + 1 if start else 1, len(self.lines) + 1):
            s = self.lines[n - 1].strip()
            if start and n > start and s.startswith("["):
                break
            if re.match(rf"^{re.escape(key)}\s*=", s) or re.match(rf"^{re.escape(section)}\.{re.escape(key)}\s*=", s):
                return n
        return start


def _type_ok(value: Any, kind: type) -> bool:
    if kind is bool:
        return isinstance(value, bool)
    if kind is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if kind is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    return isinstance(value, str) and value != ""


def load(path: str) -> PipelineConfig:
    """Read and validate ``path``; raises ConfigFileError (``file:line: reason``) on the first problem."""
    try:
        with open(path, "rb") as fh:
            raw = fh.read()
    except OSError as exc:
        raise ConfigFileError(f"cannot read config file {path}: {exc.strerror or exc}") from None
    try:
        text = raw.decode("utf-8")
        doc = tomllib.loads(text)
    except UnicodeDecodeError:
        raise ConfigFileError(f"{path}: not UTF-8 text") from None
    except tomllib.TOMLDecodeError as exc:
        m = re.search(r"\(at line (\d+), column (\d+)\)", str(exc))
        where = f"{path}:{m.group(1)}" if m else path
        reason = re.sub(r"\s*\(at line \d+, column \d+\)", "", str(exc)) or "invalid TOML"
        raise ConfigFileError(f"{where}: {reason}") from None
    lines = _Lines(text)
    values: dict[str, Any] = {}
    for section, body in doc.items():
        if section not in SECTIONS:
            raise ConfigFileError(f"{path}:{lines.table(section) or lines.key('', section)}: unknown section "
                                  f"[{section}]; known: {', '.join(SECTIONS)}")
        if section == "camera":
            continue
        if not isinstance(body, dict):
            raise ConfigFileError(f"{path}:{lines.key('', section)}: {section} must be a table [{section}]")
        for key, value in body.items():
            spec = SETTINGS.get((section, key))
            line = lines.key(section, key)
            if spec is None:
                known = ", ".join(k for s, k in SETTINGS if s == section)
                raise ConfigFileError(f"{path}:{line}: unknown key {key!r} in [{section}]; known: {known}")
            dest, kind = spec
            if not _type_ok(value, kind):
                raise ConfigFileError(f"{path}:{line}: [{section}] {key} must be "
                                      f"{_kind_name(kind)}, got {json.dumps(value, default=str)}")
            values[dest] = float(value) if kind is float else value
    cameras = doc.get("camera", [])
    if not isinstance(cameras, list):
        raise ConfigFileError(f"{path}:{lines.key('', 'camera')}: cameras are [[camera]] tables")
    rules = []
    for i, cam in enumerate(cameras):
        try:
            rules.append(_camera_rule(cam))
        except CameraRuleError as exc:
            bad = str(getattr(exc, "key", "") or "")
            line = lines.key("camera", bad, i) if bad else lines.table("camera", i)
            raise ConfigFileError(f"{path}:{line}: [[camera]] #{i + 1}: {exc}") from None
    return PipelineConfig(path=path, values=values, cameras=tuple(rules))


def _kind_name(kind: type) -> str:
    return {bool: "true or false", int: "an integer", float: "a number", str: "a non-empty string"}[kind]


def _rule_error(key: str, message: str) -> CameraRuleError:
    exc = CameraRuleError(message)
    exc.key = key  # type: ignore[attr-defined]
    return exc


def _camera_rule(cam: Any) -> CameraRule:
    if not isinstance(cam, dict):
        raise CameraRuleError("a camera rule must be a table")
    unknown = set(cam) - {"match", "policy", "zones"}
    if unknown:
        key = sorted(unknown)[0]
        raise _rule_error(key, f"unknown key {key!r}; known: match, policy, zones")
    match = cam.get("match")
    if not isinstance(match, str) or not match:
        raise _rule_error("match", "match must be a non-empty glob on the camera id, e.g. \"lobby-*\"")
    policy = cam.get("policy")
    if policy is not None and (not isinstance(policy, str) or not policy):
        raise _rule_error("policy", "policy must be a policy name or file")
    zones_raw = cam.get("zones", [])
    if not isinstance(zones_raw, list):
        raise _rule_error("zones", "zones must be a list of {action, polygon} tables")
    zones = []
    for j, z in enumerate(zones_raw):
        if not isinstance(z, dict):
            raise _rule_error("zones", f"zone {j + 1} must be a table {{action = ..., polygon = [...]}}")
        zones.append(_zone(z, j))
    return CameraRule(match=match, policy=policy, zones=tuple(zones))


def _zone(z: dict[str, Any], j: int) -> Zone:
    unknown = set(z) - {"action", "polygon", "relative"}
    if unknown:
        raise _rule_error("zones", f"zone {j + 1}: unknown key {sorted(unknown)[0]!r}; known: action, polygon, "
                                   f"relative")
    action = z.get("action")
    if action not in ZONE_ACTIONS:
        raise _rule_error("zones", f"zone {j + 1}: action must be \"mask\" (always masked) or \"ignore\" (never "
                                   f"searched), got {json.dumps(action, default=str)}")
    relative = z.get("relative", False)
    if not isinstance(relative, bool):
        raise _rule_error("zones", f"zone {j + 1}: relative must be true or false")
    poly = z.get("polygon")
    if not isinstance(poly, list) or len(poly) < 3:
        raise _rule_error("zones", f"zone {j + 1}: polygon needs at least 3 [x, y] points")
    pts = []
    for p in poly:
        if (not isinstance(p, (list, tuple)) or len(p) != 2
                or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in p)):
            raise _rule_error("zones", f"zone {j + 1}: every polygon point must be [x, y] numbers, got "
                                       f"{json.dumps(p, default=str)}")
        x, y = float(p[0]), float(p[1])
        if x < 0 or y < 0 or (relative and (x > 1 or y > 1)) or x > 100_000 or y > 100_000:
            raise _rule_error("zones", f"zone {j + 1}: point [{p[0]}, {p[1]}] is outside the frame"
                                       f"{' (relative points are 0..1)' if relative else ''}")
        pts.append((x, y))
    return Zone(action=action, polygon=tuple(pts), relative=relative)


def rules_to_json(rules: Sequence[CameraRule]) -> str:
    """Camera rules as the JSON the ``--camera_rules`` pipeline option carries."""
    return json.dumps([{"match": r.match, "policy": r.policy,
                        "zones": [{"action": z.action, "polygon": [list(p) for p in z.polygon],
                                   "relative": z.relative} for z in r.zones]} for r in rules],
                      separators=(",", ":"))


def parse_camera_rules(text: Optional[str]) -> tuple[CameraRule, ...]:
    """Camera rules from the ``--camera_rules`` JSON (empty when unset)."""
    if not text:
        return ()
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise CameraRuleError(f"camera rules are not valid JSON: {exc.msg}") from None
    if not isinstance(data, list):
        raise CameraRuleError("camera rules must be a JSON list")
    rules = []
    for i, cam in enumerate(data):
        if isinstance(cam, dict) and cam.get("policy") is None:
            cam = {k: v for k, v in cam.items() if k != "policy"}
        try:
            rules.append(_camera_rule(cam))
        except CameraRuleError as exc:
            raise CameraRuleError(f"camera rule {i + 1}: {exc}") from None
    return tuple(rules)


def camera_rules_from_options(opts: Any) -> tuple[CameraRule, ...]:
    return parse_camera_rules(getattr(opts, "camera_rules", None))


def rule_for(rules: Sequence[CameraRule], camera_id: str) -> Optional[CameraRule]:
    """The first rule whose glob matches ``camera_id``."""
    for rule in rules:
        if rule.applies(camera_id):
            return rule
    return None


__all__ = ["CameraRule", "CameraRuleError", "ConfigFileError", "PipelineConfig", "SETTINGS", "Zone",
           "camera_rules_from_options", "load", "parse_camera_rules", "rule_for", "rules_to_json"]
