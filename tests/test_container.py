"""The container image, really built (mmdebstrap base, podman build) and started: /health and one prediction.

It takes minutes and gigabytes (the image installs torch), so `make test` runs it only when asked:
FASHIONCLF_CONTAINER_TEST=1 (what `make container-check` does through tools/container_check.py directly).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import load_script

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "tools" / "container_check.py"


def _check_module():
    return load_script(SCRIPT, "container_check")


@pytest.mark.slow
def test_the_image_builds_starts_and_answers():
    if os.environ.get("FASHIONCLF_CONTAINER_TEST") != "1":
        pytest.skip(
            "builds a multi-GB image in minutes: run `make container-check` (or FASHIONCLF_CONTAINER_TEST=1 make test) "
            "on a machine with podman and mmdebstrap (Debian: apt-get install podman mmdebstrap)"
        )
    if missing := _check_module().missing_tools():
        pytest.skip(f"{', '.join(missing)} not installed: apt-get install podman mmdebstrap, then run this again")
    done = subprocess.run([sys.executable, str(SCRIPT)], capture_output=True, text=True, timeout=3600)
    assert done.returncode == 0, done.stderr[-3000:]
    got = json.loads(done.stdout.strip().splitlines()[-1])
    assert got["health"] == 200 and got["prediction"]["label"] and 0 <= got["prediction"]["confidence"] <= 1


def test_local_mirrors_are_mounted_and_passed_on(tmp_path, monkeypatch):
    """The build reads this machine's local package folders (file:// indexes, find-links), never its network ones."""
    mod = _check_module()
    (tmp_path / "pypi" / "simple" / "torch").mkdir(parents=True)
    (tmp_path / "wheels").mkdir()
    monkeypatch.setenv("PIP_EXTRA_INDEX_URL", f"file://{tmp_path}/pypi/simple https://example.org/simple")
    monkeypatch.setenv("PIP_FIND_LINKS", str(tmp_path / "wheels"))
    mirrors = mod.local_mirrors()
    assert mirrors == {"PIP_EXTRA_INDEX_URL": f"file://{tmp_path}/pypi/simple", "PIP_FIND_LINKS": str(tmp_path / "wheels")}
    assert mod._folders(mirrors) == [str(tmp_path / "pypi"), str(tmp_path / "wheels")]
    assert mod.torch_index(mirrors) == f"file://{tmp_path}/pypi/simple"
    monkeypatch.setenv("PIP_EXTRA_INDEX_URL", "https://example.org/simple")
    assert mod.torch_index(mod.local_mirrors()) is None
