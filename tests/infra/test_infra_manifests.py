"""Static checks of the deployment files (compose, Kubernetes, Dockerfiles) against infra/deploy_contract.py.

Nothing here starts a container: no Docker engine or Kubernetes cluster is reachable. What can be checked
without one is checked: every file parses, images are pinned and consistent, versions agree (Flink cluster vs
Beam job server, Beam and Python vs the SDK worker image), ports and topics agree across files and with the
code's defaults, and every ``riskmask`` command the files run is accepted by the real CLI parser.
"""

from __future__ import annotations

import contextlib
import io
import ipaddress
import re
import shlex
from pathlib import Path
from typing import Any, Iterator

import pytest
import yaml

from infra import deploy_contract as dc

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_FILE = ROOT / "infra" / "compose" / "docker-compose.yml"
K8S_DIR = ROOT / "infra" / "k8s"
DOCKER_DIR = ROOT / "infra" / "docker"


# ---------------------------------------------------------------- loading


def _compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE_FILE.read_text(encoding="utf-8"))


def _services() -> dict[str, dict[str, Any]]:
    return _compose()["services"]


def _k8s_docs() -> list[dict[str, Any]]:
    docs: list[dict[str, Any]] = []
    for path in sorted(K8S_DIR.glob("*.yaml")):
        if path.name == "kustomization.yaml":
            continue
        docs.extend(d for d in yaml.safe_load_all(path.read_text(encoding="utf-8")) if d)
    return docs


