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


_DUMP = """
import sys, joblib
import comp.blend
import comp.members.linear as linear
from comp.blend.blenders import HillClimbBlender
sys.modules["comp.linear"] = linear  # the module names models were pickled under before
linear.NBLogisticRegression.__module__ = "comp.linear"
HillClimbBlender.__module__ = "comp.blend"
joblib.dump([linear.NBLogisticRegression(), HillClimbBlender()], sys.argv[1])
"""
_LOAD = """
import sys
from comp.core.utils import load_model
nb, hill = load_model(sys.argv[1])
print(type(nb).__module__, type(nb).__name__, type(hill).__module__, type(hill).__name__)
"""


def test_models_pickled_under_the_old_module_names_still_load(tmp_path):
    """Runs and bundles made before the layer packages hold pickles naming comp.linear and
    comp.blend: load_model reads them into today's classes (in a fresh process)."""
    path = tmp_path / "old.joblib"
    env = {**__import__("os").environ, "PYTHONPATH": str(ROOT)}
    subprocess.run([sys.executable, "-c", _DUMP, str(path)], check=True, env=env)
    data = path.read_bytes()
    assert b"comp.linear" in data and b"comp.blend" in data and b"comp.blend.blenders" not in data
    out = subprocess.run([sys.executable, "-c", _LOAD, str(path)], check=True, env=env,
                         capture_output=True, text=True).stdout.split()
    assert out == ["comp.members.linear", "NBLogisticRegression", "comp.blend.blenders",
                   "HillClimbBlender"]
