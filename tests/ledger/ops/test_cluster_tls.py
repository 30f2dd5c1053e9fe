"""`riskmask ledger init --api-tls` + `riskmask ledger up`: a real 4-node cluster serving its API over HTTPS only.

Real processes (the CLI, four ``python -m ledger.node`` processes), real sockets, real certificates made with
``cryptography``. Shows: the files are written 0600 in a 0700 folder, the node certificates chain to the cluster
CA, a signed client built from the genesis alone (as the pipeline and the exporter build theirs) is served over
HTTPS when it trusts the CA through ``$RISKMASK_LEDGER_CA``, and plain HTTP or a client without the CA is
refused. ``ledger up --metrics-port`` gives each node a /metrics port, scraped here.
"""

from __future__ import annotations

import http.client
import json
import os
import re
import socket
import stat
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest
from cryptography import x509

from ledger.client.api_client import LedgerClient, Unavailable
from ledger.config import Genesis, NodeConfig
from ledger.ops.cluster import Cluster
from tests.ledger_util import TEST_OVERRIDES, anchor_txs, wait_for

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[3]


def _cli(*args: str, env: dict | None = None, timeout: float = 180) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "riskmask.cli", *args], capture_output=True, text=True,
                          timeout=timeout, cwd=str(ROOT), env=env)


@pytest.fixture(scope="module")
def tls_cluster(tmp_path_factory):
    d = tmp_path_factory.mktemp("tls-cluster") / "ledger"
    r = _cli("ledger", "init", "--validators", "4", "--out", str(d), "--api-tls")
    assert r.returncode == 0, r.stdout + r.stderr
    # The test's short consensus timeouts (the CLI writes the defaults).
    for i in range(4):
        p = d / f"node{i}.json"
        cfg = json.loads(p.read_text())
        cfg.update(TEST_OVERRIDES)
        p.write_text(json.dumps(cfg))
    r = _cli("ledger", "up", "--dir", str(d), "--metrics-port", "0", "--timeout", "120")
    try:
        assert r.returncode == 0, r.stdout + r.stderr
        yield d, r.stdout
    finally:
        down = _cli("ledger", "down", "--dir", str(d))
        assert down.returncode == 0, down.stderr


def _mode(p: Path) -> int:
    return stat.S_IMODE(p.stat().st_mode)


def test_init_api_tls_writes_a_ca_and_node_certificates_0600(tls_cluster):
    d, _ = tls_cluster
    tls = d / "tls"
    assert _mode(tls) == 0o700
    names = sorted(p.name for p in tls.iterdir())
    assert names == sorted(["ca.crt", "ca.key"] + [f"api-node{i}.{e}" for i in range(4) for e in ("crt", "key")])
    for p in tls.iterdir():
        assert _mode(p) == 0o600, (p.name, oct(_mode(p)))
    genesis = Genesis.load(d / "genesis.json")
    ca = x509.load_pem_x509_certificate((tls / "ca.crt").read_bytes())
    for v in genesis.validators:
        assert v.api_address.startswith("https://127.0.0.1:") and v.api_tls
        cfg = NodeConfig.load(d / f"node{v.index}.json")
        assert Path(cfg.api_tls_cert) == tls / f"api-node{v.index}.crt"
        assert Path(cfg.api_tls_key) == tls / f"api-node{v.index}.key"
        assert ":" in cfg.api_listen and "://" not in cfg.api_listen
        cert = x509.load_pem_x509_certificate(Path(cfg.api_tls_cert).read_bytes())
        cert.verify_directly_issued_by(ca)
        sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        assert "127.0.0.1" in [str(ip) for ip in sans.get_values_for_type(x509.IPAddress)]
    # Each node's certificate is its own: no two nodes share a key.
    keys = {(tls / f"api-node{i}.key").read_bytes() for i in range(4)}
    assert len(keys) == 4


