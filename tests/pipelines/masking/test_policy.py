"""The paper's equations 1-5 (our reading of the printed equation 5), and the calibrated default policy's structure."""

from __future__ import annotations

import json

import pytest

from pipelines.masking.policy import MaskDecision, Policy, PolicyError, paper_difficulty, paper_sigma


@pytest.fixture(scope="module")
def paper() -> Policy:
    return Policy.load("paper")


@pytest.fixture(scope="module")
def default() -> Policy:
    return Policy.load("default")


def test_ids_and_versions(paper: Policy, default: Policy) -> None:
    assert (paper.policy_id, paper.version) == ("paper-v1", 1)
    assert (default.policy_id, default.version) == ("default-v2", 2)


def test_eq1_risk_groups(paper: Policy) -> None:
    cases = {0: 1, 50: 1, 50.5: 2, 51: 2, 70: 2, 71: 3, 90: 3, 91: 4, 100: 4, 150: 4}
    assert {r: paper.risk_group(r) for r in cases} == cases
    assert paper.risk_group(None) == 1
    assert paper.risk_group(float("nan")) == 1


def test_eq2_eq3_difficulty() -> None:
    values = [30, 3, 0, 0]
    assert [paper_difficulty(values, g) for g in (1, 2, 3, 4)] == [33, 3, 0, 0]


def test_eq5_sigma() -> None:
    assert paper_sigma(33, 0.7) == pytest.approx(11.3)
    assert paper_sigma(33, 0.3) == pytest.approx(5.3)
    assert paper_sigma(3, 0.7) == pytest.approx(0.8)
    assert paper_sigma(3, 0.3) == pytest.approx(0.8)


@pytest.mark.parametrize("risk,suspect,sigma,kernel", [
    (10, False, 11.3, 33), (50, False, 11.3, 33), (10, True, 5.3, 33),
    (60, False, 0.8, 3), (70, True, 0.8, 3),
])
def test_paper_decisions(paper: Policy, risk: int, suspect: bool, sigma: float, kernel: int) -> None:
    d = paper.decide(100, 120, risk, suspect)
    assert d.mode == "gaussian" and not d.disclosed
    assert d.strength == pytest.approx(sigma)
    assert d.kernel == kernel


@pytest.mark.parametrize("risk", [71, 90, 91, 100])
@pytest.mark.parametrize("suspect", [True, False])
def test_paper_d0_is_disclosed(paper: Policy, risk: int, suspect: bool) -> None:
    d = paper.decide(100, 120, risk, suspect)
    assert d.disclosed and d.mode == "none"


def test_eq4_suspects_get_smaller_mask(paper: Policy, default: Policy) -> None:
    for pol in (paper, default):
        for risk in (10, 60):
            assert pol.decide(100, 100, risk, True).mask_scale < pol.decide(100, 100, risk, False).mask_scale


def test_unknown_subject_fails_closed(paper: Policy, default: Policy) -> None:
    for pol in (paper, default):
        assert pol.decide(80, 90, None, None) == pol.strongest(80, 90)
        assert pol.decide(80, 90, None, True) == pol.strongest(80, 90)
    assert paper.strongest(100, 100).strength == pytest.approx(11.3)


def test_unknown_suspect_flag_counts_as_not_suspect(default: Policy) -> None:
    for risk in (10, 60, 80, 95):
        assert default.decide(100, 100, risk, None) == default.decide(100, 100, risk, False)


def _rank(d: MaskDecision) -> tuple[int, float]:
    return (0 if d.disclosed else 1, d.strength)


def test_default_ordering(default: Policy) -> None:
    """Lower risk never gets a weaker mask; within a group a suspect never gets a stronger one."""
    w = 120.0
    for suspect in (True, False):
        ranks = [_rank(default.decide(w, w, r, suspect)) for r in (10, 60, 80, 95)]
        assert ranks == sorted(ranks, reverse=True)
    for r in (10, 60, 80, 95):
        assert _rank(default.decide(w, w, r, True)) <= _rank(default.decide(w, w, r, False))
    assert default.decide(w, w, 95, True).disclosed
    assert not default.decide(w, w, 95, False).disclosed
    assert default.decide(w, w, 10, True).level == "strongest"


def test_default_is_normalised_to_face_size(default: Policy) -> None:
    small, big = default.strongest(40, 40), default.strongest(200, 200)
    assert big.strength == pytest.approx(5 * small.strength)
    assert big.kernel > small.kernel and big.kernel % 2 == 1


def test_mode_override(default: Policy, paper: Policy) -> None:
    pix = default.with_mode("pixelate")
    d = pix.strongest(100, 100)
    assert d.mode == "pixelate" and d.strength == 4
    assert pix.label == "default-v2+pixelate"
    assert Policy.load("default", mode="solid").strongest(50, 50).mode == "solid"
    # other modes keep the paper's ordering: fewer blocks for the stronger level
    pp = paper.with_mode("pixelate")
    assert pp.decide(100, 100, 10, False).strength < pp.decide(100, 100, 10, True).strength


def test_load_by_path_and_errors(tmp_path, default: Policy) -> None:
    f = tmp_path / "mine.json"
    spec = dict(default.spec, policy_id="mine-v2", version=2)
    f.write_text(json.dumps(spec))
    assert Policy.load(str(f)).policy_id == "mine-v2"
    with pytest.raises(PolicyError, match="no policy"):
        Policy.load("nonexistent")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(PolicyError):
        Policy.load(str(bad))
    broken = dict(spec)
    broken["assign"] = {"1": {"suspect": "strongest"}}
    f.write_text(json.dumps(broken))
    with pytest.raises(PolicyError, match="no level"):
        Policy.load(str(f))
    with pytest.raises(PolicyError, match="mode"):
        Policy.load("default", mode="sparkle")
