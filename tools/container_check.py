"""Build the service's container image and check it answers: `make container-check`.

1. A base image from the Debian archive with mmdebstrap (Debian's python3 and its venv module; no registry needed),
   imported into podman as localhost/fashionclf-base:bookworm (kept: later checks reuse it; --rebuild-base makes it again).
2. `podman build` of the repository's Dockerfile on that base (BASE build argument). Where pip on this machine reads
   local package mirrors (file:// indexes or find-links in $PIP_* or `pip config`), they are mounted read-only into the
   build and passed on, so nothing is downloaded that this machine already has; otherwise PyPI is used.
3. `podman run` of the image with a run folder mounted read-only at /model, its port published on 127.0.0.1, then
   GET /health and one POST /v1/predict, and the container is stopped and removed whatever happened.

Needs podman and mmdebstrap (Debian: apt-get install podman mmdebstrap) and root or a rootless podman set-up.
Prints one JSON line with each step's seconds, the image size and the answers; exits non-zero when a step fails.
"""

from __future__ import annotations

import argparse
import io
import json
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BASE = "localhost/fashionclf-base:bookworm"
IMAGE = "localhost/fashionclf:check"
PACKAGES = "python3,python3-venv,ca-certificates"
PYPI = "https://pypi.org/simple"


def missing_tools() -> list[str]:
    return [t for t in ("podman", "mmdebstrap") if shutil.which(t) is None]


def sh(cmd: list[str], **kw) -> subprocess.CompletedProcess:
    done = subprocess.run(cmd, capture_output=True, text=True, **kw)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd[:4])} ... failed ({done.returncode}): {(done.stderr or done.stdout)[-3000:]}")
    return done


def pip_settings() -> dict[str, str]:
    """This machine's pip configuration (`pip config list`), by key: {"extra-index-url": ..., "cert": ...}."""
    conf = subprocess.run([sys.executable, "-m", "pip", "config", "list"], capture_output=True, text=True).stdout
    return {line.split("=", 1)[0].split(".")[-1]: line.split("=", 1)[1].strip("'") for line in conf.splitlines() if "=" in line}


def host_cert() -> str | None:
    """The CA bundle pip uses here ($PIP_CERT or pip's `cert`), when it is a file: a machine behind a TLS-inspecting
    proxy reaches PyPI only with it, and the base image's own bundle lacks it."""
    import os

    cert = os.environ.get("PIP_CERT") or pip_settings().get("cert")
    return cert if cert and Path(cert).is_file() else None


def local_mirrors() -> dict[str, str]:
    """This machine's pip settings that point at local folders: {"PIP_EXTRA_INDEX_URL": "file:///...", ...}."""
    import os

    found: dict[str, str] = {}
    settings = pip_settings()
    for key, env in (("extra-index-url", "PIP_EXTRA_INDEX_URL"), ("find-links", "PIP_FIND_LINKS")):
        value = os.environ.get(env) or settings.get(key, "")
        local = [v for v in value.split() if v.startswith(("file://", "/"))]
        if local:
            found[env] = " ".join(local)
    return found


def _folders(mirrors: dict[str, str]) -> list[str]:
    out = []
    for value in mirrors.values():
        for v in value.split():
            path = Path(v.removeprefix("file://"))
            folder = path.parent if path.name == "simple" else path
            if folder.is_dir() and str(folder) not in out:
                out.append(str(folder))
    return out


def torch_index(mirrors: dict[str, str]) -> str | None:
    """A local index that holds torch (the Dockerfile's default CPU index is not reachable everywhere)."""
    for v in mirrors.get("PIP_EXTRA_INDEX_URL", "").split():
        if (Path(v.removeprefix("file://")) / "torch").is_dir():
            return v
    return None


