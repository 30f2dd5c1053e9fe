"""Masking policy: from a face's size, subject risk and suspect flag to a :class:`MaskDecision`.

Policies are versioned JSON data files (``pipelines/masking/policies/<name>.json``). Two kinds:

* ``paper``: the paper's equations as printed, with our reading of equation 5. Eq. 1 risk group values
  (30 / 3 / 0 / 0), Eq. 2-3 difficulty D(x) = value(x) + value(x+1) + value(x+2) (33 / 3 / 0 / 0), Eq. 4 suspect
  difficulty s (0.3 suspect, 0.7 not; suspects also get a smaller mask). Eq. 5 is printed with unbalanced
  brackets (``s * ((D - 1 * 0.5 - 1) + 0.8``); we read it as sigma = s * ((D - 1) * 0.5 - 1) + 0.8 with kernel
  size D (docs/policy.md lists the other readings); D = 0 means disclosed.
* ``levels``: named strength levels normalised to the face width (Gaussian sigma as a fraction of the width,
  or pixel blocks across the face), assigned per risk group and suspect flag; calibrated by measurement
  (docs/masking-calibration.md).

Fail closed: an unknown subject (risk None) gets the strongest level; an unknown suspect flag counts as
"not a suspect" (the stronger mask, the larger area).
"""

from __future__ import annotations

import hashlib
import json
import math
import pathlib
from dataclasses import dataclass
from typing import Any, Mapping

POLICY_DIR = pathlib.Path(__file__).with_name("policies")
MODES = ("gaussian", "pixelate", "solid", "none")
SHAPES = ("box", "ellipse")


class PolicyError(ValueError):
    """A policy file is missing or invalid."""


@dataclass(frozen=True)
class MaskDecision:
    """How to mask one face. ``strength``: sigma in pixels (gaussian) or pixel blocks across the face
    (pixelate); ``kernel``: Gaussian kernel size (0 = derived from sigma); ``mask_scale``: box enlargement."""

    risk_group: int
    mode: str
    shape: str
    strength: float
    kernel: int
    mask_scale: float
    disclosed: bool
    level: str = ""


def paper_difficulty(values: list[float], group: int, window: int = 3) -> float:
    """Eq. 2: sum of the group values for groups x .. x+window-1 (undefined groups count 0)."""
    return float(sum(values[g - 1] for g in range(group, group + window) if 1 <= g <= len(values)))


def paper_sigma(difficulty: float, s: float) -> float:
    """Eq. 5: OpenCV's default-sigma formula with its 0.3 replaced by s, and D as the kernel size."""
    return s * ((difficulty - 1) * 0.5 - 1) + 0.8


def gaussian_kernel_for(sigma: float) -> int:
    """Odd kernel size covering +-3 sigma."""
    return int(2 * math.ceil(3 * sigma) + 1)


