"""The test tree mirrors the product packages, and every product module has tests.

A module *has tests* when a test module of its name stands in the mirrored folder (``ledger/node/store.py`` ->
``tests/ledger/node/test_store*.py``), when a test module imports it, or, for the modules that only ever run as a
process (a node, the console, a command), when :data:`RUN_BY` names the test that starts that process and
that test's text names the module or its command.
"""

from __future__ import annotations

import ast
import shutil
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PRODUCT = ("ledger", "pipelines", "infra", "schemas", "riskmask")

# Modules exercised only through a process or a command: module -> (test module, what its text must name).
RUN_BY: dict[str, tuple[str, str]] = {
    "infra.console.app": ("tests/infra/test_console.py", "start_console"),
    "infra.console.audit_job": ("tests/infra/test_console_browser.py", "audit"),
    "infra.console.cli": ("tests/infra/test_console.py", "console"),
    "infra.console.demo_hook": ("tests/infra/test_console_demo.py", "--console"),
    "infra.console.feed": ("tests/infra/test_console.py", "redacted_frame"),
    "infra.demo_scene": ("tests/infra/test_demo.py", "demo"),
    "ledger.audit.manifest": ("tests/pipelines/test_redact.py", "audit"),
    "ledger.client.signing": ("tests/ledger/rpc/test_httpserver_attacks.py", "X-Ledger"),
    "ledger.consensus.voteset": ("tests/ledger/consensus/test_state.py", "ConsensusState"),
    "ledger.node.blocksync": ("tests/ledger/ops/test_cluster.py", "catch"),
    "ledger.node.peers": ("tests/ledger/p2p/test_transport_attacks.py", "make_cluster"),
    "ledger.node.run": ("tests/ledger/ops/test_cluster_tls.py", "ledger.node"),
    "ledger.node.view": ("tests/ledger/rpc/test_api.py", "/v1/"),
    "ledger.ops.cli": ("tests/ledger/ops/test_cluster_tls.py", "ledger"),
    "ledger.registry.endpoints": ("tests/ledger/registry/test_digest.py", "/v1/registry/digest"),
    "ledger.types.votes": ("tests/ledger/types/test_block.py", "Vote"),
    "pipelines.cli": ("tests/pipelines/test_pipeline_streaming.py", "riskmask"),
    "riskmask.health": ("tests/infra/test_operations.py", "/healthz"),
    "riskmask.local_broker": ("tests/infra/test_broker.py", "broker"),
    "riskmask.logjson": ("tests/infra/test_cli_operations.py", "--log-format"),
}


def product_modules(root: Path) -> list[str]:
    out = []
    for pkg in PRODUCT:
        for path in sorted((root / pkg).rglob("*.py")):
            if path.name in ("__init__.py", "__main__.py") or "__pycache__" in path.parts:
                continue
            out.append(".".join(path.relative_to(root).with_suffix("").parts))
    return out


def imported_by_tests(root: Path) -> set[str]:
    seen: set[str] = set()
    for path in (root / "tests").rglob("*.py"):
        if path.name == Path(__file__).name:  # this module names modules as data, not as tests
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                seen.update(a.name for a in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                seen.add(node.module)
                seen.update(f"{node.module}.{a.name}" for a in node.names)
            elif isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value.startswith(PRODUCT):
                seen.add(node.value)  # "python -m ledger.node", monkeypatch targets, importlib names
    return seen


def untested(root: Path) -> list[str]:
    """Product modules with no test module of their name, no importing test and no :data:`RUN_BY` entry."""
    imported = imported_by_tests(root)
    missing = []
    for module in product_modules(root):
        parts = module.split(".")
        mirror = root / "tests" / Path(*parts[:-1])
        if any(mirror.glob(f"test_{parts[-1]}*.py")) or module in imported:
            continue
        if module in RUN_BY:
            test, names = RUN_BY[module]
            if (root / test).is_file() and names in (root / test).read_text(encoding="utf-8"):
                continue
        missing.append(module)
    return missing


def unmirrored(root: Path) -> list[str]:
    """Test folders that name no product package."""
    return [str(d.relative_to(root)) for d in sorted((root / "tests").rglob("*"))
            if d.is_dir() and d.name != "__pycache__" and d.name != "tests-artifacts"
            and not (root / d.relative_to(root / "tests")).is_dir()]


def test_every_product_module_has_tests() -> None:
    assert untested(ROOT) == []


def test_the_test_tree_mirrors_the_packages() -> None:
    assert unmirrored(ROOT) == []
    for d in (ROOT / "tests").rglob("*"):
        if d.is_dir() and d.name != "__pycache__":
            assert (d / "__init__.py").is_file(), f"{d} is not a package: two test folders could clash on a name"


def test_a_new_module_without_tests_fails_the_check(tmp_path: Path) -> None:
    for pkg in (*PRODUCT, "tests"):
        shutil.copytree(ROOT / pkg, tmp_path / pkg, ignore=shutil.ignore_patterns("__pycache__"))
    assert untested(tmp_path) == []
    (tmp_path / "ledger" / "node" / "gossip.py").write_text('"""Probe."""\n')
    (tmp_path / "tests" / "ledger" / "nodes").mkdir()
    assert untested(tmp_path) == ["ledger.node.gossip"]
    assert unmirrored(tmp_path) == ["tests/ledger/nodes"]
    (tmp_path / "tests" / "ledger" / "node" / "test_gossip.py").write_text('"""Probe."""\n')
    assert untested(tmp_path) == []


def test_a_stale_run_by_entry_fails_the_check(tmp_path: Path) -> None:
    """A RUN_BY entry holds only while its test still starts the process it names."""
    for pkg in (*PRODUCT, "tests"):
        shutil.copytree(ROOT / pkg, tmp_path / pkg, ignore=shutil.ignore_patterns("__pycache__"))
    test, names = RUN_BY["ledger.node.run"]
    (tmp_path / test).write_text((tmp_path / test).read_text().replace(names, "x"))
    assert "ledger.node.run" in untested(tmp_path)
