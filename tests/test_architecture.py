"""The package's shape, checked: imports point one way, inference does not import training, sizes stay small.

Layers, lowest first. A module may import from its own layer or lower ones, never higher:
data and models -> engine -> evaluation -> reports; the API above them; CLI and service on top.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent / "fashionclf"
LAYERS = [
    ("fashionclf.settings", "fashionclf.io", "fashionclf.data"),
    ("fashionclf.config",),
    ("fashionclf.models",),
    ("fashionclf.recipes",),
    ("fashionclf.engine",),
    ("fashionclf.runs", "fashionclf.card"),
    ("fashionclf.evaluation",),
    # ready: the shipped model, read as predict reads runs; selftrain: study's training with predict's pseudo-labels
    ("fashionclf.predict", "fashionclf.study", "fashionclf.ready", "fashionclf.selftrain"),
    ("fashionclf.distill",),  # distillation: self-training's student noise, the soft labels of several runs
    # serving.export: what Run.export calls; review: the catalogue, its export and Label Studio files, what the API calls
    ("fashionclf.reports", "fashionclf.serving.export", "fashionclf.serving.quantize", "fashionclf.review"),
    ("fashionclf.api", "fashionclf.tracking", "fashionclf.mlflow_model"),
    ("fashionclf.serving", "fashionclf.review.app", "fashionclf.cli", "fashionclf.__main__"),  # review.app: the review desk's web app
]


def layer(module: str) -> int:
    found = [(len(p), i) for i, prefixes in enumerate(LAYERS) for p in prefixes if module == p or module.startswith(p + ".")]
    if found:
        return max(found)[1]  # the most specific prefix decides
    raise AssertionError(f"{module} is in no layer of tests/test_architecture.py: add it to one")


def modules():
    for f in sorted(ROOT.rglob("*.py")):
        name = ".".join(("fashionclf", *f.relative_to(ROOT).with_suffix("").parts)).removesuffix(".__init__")
        yield name, f


def imports(path: Path) -> set[str]:
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("fashionclf"):
            # `from fashionclf.engine import distributed` imports fashionclf.engine.distributed
            out |= {f"{node.module}.{a.name}" if node.module.count(".") <= 1 else node.module for a in node.names}
        elif isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name.startswith("fashionclf")}
    return {m for m in out if m != "fashionclf.__version__"}


@pytest.mark.parametrize("name,path", [m for m in modules() if m[0] != "fashionclf"])
def test_imports_point_down(name, path):
    up = sorted(m for m in imports(path) if layer(m) > layer(name))
    assert not up, f"{name} (layer {layer(name)}) imports higher layers: {up}"


def test_serving_and_inference_do_not_import_training():
    code = (
        "import sys, fashionclf.serving.app, fashionclf.predict, fashionclf.engine.inference;"
        "bad = [m for m in ('fashionclf.engine.loop', 'fashionclf.study') if m in sys.modules];"
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_modules_and_functions_stay_small():
    """No module over ~400 lines, no function over ~80 (the issue's limits, with no exceptions)."""
    for name, path in modules():
        src = path.read_text()
        assert len(src.splitlines()) <= 400, f"{name}: {len(src.splitlines())} lines"
        for node in ast.walk(ast.parse(src)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                n = node.end_lineno - node.lineno + 1
                assert n <= 80, f"{name}.{node.name}: {n} lines"
