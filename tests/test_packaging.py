"""Lean installs: the wheel builds with its data files, the core needs no service/export/tracking packages,
`fashionclf --version` runs in a clean venv, and a missing extra is one line naming what to install."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
GOLDEN_RUN = Path(__file__).parent / "golden" / "study" / "runs" / "mlp-s0"


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(out), str(ROOT)],
        check=True,
        capture_output=True,
    )
    (whl,) = out.glob("fashionclf-*.whl")
    return whl


def test_wheel_holds_the_package_and_its_data_files(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    recipes = list((ROOT / "fashionclf" / "training" / "recipes").glob("*.toml"))
    assert len(recipes) > 10
    for recipe in recipes:
        assert f"fashionclf/training/recipes/{recipe.name}" in names
    assert "fashionclf/apps/serving/page.html" in names
    assert "fashionclf/apps/desk/page.html" in names
    # the ready model, so `fashionclf predict photo.jpg` works right after install: every file of the bundle
    shipped = [f for f in (ROOT / "fashionclf" / "weights").rglob("*") if f.is_file()]
    assert any(f.name == "ready.json" for f in shipped)
    for f in shipped:
        assert f"fashionclf/{f.relative_to(ROOT / 'fashionclf').as_posix()}" in names, f
    folders = [p.parent.relative_to(ROOT).as_posix() for p in (ROOT / "fashionclf").rglob("__init__.py")]
    assert len(folders) > 12
    for pkg in folders:
        assert f"{pkg}/__init__.py" in names


def test_core_requirements_leave_the_extras_out(wheel):
    meta = next(n for n in zipfile.ZipFile(wheel).namelist() if n.endswith("METADATA"))
    requires = [
        line.split(":", 1)[1].strip()
        for line in zipfile.ZipFile(wheel).read(meta).decode().splitlines()
        if line.startswith("Requires-Dist:")
    ]
    core = [r for r in requires if "extra ==" not in r]
    for optional in ("fastapi", "uvicorn", "onnx", "onnxruntime", "mlflow", "ray", "matplotlib", "pytest"):
        assert not any(r.split()[0].split("[")[0].split(">")[0].split("=")[0] == optional for r in core), (optional, core)
    for needed in ("torch", "safetensors", "pillow", "timm"):
        assert any(r.lower().startswith(needed) for r in core), needed


@pytest.mark.slow
def test_version_in_a_clean_venv(wheel, tmp_path):
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    subprocess.run([venv / "bin" / "pip", "install", "-q", "--no-deps", "--no-index", str(wheel)], check=True)
    out = subprocess.run([venv / "bin" / "fashionclf", "--version"], check=True, capture_output=True, text=True).stdout
    assert out.strip() == "fashionclf 0.1.0"


@pytest.mark.parametrize(
    "blocked,argv,extra",
    [
        ("fastapi", ["serve", str(GOLDEN_RUN)], "serve"),
        ("onnx", ["export", str(GOLDEN_RUN), "--onnx", "{tmp}/m.onnx"], "export"),
    ],
)
def test_a_missing_extra_is_one_line(tmp_path, blocked, argv, extra):
    argv = [a.replace("{tmp}", str(tmp_path)) for a in argv]
    code = f"import sys; sys.modules[{blocked!r}] = None; from fashionclf.apps.cli import main; sys.exit(main({argv!r}))"
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert res.returncode == 2, res.stderr
    assert f"pip install 'fashionclf[{extra}]'" in res.stderr and "Traceback" not in res.stderr
