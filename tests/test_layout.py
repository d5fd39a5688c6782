"""The library stands apart from the benchmark: nothing in `hf_pbu/` imports `benchmarks/`."""

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BENCHMARKS = ROOT / "benchmarks"

IMPORT_EVERY_SUBMODULE = """
import importlib, json, pkgutil, sys
import hf_pbu
failed = {}
for module in pkgutil.walk_packages(hf_pbu.__path__, "hf_pbu."):
    try:
        importlib.import_module(module.name)
    except Exception as err:
        failed[module.name] = repr(err)
files = {name: getattr(m, "__file__", None) for name, m in list(sys.modules.items())}
print(json.dumps({"package": hf_pbu.__file__, "failed": failed, "files": {k: v for k, v in files.items() if v}}))
"""


def benchmark_module_names() -> set[str]:
    return {"benchmarks"} | {path.stem for path in BENCHMARKS.glob("*.py")}


def test_every_library_module_imports_without_the_benchmarks(tmp_path):
    """Each `hf_pbu` submodule imported in a fresh interpreter outside the checkout, with only the repository root
    on the path: none fails, and no module it loads comes from `benchmarks/`."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    run = subprocess.run([sys.executable, "-c", IMPORT_EVERY_SUBMODULE], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=600, check=False)
    assert run.returncode == 0, run.stderr[-3000:]
    report = json.loads(run.stdout.strip().splitlines()[-1])
    assert Path(report["package"]).resolve().parent == ROOT / "hf_pbu"
    assert report["failed"] == {}
    from_benchmarks = {
        name: file for name, file in report["files"].items() if Path(file).resolve().is_relative_to(BENCHMARKS)
    }
    assert from_benchmarks == {}
    assert len([name for name in report["files"] if name.startswith("hf_pbu.")]) > 20  # the walk found them


def test_no_library_file_imports_a_benchmark_module():
    names = benchmark_module_names()
    assert {"cells", "offline_data", "base_models"} <= names
    offending = []
    for path in sorted((ROOT / "hf_pbu").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                modules = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                modules = [node.module]
            else:
                continue
            offending += [f"{path.relative_to(ROOT)}:{node.lineno} {m}" for m in modules
                          if m.split(".")[0] in names]
    assert offending == []