class Policy:
    """A loaded, validated policy. Use :meth:`load`; :meth:`decide` is pure and cheap."""

    def __init__(self, spec: Mapping[str, Any], mode_override: str | None = None) -> None:
        self.spec = dict(spec)
        try:
            self.policy_id = str(spec["policy_id"])
            self.version = int(spec["version"])
            self.kind = str(spec.get("kind", "paper"))
            self._groups = sorted(spec["groups"], key=lambda g: g["max_risk"])
            self._mask_scale = {k: float(v) for k, v in spec["mask_scale"].items()}
            self.mode = str(mode_override or spec.get("mode", "gaussian"))
            self.shape = str(spec.get("shape", "box"))
        except (KeyError, TypeError, ValueError) as exc:
            raise PolicyError(f"invalid policy: missing or bad field {exc}") from exc
        if self.mode not in MODES:
            raise PolicyError(f"unknown mask mode {self.mode!r}; choose one of {', '.join(MODES)}")
        if self.shape not in SHAPES:
            raise PolicyError(f"unknown mask shape {self.shape!r}; choose one of {', '.join(SHAPES)}")
        if self.kind == "paper":
            self._values = [float(g["value"]) for g in self._groups]
            self._window = int(spec.get("difficulty_window", 3))
            self._s = {k: float(v) for k, v in spec["suspect_difficulty"].items()}
        elif self.kind == "levels":
            self._levels = dict(spec["levels"])
            self._assign = {int(k): v for k, v in spec["assign"].items()}
            self._unknown = str(spec.get("unknown", "strongest"))
            self._strongest = str(spec.get("strongest", self._unknown))
            for grp in self._groups:
                for who in ("suspect", "non_suspect"):
                    if self._assign.get(int(grp["group"]), {}).get(who) not in self._levels:
                        raise PolicyError(f"policy {self.policy_id}: group {grp['group']} {who} has no level")
        else:
            raise PolicyError(f"unknown policy kind {self.kind!r}")

    @property
    def label(self) -> str:
        """Id plus the mode when it differs from the file's (recorded in audit records)."""
        base = self.spec.get("mode", "gaussian")
        return self.policy_id if self.mode == base else f"{self.policy_id}+{self.mode}"

    @classmethod
    def load(cls, name_or_path: str, mode: str | None = None) -> "Policy":
        """A policy by name (``paper``, ``default``) or by JSON file path; ``mode`` overrides the file's mode."""
        p = pathlib.Path(name_or_path)
        if p.suffix != ".json" and not p.exists():
            p = POLICY_DIR / f"{name_or_path}.json"
        try:
            spec = json.loads(p.read_text(encoding="utf-8"))
        except FileNotFoundError:
            known = ", ".join(sorted(f.stem for f in POLICY_DIR.glob("*.json")))
            raise PolicyError(f"no policy {name_or_path!r} (known: {known}, or a path to a .json file)") from None
        except (OSError, json.JSONDecodeError) as exc:
            raise PolicyError(f"cannot read policy {p}: {exc}") from exc
        if not isinstance(spec, dict):
            raise PolicyError(f"policy {p} is not a JSON object")
        return cls(spec, mode_override=mode)

    def with_mode(self, mode: str | None) -> "Policy":
        return self if mode is None else Policy(self.spec, mode_override=mode)

    def risk_group(self, risk: int | None) -> int:
        """Eq. 1 group of a risk score 0..100 (None: group 1, the most protected)."""
        if risk is None:
            return 1
        r = float(risk)
        if math.isnan(r):
            return 1
        for g in self._groups:
            if r <= float(g["max_risk"]):
                return int(g["group"])
        return int(self._groups[-1]["group"])

    def decide(self, face_w: float, face_h: float, risk: int | None, suspect: bool | None) -> MaskDecision:
        """Mask for one face. ``risk`` None = unknown subject -> strongest; ``suspect`` None -> not a suspect."""
        if risk is None:
            return self.strongest(face_w, face_h)
        group = self.risk_group(risk)
        who = "suspect" if suspect is True else "non_suspect"
        if self.kind == "paper":
            return self._paper(group, who)
        return self._level(self._assign[group][who], group, who, face_w)

    def strongest(self, face_w: float, face_h: float) -> MaskDecision:
        """The strongest mask this policy knows (unknown subjects, failures)."""
        if self.kind == "paper":
            return self._paper(1, "non_suspect")
        return self._level(self._strongest, 1, "non_suspect", face_w)

    def _paper(self, group: int, who: str) -> MaskDecision:
        d = paper_difficulty(self._values, group, self._window)
        scale = self._mask_scale[who]
        if d <= 0:
            return MaskDecision(group, "none", self.shape, 0.0, 0, scale, True, "disclosed")
        s = self._s[who]
        sigma = paper_sigma(d, s)
        kernel = int(d) if int(d) % 2 == 1 else int(d) + 1
        if self.mode == "gaussian":
            return MaskDecision(group, "gaussian", self.shape, sigma, kernel, scale, False, f"D{d:g}-s{s:g}")
        # Other modes keep the paper's ordering: blocks across the face shrink as sigma grows.
        blocks = max(2.0, 64.0 / sigma)
        return MaskDecision(group, self.mode, self.shape, blocks if self.mode == "pixelate" else 0.0, 0, scale,
                            False, f"D{d:g}-s{s:g}")

    def _level(self, name: str, group: int, who: str, face_w: float) -> MaskDecision:
        lvl = self._levels[name]
        scale = float(lvl.get("mask_scale", {}).get(who, self._mask_scale[who]))
        if lvl.get("disclosed", False):
            return MaskDecision(group, "none", self.shape, 0.0, 0, scale, True, name)
        width = max(1.0, float(face_w))
        if self.mode == "gaussian":
            sigma = max(float(lvl.get("min_sigma", 0.8)), float(lvl["sigma_frac"]) * width)
            return MaskDecision(group, "gaussian", self.shape, sigma, gaussian_kernel_for(sigma), scale, False, name)
        if self.mode == "pixelate":
            return MaskDecision(group, "pixelate", self.shape, float(lvl["blocks"]), 0, scale, False, name)
        if self.mode == "solid":
            return MaskDecision(group, "solid", self.shape, 0.0, 0, scale, False, name)
        return MaskDecision(group, "none", self.shape, 0.0, 0, scale, True, name)

    def describe(self) -> dict[str, Any]:
        """Decision per group and suspect flag (for docs and the CLI), at a 100 px face."""
        out: dict[str, Any] = {"policy_id": self.label, "unknown": _as_dict(self.strongest(100, 100))}
        for g in self._groups:
            risk = int(g["max_risk"])
            for who, flag in (("suspect", True), ("non_suspect", False)):
                out[f"group{g['group']}_{who}"] = _as_dict(self.decide(100, 100, risk, flag))
        return out


