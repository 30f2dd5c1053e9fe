"""The pipeline config file: validation with file:line errors, flags override the file, per-camera rules
(policy and privacy zones) applied by MaskFaces on a real image, and the CLI's one-line failures."""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from apache_beam.options.pipeline_options import PipelineOptions

from pipelines.config import config_file
from pipelines.runner import pipeline_args, register_run

EXE = str(Path(sys.executable).with_name("riskmask"))

GOOD = """\
[kafka]
bootstrap_servers = "k1:9092,k2:9092"
group_id = "from-file"
security_protocol = "SASL_SSL"
sasl_mechanism = "SCRAM-SHA-512"
sasl_username = "pipeline"
sasl_password_file = "{pw}"
ssl_cafile = "{ca}"
connect_timeout_s = 4

[topics]
raw = "cams.raw"
redacted = "cams.redacted"

[detector]
name = "centerface"
threads = 2
execution_provider = "cpu"

[policy]
default = "paper"

[ledger]
dir = "/srv/ledger"
keys_dir = "/srv/keys"
anchor_audit_blocks = true

[metrics]
port = 9400

[[camera]]
match = "lobby-*"
policy = "default"
zones = [
  {{action = "mask", polygon = [[0, 0], [100, 0], [100, 50], [0, 50]]}},
  {{action = "ignore", polygon = [[0.5, 0.5], [1, 0.5], [1, 1], [0.5, 1]], relative = true}},
]

[[camera]]
match = "*"
"""


def _parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    register_run(parser.add_subparsers())
    return parser.parse_args(["run", *argv])


@pytest.fixture
def good(tmp_path: Path) -> Path:
    (tmp_path / "pw").write_text("s3cret\n")
    (tmp_path / "ca.pem").write_text("not checked here\n")
    path = tmp_path / "pipeline.toml"
    path.write_text(GOOD.format(pw=tmp_path / "pw", ca=tmp_path / "ca.pem"))
    return path


def test_file_values_reach_the_pipeline_options_and_flags_override_them(good: Path) -> None:
    from pipelines.config.options import RiskmaskOptions, validate

    flags = pipeline_args(_parse(["--config", str(good), "--group-id", "from-flag", "--threads", "1"]))
    opts = PipelineOptions(flags).view_as(RiskmaskOptions)
    assert opts.kafka_bootstrap_servers == "k1:9092,k2:9092" and opts.raw_topic == "cams.raw"
    assert (opts.group_id, opts.detector_threads) == ("from-flag", 1)  # flags win
    assert (opts.detector, opts.policy, opts.ledger_dir, opts.anchor_audit_blocks) == (
        "centerface", "paper", "/srv/ledger", True)
    assert (opts.kafka_security_protocol, opts.kafka_sasl_mechanism, opts.kafka_sasl_username) == (
        "SASL_SSL", "SCRAM-SHA-512", "pipeline")
    assert opts.connect_timeout_s == 4.0
    assert "s3cret" not in " ".join(flags)  # only the password file's path travels
    rules = config_file.parse_camera_rules(opts.camera_rules)
    assert [r.match for r in rules] == ["lobby-*", "*"] and rules[0].policy == "default"
    assert [z.action for z in rules[0].zones] == ["mask", "ignore"] and rules[0].zones[1].relative
    validate(PipelineOptions(flags))
    # Without the file the built-in defaults apply; a flag alone still works.
    plain = PipelineOptions(pipeline_args(_parse(["--group-id", "g"]))).view_as(RiskmaskOptions)
    assert (plain.raw_topic, plain.group_id, plain.kafka_security_protocol) == ("frames.raw", "g", "PLAINTEXT")


