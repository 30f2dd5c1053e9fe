"""Mutation check of the auditor: disable each check of ``ledger/audit/verifier.py`` in turn and run its tests.

A *check* is every ``if`` whose body raises (the condition is replaced by ``False``: the check never fires),
every ``if`` whose body accepts early with ``return`` right before a ``raise`` (replaced by ``True``: always
accepted), and every ``try`` around a single call whose handlers raise (the call is removed). Each mutant is
written to a temporary copy of the module and loaded as ``ledger.audit.verifier`` in a fresh interpreter before
pytest runs the given test files. A mutant whose tests still pass *survives*: that check is not tested.

    python bench/audit_mutation.py                   # tests/ledger/audit/test_verifier.py, survivors listed, exit 1 if any
    python bench/audit_mutation.py --json out.json   # also write the per-check results
"""

from __future__ import annotations

import argparse
import ast
import copy
import json
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterator, Optional

ROOT = Path(__file__).resolve().parent.parent
TARGET = ROOT / "ledger" / "audit.py"

_LOADER = """
import importlib.util, sys
import ledger
spec = importlib.util.spec_from_file_location("ledger.audit.verifier", sys.argv[1])
mod = importlib.util.module_from_spec(spec)
sys.modules["ledger.audit.verifier"] = mod
spec.loader.exec_module(mod)
ledger.audit.verifier = mod
import pytest
sys.exit(pytest.main(sys.argv[2:]))
"""


@dataclass
class Mutant:
    line: int
    kind: str  # "never-fails" | "always-accepts" | "call-removed"
    source: str
    killed: Optional[bool] = None
    seconds: float = 0.0


def _raises(stmts: list[ast.stmt]) -> bool:
    return any(isinstance(s, ast.Raise) for s in stmts)


def _sites(tree: ast.Module) -> Iterator[tuple[ast.AST, str]]:
    """(node, kind) for every check, in source order."""
    for node in ast.walk(tree):
        for field in ("body", "orelse", "finalbody"):
            stmts = getattr(node, field, None)
            if not isinstance(stmts, list):
                continue
            for i, st in enumerate(stmts):
                if isinstance(st, ast.If) and _raises(st.body):
                    yield st, "never-fails"
                elif (isinstance(st, ast.If) and st.body and isinstance(st.body[-1], ast.Return)
                      and i + 1 < len(stmts) and isinstance(stmts[i + 1], (ast.Raise, ast.If))
                      and (isinstance(stmts[i + 1], ast.Raise) or _raises(stmts[i + 1].body))):
                    yield st, "always-accepts"
                elif (isinstance(st, ast.Try) and len(st.body) == 1 and isinstance(st.body[0], ast.Expr)
                      and all(_raises(h.body) and not any(isinstance(x, ast.Raise) and x.exc is None
                                                          for x in h.body) for h in st.handlers)):
                    yield st, "call-removed"


def mutants(source: str) -> list[tuple[Mutant, str]]:
    """Every mutant of ``source``: (description, mutated source)."""
    tree = ast.parse(source)
    sites = sorted(_sites(tree), key=lambda s: (s[0].lineno, s[0].col_offset))
    lines = source.splitlines()
    out = []
    for idx, (_, kind) in enumerate(sites):
        mutated = copy.deepcopy(tree)
        node, _ = sorted(_sites(mutated), key=lambda s: (s[0].lineno, s[0].col_offset))[idx]
        if kind == "never-fails":
            node.test = ast.Constant(False)
        elif kind == "always-accepts":
            node.test = ast.Constant(True)
        else:
            node.body = [ast.Pass()]
        desc = Mutant(node.lineno, kind, lines[node.lineno - 1].strip())
        out.append((desc, ast.unparse(ast.fix_missing_locations(mutated))))
    return out


def run(test_files: list[str], python: str = sys.executable) -> list[Mutant]:
    source = TARGET.read_text()
    results = []
    with tempfile.TemporaryDirectory(prefix="audit-mut-") as tmp:
        loader = Path(tmp) / "load_mutant.py"
        loader.write_text(_LOADER)
        # the unmutated module must pass, or every mutant would look "killed"
        base = Path(tmp) / "audit_original.py"
        base.write_text(source)
        ok = subprocess.run([python, str(loader), str(base), "-q", "-x", "-p", "no:cacheprovider", *test_files],
                            cwd=ROOT, capture_output=True, text=True)
        if ok.returncode != 0:
            raise SystemExit(f"the tests fail on the unmutated auditor:\n{ok.stdout[-2000:]}")
        for i, (m, text) in enumerate(mutants(source)):
            path = Path(tmp) / f"audit_mutant_{i}.py"
            path.write_text(text)
            t0 = time.perf_counter()
            r = subprocess.run([python, str(loader), str(path), "-q", "-x", "-p", "no:cacheprovider", *test_files],
                               cwd=ROOT, capture_output=True, text=True)
            m.seconds = round(time.perf_counter() - t0, 2)
            m.killed = r.returncode != 0
            results.append(m)
            print(f"{'killed  ' if m.killed else 'SURVIVED'} line {m.line:4d} {m.kind:15s} {m.source[:90]}",
                  flush=True)
    return results


def main(argv: Optional[list[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("tests", nargs="*", default=["tests/ledger/audit/test_verifier.py"], help="test files (default: %(default)s)")
    ap.add_argument("--json", type=Path, default=None, help="write the per-check results here")
    ap.add_argument("--list", action="store_true", help="only list the checks found")
    args = ap.parse_args(argv)
    if args.list:
        for m, _ in mutants(TARGET.read_text()):
            print(f"line {m.line:4d} {m.kind:15s} {m.source[:90]}")
        return 0
    results = run(args.tests)
    survivors = [m for m in results if not m.killed]
    print(f"{len(results)} checks, {len(results) - len(survivors)} killed, {len(survivors)} survived")
    if args.json:
        args.json.write_text(json.dumps({"target": str(TARGET.relative_to(ROOT)), "tests": args.tests,
                                         "checks": len(results), "survivors": len(survivors),
                                         "results": [asdict(m) for m in results]}, indent=2))
    return 1 if survivors else 0


if __name__ == "__main__":
    sys.exit(main())
