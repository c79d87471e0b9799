"""The package's shape, checked: folders are the layers, imports point down, no cycles, sizes stay small.

Each folder of fashionclf/ is one layer; a module imports from its own folder or lower ones, never higher, and
function-local imports count as much as the ones at the top of a file. The order, lowest first, is the
one docs/development.md explains. Only the facades (fashionclf/__init__.py, api.py, __main__.py) live
at the top.
"""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent / "fashionclf"
FOLDERS = ["core", "data", "models", "engine", "embed", "evaluation", "infer", "training", ("study", "review"), "api", "apps"]
FACADES = {"fashionclf", "fashionclf.api", "fashionclf.__main__"}


def layer(module: str) -> int:
    """The index in FOLDERS of the folder a module sits in ("api" and the package's root are the facade level)."""
    parts = module.split(".")
    top = parts[1] if len(parts) > 1 else "api"
    top = "api" if top == "__main__" else top
    for i, f in enumerate(FOLDERS):
        if top == f or (isinstance(f, tuple) and top in f):
            return len(FOLDERS) if module == "fashionclf.__main__" else i
    raise AssertionError(f"{module} is in no layer folder: new code goes into one of {FOLDERS} (docs/development.md)")


def modules():
    for f in sorted(ROOT.rglob("*.py")):
        name = ".".join(("fashionclf", *f.relative_to(ROOT).with_suffix("").parts)).removesuffix(".__init__")
        yield name, f


NAMES = {name for name, _ in modules()}


def resolve(dotted: str) -> str | None:
    """The module a dotted import names: `fashionclf.engine.distributed`, or the module that defines a name."""
    parts = dotted.split(".")
    for i in range(len(parts), 0, -1):
        if ".".join(parts[:i]) in NAMES:
            return ".".join(parts[:i])
    return None


def imports(path: Path) -> set[str]:
    """Every fashionclf module a file imports, at the top or inside functions."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("fashionclf"):
            out |= {resolve(f"{node.module}.{a.name}") for a in node.names}
        elif isinstance(node, ast.Import):
            out |= {resolve(a.name) for a in node.names if a.name.startswith("fashionclf")}
    return out - {None}


GRAPH = {name: imports(path) - {name} for name, path in modules()}


def test_every_module_lives_in_a_layer_folder():
    loose = [n for n in NAMES if n.count(".") == 1 and n not in FACADES and not (ROOT / n.split(".")[1]).is_dir()]
    assert not loose, f"modules at the top of the package: {loose}; only the facades live there"
    for name in NAMES:
        layer(name)


@pytest.mark.parametrize("name", sorted(GRAPH))
def test_imports_point_down(name):
    up = sorted(m for m in GRAPH[name] if m != "fashionclf.core" and layer(m) > layer(name))
    assert not up, f"{name} (folder level {layer(name)}) imports higher folders: {up}"


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan's algorithm, iterative)."""
    index, low, stack, on, found, counter = {}, {}, [], set(), [], [0]
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = counter[0]
        counter[0] += 1
        stack.append(root)
        on.add(root)
        while work:
            v, it = work[-1]
            w = next(it, None)
            if w is not None:
                if w not in index:
                    index[w] = low[w] = counter[0]
                    counter[0] += 1
                    stack.append(w)
                    on.add(w)
                    work.append((w, iter(sorted(graph.get(w, ())))))
                elif w in on:
                    low[v] = min(low[v], index[w])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[v])
            if low[v] == index[v]:
                comp = []
                while True:
                    w = stack.pop()
                    on.discard(w)
                    comp.append(w)
                    if w == v:
                        break
                if len(comp) > 1:
                    found.append(sorted(comp))
    return found


def test_no_import_cycles_even_inside_functions():
    assert cycles(GRAPH) == []


def test_the_cycle_finder_finds_cycles():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_development_guide_names_every_module():
    guide = (ROOT.parent / "docs" / "development.md").read_text()
    said = set(re.findall(r"[\w/]+\.py", guide))
    missing = [
        str(p.relative_to(ROOT))
        for _, p in modules()
        if p.name != "__init__.py" and str(p.relative_to(ROOT)) not in said and p.name not in said
    ]
    assert not missing, f"docs/development.md does not mention {missing}"


def test_serving_and_inference_do_not_import_training():
    code = (
        "import sys, fashionclf.apps.serving.app, fashionclf.infer.predict, fashionclf.engine.inference;"
        "heavy = ['fashionclf.training.' + m for m in ('loop', 'supervised', 'selftrain', 'distill')] + ['fashionclf.study.compare'];"
        "bad = [m for m in heavy if m in sys.modules];"
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


def test_no_module_or_folder_is_named_like_a_facade_function():
    """A folder named like an API function (fashionclf/train/ beside fashionclf.train) would shadow it on the package
    once anything imported it: `fashionclf.train(...)` would then be a module. Checked from the names."""
    import fashionclf

    tops = {p.stem for p in ROOT.iterdir() if (p.is_dir() and (p / "__init__.py").exists()) or p.suffix == ".py"}
    assert not tops & set(fashionclf.__all__), f"rename {sorted(tops & set(fashionclf.__all__))}: they shadow fashionclf's API"