def test_signed_client_from_the_genesis_is_served_over_https_with_the_ca(tls_cluster):
    d, out = tls_cluster
    assert "https://127.0.0.1:" in out and "RISKMASK_LEDGER_CA=" in out
    # A separate process that knows only the genesis, its key and $RISKMASK_LEDGER_CA, as the pipeline and
    # the exporter do: it submits an anchor and waits for it to commit.
    c = Cluster(d)
    tx = anchor_txs(c, 1)[0].hex()
    script = (
        "import sys, json\n"
        "from ledger.client.api_client import LedgerClient\n"
        "from ledger.config import Genesis, KeyFile\n"
        f"g = Genesis.load({str(d / 'genesis.json')!r})\n"
        f"seed = KeyFile.load({str(d / 'keys' / 'pipeline.key')!r}).seed\n"
        "v = g.validators[1]\n"
        "with LedgerClient(v.api_address, seed, 20.0, node_id=v.public_key.hex()) as cl:\n"
        f"    h = cl.submit(bytes.fromhex({tx!r}))\n"
        "    st = cl.wait_committed(h, 60)\n"
        "    info = cl.request('GET', '/v1/node')\n"
        "print(json.dumps({'status': st['status'], 'tls': info['tls'], 'address': v.api_address}))\n")
    env = dict(os.environ, RISKMASK_LEDGER_CA=str(d / "tls" / "ca.crt"))
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120,
                       cwd=str(ROOT), env=env)
    assert r.returncode == 0, r.stderr[-2000:]
    res = json.loads(r.stdout.strip().splitlines()[-1])
    assert res == {"status": "committed", "tls": True, "address": c.genesis.validators[1].api_address}
    # `riskmask ledger status` (the cluster's own client trusts tls/ca.crt) sees all four nodes.
    st = _cli("ledger", "status", "--dir", str(d), timeout=60)
    assert st.returncode == 0, st.stdout + st.stderr
    assert sum(" up " in ln for ln in st.stdout.splitlines()) == 4, st.stdout


def test_plain_http_and_clients_without_the_ca_are_refused(tls_cluster):
    d, _ = tls_cluster
    c = Cluster(d)
    host, port = c.genesis.validators[0].api_hostport
    seed = c.key_seed("auditor")
    node_id = c.genesis.validators[0].public_key.hex()
    # Plain HTTP to the API port: no HTTP answer at all.
    conn = http.client.HTTPConnection(host, port, timeout=10)
    with pytest.raises((ConnectionError, http.client.HTTPException, OSError)):
        conn.request("GET", "/v1/status")
        resp = conn.getresponse()
        pytest.fail(f"plain HTTP answered {resp.status}")  # pragma: no cover (only reached on failure)
    conn.close()
    with LedgerClient(f"http://{host}:{port}", seed, 10.0, node_id=node_id) as cl:
        with pytest.raises(Unavailable):
            cl.status()
    # HTTPS without the cluster CA (system trust store only): the certificate is refused.
    env_ca = os.environ.pop("RISKMASK_LEDGER_CA", None)
    try:
        with LedgerClient(c.genesis.validators[0].api_address, seed, 10.0, node_id=node_id) as cl:
            with pytest.raises(Unavailable) as e:
                cl.status()
        assert "certificate" in str(e.value).lower(), e.value
    finally:
        if env_ca is not None:
            os.environ["RISKMASK_LEDGER_CA"] = env_ca
    # A node certificate used as a trust anchor is not a CA: refused too.
    with LedgerClient(c.genesis.validators[0].api_address, seed, 10.0, node_id=node_id,
                      ca_file=str(d / "tls" / "api-node1.crt")) as cl:
        with pytest.raises(Unavailable):
            cl.status()
    # With the CA, the same node answers.
    with LedgerClient(c.genesis.validators[0].api_address, seed, 10.0, node_id=node_id,
                      ca_file=str(d / "tls" / "ca.crt")) as cl:
        assert cl.status()["height"] >= 1
    for i in range(4):
        log = c.log_path(i).read_text(errors="replace")
        assert "Traceback" not in log, log[-3000:]


