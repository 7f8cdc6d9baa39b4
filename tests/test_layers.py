"""The package layers: every import points down (import-linter's contracts in pyproject.toml), no
cycles between a package's modules, and no private name imported from another package."""

import ast
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_import_linter_contracts_are_kept():
    exe = shutil.which("lint-imports") or str(Path(sys.executable).parent / "lint-imports")
    if not Path(exe).exists():
        pytest.skip("import-linter is not installed (pip install -e '.[dev]')")
    out = subprocess.run([exe, "--no-cache"], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0, out.stdout[-3000:]
    assert "2 kept, 0 broken" in out.stdout


def test_no_private_name_is_imported_across_packages():
    bad = []
    for path in (ROOT / "comp").rglob("*.py"):
        mod = ".".join(path.relative_to(ROOT).with_suffix("").parts)
        pkg = ".".join(mod.split(".")[:2])
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("comp."):
                theirs = ".".join(node.module.split(".")[:2])
                bad += [f"{mod}: {node.module}.{a.name}" for a in node.names
                        if a.name.startswith("_") and theirs != pkg]
    assert not bad, bad
