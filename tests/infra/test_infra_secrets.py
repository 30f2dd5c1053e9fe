"""Static checks of what the deployment files give each process to trust and to decrypt.

Split from tests/infra/test_infra_manifests.py (same helpers, same contract, infra/deploy_contract.py):

* the ledger API is HTTPS only in compose and Kubernetes: the deployed ``ledger init`` runs with ``--api-tls``,
  each node is given only its own API certificate and key where its config names them, every ledger client
  (exporter, pipeline submitter/driver, SDK worker pools) trusts the cluster CA through ``$RISKMASK_LEDGER_CA``
  from a secret, and the CA's private key is deployed nowhere; in Kubernetes the genesis names the
  StatefulSet's DNS names and the certificates are issued for them;
* since schema v2 and raw-frame encryption the pipeline needs the auditor PUBLIC key (per-face decisions are
  sealed to it) and the camera frame keys (frames.raw is encrypted): both reach every pipeline container, the
  auditor's private key none, and the compose producer encrypts with the frame keys only.
"""

from __future__ import annotations

import contextlib
import io
import shlex
from pathlib import Path
from typing import Any

from infra import deploy_contract as dc
from tests.infra.test_infra_manifests import (ROOT, _compose, _compose_secret_targets, _containers, _flag, _k8s,
                                              _pipeline_commands, _pod_specs, _services)

# ---------------------------------------------------------------- ledger API over TLS


LEDGER_CA_ENV = "RISKMASK_LEDGER_CA"


def _env(c: dict[str, Any]) -> dict[str, str]:
    env = c.get("environment") or c.get("env") or {}
    if isinstance(env, list):  # Kubernetes: [{name, value}]; compose list form: ["K=V"]
        out = {}
        for e in env:
            if isinstance(e, dict):
                out[e["name"]] = str(e.get("value"))
            else:
                k, _, v = str(e).partition("=")
                out[k] = v
        return out
    return {k: str(v) for k, v in env.items()}


def _init_like_ledger_init(tmp_path: Path) -> Path:
    """Run the deployed `riskmask ledger init` command (its real handler) into a temporary folder."""
    from riskmask.cli import build_parser

    argv = list(dc.COMMANDS["ledger_init"])
    out = tmp_path / "ledger-cluster"
    argv[argv.index("--out") + 1] = str(out)
    args = build_parser().parse_args(argv[1:])
    with contextlib.redirect_stdout(io.StringIO()):
        assert args.func(args) == 0
    return out


def test_ledger_api_tls_is_on_in_the_deployed_ledger_init(tmp_path: Path) -> None:
    from ledger.config import Genesis, NodeConfig

    assert "--api-tls" in dc.COMMANDS["ledger_init"], "the deployed `ledger init` does not switch API TLS on"
    out = _init_like_ledger_init(tmp_path)
    genesis = Genesis.load(out / "genesis.json")
    for v in genesis.validators:
        assert v.api_address == f"https://{dc.LEDGER_COMPOSE_HOSTS[v.index]}:{dc.PORTS['ledger_api']}"
        cfg = NodeConfig.load(out / f"node{v.index}.json")
        assert cfg.api_tls_cert and cfg.api_tls_key, f"node{v.index}.json serves plain HTTP"


def test_compose_ledger_nodes_get_their_own_api_certificate(tmp_path: Path) -> None:
    """Each node's config names its certificate and key relative to the config file: compose mounts exactly
    those files (from what `ledger init` wrote) where the node looks for them, and no node sees the CA key."""
    import json

    out = _init_like_ledger_init(tmp_path)
    svcs = _services()
    config_dir = Path(dc.LEDGER_CONFIG).parent
    for i in range(dc.LEDGER_NODES):
        raw = json.loads((out / f"node{i}.json").read_text())
        vols = svcs[f"ledger-{i}"]["volumes"]
        for field in ("api_tls_cert", "api_tls_key"):
            rel = raw.get(field)
            assert rel and not Path(rel).is_absolute(), f"node{i}.json {field}={rel!r}"
            assert (out / rel).is_file(), rel
            want = f"./ledger-cluster/{rel}:{config_dir / rel}:ro"
            assert want in vols, f"compose/ledger-{i} lacks {want}"
        assert not any("ca.key" in v for v in vols), f"compose/ledger-{i} sees the CA's private key"
    for name, svc in svcs.items():
        mounted = [str(v) for v in svc.get("volumes", [])] + [str(s) for s in svc.get("secrets", [])]
        assert not any("ca.key" in m for m in mounted), f"compose/{name} sees the CA's private key"
    assert not any("ca.key" in str(s) for s in (_compose().get("secrets") or {}).values())