def test_ledger_up_gives_each_node_a_metrics_port(tls_cluster):
    d, out = tls_cluster
    c = Cluster(d)
    ports = [c.metrics_port(i) for i in range(4)]
    assert all(isinstance(p, int) and p > 0 for p in ports) and len(set(ports)) == 4, ports
    printed = [int(m) for m in re.findall(r"metrics http://127\.0\.0\.1:(\d+)/metrics", out)]
    assert printed == ports, out

    def height_metric(i: int) -> float:
        with urllib.request.urlopen(f"http://127.0.0.1:{ports[i]}/metrics", timeout=5) as resp:
            text = resp.read().decode()
        m = re.search(r"^riskmask_ledger_height(?:\{[^}]*\})? (\S+)$", text, re.M)
        assert m, text[:2000]
        return float(m.group(1))

    # `ledger up` returns once the nodes listen; the first block may still be on its way
    wait_for(lambda: height_metric(2) >= 1, 60, "node 2's scraped height to reach 1")
    first = height_metric(2)
    wait_for(lambda: height_metric(2) > first, 60, "node 2's scraped height to rise")
    wait_for(lambda: urllib.request.urlopen(f"http://127.0.0.1:{ports[3]}/readyz", timeout=5).status == 200,
             60, "node 3 ready")
    # The metrics server listens on loopback only.
    with socket.socket() as s:
        s.settimeout(2)
        assert s.connect_ex(("127.0.0.1", ports[0])) == 0


def test_ledger_node_module_takes_metrics_port_and_refuses_a_bad_one(tmp_path):
    r = subprocess.run([sys.executable, "-m", "ledger.node", "--config", str(tmp_path / "x.json"),
                        "--metrics-port", "70000"], capture_output=True, text=True, timeout=60, cwd=str(ROOT))
    assert r.returncode == 2 and "--metrics-port must be 0..65535" in r.stderr and "Traceback" not in r.stderr, \
        r.stderr
    r = _cli("ledger", "up", "--dir", str(tmp_path / "none"), "--metrics-port", "-1", timeout=60)
    assert r.returncode == 2 and "--metrics-port must be 0..65535" in r.stderr and "Traceback" not in r.stderr, \
        r.stderr


@pytest.mark.parametrize("text,ok", [
    ("127.0.0.1:26657", ("http", "127.0.0.1", 26657)),
    ("https://127.0.0.1:26657", ("https", "127.0.0.1", 26657)),
    ("https://ledger-0.ledger.riskmask.svc.cluster.local:26657",
     ("https", "ledger-0.ledger.riskmask.svc.cluster.local", 26657)),
    ("http://localhost:1", ("http", "localhost", 1)),
    ("ftp://127.0.0.1:1", None),
    ("https://Ledger-0:1", None),
    ("https://bad_name:1", None),
    ("https://-x.y:1", None),
    ("https://a..b:1", None),
    ("https://999.1.1.1:1", None),
    ("https://127.0.0.1:99999", None),
])
def test_api_addresses_take_a_scheme_and_dns_names(text, ok):
    from ledger.config import ConfigError, split_api_address

    if ok is None:
        with pytest.raises(ConfigError):
            split_api_address(text, "t")
    else:
        assert split_api_address(text, "t") == ok


def test_init_refuses_a_bad_host_in_one_line_and_writes_nothing(tmp_path):
    d = tmp_path / "bad"
    for args in (["--hosts", "Bad_Host"], ["--hosts", "10.0.0.1", "--api-port", "99999"]):
        r = _cli("ledger", "init", "--validators", "1", "--out", str(d), "--api-tls", *args, timeout=60)
        assert r.returncode == 2, r.stderr
        lines = r.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("riskmask: error: --hosts:"), r.stderr
        assert not d.exists()