def spec_digest(policy: Policy) -> str:
    """SHA-256 of the policy's JSON spec (canonical form) plus its mode: ties a calibration to one policy."""
    spec = {k: v for k, v in policy.spec.items() if k != "description"}  # prose does not change a decision
    canon = json.dumps({"spec": spec, "mode": policy.mode}, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canon.encode("utf-8")).hexdigest()


NON_SUSPECT_COMBOS = ("unknown", "g1_non_suspect", "g2_non_suspect", "g3_non_suspect", "g4_non_suspect")


def calibration_violations(result: Mapping[str, Any], policy: Policy) -> list[str]:
    """Where ``policy`` breaks its word in a calibration result (``bench/calibrate_masking.py`` JSON).

    The word: nobody but a suspect is identifiable. Every non-suspect decision (unknown subject and each group's
    non-suspect) must score below the result's match threshold for every face at every calibrated size, unless
    the policy discloses that group outright (an explicit ``disclosed`` level, the operator's choice). Also a
    violation: no rows for the policy, or rows measured on another version of it (digest mismatch).
    """
    label = policy.label
    digests = result.get("policy_digests", {})
    if digests.get(label) != spec_digest(policy):
        return [f"{label}: the calibration was not measured on this policy file (re-run bench/calibrate_masking.py)"]
    threshold = float(result["match_threshold"])
    rows = [r for r in result.get("rows", []) if r.get("policy") == label]
    out: list[str] = []
    for combo in NON_SUSPECT_COMBOS:
        sel = [r for r in rows if r["combo"] == combo]
        if not sel:
            out.append(f"{label} {combo}: not calibrated")
            continue
        for r in sel:
            if r["level"] != "disclosed" and float(r["cosine"]) >= threshold:
                out.append(f"{label} {combo} level {r['level']}: {r['face']} at {r['width']} px re-identified "
                           f"(cosine {float(r['cosine']):.3f} >= {threshold})")
    return out


def _as_dict(d: MaskDecision) -> dict[str, Any]:
    return {k: getattr(d, k) for k in MaskDecision.__dataclass_fields__}
