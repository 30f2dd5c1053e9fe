"""The deployment contract: every version, image, port, topic and ``riskmask`` command the deployment files use.

infra/compose/*, infra/k8s/* and infra/docker/* are written to match this module, and
tests/infra/test_infra_manifests.py checks both directions: each value here appears in the files, each ``riskmask``
command in the files is one of ``COMMANDS``, and each of ``COMMANDS`` is accepted by ``riskmask.cli``'s real
argument parser. Change a value here first, then the files; the test says what is out of step.
"""

from __future__ import annotations

import shlex

# Versions. Beam 2.77 publishes Flink job servers for Flink 1.19, 1.20, 2.0, 2.1 and 2.2; the job server's
# Flink minor must equal the cluster's. 1.20 is the last 1.x line and the newest the Flink Kubernetes Operator
# 1.x releases of 2025 support without Flink 2 API changes.
BEAM_VERSION = "2.77.0"
FLINK_MINOR = "1.20"
FLINK_PATCH = "1.20.1"
PYTHON_MINOR = "3.11"
PROJECT_VERSION = "0.1.0"  # riskmask.__version__; project images are tagged with it

IMAGES: dict[str, str] = {
    "kafka": "apache/kafka:3.9.1",
    "flink": f"flink:{FLINK_PATCH}-scala_2.12-java17",
    "beam_job_server": f"apache/beam_flink{FLINK_MINOR}_job_server:{BEAM_VERSION}",
    "beam_sdk": f"apache/beam_python{PYTHON_MINOR}_sdk:{BEAM_VERSION}",
    "python": f"python:{PYTHON_MINOR}-slim",
    # Built from infra/docker/: the CLI image, the Beam SDK worker image, the Flink image with the driver.
    "riskmask": f"riskmask:{PROJECT_VERSION}",
    "riskmask_worker": f"riskmask-worker:{PROJECT_VERSION}",
    "riskmask_flink": f"riskmask-flink:{PROJECT_VERSION}",
}

# Which Dockerfile builds which project image, and from which pinned base.
DOCKERFILES: dict[str, tuple[str, str]] = {
    "riskmask": ("infra/docker/Dockerfile", "python"),
    "riskmask_worker": ("infra/docker/Dockerfile.worker", "beam_sdk"),
    "riskmask_flink": ("infra/docker/Dockerfile.flink", "flink"),
}

PORTS: dict[str, int] = {
    "kafka": 9092,  # PLAINTEXT listener inside the network
    "kafka_controller": 9093,  # KRaft controller listener
    "kafka_host": 29092,  # compose only: published for producers on the host
    "flink_rest": 8081,
    "flink_rpc": 6123,
    "beam_job": 8099,
    "beam_artifact": 8098,
    "beam_expansion": 8097,
    "beam_worker_pool": 50000,
    "ledger_p2p": 26656,
    "ledger_api": 26657,
    # /metrics, /healthz and /readyz of each long-running riskmask process (docs/operations.md).
    "pipeline_metrics": 9400,
    "exporter_metrics": 9401,
    "ledger_metrics": 26660,
    "flink_metrics": 9249,  # Flink's Prometheus reporter (JobManager and TaskManagers)
}

KAFKA_BOOTSTRAP = f"kafka:{PORTS['kafka']}"
JOB_ENDPOINT = f"beam-job-server:{PORTS['beam_job']}"
WORKER_POOL = f"localhost:{PORTS['beam_worker_pool']}"
FLINK_MASTER = f"jobmanager:{PORTS['flink_rest']}"
BEAM_ARTIFACTS_DIR = "/tmp/beam-artifact-staging"  # shared by job server, task managers and SDK workers

# Topic -> partitions. Parallelism of the source equals the raw topic's partitions (one reader per partition);
# the ledger topic has one partition so that offset order is block order.
TOPICS: dict[str, int] = {
    "frames.raw": 4,
    "frames.redacted": 4,
    "frames.dlq": 1,
    "audit.blocks": 4,
    "ledger.blocks": 1,
}
PARALLELISM = TOPICS["frames.raw"]
TASK_SLOTS_COMPOSE = 4  # one task manager x 4 slots
TASK_MANAGERS_K8S = 2
TASK_SLOTS_K8S = 2  # 2 task managers x 2 slots
CHECKPOINT_INTERVAL_MS = 10_000

LEDGER_NODES = 4
LEDGER_FAULTS = (LEDGER_NODES - 1) // 3  # f: nodes that may be down while blocks still finalise
LEDGER_COMPOSE_HOSTS = ("172.28.0.10", "172.28.0.11", "172.28.0.12", "172.28.0.13")
# Kubernetes: pod IPs change, so the genesis names each validator by its stable DNS name under the StatefulSet's
# headless Service (<statefulset>-N.<service>.<namespace>.svc.cluster.local); the API certificates are issued
# for those names. The cluster directory for the Secret is made with LEDGER_INIT_K8S (docs/deploy-flink.md).
K8S_NAMESPACE = "riskmask"
LEDGER_K8S_HOSTS = tuple(f"ledger-{i}.ledger.{K8S_NAMESPACE}.svc.cluster.local" for i in range(LEDGER_NODES))
LEDGER_INIT_K8S = ["riskmask", "ledger", "init", "--validators", str(LEDGER_NODES), "--out", "./ledger-cluster",
                   "--hosts", ",".join(LEDGER_K8S_HOSTS), "--p2p-port", str(PORTS["ledger_p2p"]),
                   "--api-port", str(PORTS["ledger_api"]), "--api-tls"]
