"""The package graph points one way: every import in the product, module-level and function-level, parsed with ast.

The allowed graph is written once, in :data:`LAYERS` and :data:`MAY_IMPORT` (docs/architecture.md draws it):

* ``base``: the shared process plumbing in ``riskmask/`` (errors, health endpoint, process helpers, log format,
  where the local broker is): it imports no project package;
* ``schemas`` (Avro messages and serde) on ``base``;
* ``ledger`` on ``schemas`` and ``base``;
* ``pipelines`` on ``schemas`` and ``base``, and on the ledger only through its client-facing surface
  (:data:`LEDGER_CLIENT_SURFACE`): never the node, consensus, store, HTTP server or the ledger's commands;
* ``infra`` (local stack, demo, console) on all of those;
* ``cli`` (``riskmask.cli``, ``python -m riskmask``) on top of everything.

Function-level imports hide the arrows, so each one must say why it is not at module level (a comment on its
line or the line above): it breaks a real cycle or defers a heavy optional dependency.
"""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Optional

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("schemas", "ledger", "pipelines", "infra", "riskmask")

# Module prefix -> layer; the longest matching prefix wins.
LAYERS: dict[str, str] = {
    "riskmask": "base",
    "riskmask.cli": "cli",
    "riskmask.__main__": "cli",
    "schemas": "schemas",
    "ledger": "ledger",
    "pipelines": "pipelines",
    "infra": "infra",
}

# Layer -> the layers it may import (besides itself).
MAY_IMPORT: dict[str, frozenset[str]] = {
    "base": frozenset(),
    "schemas": frozenset({"base"}),
    "ledger": frozenset({"base", "schemas"}),
    "pipelines": frozenset({"base", "schemas", "ledger"}),  # ledger: LEDGER_CLIENT_SURFACE only
    "infra": frozenset({"base", "schemas", "ledger", "pipelines"}),
    "cli": frozenset({"base", "schemas", "ledger", "pipelines", "infra"}),
}

# What of the ledger the pipeline may use: the client side (the whole ``ledger.client`` package: signed API
# client, privacy module and its keyring, registry client, the watchlist it syncs), the registry payloads and the
# audit block format. Nothing of the node (consensus, store, p2p, HTTP server, API) and none of ``ledger.ops``.
LEDGER_CLIENT_SURFACE: frozenset[str] = frozenset({
    "ledger",  # the package itself (its __init__ is a docstring)
    "ledger.client",  # a package: every module under it
    "ledger.errors",
    "ledger.registry.payloads",
    "ledger.audit.blocks",
})


def on_client_surface(target: str) -> bool:
    return any(target == s or (s != "ledger" and target.startswith(s + ".")) for s in LEDGER_CLIENT_SURFACE)


@dataclass(frozen=True)
class Import:
    module: str        # the importing module, e.g. "ledger.audit.verifier"
    target: str        # the imported module, resolved to a module of the tree where it is one
    path: Path
    line: int
    in_function: bool
    reason: Optional[str]  # the comment on the import's line or the line above, if any