def test_k8s_ledger_nodes_get_their_own_api_certificate_from_the_secret(tmp_path: Path) -> None:
    import json

    out = _init_like_ledger_init(tmp_path)
    raw = json.loads((out / "node0.json").read_text())
    config_dir = Path(dc.LEDGER_CONFIG).parent
    init = _k8s("StatefulSet", "ledger")["spec"]["template"]["spec"]["initContainers"][0]["command"][-1]
    for field in ("api_tls_cert", "api_tls_key"):
        rel = raw[field]
        templ = rel.replace("node0", "node${i}")
        name = Path(templ).name
        dest = config_dir / templ
        assert f'cp "/cluster/{name}" "{dest}"' in init, f"the ledger init container does not lay out {rel}"
        if field == "api_tls_key":
            assert f'chmod 600 "{dest}"' in init
    for where, spec in _pod_specs():
        for v in spec.get("volumes", []):
            items = (v.get("secret") or {}).get("items") or []
            assert not any("ca.key" in i["key"] for i in items), f"{where} is given the CA's private key"


def _ledger_client_containers() -> list[tuple[str, dict[str, Any]]]:
    """Every container that talks to the ledger API: exporter, pipeline submitter/driver, SDK worker pools."""
    svcs = _services()
    out = [(f"compose/{n}", svcs[n]) for n in ("ledger-exporter", "pipeline", "beam-worker-pool")]
    for where, c in _containers():
        if where.endswith(("ledger-exporter/exporter", "jobManager/flink-main-container",
                           "taskManager/beam-worker-pool")):
            out.append((where, c))
    return out


def test_every_ledger_client_trusts_the_cluster_ca_from_a_secret() -> None:
    found = _ledger_client_containers()
    assert len(found) == 6, [w for w, _ in found]
    svcs = _services()
    top = _compose().get("secrets") or {}
    for where, c in found:
        ca = _env(c).get(LEDGER_CA_ENV)
        assert ca and ca.endswith("ca.crt"), f"{where}: no {LEDGER_CA_ENV}, HTTPS to the ledger cannot verify"
        if where.startswith("compose/"):
            name = where.split("/", 1)[1]
            src = {t: s for s, t in _compose_secret_targets(name).items()}.get(ca)
            vols = [v for v in svcs[name].get("volumes", []) if str(v).split(":")[1:2] == [ca]]
            assert src or vols, f"{where}: {ca} is not delivered"
            if src:
                assert top[src]["file"] == "./ledger-cluster/tls/ca.crt", (where, top[src])
            else:
                assert vols[0].startswith("./ledger-cluster/tls/ca.crt:"), (where, vols)
    # Kubernetes: the CA comes from the cluster's Secrets and is laid out where the env points.
    exporter = _k8s("Deployment", "ledger-exporter")["spec"]["template"]["spec"]
    items = {i["key"] for v in exporter["volumes"] if "secret" in v for i in v["secret"]["items"]}
    assert "ca.crt" in items
    init = " ".join(str(x) for c in exporter["initContainers"] for x in c["command"])
    ca = _env(exporter["containers"][0])[LEDGER_CA_ENV]
    assert f"/secret/ca.crt {ca}" in init, init
    assert "ca.crt" in dc.PIPELINE_SECRET_FILES, "the pipeline's Secret lacks the ledger CA"
    for where, c in found:
        if where.startswith("FlinkDeployment"):
            assert _env(c)[LEDGER_CA_ENV] == dc.PIPELINE_SECRET_FILES["ca.crt"], where


# ---------------------------------------------------------------- schema v2 keys: auditor seal, raw-frame encryption