def build_base(rebuild: bool) -> bool:
    """The Debian base, unless podman already has it; True when it was built now."""
    have = subprocess.run(["podman", "image", "exists", BASE]).returncode == 0
    if have and not rebuild:
        return False
    strap = subprocess.Popen(
        ["mmdebstrap", "--variant=minbase", f"--include={PACKAGES}", "bookworm", "-"], stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    imported = subprocess.run(["podman", "import", "-", BASE], stdin=strap.stdout, capture_output=True, text=True)
    strap.stdout.close()
    err = strap.stderr.read().decode(errors="replace")
    if strap.wait() != 0 or imported.returncode != 0:
        raise RuntimeError(f"mmdebstrap | podman import failed: {err[-2000:]} {imported.stderr[-2000:]}")
    return True


# Limits lowered to what an unprivileged parent allows (podman's defaults raise them, refused in some sandboxes)
ULIMITS = ["--ulimit", "nofile=4096:4096", "--ulimit", "nproc=4096:4096"]


def runtime_flags() -> list[str]:
    """podman's global flags that let a container start here: the default runtime (crun), else runc (crun refuses
    hybrid cgroup v1/v2 hosts). Tried on the base image with a no-op."""
    for flags in ([], ["--runtime", "runc"]):
        if flags and shutil.which("runc") is None:
            continue
        tried = subprocess.run(["podman", *flags, "run", "--rm", *ULIMITS, BASE, "true"], capture_output=True, text=True)
        if tried.returncode == 0:
            return flags
        last = tried.stderr
    raise RuntimeError(f"no container starts here (podman run of the base image): {last[-1500:]}; apt-get install runc may help")


def build_image(flags: list[str]) -> None:
    mirrors = local_mirrors()
    cmd = ["podman", *flags, "build", *ULIMITS, "--network", "host", "--build-arg", f"BASE={BASE}", "-t", IMAGE]
    for folder in _folders(mirrors):
        cmd += ["-v", f"{folder}:{folder}:ro"]
    if index := torch_index(mirrors):  # torch from the local index; what it lacks from PyPI (kept as an extra index)
        cmd += ["--build-arg", f"TORCH_INDEX={index}"]
        mirrors["PIP_EXTRA_INDEX_URL"] = f"{mirrors['PIP_EXTRA_INDEX_URL']} {PYPI}"
    for key, value in mirrors.items():
        cmd += ["--build-arg", f"{key}={value}"]
    if cert := host_cert():  # mounted for the build only: the image keeps its own bundle
        cmd += ["-v", f"{cert}:/run/host-ca.crt:ro", "--build-arg", "PIP_CERT=/run/host-ca.crt"]
    sh([*cmd, str(ROOT)])


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def png_bytes() -> bytes:
    import numpy as np
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.full((28, 28), 200, np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def check_running(run: Path, flags: list[str], timeout: float = 180) -> dict:
    """Start the image with `run` mounted at /model, ask /health and one prediction, stop it."""
    port = free_port()
    name = f"fashionclf-check-{port}"
    sh(["podman", *flags, "run", "-d", *ULIMITS, "--name", name, "-p", f"127.0.0.1:{port}:8000", "-v", f"{run.resolve()}:/model:ro", IMAGE])
    try:
        deadline, health = time.time() + timeout, None
        while time.time() < deadline:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5) as r:
                    health = r.status
                    break
            except OSError:
                time.sleep(1)
        if health != 200:
            logs = subprocess.run(["podman", *flags, "logs", name], capture_output=True, text=True)
            raise RuntimeError(f"no /health within {timeout:.0f} s: {(logs.stdout + logs.stderr)[-2000:]}")
        boundary = "fashionclfcheck"
        body = (
            f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="x.png"\r\nContent-Type: image/png\r\n\r\n'
        ).encode()
        body += png_bytes() + f"\r\n--{boundary}--\r\n".encode()
        req = urllib.request.Request(
            f"http://127.0.0.1:{port}/v1/predict", data=body, headers={"Content-Type": f"multipart/form-data; boundary={boundary}"}
        )
        with urllib.request.urlopen(req, timeout=60) as r:
            answer = json.loads(r.read())
        return {"health": health, "prediction": answer["predictions"][0]}
    finally:
        subprocess.run(["podman", *flags, "rm", "-f", name], capture_output=True)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", default=str(ROOT / "tests/golden/study/runs/mlp-s0"), help="the run folder mounted at /model")
    ap.add_argument("--rebuild-base", action="store_true", help="build the Debian base again even if podman has it")
    ap.add_argument("--out", help="also write the JSON line here (with the date and the machine)")
    args = ap.parse_args(argv)
    if missing := missing_tools():
        print(f"container check: {', '.join(missing)} not found; on Debian: apt-get install podman mmdebstrap", file=sys.stderr)
        return 2
    times = {}
    t0 = time.perf_counter()
    built = build_base(args.rebuild_base)
    times["base_s"], t0 = round(time.perf_counter() - t0, 1), time.perf_counter()
    flags = runtime_flags()
    build_image(flags)
    times["build_s"], t0 = round(time.perf_counter() - t0, 1), time.perf_counter()
    answers = check_running(Path(args.run), flags)
    times["run_and_answer_s"] = round(time.perf_counter() - t0, 1)
    size = sh(["podman", "image", "inspect", IMAGE, "--format", "{{.Size}}"]).stdout.strip()
    got = {"base_built_now": built, "podman_flags": flags, **times, "image_bytes": int(size), **answers}
    print(json.dumps(got))
    if args.out:
        from datetime import UTC, datetime

        from fashionclf.core.io import atomic_write_text
        from fashionclf.engine.autotune import cpu_info

        when = {"date": datetime.now(UTC).isoformat(timespec="seconds"), "machine": cpu_info()["model"]}
        atomic_write_text(args.out, json.dumps({**when, **got}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except RuntimeError as e:
        print(f"container check failed: {e}", file=sys.stderr)
        sys.exit(1)