def module_name(root: Path, path: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _is_module(root: Path, dotted: str) -> bool:
    base = root.joinpath(*dotted.split("."))
    return base.with_suffix(".py").is_file() or (base / "__init__.py").is_file()


def _comment(lines: list[str], lineno: int) -> Optional[str]:
    here = lines[lineno - 1]
    if "#" in here:
        return here.split("#", 1)[1].strip()
    above = lines[lineno - 2].strip() if lineno >= 2 else ""
    return above[1:].strip() if above.startswith("#") else None


def imports_of(root: Path, path: Path) -> Iterator[Import]:
    """Every import of a project package in ``path`` (relative imports resolved)."""
    source = path.read_text(encoding="utf-8")
    tree = ast.parse(source, filename=str(path))
    lines = source.splitlines()
    module = module_name(root, path)
    in_func: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            in_func.update(id(sub) for sub in ast.walk(node) if isinstance(sub, (ast.Import, ast.ImportFrom)))
    for node in ast.walk(tree):
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = module.split(".")
                if path.name != "__init__.py":
                    base = base[:-1]
                base = base[:len(base) - (node.level - 1)]
                parent = ".".join(base + ([node.module] if node.module else []))
            else:
                parent = node.module or ""
            for alias in node.names:
                child = f"{parent}.{alias.name}"
                targets.append(child if _is_module(root, child) else parent)
        else:
            continue
        for target in dict.fromkeys(targets):
            if target.split(".")[0] in PACKAGES:
                yield Import(module, target, path, node.lineno, id(node) in in_func, _comment(lines, node.lineno))


def all_imports(root: Path) -> list[Import]:
    out: list[Import] = []
    for pkg in PACKAGES:
        for path in sorted((root / pkg).rglob("*.py")):
            out.extend(imports_of(root, path))
    return out


def layer(module: str) -> str:
    best = max((p for p in LAYERS if module == p or module.startswith(p + ".")), key=len)
    return LAYERS[best]


def forbidden(imp: Import) -> Optional[str]:
    """Why ``imp`` is a forbidden arrow, or None when the graph allows it."""
    src, dst = layer(imp.module), layer(imp.target)
    if src == dst:
        return None
    if dst not in MAY_IMPORT[src]:
        return f"{src} may not import {dst}"
    if src == "pipelines" and dst == "ledger" and not on_client_surface(imp.target):
        return "pipelines may use the ledger only through its client surface"
    return None


def violations(root: Path) -> list[str]:
    return [f"{imp.path.relative_to(root)}:{imp.line}: {imp.module} -> {imp.target} ({why})"
            for imp in all_imports(root) if (why := forbidden(imp))]


def unexplained_function_imports(root: Path) -> list[str]:
    return [f"{imp.path.relative_to(root)}:{imp.line}: {imp.module} -> {imp.target}"
            for imp in all_imports(root) if imp.in_function and not imp.reason]


# --------------------------------------------------------------------------------------------------------------


def test_every_arrow_of_the_product_is_allowed() -> None:
    assert violations(ROOT) == []


def test_every_function_level_import_says_why() -> None:
    assert unexplained_function_imports(ROOT) == []


def _copy_product(tmp: Path) -> Path:
    for pkg in PACKAGES:
        shutil.copytree(ROOT / pkg, tmp / pkg, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    return tmp


def test_a_forbidden_import_added_to_the_ledger_fails_the_check(tmp_path: Path) -> None:
    root = _copy_product(tmp_path)
    assert violations(root) == []
    (root / "ledger" / "probe.py").write_text(
        '"""Probe."""\n\n\ndef f():\n    from pipelines.models import detector  # probe\n    return detector\n')
    assert violations(root) == [
        "ledger/probe.py:5: ledger.probe -> pipelines.models.detector (ledger may not import pipelines)"]


def test_the_pipeline_reaching_into_the_node_fails_the_check(tmp_path: Path) -> None:
    root = _copy_product(tmp_path)
    (root / "pipelines" / "transforms" / "probe.py").write_text('"""Probe."""\nfrom ..node import x\n')
    (root / "pipelines" / "node.py").write_text('"""Probe."""\nx = 1\n')
    assert violations(root) == []  # relative import inside pipelines: allowed
    (root / "pipelines" / "transforms" / "probe.py").write_text(
        '"""Probe."""\nfrom ledger.node import node\nfrom ledger.client import privacy\nimport infra.stack\n')
    assert violations(root) == [
        "pipelines/transforms/probe.py:2: pipelines.transforms.probe -> ledger.node.node "
        "(pipelines may use the ledger only through its client surface)",
        "pipelines/transforms/probe.py:4: pipelines.transforms.probe -> infra.stack (pipelines may not import infra)"]


def test_the_base_and_the_cli_keep_their_places(tmp_path: Path) -> None:
    root = _copy_product(tmp_path)
    (root / "riskmask" / "probe.py").write_text('"""Probe."""\nfrom schemas import messages\n')
    (root / "infra" / "probe.py").write_text('"""Probe."""\nfrom riskmask.cli import main\n')
    (root / "ledger" / "probe.py").write_text('"""Probe."""\nfrom riskmask.errors import UserError\n')
    assert violations(root) == [
        "infra/probe.py:2: infra.probe -> riskmask.cli (infra may not import cli)",
        "riskmask/probe.py:2: riskmask.probe -> schemas.messages (base may not import schemas)"]


def test_an_unexplained_function_level_import_fails_the_check(tmp_path: Path) -> None:
    root = _copy_product(tmp_path)
    before = unexplained_function_imports(root)
    (root / "ledger" / "probe.py").write_text(
        '"""Probe."""\n\n\ndef f():\n    from ledger.types import merkle\n    # a cycle: ledger.types.block imports this module\n'
        '    from ledger.types import block\n    return merkle, block\n')
    after = unexplained_function_imports(root)
    assert sorted(set(after) - set(before)) == ["ledger/probe.py:5: ledger.probe -> ledger.types.merkle"]


def test_importing_the_ledger_client_side_loads_no_pipeline_or_infra_module() -> None:
    """The arrows hold at run time too: the modules a pipeline stage uses pull in nothing above them."""
    code = ("import sys\n"
            "import ledger.client.registry_client, ledger.client.watchlist, ledger.audit.verifier, ledger.ops.exporter, ledger.audit.blocks\n"
            "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('pipelines', 'infra') or m == 'riskmask.cli')\n"
            "print(','.join(bad))\n")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == ""


def test_the_ledger_client_side_loads_nothing_of_the_node() -> None:
    """What a client (pipeline stage, manager command) imports of the ledger brings no HTTP server, API,
    node, p2p or store with it: request signing (ledger.client.signing) is apart from the server's authenticator."""
    code = ("import sys\n"
            "import ledger.client.api_client, ledger.client.registry_client, ledger.client.watchlist\n"
            "import ledger.client.privacy, ledger.client.keys\n"
            "server = ('ledger.rpc.httpserver', 'ledger.rpc.auth', 'ledger.rpc.api', 'ledger.node.node',"
            " 'ledger.p2p.transport', 'ledger.node.store', 'ledger.node.mempool', 'ledger.registry.service',"
            " 'ledger.registry.endpoints')\n"
            "print(','.join(sorted(m for m in sys.modules if m in server)))\n")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == ""


def test_no_leftover_or_test_only_files_in_the_product() -> None:
    tracked = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    assert [p for p in tracked.splitlines() if p.endswith(".orig")] == []
    hooks = [str(p.relative_to(ROOT)) for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py")
             if (ast.get_docstring(ast.parse(p.read_text(encoding="utf-8"))) or "").lower().startswith("test hook")]
    assert hooks == []