def test_pipeline_gets_the_auditor_public_key_and_the_camera_frame_keys() -> None:
    """Since schema v2 the pipeline seals per-face decisions to the auditor public key (without it every decision
    is dropped) and decrypts raw frames with the camera frame keys (without them every encrypted frame goes to
    the DLQ). Both must reach every container that runs pipeline code, in the folder --keys-dir names."""
    from ledger.client.keys import AUDITOR_KEY_FILE, AUDITOR_PUB_FILE, FRAME_KEYS_FILE

    for where, argv in _pipeline_commands():
        keys_dir = _flag(argv, "--keys-dir")
        paths = set(dc.PIPELINE_SECRET_FILES.values())
        for name, what in ((AUDITOR_PUB_FILE, "auditor public key"), (FRAME_KEYS_FILE, "camera frame keys")):
            assert f"{keys_dir}/{name}" in paths, f"{where}: the {what} ({name}) is not deployed to {keys_dir}"
    assert dc.PIPELINE_SECRET_FILES.get(AUDITOR_PUB_FILE) == f"{dc.PIPELINE_KEYS_DIR}/{AUDITOR_PUB_FILE}"
    assert dc.PIPELINE_SECRET_FILES.get(FRAME_KEYS_FILE) == f"{dc.PIPELINE_KEYS_DIR}/{FRAME_KEYS_FILE}"
    # The auditor's private key never goes to the pipeline (it would open every sealed decision).
    assert AUDITOR_KEY_FILE not in dc.PIPELINE_SECRET_FILES
    top = _compose().get("secrets") or {}
    for name, svc in _services().items():
        for s in svc.get("secrets", []):
            target = s["target"] if isinstance(s, dict) else s
            assert not str(target).endswith(AUDITOR_KEY_FILE), f"compose/{name} is given the auditor private key"
    assert not any(str(v.get("file", "")).endswith(AUDITOR_KEY_FILE) for v in top.values())
    for where, spec in _pod_specs():
        for v in spec.get("volumes", []):
            for i in (v.get("secret") or {}).get("items") or []:
                assert i["key"] != AUDITOR_KEY_FILE, f"{where} is given the auditor private key"


def test_deployed_producer_encrypts_with_only_the_frame_keys() -> None:
    from ledger.client.keys import FRAME_KEYS_FILE

    argv = dc.COMMANDS["producer"]
    assert "--encrypt" in argv, "the deployed producer writes unencrypted faces to frames.raw"
    keys_dir = _flag(argv, "--keys-dir")
    svc = _services()["producer"]
    assert [str(x) for x in svc["command"]] == argv
    targets = _compose_secret_targets("producer")
    assert set(targets.values()) == {f"{keys_dir}/{FRAME_KEYS_FILE}"}, targets
    top = _compose()["secrets"]
    (source,) = targets
    assert top[source]["file"] == f"./ledger-cluster/privacy/{FRAME_KEYS_FILE}"
    # The same frame keys the pipeline decrypts with.
    pipeline_sources = {t: s for s, t in _compose_secret_targets("pipeline").items()}
    assert top[pipeline_sources[dc.PIPELINE_SECRET_FILES[FRAME_KEYS_FILE]]]["file"] == top[source]["file"]
    assert not any(".key" in str(v) or "keyring" in str(v) for v in svc.get("volumes", []))


def test_k8s_ledger_init_names_the_statefulset_dns_and_issues_certificates_for_it(tmp_path: Path) -> None:
    """Pod IPs change: the documented Kubernetes `ledger init` names each validator by the StatefulSet's DNS name,
    the config accepts those names, and each node's API certificate is valid for its own name only."""
    from cryptography import x509

    from ledger.config import Genesis, NodeConfig
    from riskmask.cli import build_parser

    sts = _k8s("StatefulSet", "ledger")
    svc = _k8s("Service", "ledger")
    ns = sts["metadata"]["namespace"]
    want = [f"{sts['metadata']['name']}-{i}.{svc['metadata']['name']}.{ns}.svc.cluster.local"
            for i in range(sts["spec"]["replicas"])]
    assert list(dc.LEDGER_K8S_HOSTS) == want and sts["spec"]["serviceName"] == svc["metadata"]["name"]
    argv = list(dc.LEDGER_INIT_K8S)
    doc = (ROOT / "docs" / "deploy-flink.md").read_text(encoding="utf-8")
    assert shlex.join(argv) in doc, "docs/deploy-flink.md does not show the Kubernetes `ledger init` command"
    out = tmp_path / "k8s-cluster"
    argv[argv.index("--out") + 1] = str(out)
    args = build_parser().parse_args(argv[1:])
    with contextlib.redirect_stdout(io.StringIO()):
        assert args.func(args) == 0
    genesis = Genesis.load(out / "genesis.json")
    ca = x509.load_pem_x509_certificate((out / "tls" / "ca.crt").read_bytes())
    for v in genesis.validators:
        host = want[v.index]
        assert v.api_address == f"https://{host}:{dc.PORTS['ledger_api']}"
        assert v.p2p_address == f"{host}:{dc.PORTS['ledger_p2p']}"
        cfg = NodeConfig.load(out / f"node{v.index}.json")
        assert cfg.api_listen == f"0.0.0.0:{dc.PORTS['ledger_api']}"
        cert = x509.load_pem_x509_certificate(Path(cfg.api_tls_cert).read_bytes())
        cert.verify_directly_issued_by(ca)
        sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        assert sans.get_values_for_type(x509.DNSName) == [host]
