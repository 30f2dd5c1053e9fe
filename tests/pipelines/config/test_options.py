"""RiskmaskOptions validation and the `riskmask run` flag translation."""

from __future__ import annotations

import argparse

import pytest
from apache_beam.options.pipeline_options import PipelineOptions

from pipelines.config.options import OptionsError, RiskmaskOptions, validate
from pipelines.runner import pipeline_args, register_run

OK = ["--kafka_bootstrap_servers=127.0.0.1:9092"]


def test_defaults_are_valid():
    opts = validate(PipelineOptions(OK))
    assert isinstance(opts, RiskmaskOptions)
    assert (opts.raw_topic, opts.redacted_topic, opts.dlq_topic) == ("frames.raw", "frames.redacted", "frames.dlq")
    assert opts.detector == "yunet" and opts.policy == "default" and not opts.bounded


@pytest.mark.parametrize("flags, message", [
    (["--kafka_bootstrap_servers="], "bootstrap servers are empty"),
    (["--kafka_bootstrap_servers=host"], "not host:port"),
    (["--kafka_bootstrap_servers=h:99999"], "not host:port"),
    (OK + ["--raw_topic=bad topic"], "not a valid Kafka topic"),
    (OK + ["--redacted_topic=frames.raw"], "must differ"),
    (OK + ["--detector_threshold=1.5"], "threshold"),
    (OK + ["--detector=retinaface"], "unknown detector"),
    (OK + ["--policy=no-such-policy"], "cannot be loaded"),
    (OK + ["--detector_threads=0"], "threads"),
    (OK + ["--max_frame_bytes=10"], "max frame bytes"),
    (OK + ["--max_bundle_seconds=0"], "max bundle seconds"),
    (OK + ["--detect_lookahead=-1"], "look-ahead"),
    (OK + ["--detect_lookahead=9"], "look-ahead"),
    (OK + ["--runner=PortableRunner"], "--job_endpoint"),
    (OK + ["--runner=PortableRunner", "--job_endpoint=localhost:8099", "--environment_type=EXTERNAL"],
     "--environment_config"),
    (OK + ["--runner=PortableRunner", "--job_endpoint=localhost:8099"], "--checkpointing_interval"),
    (OK + ["--parallelism=4", "--max_parallelism=2"], "max parallelism"),
])
def test_bad_options_have_clear_errors(flags, message):
    with pytest.raises(OptionsError, match=message):
        validate(PipelineOptions(flags))


def test_policy_file_path_accepted(tmp_path):
    import json

    from pipelines.masking.policy import Policy

    path = tmp_path / "mine.json"
    path.write_text(json.dumps(Policy.load("paper").spec))
    assert validate(PipelineOptions(OK + [f"--policy={path}", "--detector=centerface"])).policy == str(path)


def test_flink_options_accepted():
    validate(PipelineOptions(OK + ["--runner=PortableRunner", "--job_endpoint=localhost:8099",
                                   "--environment_type=EXTERNAL", "--environment_config=localhost:50000",
                                   "--checkpointing_interval=10000", "--parallelism=2", "--max_parallelism=8"]))
    validate(PipelineOptions(OK + ["--runner=PortableRunner", "--job_endpoint=localhost:8099", "--bounded"]))


def test_cli_flags_translate_to_pipeline_options():
    parser = argparse.ArgumentParser()
    register_run(parser.add_subparsers())
    args = parser.parse_args(["run", "--bootstrap-servers", "k1:9092,k2:9092", "--group-id", "g", "--bounded",
                              "--runner", "PortableRunner", "--job-endpoint", "jm:8099", "--threads", "2",
                              "--detect-lookahead", "0", "--progress-interval", "5",
                              "--pipeline-arg=--sdk_worker_parallelism=2"])
    flags = pipeline_args(args)
    opts = PipelineOptions(flags)
    ro = opts.view_as(RiskmaskOptions)
    assert (ro.kafka_bootstrap_servers, ro.group_id, ro.bounded, ro.detector_threads) == (
        "k1:9092,k2:9092", "g", True, 2)
    assert (ro.detect_lookahead, ro.progress_interval_s) == (0, 5.0)
    assert opts.get_all_options()["job_endpoint"] == "jm:8099"
    assert "--sdk_worker_parallelism=2" in flags and "--streaming" not in flags
    validate(opts)


def test_beam_spelling_of_the_job_endpoint_is_accepted():
    # Flink's FlinkPortableClientEntryPoint appends --job_endpoint=... to the driver command
    parser = argparse.ArgumentParser()
    register_run(parser.add_subparsers())
    args = parser.parse_args(["run", "--runner", "PortableRunner", "--environment-type", "EXTERNAL",
                              "--environment-config", "localhost:50000", "--checkpointing-interval", "10000",
                              "--job_endpoint=localhost:8099"])
    assert args.job_endpoint == "localhost:8099"
    assert "--job_endpoint=localhost:8099" in pipeline_args(args) and "--streaming" in pipeline_args(args)