LEDGER_CONFIG = "/etc/riskmask/node.json"
LEDGER_CLUSTER_DIR = "/etc/riskmask/cluster"
# The ledger API is HTTPS only (`ledger init --api-tls`): each node gets its own certificate and key, laid out as
# ledger init names them in nodeN.json (tls/api-nodeN.crt/.key, relative to the config file); every client
# trusts the cluster CA (tls/ca.crt) through $RISKMASK_LEDGER_CA. The CA's private key (tls/ca.key) is never
# deployed: keep it offline to issue certificates for replaced nodes.
LEDGER_CA_ENV = "RISKMASK_LEDGER_CA"
LEDGER_NODE_TLS_DIR = "/etc/riskmask/tls"
EXPORTER_LEDGER_CA = f"{LEDGER_CLUSTER_DIR}/ca.crt"

# What the pipeline needs to recognise people and anchor audit blocks: the ledger's genesis, the pipeline's
# client key and the ledger CA (a ledger directory), and in its keys directory the privacy keyring
# (key-encryption keys), the auditor PUBLIC key (schema v2 seals per-face decisions to it; without it no
# decision is recorded) and the camera frame keys (raw frames are encrypted by the producers; without them
# every frame goes to the DLQ). They reach every container that runs pipeline code from one secret
# (Kubernetes Secret / compose secrets), never from the image. The auditor's private key is never deployed.
PIPELINE_LEDGER_DIR = "/etc/riskmask/pipeline/ledger"
PIPELINE_KEYS_DIR = "/etc/riskmask/pipeline/keys"
PIPELINE_SECRET = "riskmask-pipeline-keys"
# secret item -> path inside the containers
PIPELINE_SECRET_FILES: dict[str, str] = {
    "genesis.json": f"{PIPELINE_LEDGER_DIR}/genesis.json",
    "clients.json": f"{PIPELINE_LEDGER_DIR}/clients.json",
    "pipeline.key": f"{PIPELINE_LEDGER_DIR}/keys/pipeline.key",
    "ca.crt": f"{PIPELINE_LEDGER_DIR}/ca.crt",
    "keyring.json": f"{PIPELINE_KEYS_DIR}/keyring.json",
    "auditor.x25519.pub": f"{PIPELINE_KEYS_DIR}/auditor.x25519.pub",
    "frame_keys.json": f"{PIPELINE_KEYS_DIR}/frame_keys.json",
}
# The producer (compose "demo" profile) encrypts raw frames with the camera's key: it gets the frame keys only.
PRODUCER_KEYS_DIR = "/etc/riskmask/producer/keys"
# Every model a documented flag can select (--detector yunet|centerface; SFace for recognition): the images
# that run pipeline stages carry them all, verified by SHA-256 at build time.
IMAGE_MODELS = ("yunet", "centerface", "sface")
PROMETHEUS_REPORTER = "org.apache.flink.metrics.prometheus.PrometheusReporterFactory"
GRAFANA_DASHBOARD = "infra/grafana/riskmask-dashboard.json"

_PIPELINE_COMMON = ["--environment-type", "EXTERNAL", "--environment-config", WORKER_POOL,
                    "--checkpointing-interval", str(CHECKPOINT_INTERVAL_MS),
                    "--bootstrap-servers", KAFKA_BOOTSTRAP, "--parallelism", str(PARALLELISM),
                    "--ledger-dir", PIPELINE_LEDGER_DIR, "--keys-dir", PIPELINE_KEYS_DIR, "--anchor-audit-blocks",
                    "--metrics-port", str(PORTS["pipeline_metrics"])]

# Every riskmask command line the deployment files run, by role.
COMMANDS: dict[str, list[str]] = {
    # compose: submitted from its own container to the Beam Flink job server.
    "pipeline": ["riskmask", "run", "--runner", "PortableRunner", "--job-endpoint", JOB_ENDPOINT,
                 *_PIPELINE_COMMON],
    # Kubernetes: run inside the JobManager by Beam's FlinkPortableClientEntryPoint, which starts a job
    # server itself and appends "--job_endpoint=localhost:PORT" to this command.
    "pipeline_driver": ["riskmask", "run", "--runner", "PortableRunner", *_PIPELINE_COMMON],
    "ledger_init": ["riskmask", "ledger", "init", "--validators", str(LEDGER_NODES), "--out", LEDGER_CLUSTER_DIR,
                    "--hosts", ",".join(LEDGER_COMPOSE_HOSTS), "--p2p-port", str(PORTS["ledger_p2p"]),
                    "--api-port", str(PORTS["ledger_api"]), "--api-tls"],
    "ledger_node": ["riskmask", "ledger", "node", "--config", LEDGER_CONFIG,
                    "--metrics-port", str(PORTS["ledger_metrics"])],
    "ledger_export": ["riskmask", "ledger", "export", "--bootstrap-servers", KAFKA_BOOTSTRAP,
                      "--topic", "ledger.blocks", "--ledger-dir", LEDGER_CLUSTER_DIR,
                      "--metrics-port", str(PORTS["exporter_metrics"])],
    "producer": ["riskmask", "produce", "/media/camera.mp4", "--camera-id", "cam-0",
                 "--bootstrap-servers", KAFKA_BOOTSTRAP, "--topic", "frames.raw", "--loop",
                 "--encrypt", "--keys-dir", PRODUCER_KEYS_DIR],
}

# What FlinkPortableClientEntryPoint appends to the driver command (Beam's own spelling, underscore).
DRIVER_APPENDED_FLAG = "--job_endpoint"


def driver_cmd() -> str:
    """The Kubernetes driver command as the one string FlinkDeployment passes to ``--driver-cmd``."""
    return shlex.join(COMMANDS["pipeline_driver"])
