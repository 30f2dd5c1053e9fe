"""The default policy keeps its word: nobody but a suspect stays identifiable to a machine recogniser.

Two checks. The committed calibration (bench/results/masking_calibration.json, written by
``python bench/calibrate_masking.py``) must show every non-suspect decision of the shipped default policy below
SFace's match threshold for every face at every calibrated size, and must have been measured on the policy file
as it is now. And the attack itself, live: real faces, real masks, real SFace, at a small and a large size; a
policy that gives non-suspects a light blur is caught re-identified.
"""

from __future__ import annotations

import importlib.util
import json
import pathlib
import sys

import pytest

from pipelines.masking.policy import NON_SUSPECT_COMBOS, Policy, calibration_violations, spec_digest

ROOT = pathlib.Path(__file__).resolve().parents[3]
RESULT = ROOT / "bench" / "results" / "masking_calibration.json"


@pytest.fixture(scope="module")
def calibration() -> dict:
    return json.loads(RESULT.read_text(encoding="utf-8"))


@pytest.mark.parametrize("mode", [None, "solid", "pixelate"])
def test_committed_calibration_default_never_reidentifies_a_non_suspect(calibration: dict, mode) -> None:
    policy = Policy.load("default", mode=mode)
    assert calibration_violations(calibration, policy) == []
    assert min(calibration["sizes"]) <= 12 and max(calibration["sizes"]) >= 300
    assert len(calibration["faces"]) >= 5
    rows = [r for r in calibration["rows"] if r["policy"] == policy.label and r["combo"] in NON_SUSPECT_COMBOS]
    assert len(rows) == len(NON_SUSPECT_COMBOS) * len(calibration["sizes"]) * len(calibration["faces"])


def test_default_discloses_no_non_suspect_and_keeps_suspects_identifiable(calibration: dict) -> None:
    policy = Policy.load("default")
    for risk in (0, 50, 60, 80, 95, 100):
        assert not policy.decide(100, 120, risk, False).disclosed
    # Suspects of G3 keep the light level: identifiable (>= 0.6) for every face at every size >= 24 px.
    rows = [r for r in calibration["rows"] if r["policy"] == policy.label and r["combo"] == "g3_suspect"
            and r["width"] >= 24]
    assert rows and min(r["cosine"] for r in rows) >= 0.6


def test_stale_or_missing_calibration_is_a_violation(calibration: dict) -> None:
    spec = dict(Policy.load("default").spec, version=99)
    edited = Policy(spec)
    assert calibration_violations(calibration, edited)[0].endswith("re-run bench/calibrate_masking.py)")
    empty = {"match_threshold": 0.363, "rows": [], "policy_digests": {edited.label: spec_digest(edited)}}
    assert len(calibration_violations(empty, edited)) == len(NON_SUSPECT_COMBOS)


def _bench():
    spec = importlib.util.spec_from_file_location("calibrate_masking", ROOT / "bench" / "calibrate_masking.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("calibrate_masking", mod)  # dataclasses look their module up by name
    spec.loader.exec_module(mod)
    return mod


def _live(policy: Policy, sizes: list[int]) -> dict:
    """A small calibration measured now: real faces, real masks, SFace with the clean landmarks."""
    bench = _bench()
    from pipelines.models.detector import load_detector
    from pipelines.models.recognizer import MATCH_THRESHOLD, load_recognizer

    rec = load_recognizer()
    faces = [f for f in bench.load_faces(load_detector("yunet")) if f.name in ("astronaut", "obama", "biden")]
    assert len(faces) == 3
    rows = []
    for face in faces:
        for width in sizes:
            img, det = bench.at_width(face, width)
            clean = rec.embed(img, [det])[0]
            for combo, risk, suspect in bench.COMBOS:
                dec = policy.decide(det.w, det.h, risk, suspect)
                cos = 1.0 if dec.disclosed else bench.masked_cosine(rec, img, det, clean, dec)
                rows.append({"policy": policy.label, "face": face.name, "width": width, "combo": combo,
                             "level": dec.level, "cosine": cos})
    return {"match_threshold": MATCH_THRESHOLD, "rows": rows, "policy_digests": {policy.label: spec_digest(policy)}}


def test_live_attack_default_policy_and_a_leaky_variant() -> None:
    shipped = Policy.load("default")
    assert calibration_violations(_live(shipped, [24, 178]), shipped) == []
    leaky_spec = json.loads(json.dumps(shipped.spec))
    leaky_spec["assign"]["4"]["non_suspect"] = "light"  # default-v1's rule
    leaky_spec["policy_id"] = "leaky-test"
    leaky = Policy(leaky_spec)
    bad = calibration_violations(_live(leaky, [24, 178]), leaky)
    assert bad and all("g4_non_suspect level light" in b for b in bad)
    assert len(bad) == 6  # every face at every size re-identified