def _k8s(kind: str, name: str) -> dict[str, Any]:
    found = [d for d in _k8s_docs() if d["kind"] == kind and d["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {kind} {name}, found {len(found)}"
    return found[0]


def _flink() -> dict[str, Any]:
    return _k8s("FlinkDeployment", "riskmask-pipeline")


def _pod_specs() -> Iterator[tuple[str, dict[str, Any]]]:
    for doc in _k8s_docs():
        where = f"{doc['kind']}/{doc['metadata']['name']}"
        if doc["kind"] in ("Deployment", "StatefulSet"):
            yield where, doc["spec"]["template"]["spec"]
        elif doc["kind"] == "FlinkDeployment":
            for part in ("jobManager", "taskManager"):
                yield f"{where}/{part}", doc["spec"][part]["podTemplate"]["spec"]


def _containers() -> Iterator[tuple[str, dict[str, Any]]]:
    for where, spec in _pod_specs():
        for c in spec.get("initContainers", []) + spec.get("containers", []):
            yield f"{where}/{c['name']}", c


def _driver_cmd() -> str:
    args = _flink()["spec"]["job"]["args"]
    assert args[0] == "--driver-cmd" and len(args) == 2
    return args[1]


def _manifest_commands() -> list[tuple[str, list[str]]]:
    """Every riskmask command line in the compose file and the Kubernetes manifests."""
    out: list[tuple[str, list[str]]] = []
    for name, svc in _services().items():
        cmd = svc.get("command")
        if isinstance(cmd, list) and cmd and cmd[0] == "riskmask":
            out.append((f"compose/{name}", [str(x) for x in cmd]))
    for where, c in _containers():
        argv = list(c.get("command", [])) + list(c.get("args", []))
        if argv and argv[0] == "riskmask":
            out.append((where, [str(x) for x in argv]))
    out.append(("FlinkDeployment/job --driver-cmd", shlex.split(_driver_cmd())))
    return out


def _flag(argv: list[str], name: str) -> str:
    assert name in argv, f"{name} missing from {argv}"
    return argv[argv.index(name) + 1]


def _compose_images() -> set[str]:
    return {svc["image"] for svc in _services().values() if "image" in svc}


def _k8s_images() -> set[str]:
    images = {c["image"] for _, c in _containers() if "image" in c}
    images.add(_flink()["spec"]["image"])
    return images


def _from_lines(dockerfile: Path) -> list[str]:
    return [ln.split()[1] for ln in dockerfile.read_text(encoding="utf-8").splitlines()
            if ln.strip().upper().startswith("FROM ")]


def _flink_properties(service: str) -> dict[str, str]:
    text = _services()[service]["environment"]["FLINK_PROPERTIES"]
    return {k.strip(): v.strip() for k, _, v in (ln.partition(":") for ln in text.splitlines() if ln.strip())}


def _duration_ms(text: str) -> int:
    m = re.fullmatch(r"(\d+)\s*(ms|s|min|m)?", str(text).strip())
    assert m, f"cannot read duration {text!r}"
    return int(m.group(1)) * {"ms": 1, None: 1, "s": 1000, "min": 60_000, "m": 60_000}[m.group(2)]


# ---------------------------------------------------------------- files and images


def test_every_deployment_file_parses_and_is_namespaced() -> None:
    files = sorted((ROOT / "infra" / "compose").glob("*.yml")) + sorted(K8S_DIR.glob("*.yaml"))
    assert COMPOSE_FILE in files and len(files) >= 6
    for path in files:
        assert list(yaml.safe_load_all(path.read_text(encoding="utf-8"))), path
    for doc in _k8s_docs():
        assert doc.get("apiVersion") and doc.get("kind") and doc["metadata"].get("name"), doc
        if doc["kind"] != "Namespace":
            assert doc["metadata"].get("namespace") == "riskmask", doc["metadata"]["name"]


def test_kustomization_lists_every_manifest() -> None:
    kust = yaml.safe_load((K8S_DIR / "kustomization.yaml").read_text(encoding="utf-8"))
    listed = set(kust["resources"])
    present = {p.name for p in K8S_DIR.glob("*.yaml")} - {"kustomization.yaml"}
    assert listed == present


def test_images_are_pinned_and_the_ones_of_the_contract() -> None:
    allowed = set(dc.IMAGES.values())
    dockerfile_froms = {img for f in DOCKER_DIR.glob("Dockerfile*") for img in _from_lines(f)}
    for image in _compose_images() | _k8s_images() | dockerfile_froms:
        assert image in allowed, f"{image} is not in deploy_contract.IMAGES"
        name, _, tag = image.rpartition(":")
        assert name and tag and tag != "latest" and re.search(r"\d", tag), f"{image} is not pinned"
    from riskmask import __version__

    assert dc.PROJECT_VERSION == __version__
    for key in ("riskmask", "riskmask_worker", "riskmask_flink"):
        assert dc.IMAGES[key].endswith(":" + __version__)
    # Every image of the contract is used somewhere (no stale entries).
    assert allowed == _compose_images() | _k8s_images() | dockerfile_froms | {dc.IMAGES["python"]}


def test_dockerfiles_build_from_the_pinned_bases_and_install_every_package() -> None:
    for image_key, (rel, base_key) in dc.DOCKERFILES.items():
        path = ROOT / rel
        froms = _from_lines(path)
        assert froms[-1] == dc.IMAGES[base_key], f"{rel} must build FROM {dc.IMAGES[base_key]}"
        text = path.read_text(encoding="utf-8")
        assert f"-t {dc.IMAGES[image_key]} ." in text, f"{rel} should document its tag {dc.IMAGES[image_key]}"
        for pkg in ("riskmask", "schemas", "pipelines", "ledger", "infra"):
            assert re.search(rf"^COPY {pkg} ", text, re.M), f"{rel} does not copy package {pkg}"
        assert "COPY setup.py README.md" in text and "pip install /src" in text
    assert _from_lines(DOCKER_DIR / "Dockerfile")[0] == dc.IMAGES["python"]


# ---------------------------------------------------------------- versions


def test_flink_version_matches_the_beam_job_server_and_beam_supports_it() -> None:
    from apache_beam.options.pipeline_options import FlinkRunnerOptions

    assert dc.FLINK_MINOR in FlinkRunnerOptions.PUBLISHED_FLINK_VERSIONS
    assert dc.FLINK_PATCH.startswith(dc.FLINK_MINOR + ".")
    assert _flink()["spec"]["flinkVersion"] == "v" + dc.FLINK_MINOR.replace(".", "_")
    assert dc.IMAGES["beam_job_server"] == f"apache/beam_flink{dc.FLINK_MINOR}_job_server:{dc.BEAM_VERSION}"
    assert dc.IMAGES["flink"].startswith(f"flink:{dc.FLINK_PATCH}-")
    assert _services()["beam-job-server"]["image"] == dc.IMAGES["beam_job_server"]
    # The Flink image carries the job server jar of the same Beam and Flink versions.
    flink_df = (DOCKER_DIR / "Dockerfile.flink").read_text(encoding="utf-8")
    assert _from_lines(DOCKER_DIR / "Dockerfile.flink")[0] == dc.IMAGES["beam_job_server"]
    jar = _flink()["spec"]["job"]["jarURI"].removeprefix("local://")
    assert re.search(rf"^COPY --from=beam-job-server \S+ {re.escape(jar)}$", flink_df, re.M)
    assert _flink()["spec"]["job"]["entryClass"] == "org.apache.beam.runners.flink.FlinkPortableClientEntryPoint"


def test_beam_and_python_versions_agree_everywhere() -> None:
    import apache_beam

    assert apache_beam.__version__ == dc.BEAM_VERSION
    setup = (ROOT / "setup.py").read_text(encoding="utf-8")
    beam_pin = re.search(r'"apache-beam==([\d.*]+)"', setup).group(1)
    assert dc.BEAM_VERSION.startswith(beam_pin.rstrip("*").rstrip("."))
    assert dc.IMAGES["beam_sdk"] == f"apache/beam_python{dc.PYTHON_MINOR}_sdk:{dc.BEAM_VERSION}"
    assert dc.IMAGES["python"].startswith(f"python:{dc.PYTHON_MINOR}-")
    flink_df = (DOCKER_DIR / "Dockerfile.flink").read_text(encoding="utf-8")
    assert f"python{dc.PYTHON_MINOR} " in flink_df and f"python{dc.PYTHON_MINOR} -m venv" in flink_df
    lo, hi = re.search(r'python_requires=">=(3\.\d+),<(3\.\d+)"', setup).groups()
    minor = int(dc.PYTHON_MINOR.split(".")[1])
    assert int(lo.split(".")[1]) <= minor < int(hi.split(".")[1])


# ---------------------------------------------------------------- pipeline on Flink


def _pipeline_commands() -> list[tuple[str, list[str]]]:
    return [(w, a) for w, a in _manifest_commands() if a[:2] == ["riskmask", "run"]]


def test_worker_pool_port_matches_the_environment_config_everywhere() -> None:
    port = dc.PORTS["beam_worker_pool"]
    cmds = _pipeline_commands()
    assert len(cmds) == 2  # compose submitter + Kubernetes driver
    for where, argv in cmds:
        assert _flag(argv, "--environment-type") == "EXTERNAL", where
        assert _flag(argv, "--environment-config") == dc.WORKER_POOL == f"localhost:{port}", where
    sidecars = [c for w, c in _containers() if c["name"] == "beam-worker-pool"]
    assert len(sidecars) == 1
    sidecar = sidecars[0]
    assert sidecar["image"] == dc.IMAGES["riskmask_worker"] and sidecar["args"] == ["--worker_pool"]
    assert [p["containerPort"] for p in sidecar["ports"]] == [port]
    assert sidecar["livenessProbe"]["tcpSocket"]["port"] == port
    # compose: "localhost" from the task manager reaches the pool only if they share a network namespace.
    pool = _services()["beam-worker-pool"]
    assert pool["network_mode"] == "service:taskmanager" and pool["command"] == ["--worker_pool"]
    assert pool["image"] == dc.IMAGES["riskmask_worker"]
    # The worker image keeps Beam's boot entry point, whose --worker_pool mode listens on 50000.
    worker_df = (DOCKER_DIR / "Dockerfile.worker").read_text(encoding="utf-8")
    assert 'ENTRYPOINT ["/opt/apache/beam/boot"]' in worker_df and port == 50000


def test_checkpointing_drives_offset_commits_and_upgrades_use_savepoints() -> None:
    interval = dc.CHECKPOINT_INTERVAL_MS
    assert interval > 0
    for where, argv in _pipeline_commands():
        assert int(_flag(argv, "--checkpointing-interval")) == interval, where
    conf = _flink()["spec"]["flinkConfiguration"]
    assert _duration_ms(conf["execution.checkpointing.interval"]) == interval
    assert _duration_ms(_flink_properties("jobmanager")["execution.checkpointing.interval"]) == interval
    job = _flink()["spec"]["job"]
    assert job["upgradeMode"] == "savepoint" and job["state"] == "running"
    assert conf["state.savepoints.dir"].startswith("file:///flink-data/")
    assert conf["state.checkpoints.dir"].startswith("file:///flink-data/")
    assert conf["high-availability.type"] == "kubernetes"
    # Savepoint and checkpoint folders are on the shared volume in every Flink pod.
    for part in ("jobManager", "taskManager"):
        spec = _flink()["spec"][part]["podTemplate"]["spec"]
        main = next(c for c in spec["containers"] if c["name"] == "flink-main-container")
        assert {"name": "flink-state", "mountPath": "/flink-data"} in main["volumeMounts"], part
        claims = {v["persistentVolumeClaim"]["claimName"] for v in spec["volumes"] if "persistentVolumeClaim" in v}
        assert claims == {"riskmask-flink-state"}
    pvc = _k8s("PersistentVolumeClaim", "riskmask-flink-state")
    assert pvc["spec"]["accessModes"] == ["ReadWriteMany"]
    for svc in ("jobmanager", "taskmanager"):
        props = _flink_properties(svc)
        assert props["state.savepoints.dir"] == conf["state.savepoints.dir"], svc
        assert "flink-data:/flink-data" in _services()[svc]["volumes"]


def test_beam_artifacts_are_shared_by_job_server_and_workers() -> None:
    target = dc.BEAM_ARTIFACTS_DIR
    svcs = _services()
    assert f"--artifacts-dir={target}" in svcs["beam-job-server"]["command"]
    for name in ("beam-job-server", "taskmanager", "beam-worker-pool"):
        assert f"beam-artifacts:{target}" in svcs[name]["volumes"], name
    mounts = {w: c.get("volumeMounts", []) for w, c in _containers() if w.startswith("FlinkDeployment")}
    shared = {"name": "flink-state", "mountPath": target, "subPath": "beam-artifacts"}
    for where in ("FlinkDeployment/riskmask-pipeline/jobManager/flink-main-container",
                  "FlinkDeployment/riskmask-pipeline/taskManager/flink-main-container",
                  "FlinkDeployment/riskmask-pipeline/taskManager/beam-worker-pool"):
        assert shared in mounts[where], where


def test_job_server_talks_to_the_jobmanager_and_the_submitter_to_the_job_server() -> None:
    svcs = _services()
    cmd = svcs["beam-job-server"]["command"]
    assert f"--flink-master={dc.FLINK_MASTER}" in cmd
    assert f"--job-port={dc.PORTS['beam_job']}" in cmd and f"--artifact-port={dc.PORTS['beam_artifact']}" in cmd
    assert f"--expansion-port={dc.PORTS['beam_expansion']}" in cmd
    host = dc.JOB_ENDPOINT.split(":")[0]
    assert f"--job-host={host}" in cmd and svcs["beam-job-server"]["hostname"] == host
    assert svcs["jobmanager"]["hostname"] == dc.FLINK_MASTER.split(":")[0]
    assert f"{dc.PORTS['flink_rest']}:{dc.PORTS['flink_rest']}" in svcs["jobmanager"]["ports"]
    props = _flink_properties("jobmanager")
    assert int(props["rest.port"]) == dc.PORTS["flink_rest"]
    assert int(props["jobmanager.rpc.port"]) == dc.PORTS["flink_rpc"]
    assert int(_flink_properties("taskmanager")["jobmanager.rpc.port"]) == dc.PORTS["flink_rpc"]
    (_, pipeline), = [(w, a) for w, a in _pipeline_commands() if w.startswith("compose/")]
    assert _flag(pipeline, "--job-endpoint") == dc.JOB_ENDPOINT
    assert _flag(pipeline, "--runner") == "PortableRunner"


def test_driver_command_leaves_the_job_endpoint_to_the_entry_point() -> None:
    driver = _driver_cmd()
    assert driver == dc.driver_cmd()
    # FlinkPortableClientEntryPoint refuses a command containing --job_endpoint and appends its own.
    assert "--job_endpoint" not in driver and "--job-endpoint" not in driver
    assert _flag(shlex.split(driver), "--runner") == "PortableRunner"


def test_kafka_partitions_set_the_parallelism_and_topics_match_the_code() -> None:
    from infra.broker import DEFAULT_TOPICS
    from pipelines.config import defaults as options  # the settings' one declaration

    script = _services()["kafka-init"]["command"][0]
    created = {m.group(1): int(m.group(2))
               for m in re.finditer(r"--topic (\S+) --partitions (\d+) --replication-factor 1", script)}
    assert created == dc.TOPICS
    assert set(created) == set(DEFAULT_TOPICS)
    for name in (options.DEFAULT_RAW_TOPIC, options.DEFAULT_REDACTED_TOPIC, options.DEFAULT_DLQ_TOPIC,
                 options.DEFAULT_AUDIT_TOPIC):
        assert name in created
    assert dc.PARALLELISM == created[options.DEFAULT_RAW_TOPIC]
    assert created["ledger.blocks"] == 1  # offset order is block order
    for where, argv in _pipeline_commands():
        assert int(_flag(argv, "--parallelism")) == dc.PARALLELISM, where
    spec = _flink()["spec"]
    slots = int(spec["flinkConfiguration"]["taskmanager.numberOfTaskSlots"])
    assert spec["job"]["parallelism"] == dc.PARALLELISM
    assert (spec["taskManager"]["replicas"], slots) == (dc.TASK_MANAGERS_K8S, dc.TASK_SLOTS_K8S)
    assert dc.TASK_MANAGERS_K8S * dc.TASK_SLOTS_K8S == dc.PARALLELISM
    assert int(_flink_properties("taskmanager")["taskmanager.numberOfTaskSlots"]) == dc.TASK_SLOTS_COMPOSE
    assert int(_flink_properties("jobmanager")["parallelism.default"]) == dc.PARALLELISM <= dc.TASK_SLOTS_COMPOSE


def test_kafka_runs_in_kraft_mode_and_accepts_whole_frames() -> None:
    from pipelines.config.defaults import DEFAULT_MAX_FRAME_BYTES

    kafka = _services()["kafka"]
    env = kafka["environment"]
    assert kafka["image"] == dc.IMAGES["kafka"]
    assert set(env["KAFKA_PROCESS_ROLES"].split(",")) == {"broker", "controller"}
    assert not any("ZOOKEEPER" in k for k in env)
    assert env["KAFKA_CONTROLLER_QUORUM_VOTERS"] == f"1@kafka:{dc.PORTS['kafka_controller']}"
    assert f"PLAINTEXT://{dc.KAFKA_BOOTSTRAP}" in env["KAFKA_ADVERTISED_LISTENERS"].split(",")
    assert f"HOST://localhost:{dc.PORTS['kafka_host']}" in env["KAFKA_ADVERTISED_LISTENERS"].split(",")
    assert f"{dc.PORTS['kafka_host']}:{dc.PORTS['kafka_host']}" in kafka["ports"]
    assert re.fullmatch(r"[A-Za-z0-9_-]{22}", env["CLUSTER_ID"])  # base64 of a 16-byte UUID
    assert int(env["KAFKA_MESSAGE_MAX_BYTES"]) > DEFAULT_MAX_FRAME_BYTES
    assert int(env["KAFKA_REPLICA_FETCH_MAX_BYTES"]) >= int(env["KAFKA_MESSAGE_MAX_BYTES"])
    for where, argv in _manifest_commands():
        if "--bootstrap-servers" in argv:
            assert _flag(argv, "--bootstrap-servers") == dc.KAFKA_BOOTSTRAP, where


# ---------------------------------------------------------------- ledger and exporter


def test_compose_ledger_nodes_have_fixed_addresses_and_their_own_files() -> None:
    svcs = _services()
    nodes = sorted(n for n in svcs if re.fullmatch(r"ledger-\d+", n))
    assert len(nodes) == dc.LEDGER_NODES
    net = _compose()["networks"]["riskmask"]["ipam"]["config"][0]
    subnet, dynamic = ipaddress.ip_network(net["subnet"]), ipaddress.ip_network(net["ip_range"])
    for i, name in enumerate(nodes):
        svc = svcs[name]
        ip = ipaddress.ip_address(svc["networks"]["riskmask"]["ipv4_address"])
        assert str(ip) == dc.LEDGER_COMPOSE_HOSTS[i] and ip in subnet and ip not in dynamic
        assert svc["command"] == dc.COMMANDS["ledger_node"]
        assert f"./ledger-cluster/node{i}.json:{dc.LEDGER_CONFIG}:ro" in svc["volumes"]
        assert f"./ledger-cluster/keys/node{i}.key:/etc/riskmask/keys/node{i}.key:ro" in svc["volumes"]
        assert f"ledger-data-{i}:/etc/riskmask/data" in svc["volumes"]
        other_keys = [v for v in svc["volumes"] if ".key" in v and f"node{i}.key" not in v]
        assert not other_keys, f"{name} sees another validator's key"
    init = svcs["ledger-init"]["command"]
    assert init == dc.COMMANDS["ledger_init"] and svcs["ledger-init"]["profiles"] == ["init"]
    assert _flag(init, "--hosts").split(",") == list(dc.LEDGER_COMPOSE_HOSTS)
    assert int(_flag(init, "--p2p-port")) == dc.PORTS["ledger_p2p"]
    assert int(_flag(init, "--api-port")) == dc.PORTS["ledger_api"]
    assert int(_flag(init, "--validators")) == dc.LEDGER_NODES


def test_k8s_ledger_is_a_four_node_statefulset_with_volumes_and_a_quorum_safe_budget() -> None:
    sts = _k8s("StatefulSet", "ledger")["spec"]
    assert sts["replicas"] == dc.LEDGER_NODES and sts["serviceName"] == "ledger"
    assert sts["podManagementPolicy"] == "Parallel"
    (claim,) = sts["volumeClaimTemplates"]
    assert claim["metadata"]["name"] == "data" and claim["spec"]["accessModes"] == ["ReadWriteOnce"]
    node = next(c for c in sts["template"]["spec"]["containers"] if c["name"] == "node")
    assert node["command"] == dc.COMMANDS["ledger_node"]
    assert {"name": "data", "mountPath": "/etc/riskmask/data"} in node["volumeMounts"]
    ports = {p["name"]: p["containerPort"] for p in node["ports"]}
    assert ports == {"p2p": dc.PORTS["ledger_p2p"], "api": dc.PORTS["ledger_api"],
                     "metrics": dc.PORTS["ledger_metrics"]}
    svc = _k8s("Service", "ledger")["spec"]
    assert svc["clusterIP"] == "None"
    assert {p["name"]: p["port"] for p in svc["ports"]} == ports
    assert svc["selector"] == sts["selector"]["matchLabels"]
    assert sts["selector"]["matchLabels"].items() <= sts["template"]["metadata"]["labels"].items()
    pdb = _k8s("PodDisruptionBudget", "ledger")["spec"]
    assert pdb["maxUnavailable"] == dc.LEDGER_FAULTS == 1
    init = sts["template"]["spec"]["initContainers"][0]["command"][-1]
    assert 'cp "/cluster/node${i}.json" /etc/riskmask/node.json' in init
    assert 'chmod 600 "/etc/riskmask/keys/node${i}.key"' in init


def test_exactly_one_exporter_that_never_sees_validator_keys() -> None:
    svcs = _services()
    exporters = [n for n, s in svcs.items() if s.get("command", [])[:3] == ["riskmask", "ledger", "export"]]
    assert exporters == ["ledger-exporter"]
    assert not any("node" in v and ".key" in v for v in svcs["ledger-exporter"]["volumes"])
    dep = _k8s("Deployment", "ledger-exporter")["spec"]
    assert dep["replicas"] == 1 and dep["strategy"]["type"] == "Recreate"
    secret = next(v["secret"] for v in dep["template"]["spec"]["volumes"] if "secret" in v)
    assert {i["key"] for i in secret["items"]} == {"genesis.json", "clients.json", "auditor.key", "ca.crt"}
    container = dep["template"]["spec"]["containers"][0]
    assert container["command"] == dc.COMMANDS["ledger_export"]


# ---------------------------------------------------------------- commands vs the real CLI


def test_every_riskmask_command_in_the_files_is_in_the_contract_and_back() -> None:
    contract = {tuple(v): k for k, v in dc.COMMANDS.items()}
    used: set[str] = set()
    for where, argv in _manifest_commands():
        assert tuple(argv) in contract, f"{where} runs a command not in deploy_contract.COMMANDS: {argv}"
        used.add(contract[tuple(argv)])
    assert used == set(dc.COMMANDS), f"contract commands used nowhere: {set(dc.COMMANDS) - used}"


@pytest.mark.parametrize("name", sorted(dc.COMMANDS))
def test_the_riskmask_cli_accepts_each_deployed_command(name: str) -> None:
    """Fails (does not skip) while a command or option the deployment needs is missing from the CLI."""
    from riskmask.cli import build_parser

    argv = list(dc.COMMANDS[name])
    if name == "pipeline_driver":
        argv.append(f"{dc.DRIVER_APPENDED_FLAG}=localhost:{dc.PORTS['beam_job']}")
    assert argv[0] == "riskmask"
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err):
            args = build_parser().parse_args(argv[1:])
    except SystemExit as exc:
        reason = err.getvalue().strip().splitlines()[-1:] or [""]
        pytest.fail(f"`{shlex.join(argv)}` is rejected by riskmask's parser (exit {exc.code}): {reason[0]}",
                    pytrace=False)
    assert callable(getattr(args, "func", None)), f"{name}: no handler set for `{shlex.join(argv)}`"


# ---------------------------------------------------------------- the deployed product masks by risk


def test_every_deployed_pipeline_recognises_people_and_anchors_audit_blocks() -> None:
    """Without --ledger-dir and keys every face gets the strongest mask and nothing is anchored."""
    cmds = _pipeline_commands()
    assert len(cmds) == 2
    for where, argv in cmds:
        assert "--ledger-dir" in argv, f"{where}: no --ledger-dir, nobody is ever recognised"
        assert _flag(argv, "--ledger-dir") == dc.PIPELINE_LEDGER_DIR, where
        assert _flag(argv, "--keys-dir") == dc.PIPELINE_KEYS_DIR, where
        assert "--anchor-audit-blocks" in argv, f"{where}: audit blocks are not anchored on the ledger"
        assert int(_flag(argv, "--metrics-port")) == dc.PORTS["pipeline_metrics"], where


def _compose_secret_targets(service: str) -> dict[str, str]:
    out = {}
    for s in _services()[service].get("secrets", []):
        assert isinstance(s, dict), f"{service}: secret {s!r} needs an explicit target"
        out[s["source"]] = s["target"]
    return out


def test_pipeline_keys_reach_every_pipeline_container_from_a_secret() -> None:
    top = _compose().get("secrets", {})
    for name, svc in (("pipeline", "pipeline"), ("beam-worker-pool", "beam-worker-pool")):
        targets = _compose_secret_targets(svc)
        assert set(targets.values()) == set(dc.PIPELINE_SECRET_FILES.values()), f"compose/{name}"
        for source in targets:
            assert source in top and top[source]["file"].startswith("./ledger-cluster/"), source
        assert not any(".key" in v or "keyring" in v for v in _services()[svc].get("volumes", [])), \
            f"compose/{name} mounts key files outside the secrets"
    secret_users = []
    for where, spec in _pod_specs():
        vols = [v["secret"] for v in spec.get("volumes", []) if v.get("secret", {}).get("secretName")
                == dc.PIPELINE_SECRET]
        if vols:
            secret_users.append(where)
            assert {i["key"] for i in vols[0]["items"]} == set(dc.PIPELINE_SECRET_FILES), where
            # Key files must be 0600 and owned by the reader: an init container copies them from the Secret.
            init = " ".join(str(x) for c in spec.get("initContainers", []) for x in c.get("command", []))
            for item, path in dc.PIPELINE_SECRET_FILES.items():
                assert f"/pipeline-secret/{item} {path}" in init, (where, item)
                if item.endswith(".key") or item in ("keyring.json", "frame_keys.json"):
                    assert f"chmod 600 {path}" in init, (where, item)
    assert sorted(secret_users) == ["FlinkDeployment/riskmask-pipeline/jobManager",
                                    "FlinkDeployment/riskmask-pipeline/taskManager"]
    for where, c in _containers():
        if where.endswith(("jobManager/flink-main-container", "taskManager/beam-worker-pool")):
            mounts = {m["mountPath"] for m in c.get("volumeMounts", [])}
            assert "/etc/riskmask/pipeline" in mounts, where


def _fetched_models(dockerfile: Path) -> set[str]:
    text = dockerfile.read_text(encoding="utf-8")
    return set(re.findall(r"fetch\('([a-z0-9_]+)'\)", text))


def test_images_that_run_stages_carry_every_selectable_model() -> None:
    from pipelines.config.options import DETECTORS
    from pipelines.models.fetch import MODELS

    assert set(dc.IMAGE_MODELS) == set(DETECTORS) | {"sface"}
    assert set(dc.IMAGE_MODELS) <= set(MODELS)
    for name in ("Dockerfile", "Dockerfile.worker"):
        assert _fetched_models(DOCKER_DIR / name) == set(dc.IMAGE_MODELS), name


def _http_probe(c: dict[str, Any], kind: str) -> dict[str, Any]:
    probe = c.get(kind) or {}
    assert "httpGet" in probe, f"{c['name']}: {kind} is not an HTTP health check: {probe}"
    return probe["httpGet"]


def _scrape(meta: dict[str, Any]) -> tuple[str, int, str]:
    ann = meta.get("annotations") or {}
    return ann.get("prometheus.io/scrape"), int(ann.get("prometheus.io/port", 0)), ann.get("prometheus.io/path")


def test_k8s_probes_use_health_endpoints_and_pods_are_scraped() -> None:
    for kind, name, container, port_key, cmd_key in (
            ("StatefulSet", "ledger", "node", "ledger_metrics", "ledger_node"),
            ("Deployment", "ledger-exporter", "exporter", "exporter_metrics", "ledger_export")):
        tpl = _k8s(kind, name)["spec"]["template"]
        c = next(x for x in tpl["spec"]["containers"] if x["name"] == container)
        port = dc.PORTS[port_key]
        assert int(_flag(c["command"], "--metrics-port")) == port and c["command"] == dc.COMMANDS[cmd_key]
        assert {"name": "metrics", "containerPort": port} in c["ports"], name
        ready, live = _http_probe(c, "readinessProbe"), _http_probe(c, "livenessProbe")
        assert (ready["path"], ready["port"]) == ("/readyz", "metrics"), name
        assert (live["path"], live["port"]) == ("/healthz", "metrics"), name
        assert _scrape(tpl["metadata"]) == ("true", port, "/metrics"), name
    flink = _flink()["spec"]
    conf = flink["flinkConfiguration"]
    assert conf["metrics.reporter.prom.factory.class"] == dc.PROMETHEUS_REPORTER
    assert int(conf["metrics.reporter.prom.port"]) == dc.PORTS["flink_metrics"]
    for part in ("jobManager", "taskManager"):
        meta = flink[part]["podTemplate"].get("metadata", {})
        assert _scrape(meta) == ("true", dc.PORTS["flink_metrics"], "/metrics"), part


def test_compose_health_checks_and_flink_metrics() -> None:
    svcs = _services()
    for name, port in ([(f"ledger-{i}", dc.PORTS["ledger_metrics"]) for i in range(dc.LEDGER_NODES)]
                       + [("ledger-exporter", dc.PORTS["exporter_metrics"]),
                          ("pipeline", dc.PORTS["pipeline_metrics"])]):
        test = " ".join(svcs[name]["healthcheck"]["test"])
        assert f"http://localhost:{port}/readyz" in test, name
    for svc in ("jobmanager", "taskmanager"):
        props = _flink_properties(svc)
        assert props["metrics.reporter.prom.factory.class"] == dc.PROMETHEUS_REPORTER, svc
        assert int(props["metrics.reporter.prom.port"]) == dc.PORTS["flink_metrics"], svc


def test_grafana_dashboard_plots_only_metrics_the_code_exports() -> None:
    import json

    from ledger.node import metrics as ledger_metrics
    from pipelines import metrics as pipeline_metrics

    exported = pipeline_metrics.metric_names() | ledger_metrics.metric_names()
    dash = json.loads((ROOT / dc.GRAFANA_DASHBOARD).read_text(encoding="utf-8"))
    exprs = [t["expr"] for p in dash["panels"] for t in p.get("targets", [])]
    assert len(exprs) >= 10
    used = {m for e in exprs for m in re.findall(r"\b(riskmask_[a-z_]+?)(?:_bucket|_count|_sum)?\b", e)}
    assert used and used <= exported, f"dashboard plots unknown metrics: {sorted(used - exported)}"
    for must in ("riskmask_frames_in_total", "riskmask_consumer_lag", "riskmask_ledger_height"):
        assert must in used, must