@pytest.mark.parametrize("body, line, reason", [
    ("[detector]\nname = \"yunet\"\nthreads = \"two\"\n", 3, "[detector] threads must be an integer"),
    ("[kafka]\n\nbootstrap = \"x:1\"\n", 3, "unknown key 'bootstrap' in [kafka]"),
    ("[topics]\nraw = \"a\"\n[nonsense]\nx = 1\n", 3, "unknown section [nonsense]"),
    ("[kafka]\ngroup_id = \"a\"\ngroup_id = \"b\"\n", 3, "Cannot overwrite a value"),
    ("[ledger]\nanchor_audit_blocks = \"yes\"\n", 2, "must be true or false"),
    ("[[camera]]\nmatch = \"a\"\n\n[[camera]]\nmatch = \"b\"\n"
     "zones = [{action = \"blur\", polygon = [[0,0],[1,0],[1,1]]}]\n", 6, "[[camera]] #2: zone 1: action must be \"mask\""),
    ("[[camera]]\nmatch = \"a\"\nzones = [{action = \"mask\", polygon = [[0,0],[1,0]]}]\n", 3,
     "polygon needs at least 3"),
    ("[[camera]]\npolicy = \"paper\"\n", 1, "match must be a non-empty glob"),
])
def test_errors_name_the_file_and_line(tmp_path: Path, body: str, line: int, reason: str) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(body)
    with pytest.raises(config_file.ConfigFileError) as err:
        config_file.load(str(path))
    assert str(err.value).startswith(f"{path}:{line}: "), str(err.value)
    assert reason in str(err.value)


def test_cli_reports_a_bad_config_in_one_line(tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text("[metrics]\nport = 9400\nhost = 7\n")
    res = subprocess.run([EXE, "run", "--config", str(path)], capture_output=True, text=True, timeout=60)
    assert res.returncode == 2
    lines = res.stderr.strip().splitlines()
    assert lines == [f"riskmask: error: {path}:3: [metrics] host must be a non-empty string, got 7"], res.stderr
    missing = subprocess.run([EXE, "run", "--config", str(tmp_path / "nope.toml")], capture_output=True,
                             text=True, timeout=60)
    assert missing.returncode == 2 and "cannot read config file" in missing.stderr
    assert "Traceback" not in missing.stderr + res.stderr


def test_rules_pick_the_first_matching_glob() -> None:
    rules = config_file.parse_camera_rules(config_file.rules_to_json([
        config_file.CameraRule("lobby-*", "paper"), config_file.CameraRule("*", None)]))
    assert config_file.rule_for(rules, "lobby-3").policy == "paper"
    assert config_file.rule_for(rules, "gate-1").policy is None
    assert config_file.rule_for(rules[:1], "gate-1") is None


def test_zones_mask_always_and_ignore_never_searched() -> None:
    """A real face: an ignore zone over it leaves it as it was; a mask zone masks pixels with no face in it."""
    from infra import sample_data
    from pipelines.models.detection import Detection
    from pipelines.transforms.mask_faces import _MaskFn
    from tests.pipeline_support import frame_context

    image = np.ascontiguousarray(sample_data.astronaut_source().image[:256, :256])
    face = Detection(x=60.0, y=40.0, w=100.0, h=120.0, score=0.9, landmarks=np.zeros((5, 2), np.float32))
    frame = frame_context(image).replace(camera_id="lobby-1", detections=(face,))
    ignore = config_file.Zone("ignore", ((50.0, 30.0), (170.0, 30.0), (170.0, 170.0), (50.0, 170.0)))
    mask = config_file.Zone("mask", ((200.0, 200.0), (250.0, 200.0), (250.0, 250.0), (200.0, 250.0)))

    def run(rules: tuple) -> np.ndarray:
        fn = _MaskFn("default", rules)
        fn.setup()
        out = list(fn.process(frame))
        assert len(out) == 1
        return out[0]

    plain = run(())
    assert not np.array_equal(plain.image[40:160, 60:160], image[40:160, 60:160])  # the face is masked
    ruled = run((config_file.CameraRule("lobby-*", None, (ignore, mask)),))
    assert np.array_equal(ruled.image[40:160, 60:160], image[40:160, 60:160])  # never searched: untouched
    assert ruled.faces == ()
    from pipelines.masking.filters import mask_whole_frame

    # Always masked although no face is there, at the whole-frame (fail-closed) strength.
    expected = image[200:251, 200:251].copy()
    mask_whole_frame(expected)
    assert np.array_equal(ruled.image[200:251, 200:251], expected)
    assert np.abs(expected.astype(int) - image[200:251, 200:251]).mean() > 3
    assert np.array_equal(ruled.image[180:200, 0:180], image[180:200, 0:180])  # outside both zones: as is
    other = frame.replace(camera_id="gate-1")
    fn = _MaskFn("default", (config_file.CameraRule("lobby-*", None, (ignore, mask)),))
    fn.setup()
    (gate,) = list(fn.process(other))
    assert not np.array_equal(gate.image[40:160, 60:160], image[40:160, 60:160])  # rule does not apply
